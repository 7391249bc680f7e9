"""The report's gallery: which predictions to show, and each drawn over its image.

The prediction and the ground truth are overlaid in two colours on a thumbnail of the image:
the ground truth outlined in blue (lightly tinted), the prediction tinted and outlined in
orange.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from refseg.eval.predictions import prediction_mask, prediction_size
from refseg.eval.run_data import ExpressionResult
from refseg.masks import resize_masks
from refseg.visualize import overlay_mask

GROUND_TRUTH_COLOR = (30, 120, 255)
PREDICTION_COLOR = (255, 110, 0)
# The ground truth is mostly outline, so the referent's own colours (often what the expression
# names) stay visible; the prediction is tinted.
GROUND_TRUTH_OPACITY = 0.15
PREDICTION_OPACITY = 0.45
THUMBNAIL_SIDE = 320  # longest side of a gallery picture, in pixels
MAX_UPSCALE = 4.0
SECTIONS = ("worst", "best", "random")


def select(results: Sequence[ExpressionResult], n: int, seed: int = 0
           ) -> dict[str, list[ExpressionResult]]:
    """The ``n`` lowest-IoU, ``n`` highest-IoU and ``n`` random others (each shown once;
    ties broken by sent_id, the random draw seeded, so a report is reproducible)."""
    scored = [r for r in results if r.iou is not None]
    worst = sorted(scored, key=lambda r: (r.iou, r.sent_id))[:n]
    shown = {r.sent_id for r in worst}
    best = [r for r in sorted(scored, key=lambda r: (-r.iou, r.sent_id))
            if r.sent_id not in shown][:n]
    shown |= {r.sent_id for r in best}
    rest = [r for r in scored if r.sent_id not in shown]
    sample = random.Random(seed).sample(rest, min(n, len(rest)))
    return {"worst": worst, "best": best, "random": sample}


def thumbnail_size(height: int, width: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """``(height, width)`` scaled so the longest side is ``side`` (small images are enlarged
    at most :data:`MAX_UPSCALE` times, so a 64-pixel scene stays readable)."""
    scale = min(MAX_UPSCALE, side / max(height, width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay(image: Image.Image, target: np.ndarray | None, prediction: np.ndarray | None,
            side: int = THUMBNAIL_SIDE) -> Image.Image:
    """A thumbnail of ``image`` with the ground truth and the prediction (``bool [H, W]``
    at the image's size, or ``None``) tinted and outlined in their colours."""
    size = thumbnail_size(image.height, image.width, side)
    picture = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    layers = ((target, GROUND_TRUTH_COLOR, GROUND_TRUTH_OPACITY),
              (prediction, PREDICTION_COLOR, PREDICTION_OPACITY))
    for mask, color, opacity in layers:
        if mask is not None:
            picture = overlay_mask(picture, resize_masks(mask, size), color, opacity=opacity)
    return picture


def render(item: Any, result: ExpressionResult, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """The gallery picture of one expression (``item``: its
    :class:`~refseg.data.ExpressionItem`).

    Raises:
        DatasetError: the image file is missing.
        InputError: the predicted mask is corrupt.
    """
    image = item.image.load_image()
    size = (image.height, image.width)
    target = item.referent.mask
    prediction = prediction_mask(result.record) if prediction_size(result.record) == size else None
    return overlay(image, target if target.shape == size else None, prediction, side)


def jpeg_bytes(picture: Image.Image, quality: int = 88) -> bytes:
    """A picture as JPEG (photos embed at a fraction of PNG's size)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


__all__ = [
    "GROUND_TRUTH_COLOR",
    "PREDICTION_COLOR",
    "SECTIONS",
    "jpeg_bytes",
    "overlay",
    "render",
    "select",
    "thumbnail_size",
]
