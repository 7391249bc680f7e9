"""A loaded CLIPSeg: model, tokenizer and input pipeline, ready to make conditionals and maps.

The flow: :meth:`LoadedCLIPSeg.encode_query` runs the frozen CLIP on the query image once;
conditionals come from text (:meth:`text_conditionals`), from example images
(:meth:`visual_conditionals`) or a mix of both (:func:`mix_conditionals`);
:meth:`decode` turns one query and N conditionals into N logit maps, and
:meth:`probabilities` resizes them to the image (bilinear, ``align_corners=True``, as the
official scorer) and applies the sigmoid.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.clip.config import PreprocessConfig
from refseg.clip.loaded import LoadedClip
from refseg.clip.preprocess import normalize, resize_for_clip
from refseg.clip.tokenizer import ClipTokenizer
from refseg.clipseg.config import CLIPSegConfig
from refseg.clipseg.model import CLIPSeg
from refseg.clipseg.prompts import VisualPromptConfig, apply_template, engineer_visual_prompt
from refseg.errors import InputError


@dataclass
class QueryState:
    """The frozen CLIP's skip activations of one query image, reusable across prompts."""

    activations: list[torch.Tensor]  # [1, 1 + h*w, width] each
    grid: tuple[int, int]
    size: tuple[int, int]  # the original image's (height, width)


def mix_conditionals(
    text: torch.Tensor, visual: torch.Tensor, text_weight: float | torch.Tensor
) -> torch.Tensor:
    """``w * text + (1 - w) * visual`` (paper §3: conditionals are interpolated)."""
    if isinstance(text_weight, float) and not 0.0 <= text_weight <= 1.0:
        raise InputError(f"text weight must be in [0, 1]; got {text_weight}")
    return text_weight * text + (1 - text_weight) * visual


class LoadedCLIPSeg:
    """What :func:`refseg.clipseg.load_clipseg` returns."""

    def __init__(self, model: CLIPSeg, tokenizer: ClipTokenizer, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._clip = LoadedClip(model.clip, tokenizer, name)

    @property
    def config(self) -> CLIPSegConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self._clip.device

    @property
    def dtype(self) -> torch.dtype:
        return self._clip.dtype

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``int64 [B, context_length]`` token ids (CPU)."""
        return self.tokenizer(texts)

    def _pixel_config(self) -> PreprocessConfig:
        cfg = self.config
        return PreprocessConfig(image_size=cfg.image_size, mean=cfg.mean, std=cfg.std)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> ``float32 [3, S, S]``: squashed (bilinear), ImageNet-normalised."""
        size = self.config.image_size
        resized = resize_for_clip(image.convert("RGB"), size, "squash", resample="bilinear")
        return normalize(np.asarray(resized), self._pixel_config())

    def resize_mask(self, mask: np.ndarray) -> torch.Tensor:
        """``bool [H, W]`` -> ``bool [S, S]`` (nearest, as the official loaders resize masks)."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise InputError(f"a prompt mask must be 2-D [H, W]; got shape {mask.shape}")
        values = torch.from_numpy(mask.astype(np.float32))[None, None]
        size = self.config.image_size
        return F.interpolate(values, size=(size, size), mode="nearest")[0, 0] > 0.5

    @torch.no_grad()
    def text_conditionals(
        self, phrases: Sequence[str], template: str = "plain", rng: random.Random | None = None
    ) -> torch.Tensor:
        """``[N, E]`` CLIP text embeddings of the phrases (templated, see ``apply_template``)."""
        if isinstance(phrases, str):
            phrases = [phrases]
        if not phrases or any(not p.strip() for p in phrases):
            raise InputError("text prompts must be non-empty")
        texts = [apply_template(p, template, rng) for p in phrases]
        return self._clip.encode_texts(texts).float()

    @torch.no_grad()
    def visual_conditionals(
        self,
        images: Sequence[Image.Image],
        masks: Sequence[np.ndarray],
        prompt: VisualPromptConfig | None = None,
    ) -> torch.Tensor:
        """``[N, E]`` CLIP image embeddings of engineered example images (one-shot prompts)."""
        if len(images) != len(masks):
            raise InputError(f"{len(images)} prompt images but {len(masks)} prompt masks")
        size = self.config.image_size
        batch = []
        for image, mask in zip(images, masks, strict=True):
            if np.asarray(mask).shape != (image.height, image.width):
                raise InputError(
                    f"prompt mask {np.asarray(mask).shape} does not match its image "
                    f"({image.height}, {image.width})"
                )
            batch.append(
                engineer_visual_prompt(self.preprocess(image), self.resize_mask(mask), size, prompt)
            )
        pixels = self._clip.to_model(torch.stack(batch))
        return self.model.encode_image(pixels).float()

    @torch.no_grad()
    def encode_query(self, image: Image.Image) -> QueryState:
        """Run the frozen CLIP once on the query image."""
        pixels = self._clip.to_model(self.preprocess(image)[None])
        return QueryState(
            activations=self.model.activations(pixels),
            grid=self.model.visual.patch_grid(pixels),
            size=(image.height, image.width),
        )

    @torch.no_grad()
    def decode(self, state: QueryState, cond: torch.Tensor) -> torch.Tensor:
        """Logits ``float32 [N, S, S]`` at the model's resolution for N conditionals."""
        num = cond.shape[0]
        activations = [a.expand(num, -1, -1) for a in state.activations]
        cond = cond.to(self.device)
        return self.model.decode(activations, cond, state.grid)[:, 0].float()

    @torch.no_grad()
    def probabilities(self, state: QueryState, cond: torch.Tensor) -> torch.Tensor:
        """``float32 [N, H, W]`` probabilities at the original image size."""
        return torch.sigmoid(resize_logits(self.decode(state, cond), state.size)).cpu()


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, h, w]`` -> ``[N, H, W]``, bilinear with ``align_corners=True`` (official scorer)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
