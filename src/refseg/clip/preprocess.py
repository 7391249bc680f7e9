"""Image preprocessing on Pillow/numpy/torch: resize, crop, CLIP normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from refseg.clip.config import PreprocessConfig

RESIZE_MODES = ("center_crop", "squash")
RESAMPLE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resize_for_clip(
    image: Image.Image, size: int, mode: str = "center_crop", resample: str = "bicubic"
) -> Image.Image:
    """Resize an RGB image to ``size x size``.

    ``center_crop`` resizes the short side to ``size`` and crops the centre, as CLIP does;
    ``squash`` resizes straight to the square (the Global-Local reference code). ``resample``
    is bicubic (CLIP) or bilinear (CLIPSeg's loaders).
    """
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}; got {resample!r}")
    flt = RESAMPLE_FILTERS[resample]
    if mode == "squash":
        return image.resize((size, size), flt)
    if mode != "center_crop":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}; got {mode!r}")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), flt)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def normalize(array: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> normalised ``float32 [3, H, W]``."""
    pixels = torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    return (pixels - mean) / std


def preprocess(
    image: Image.Image, config: PreprocessConfig, mode: str | None = None
) -> torch.Tensor:
    """RGB image -> ``float32 [3, S, S]`` ready for the image tower (``S = config.image_size``)."""
    resized = resize_for_clip(image.convert("RGB"), config.image_size, mode or config.resize_mode)
    return normalize(np.asarray(resized), config)


def mean_color(config: PreprocessConfig) -> tuple[int, int, int]:
    """The normalisation mean as an 8-bit RGB colour: pixels that become 0 after normalising."""
    return tuple(int(round(c * 255)) for c in config.mean)  # type: ignore[return-value]
