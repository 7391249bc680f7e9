"""Pictures of results: a mask overlaid in colour on its image, with an outline."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

# Overlay colour (RGB) and opacity: a saturated orange reads on most photos.
OVERLAY_COLOR = (255, 80, 0)
OVERLAY_OPACITY = 0.5


def overlay_mask(
    image: Image.Image,
    mask: np.ndarray,
    color: tuple[int, int, int] = OVERLAY_COLOR,
    opacity: float = OVERLAY_OPACITY,
) -> Image.Image:
    """The image with ``mask`` (bool ``[H, W]``, same size) tinted and outlined in ``color``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image size {rgb.shape[:2]}")
    out = rgb.copy()
    tint = np.array(color, dtype=np.float32)
    out[mask] = (1.0 - opacity) * rgb[mask] + opacity * tint
    thickness = max(1, round(min(mask.shape) / 200))
    edge = mask & ~ndimage.binary_erosion(mask, iterations=thickness)
    out[edge] = tint
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool mask as an 8-bit PNG-ready image (255 inside, 0 outside)."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
