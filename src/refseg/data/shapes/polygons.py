"""A rendered ShapesRef mask as COCO polygons, the way RefCOCO stores non-crowd objects.

The refer API's ``getMask`` and the loaders built on it (LAVT, CRIS, the Global-Local
authors') read ``segmentation[0]`` as a polygon, rasterise every polygon of the list with
pycocotools and *sum* them, then keep pixels equal to 1. So the polygons written here are:

- one per 4-connected piece of the mask, traced through the midpoints between inside and
  outside pixel centres (``skimage.measure.find_contours`` at level 0.5), collinear points
  dropped, so each inside pixel's centre is 0.35 px or more inside it;
- holes (a visible mask around an occluder) are cut into the piece's polygon with a
  "keyhole": a bridge to the hole and back. pycocotools fills by crossing parity, so the
  doubled bridge cancels and the hole stays empty, and no two polygons overlap.

The dataset's ground truth is what these polygons rasterise to (:func:`polygons_mask`),
not the render, so every loader of the field sees the same masks.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import approximate_polygon, find_contours, points_in_poly

from refseg.masks import decode_segmentation

SIMPLIFY_TOLERANCE = 0.01


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _closed_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Contours ``[K, 2]`` in (x, y) pixel coordinates, without the repeated last point."""
    padded = np.pad(mask.astype(np.float32), 1)
    contours = []
    for contour in find_contours(padded, 0.5, fully_connected="low"):
        # drop (nearly) collinear points: vertices move by at most SIMPLIFY_TOLERANCE pixels
        # (row, col) -> (x, y); -1 undoes the padding, +0.5 moves to COCO's frame, in which
        # pixel (i, j) spans [j, j + 1] x [i, i + 1]
        points = approximate_polygon(contour, SIMPLIFY_TOLERANCE)[:, ::-1] - 0.5
        if len(points) > 1 and np.array_equal(points[0], points[-1]):
            points = points[:-1]
        if len(points) >= 3:
            contours.append(points)
    return contours


def _cut_hole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``outer`` with ``hole`` spliced in through a bridge between their closest vertices."""
    distances = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    hole_loop = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], hole_loop, outer[i:]])


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of a boolean mask ``[H, W]``."""
    outers: list[np.ndarray] = []
    holes: list[np.ndarray] = []
    for points in _closed_contours(mask):
        # find_contours winds around the mask's pieces one way and around holes the other.
        (outers if _signed_area(points) > 0 else holes).append(points)
    if holes and not outers:  # cannot happen for a padded mask; keep the data honest
        raise ValueError("mask contours have holes but no outline")
    areas = [abs(_signed_area(o)) for o in outers]
    for hole in holes:
        containing = [k for k, o in enumerate(outers) if points_in_poly(hole[:1], o)[0]]
        if not containing:
            raise ValueError("a hole of the mask lies in no outline")
        k = min(containing, key=lambda c: areas[c])  # the innermost outline around it
        outers[k] = _cut_hole(outers[k], hole)
    return [[round(float(v), 2) for v in outer.reshape(-1)] for outer in outers]


def polygons_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """What the polygons rasterise to with pycocotools (the union the refer API returns)."""
    return decode_segmentation(polygons, height, width)
