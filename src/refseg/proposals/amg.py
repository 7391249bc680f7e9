"""Pure tensor helpers for automatic mask generation (AMG): point grids, stability
scores, mask boxes, box NMS and small-region clean-up.

Nothing here knows about a model; :mod:`refseg.proposals.sam` drives them. The ideas
follow segment-anything's ``utils/amg.py`` (Kirillov et al., 2023); the code is our own.
Boxes are ``[x0, y0, x1, y1]`` in pixels with *exclusive* ends, so a one-pixel mask has
box area 1 (segment-anything uses inclusive ends, giving such a mask area 0).
"""

from __future__ import annotations

import numpy as np
import torch


def point_grid(points_per_side: int) -> torch.Tensor:
    """Centres of a ``points_per_side`` x ``points_per_side`` grid of equal cells in [0, 1]².

    Point ``k`` is ``((k % n + 0.5) / n, (k // n + 0.5) / n)`` with ``n = points_per_side``:
    x varies fastest, rows go top to bottom.

    Returns:
        ``float32 [n*n, 2]`` as ``(x, y)``, normalised by the image width and height.
    """
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1; got {points_per_side}")
    centres = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) / points_per_side
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """How little a mask changes when its binarisation threshold moves by ``±offset``.

    The score is ``|logits > t + offset| / |logits > t - offset|`` (IoU of the two nested
    masks) with ``t = mask_threshold``; a mask with nothing above ``t - offset`` scores 0.

    Args:
        logits: ``float [N, H, W]`` mask logits.

    Returns:
        ``float32 [N]`` in [0, 1].
    """
    inner = (logits > mask_threshold + offset).flatten(1).sum(dim=1, dtype=torch.int64)
    outer = (logits > mask_threshold - offset).flatten(1).sum(dim=1, dtype=torch.int64)
    score = inner.to(torch.float32) / outer.clamp(min=1).to(torch.float32)
    return torch.where(outer > 0, score, torch.zeros_like(score))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of boolean masks.

    Args:
        masks: ``bool [N, H, W]``.

    Returns:
        ``float32 [N, 4]`` as ``[x0, y0, x1, y1]`` with exclusive ends; all zeros for an
        empty mask.
    """
    n, height, width = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    rows = masks.any(dim=2).to(torch.uint8)  # [N, H]
    cols = masks.any(dim=1).to(torch.uint8)  # [N, W]
    y0 = rows.argmax(dim=1)  # first True (argmax returns the first maximum)
    y1 = height - rows.flip(1).argmax(dim=1)
    x0 = cols.argmax(dim=1)
    x1 = width - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    empty = rows.sum(dim=1) == 0
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``float [N, 4]`` and ``float [M, 4]`` boxes -> ``float32 [N, M]``.

    Pairs whose union has zero area get IoU 0.
    """
    a = boxes_a.to(torch.float32)
    b = boxes_b.to(torch.float32)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    sides = (bottom_right - top_left).clamp(min=0)
    inter = sides[..., 0] * sides[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression on boxes.

    Visits boxes from the highest score down and drops every box whose IoU with an already
    kept box is greater than ``iou_threshold``. Ties in score keep the earlier index.

    Args:
        boxes: ``float [N, 4]`` as ``[x0, y0, x1, y1]``.
        scores: ``float [N]``.

    Returns:
        ``int64 [K]`` indices of the kept boxes, highest score first.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = box_iou(boxes[order], boxes[order]) > iou_threshold  # [N, N] in score order
    suppressed = torch.zeros(order.shape[0], dtype=torch.bool, device=boxes.device)
    kept = []
    for rank in range(order.shape[0]):
        if suppressed[rank]:
            continue
        kept.append(rank)
        suppressed |= overlaps[rank]
    return order[torch.tensor(kept, dtype=torch.int64, device=boxes.device)]


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Fill holes and drop islands smaller than ``min_area`` pixels (8-connectivity).

    If every island is smaller than ``min_area`` the largest one is kept, so a non-empty
    mask never becomes empty.

    Args:
        mask: ``bool [H, W]``.

    Returns:
        ``bool [H, W]``, a new array.
    """
    from skimage.measure import label

    mask = np.asarray(mask, dtype=bool)
    if min_area <= 0 or not mask.any():
        return mask.copy()
    holes = label(~mask, connectivity=2)
    hole_sizes = np.bincount(holes.ravel())
    small_holes = np.flatnonzero(hole_sizes < min_area)
    filled = mask | np.isin(holes, small_holes[small_holes > 0])
    islands = label(filled, connectivity=2)
    island_sizes = np.bincount(islands.ravel())
    island_sizes[0] = 0
    big = np.flatnonzero(island_sizes >= min_area)
    if big.size == 0:
        big = np.array([int(island_sizes.argmax())])
    return np.isin(islands, big)
