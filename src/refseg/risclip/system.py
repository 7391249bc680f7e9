"""``risclip`` as a dense refseg system (contract B): ``refseg.load("risclip", ...)``.

The image is squashed to the model's input size once per image (the cached image state);
each query runs the whole network, since CFE makes the image features depend on the text.
The default threshold is the checkpoint's: the probability of best val mIoU, chosen when it
was trained (``RisclipTask.save_artifact``); 0.5 for checkpoints saved without a val split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from refseg.clip import LoadedClip, load_clip
from refseg.image_io import DEFAULT_MAX_PIXELS
from refseg.risclip.data import image_pixels
from refseg.risclip.io import load_risclip, resolve
from refseg.risclip.model import Risclip
from refseg.systems.base import DenseSystem

QUERY_BATCH = 16  # expressions per forward pass


class RisclipSystem(DenseSystem):
    """A trained RISCLIP checkpoint behind the one System API."""

    name: ClassVar[str] = "risclip"

    def __init__(
        self,
        model: Risclip,
        clip: LoadedClip,
        source: str,
        *,
        threshold: float | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(
            threshold=model.config.threshold if threshold is None else threshold,
            max_pixels=max_pixels,
        )
        self.model, self.clip, self.source = model, clip, source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """``float32 [1, 3, S, S]`` on the model's device."""
        pixels = image_pixels(image, self.model.config.image_size, self.clip.config.preprocess)
        return pixels[None].to(self.device)

    def predict(
        self, image_state: torch.Tensor, texts: Sequence[str], **options: Any
    ) -> torch.Tensor:
        tokens = self.clip.tokenize(list(texts)).to(self.device)
        maps = []
        for start in range(0, len(texts), QUERY_BATCH):
            chunk = tokens[start : start + QUERY_BATCH]
            pixels = image_state.expand(chunk.shape[0], -1, -1, -1)
            maps.append(self.model(pixels, chunk).mask_logits.float())
        return torch.cat(maps)

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            **super().describe(),
            "checkpoint": self.source,
            "clip": config.clip,
            "image_size": config.image_size,
            "use_adapters": config.use_adapters,
            "use_cfe": config.use_cfe,
            "use_ske": config.use_ske,
            "use_decoder": config.use_decoder,
            "device": str(self.device),
        }


def build_system(
    checkpoint: str | os.PathLike = "risclip-shapes",
    *,
    clip: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> RisclipSystem:
    """``refseg.load("risclip", checkpoint=..., threshold=...)``; default: the packaged model.

    ``clip`` overrides where the checkpoint's frozen CLIP is loaded from (its name is in the
    checkpoint's config; e.g. a local copy of ``ViT-B/16``).
    """
    resolve(checkpoint)  # a missing checkpoint is a user error before anything loads
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = None if clip is None else load_clip(clip, device="cpu")
    model, loaded = load_risclip(checkpoint, device=device, clip=loaded)
    return RisclipSystem(model, loaded, str(checkpoint), threshold=threshold, max_pixels=max_pixels)
