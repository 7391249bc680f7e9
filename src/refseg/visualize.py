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


# Heat-map colours from 0 (dark blue) through cyan, yellow to 1 (red), evenly spaced anchors:
# a perceptually ordered ramp that needs no plotting library.
HEATMAP_ANCHORS = np.array(
    [[48, 18, 59], [40, 120, 240], [30, 210, 180], [160, 250, 60], [250, 190, 40], [200, 30, 10]],
    dtype=np.float32,
)
HEATMAP_OPACITY = 0.6


def heatmap_colors(probability: np.ndarray) -> np.ndarray:
    """``float [H, W]`` values in [0, 1] -> ``uint8 [H, W, 3]`` colours of the ramp."""
    values = np.clip(np.nan_to_num(np.asarray(probability, dtype=np.float32)), 0.0, 1.0)
    position = values * (len(HEATMAP_ANCHORS) - 1)
    low = np.minimum(position.astype(np.int64), len(HEATMAP_ANCHORS) - 2)
    frac = (position - low)[..., None]
    colors = (1.0 - frac) * HEATMAP_ANCHORS[low] + frac * HEATMAP_ANCHORS[low + 1]
    return np.round(colors).astype(np.uint8)


def heatmap_image(probability: np.ndarray) -> Image.Image:
    """A probability map as an RGB picture (see :data:`HEATMAP_ANCHORS`)."""
    return Image.fromarray(heatmap_colors(probability), mode="RGB")


def overlay_heatmap(
    image: Image.Image, probability: np.ndarray, opacity: float = HEATMAP_OPACITY
) -> Image.Image:
    """``image`` blended with the heat map of ``probability`` (same size), weighted by it:
    confident pixels show the map's colour, unlikely ones mostly the photo."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if probability.shape != rgb.shape[:2]:
        raise ValueError(
            f"probability shape {probability.shape} does not match image size {rgb.shape[:2]}"
        )
    weight = opacity * np.clip(probability, 0.0, 1.0)[..., None] + (1.0 - opacity) * 0.25
    out = (1.0 - weight) * rgb + weight * heatmap_colors(probability).astype(np.float32)
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
