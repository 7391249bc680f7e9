"""Architecture description of a CLIP model, and its inference from a state dict.

One dataclass per tower plus preprocessing, so a checkpoint carries everything needed to
rebuild and feed it (habit from open_clip's ``CLIPVisionCfg``/``PreprocessCfg``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from refseg.errors import CheckpointFormatError

# OpenAI CLIP's pixel statistics (clip/clip.py `_transform`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    """Image tower. ``layers`` as an int means a ViT; a 4-tuple means a ModifiedResNet."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768  # ViT: token width. ResNet: stem width (64 for RN50).
    heads: int = 12
    patch_size: int = 32  # ViT only
    mlp_width: int | None = None  # ViT only; None means 4 * width
    # ViT only: add a learned linear map of all final patch tokens to the class-token
    # embedding. Zero-initialised (the model starts equal to its class-token readout); it
    # gives the embedding a direct path to *where* things are, which the class token of the
    # tiny ShapesRef ViT does not learn (benchmarks/negclip_trials.md). Native grid only.
    spatial_readout: bool = False
    # ViT only: hidden width of a per-token MLP readout (0: none). Each final patch token
    # (after ln_post) goes through Linear -> GELU -> Linear, the results are averaged over the
    # grid and added to the embedding; the last layer starts at zero. One map for every
    # place, applied before pooling, so what one token binds (this colour with this shape,
    # here) survives the average (benchmarks/negclip_trials.md, trial 11).
    token_readout: int = 0

    def __post_init__(self) -> None:
        if self.spatial_readout and not self.is_vit:
            raise ValueError("spatial_readout is for ViT image towers only")
        width = self.token_readout
        if not isinstance(width, int) or width < 0 or (width and not self.is_vit):
            raise ValueError("token_readout is a hidden width >= 0, for ViT image towers only")

    @property
    def is_vit(self) -> bool:
        return isinstance(self.layers, int)


@dataclass
class TextConfig:
    """Causal text transformer; the sentence embedding is read at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_width: int | None = None  # None means 4 * width


@dataclass
class PreprocessConfig:
    """How pixels are prepared for this checkpoint (travels with the weights)."""

    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # "center_crop": resize the short side then crop (CLIP's own transform).
    # "squash": resize to a square ignoring aspect ratio (the Global-Local reference code).
    resize_mode: str = "center_crop"


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    quick_gelu: bool = True  # OpenAI weights were trained with QuickGELU

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CLIPConfig:
        vision = dict(data.get("vision", {}))
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])
        preprocess = dict(data.get("preprocess", {}))
        for key in ("mean", "std"):
            if key in preprocess:
                preprocess[key] = tuple(preprocess[key])
        return cls(
            embed_dim=int(data.get("embed_dim", 512)),
            vision=VisionConfig(**vision),
            text=TextConfig(**dict(data.get("text", {}))),
            preprocess=PreprocessConfig(**preprocess),
            quick_gelu=bool(data.get("quick_gelu", True)),
        )


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return len(indices)


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """Rebuild the architecture from OpenAI-format weight shapes (as ``clip.build_model`` does).

    Head counts follow OpenAI's convention (64 channels per head); checkpoints with other
    head sizes must carry a config (refseg's safetensors metadata or an HF ``config.json``).

    Raises:
        CheckpointFormatError: the keys are not those of an OpenAI/open_clip CLIP.
    """
    try:
        text_width = state_dict["ln_final.weight"].shape[0]
        text = TextConfig(
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            width=text_width,
            heads=max(1, text_width // 64),
            layers=_count_blocks(state_dict, "transformer.resblocks."),
            mlp_width=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        )
        embed_dim = state_dict["text_projection"].shape[1]
        if "visual.proj" in state_dict:  # ViT
            width = state_dict["visual.conv1.weight"].shape[0]
            patch = state_dict["visual.conv1.weight"].shape[-1]
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = VisionConfig(
                image_size=patch * grid,
                layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
                width=width,
                heads=max(1, width // 64),
                patch_size=patch,
                mlp_width=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            )
        else:  # ModifiedResNet
            layers = tuple(
                len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{b}.")})
                for b in (1, 2, 3, 4)
            )
            width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
            grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = VisionConfig(
                image_size=grid * 32, layers=layers, width=width, heads=width * 32 // 64
            )
    except KeyError as exc:
        raise CheckpointFormatError(
            f"not an OpenAI/open_clip CLIP state dict: key {exc.args[0]!r} is missing"
        ) from None
    preprocess = PreprocessConfig(image_size=vision.image_size)
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, preprocess=preprocess)
