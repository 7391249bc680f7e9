"""Helpers shared by proposal generators: area filtering, IoU de-duplication, ranking.

Generators build candidate masks their own way; these functions decide which survive, so
every generator applies the same rules (and the same empty-result behaviour).
"""

from __future__ import annotations

import warnings

import numpy as np

from refseg.proposals.base import MaskProposals


def area_keep(areas: np.ndarray, image_area: float, min_frac: float, max_frac: float) -> np.ndarray:
    """``bool [N]``: which masks cover between ``min_frac`` and ``max_frac`` of the image.

    Args:
        areas: ``[N]`` pixel counts (any numeric dtype).
        image_area: pixels in the image the areas were measured on.
    """
    fractions = np.asarray(areas, dtype=np.float64) / max(float(image_area), 1.0)
    return (fractions >= min_frac) & (fractions <= max_frac)


def iou_matrix(members: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Pairwise IoU ``float32 [N, N]`` of masks given as unions of disjoint cells.

    Args:
        members: ``bool [N, A]``: mask ``n`` contains cell ``a``. Cells are pixels
            (a flattened mask, ``weights=None``) or disjoint regions such as superpixels,
            whose pixel counts are ``weights`` (``[A]``). Working on regions keeps this cheap.
    """
    values = np.asarray(members, dtype=np.float32)
    weighted = values if weights is None else values * np.asarray(weights, dtype=np.float32)
    inter = weighted @ values.T
    areas = np.diag(inter).copy()
    union = areas[:, None] + areas[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def greedy_dedupe(iou: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by mask non-maximum suppression, in ``order`` (best first).

    A mask is dropped when its IoU with an already kept one exceeds ``threshold``.

    Args:
        iou: ``float [N, N]`` pairwise IoU.
        order: ``int [N]`` candidate indices, most preferred first.
    """
    kept: list[int] = []
    for index in np.asarray(order, dtype=np.int64):
        if kept and float(iou[index, kept].max()) > threshold:
            continue
        kept.append(int(index))
    return np.asarray(kept, dtype=np.int64)


def rank_and_cap(
    proposals: MaskProposals, min_score: float | None, max_proposals: int | None
) -> MaskProposals:
    """Sort by score (descending, stable), drop scores ``<= min_score``, keep the first
    ``max_proposals``. Proposals without scores keep their order and are only capped."""
    if proposals.scores is None:
        order = np.arange(len(proposals))
    else:
        order = np.argsort(-proposals.scores, kind="stable")
        if min_score is not None:
            order = order[proposals.scores[order] > min_score]
    if max_proposals is not None:
        order = order[: max(int(max_proposals), 0)]
    return proposals.select(order)


def no_proposals(height: int, width: int, reason: str) -> MaskProposals:
    """The defined zero-proposal result: an empty batch plus a warning saying why."""
    warnings.warn(f"no mask proposals: {reason}", RuntimeWarning, stacklevel=3)
    return MaskProposals.empty(height, width)
