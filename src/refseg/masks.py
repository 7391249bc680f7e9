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
    out = np.zeros((batch.shape[0], *size), dtype=bool)
    step = _chunk(batch.shape[-2:], size)
    for start in range(0, batch.shape[0], step):
        chunk = np.ascontiguousarray(batch[start : start + step], dtype=np.float32)
        resized = F.interpolate(
            torch.from_numpy(chunk)[:, None], size=size, mode="bilinear", align_corners=False
        )
        out[start : start + step] = (resized[:, 0] >= 0.5).numpy()
    return out[0] if single else out


# Masks converted to float per step of a resize: bounds the float32 copies (4 bytes a pixel,
# in and out) to ~32 MB however many proposals an image has. Results are identical.
RESIZE_CHUNK_PIXELS = 4_000_000


def _chunk(source: tuple[int, ...], target: tuple[int, ...]) -> int:
    pixels = max(int(source[0]) * int(source[1]), int(target[0]) * int(target[1]), 1)
    return max(1, RESIZE_CHUNK_PIXELS // pixels)


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


# Polygon vertices may lie this many image sides outside the image (COCO tools clip them);
# beyond that a coordinate is garbage, and pycocotools crashes (1e12) or hangs (-1e9) on it.
POLYGON_MARGIN = 1.0
# pycocotools walks every polygon edge at 5x resolution: bound the total edge length, in
# multiples of the image's height + width, so that a zig-zag cannot take unbounded time.
POLYGON_PERIMETER_LIMIT = 64


class MaskFormatError(ValueError):
    """A segmentation (RLE or polygons) that must not be decoded; the message says why."""


def rle_counts(counts: str | bytes) -> list[int]:
    """The run lengths in COCO's compressed RLE string (pycocotools' ``rleFrString``)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(data):
                raise MaskFormatError("RLE counts string ends inside a number")
            chunk = data[position] - 48
            if not 0 <= chunk < 64:
                raise MaskFormatError(f"RLE counts hold a byte outside '0'..'o': {data[position]}")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            position += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def check_rle(rle: Any) -> tuple[int, int]:
    """``(height, width)`` of a COCO RLE whose runs are non-negative and cover H x W exactly.

    pycocotools leaves pixels past short counts uninitialised and writes past the mask for
    long ones, so both are refused here, before decoding.

    Raises:
        MaskFormatError: malformed size or counts, or counts not summing to H x W.
    """
    size = rle.get("size") if isinstance(rle, dict) else None
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
        and all(s > 0 for s in size)
    ):
        raise MaskFormatError(f"RLE 'size' must be [height, width] of positive integers: {size!r}")
    height, width = int(size[0]), int(size[1])
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise MaskFormatError("uncompressed RLE counts must be integers")
        runs = [int(c) for c in counts]
    elif isinstance(counts, (str, bytes, bytearray)):
        try:
            runs = rle_counts(counts)
        except UnicodeEncodeError:
            raise MaskFormatError("RLE counts must be ASCII") from None
    else:
        raise MaskFormatError(f"RLE 'counts' must be a string or a list; got {type(counts)}")
    if any(run < 0 for run in runs):
        raise MaskFormatError("RLE counts hold a negative run length")
    total = sum(runs)
    if total != height * width:
        raise MaskFormatError(
            f"RLE counts cover {total} pixels, not its size {height} x {width} = {height * width}"
        )
    return height, width


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Boolean mask ``[H, W]`` from a COCO RLE (compressed ``str``/``bytes`` or raw list counts).

    Raises:
        MaskFormatError: see :func:`check_rle`.
    """
    height, width = check_rle(rle)
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        text = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
        rle = {"size": [height, width], "counts": text}
    return coco_mask.decode(rle).astype(bool)


def check_polygons(polygons: Any, height: int, width: int) -> None:
    """Refuse polygons pycocotools must not see: non-numeric, non-finite, too far outside the
    image (:data:`POLYGON_MARGIN`) or too long (:data:`POLYGON_PERIMETER_LIMIT`).

    Raises:
        MaskFormatError: the first problem found.
    """
    perimeter = 0.0
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            raise MaskFormatError("polygons must be lists of x, y pairs (>= 3 points)")
        if not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in polygon
        ):
            raise MaskFormatError("polygon coordinates must be numbers")
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            raise MaskFormatError("polygon coordinates must be finite")
        low = -POLYGON_MARGIN * np.array([width, height])
        high = (1 + POLYGON_MARGIN) * np.array([width, height])
        if (points < low).any() or (points > high).any():
            bad = points[((points < low) | (points > high)).any(axis=1)][0]
            raise MaskFormatError(
                f"polygon point ({bad[0]:.6g}, {bad[1]:.6g}) is far outside the "
                f"{width} x {height} image"
            )
        steps = np.abs(np.diff(np.vstack([points, points[:1]]), axis=0)).max(axis=1)
        perimeter += float(steps.sum())
    if perimeter > POLYGON_PERIMETER_LIMIT * (height + width):
        raise MaskFormatError(
            f"polygons are {perimeter:.0f} pixels long, more than "
            f"{POLYGON_PERIMETER_LIMIT} x (height + width) of the {width} x {height} image"
        )


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Boolean mask from any COCO ``segmentation`` field: polygons, RLE or uncompressed RLE.

    Polygons are drawn at ``height x width``; an RLE carries its own size.

    Raises:
        MaskFormatError: see :func:`check_polygons` and :func:`check_rle`.
    """
    if isinstance(segmentation, list):  # polygons
        if height <= 0 or width <= 0:
            raise MaskFormatError(f"cannot draw polygons on a {width} x {height} image")
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        check_polygons(segmentation, height, width)
        rles = coco_mask.frPyObjects(segmentation, height, width)
        return coco_mask.decode(coco_mask.merge(rles)).astype(bool)
    return decode_rle(segmentation)
