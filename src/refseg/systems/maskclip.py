"""``maskclip``: training-free dense grounding, the patch-sentence cosine of MaskCLIP.

MaskCLIP (Zhou et al., ECCV 2022) reads a per-patch embedding in CLIP's joint space off the
last block (ViT: every token attends only to itself, then ``ln_post`` and ``proj``; ResNet:
each position through the attention pool's value and output projections); see
``dense_embeddings`` in :mod:`refseg.clip.model`. The cosine of each patch with the
sentence (end-of-text) embedding is the grounding map. It is RISCLIP's untrained baseline
("grounding only", SPEC section 3) and the simplest dense system.

The cosines of one image span a narrow, image-dependent range, so the map is min-max
normalised per expression: the best patch gets probability 1, the worst 0, and ``mask =
probability > threshold``. :meth:`MaskClipSystem.predict` returns the logit of that
probability (clamped to ``[EPS, 1 - EPS]``) on the patch grid; :class:`DenseSystem` resizes
it bilinearly to the image. The default threshold was chosen on ShapesRef val (README,
"MaskCLIP").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.clip import LoadedClip, load_clip
from refseg.clip.preprocess import normalize, resize_for_clip
from refseg.errors import InputError
from refseg.image_io import DEFAULT_MAX_PIXELS
from refseg.systems.base import DenseSystem

# Chosen on ShapesRef val with shapes-vit (see the README's MaskCLIP section).
DEFAULT_THRESHOLD = 0.7
# Probabilities are clamped to [EPS, 1 - EPS] before the logit, so the map stays finite.
EPS = 1e-4


@dataclass
class MaskClipConfig:
    """Settings of the MaskCLIP system.

    Attributes:
        threshold: probability (min-max normalised cosine) above which a pixel is in the mask.
        input_size: side of the square the image is squashed to for CLIP; ``None`` uses
            the CLIP's own input size. Larger gives a finer patch grid (positional
            embeddings are interpolated).
    """

    threshold: float = DEFAULT_THRESHOLD
    input_size: int | None = None

    def __post_init__(self) -> None:
        if self.input_size is not None and not 16 <= int(self.input_size) <= 4096:
            raise InputError(f"input_size must be in 16..4096 pixels; got {self.input_size}")


class MaskClipSystem(DenseSystem):
    """Dense grounding by the cosine of MaskCLIP patch embeddings with the sentence."""

    name: ClassVar[str] = "maskclip"

    def __init__(
        self,
        clip: LoadedClip,
        config: MaskClipConfig | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.config = config or MaskClipConfig()
        super().__init__(threshold=self.config.threshold, max_pixels=max_pixels)
        self.clip = clip
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def input_size(self) -> int:
        return int(self.config.input_size or self.clip.config.preprocess.image_size)

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """Unit patch embeddings ``float32 [h, w, D]`` of the squashed image."""
        squashed = resize_for_clip(image, self.input_size, mode="squash")
        pixels = normalize(np.asarray(squashed), self.clip.config.preprocess)[None]
        dense = self.clip.model.visual.dense_embeddings(self.clip.to_model(pixels))[0]
        return F.normalize(dense.float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit sentence embeddings ``float32 [T, D]`` (cached per sentence)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            features = F.normalize(self.clip.encode_texts(missing).float(), dim=-1)
            self._text_cache.update(zip(missing, features, strict=True))
        return torch.stack([self._text_cache[t] for t in texts])

    def predict(
        self, image_state: torch.Tensor, texts: Sequence[str], **options: Any
    ) -> torch.Tensor:
        cosine = torch.einsum("hwd,td->thw", image_state, self.encode_texts(texts))
        return minmax_logits(cosine)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "clip": self.clip.name,
            **{k: v for k, v in asdict(self.config).items() if k != "threshold"},
            "device": str(self.clip.device),
        }


def minmax_logits(maps: torch.Tensor) -> torch.Tensor:
    """Each map ``[T, h, w]`` scaled to [0, 1] by its own min and max, as logits.

    A constant map (no contrast at all) becomes probability 0.5 everywhere.
    """
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    probability = torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), 0.5)
    return torch.logit(probability.clamp(EPS, 1.0 - EPS))


def build_system(
    clip: str | os.PathLike | LoadedClip = "ViT-B/16",
    *,
    threshold: float | None = None,
    input_size: int | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> MaskClipSystem:
    """``refseg.load("maskclip", clip=..., threshold=..., input_size=...)``."""
    loaded = clip if isinstance(clip, LoadedClip) else load_clip(clip, device=device, dtype=dtype)
    config = MaskClipConfig(
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold, input_size=input_size
    )
    return MaskClipSystem(loaded, config, max_pixels=max_pixels)
