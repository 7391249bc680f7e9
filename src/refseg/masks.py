"""Binary masks: the one resize, IoU, bounding box and COCO RLE code in refseg.

Masks are numpy ``bool`` arrays ``[H, W]`` or batches ``[N, H, W]``. RLE dicts follow the
COCO results format with ``counts`` as a ``str`` (JSON-safe).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize boolean masks ``[N, H, W]`` (or ``[H, W]``) to ``size = (height, width)``.

    Bilinear on the 0/1 values, then threshold at 0.5: smooth edges, no one-pixel shifts.
    """
    single = masks.ndim == 2
    batch = masks[None] if single else masks
    if batch.shape[-2:] == tuple(size):
        return masks.astype(bool, copy=False)
    if batch.shape[0] == 0:
        out = np.zeros((0, *size), dtype=bool)
    else:
        values = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))[:, None]
        resized = F.interpolate(values, size=size, mode="bilinear", align_corners=False)
        out = (resized[:, 0] >= 0.5).numpy()
    return out[0] if single else out


def soft_resize(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of masks ``[N, H, W]`` (any dtype) to float weights ``[N, h, w]``.

    Used to bring proposals onto a feature grid (7x7 for RN50, the patch grid for ViT).
    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False)`` on float32 masks.
    When shrinking, each output cell reads only its two nearest source rows and columns, so
    only those are gathered and converted to float: a 2048x2048 mask costs a few rows instead
    of a 16 MB float copy.
    """
    height, width = masks.shape[-2:]
    out_h, out_w = size
    if out_h > height or out_w > width or masks.shape[0] == 0:
        values = masks.to(torch.float32)[:, None]
        return F.interpolate(values, size=size, mode="bilinear", align_corners=False)[:, 0]
    top, bottom, row_weight = _bilinear_taps(height, out_h, masks.device)
    left, right, col_weight = _bilinear_taps(width, out_w, masks.device)
    near = masks.index_select(1, top).to(torch.float32)
    far = masks.index_select(1, bottom).to(torch.float32)
    rows = near * (1 - row_weight)[:, None] + far * row_weight[:, None]
    return rows.index_select(2, left) * (1 - col_weight) + rows.index_select(2, right) * col_weight


def _bilinear_taps(
    source: int, target: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of ``align_corners=False`` bilinear sampling (torch's rule:
    ``src = (dst + 0.5) * source / target - 0.5``, clamped at 0)."""
    # torch rounds the scale to float32 and evaluates scale * (dst + 0.5) - 0.5 as one fused
    # multiply-add: exact in float64, rounded once to float32.
    scale = float(torch.tensor(source / target, dtype=torch.float32))
    exact = scale * (torch.arange(target, dtype=torch.float64) + 0.5) - 0.5
    position = exact.to(torch.float32).clamp(min=0)
    low = position.floor().to(torch.long).clamp(max=source - 1)
    high = (low + 1).clamp(max=source - 1)
    return low.to(device), high.to(device), (position - low).to(device)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """COCO ``(x, y, width, height)`` of the mask's pixels, or ``None`` for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def intersection_union(pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Pixel counts ``(|pred ∩ target|, |pred ∪ target|)`` of two same-shape boolean masks."""
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    pred, target = pred.astype(bool, copy=False), target.astype(bool, copy=False)
    return int(np.logical_and(pred, target).sum()), int(np.logical_or(pred, target).sum())


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union; two empty masks count as IoU 0 (nothing was found)."""
    inter, union = intersection_union(pred, target)
    return inter / union if union else 0.0


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a boolean mask ``[H, W]`` with ``counts`` as ``str``."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Boolean mask ``[H, W]`` from a COCO RLE (compressed ``str``/``bytes`` or raw list counts)."""
    height, width = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, str):
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
    return coco_mask.decode(rle).astype(bool)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Boolean mask from any COCO ``segmentation`` field: polygons, RLE or uncompressed RLE."""
    if isinstance(segmentation, list):  # polygons
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rles = coco_mask.frPyObjects(segmentation, height, width)
        return coco_mask.decode(coco_mask.merge(rles)).astype(bool)
    return decode_rle(segmentation)
