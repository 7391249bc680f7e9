"""CLIPSeg's configuration: the decoder's shape, the skip blocks and the input pipeline.

Block indices are 0-based block numbers of the CLIP image tower (``block_outputs``). The
paper and the official training config take blocks (3, 7, 9); the official class default,
imaginAIry and Hugging Face's ``extract_layers`` take (3, 6, 9) (SPEC §2, "the trap").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refseg.errors import InputError

# Paper §3 and experiments/phrasecut.yaml: the blocks the published decoders were trained on.
PAPER_LAYERS = (3, 7, 9)
# Hugging Face's config default (and the official class default): for parity with its port.
HF_COMPAT_LAYERS = (3, 6, 9)
LAYER_PRESETS: dict[str, tuple[int, ...]] = {"paper": PAPER_LAYERS, "hf_compat": HF_COMPAT_LAYERS}

# The official loaders and HF's preprocessor_config.json normalise with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DecoderConfig:
    """Shape of the decoder; ``width``/``cond_dim``/``patch_size`` come from the CLIP.

    Attributes:
        width: CLIP image-tower token width (768 for ViT-B/16).
        cond_dim: CLIP joint-embedding size, the conditional's size (512 for ViT-B/16).
        patch_size: the ViT patch; the head upsamples by it (16 for ViT-B/16).
        extract_layers: 0-based CLIP blocks whose residual stream feeds the decoder,
            shallow to deep; ``reduces.0`` takes the deepest.
        reduce_dim: D, the decoder width (64 for ``rd64``).
        heads, ffn_dim, dropout: of torch's post-norm ``TransformerEncoderLayer``.
        refined: the refined head (conv + two transposed convs) or the plain one.
    """

    width: int = 768
    cond_dim: int = 512
    patch_size: int = 16
    extract_layers: tuple[int, ...] = PAPER_LAYERS
    reduce_dim: int = 64
    heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.1
    refined: bool = True

    def __post_init__(self) -> None:
        self.extract_layers = tuple(int(i) for i in self.extract_layers)
        if not self.extract_layers:
            raise InputError("extract_layers must name at least one CLIP block")
        if list(self.extract_layers) != sorted(set(self.extract_layers)):
            raise InputError(
                f"extract_layers must be increasing block indices; got {self.extract_layers}"
            )
        if self.reduce_dim % self.heads:
            raise InputError(f"reduce_dim {self.reduce_dim} is not divisible by {self.heads} heads")
        if self.refined and (self.patch_size % 4 or self.reduce_dim % 2):
            raise InputError(
                f"the refined head needs a patch size divisible by 4 and an even reduce_dim; "
                f"got patch {self.patch_size}, reduce_dim {self.reduce_dim}"
            )


@dataclass
class CLIPSegConfig:
    """Decoder plus how images are fed: squash bilinear to ``image_size``, ImageNet stats.

    ``threshold`` is applied to the sigmoid of the logits (paper: 0.3).
    """

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_size: int = 352
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    threshold: float = 0.3

    def __post_init__(self) -> None:
        if self.image_size % self.decoder.patch_size:
            raise InputError(
                f"image_size {self.image_size} is not a multiple of the patch size "
                f"{self.decoder.patch_size}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must be in (0, 1); got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CLIPSegConfig:
        decoder = dict(data.get("decoder", {}))
        known = {f.name for f in dataclasses.fields(DecoderConfig)}
        unknown = set(decoder) - known
        if unknown:
            raise InputError(f"unknown decoder settings: {sorted(unknown)}")
        top = {k: v for k, v in data.items() if k != "decoder"}
        for key in ("mean", "std"):
            if key in top:
                top[key] = tuple(top[key])
        return cls(decoder=DecoderConfig(**decoder), **top)


def resolve_layers(layers: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A preset name (``"paper"``, ``"hf_compat"``) or explicit indices -> block indices."""
    if isinstance(layers, str):
        if layers not in LAYER_PRESETS:
            raise InputError(
                f"unknown extract-layer preset {layers!r}; choose {sorted(LAYER_PRESETS)} "
                "or give block indices"
            )
        return LAYER_PRESETS[layers]
    return tuple(int(i) for i in layers)
