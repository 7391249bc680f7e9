"""Weight-free mask proposals from superpixels and hierarchical merging.

The default generator when no learned one (FreeSOLO, SAM) is available: it runs offline on
one CPU core. In the spirit of selective search (Uijlings et al., IJCV 2013):

1. downscale the image to at most ``work_max_side`` pixels on its longest side;
2. over-segment it several times (Felzenszwalb at a few scales, SLIC);
3. for each over-segmentation, greedily merge the most similar adjacent pair of regions
   (mean CIELAB colour distance plus a size term, so small regions merge first) until one
   region is left; every region ever formed is a candidate;
4. drop tiny and huge candidates, score the rest by boundary contrast and compactness,
   suppress near-duplicates (IoU > 0.9) and keep the best ``max_proposals``;
5. upsample the kept masks to the image size.

All set arithmetic happens on region-membership vectors, never on full-size masks: the
intersection of all over-segmentations ("atoms") lets IoU be computed exactly and cheaply.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb, slic

from refseg.image_io import to_rgb
from refseg.masks import resize_masks
from refseg.proposals.base import MaskProposals, register_proposals
from refseg.proposals.filtering import area_keep, greedy_dedupe, iou_matrix, no_proposals


@dataclass(frozen=True)
class SuperpixelConfig:
    """Settings of :class:`SuperpixelProposals`. Defaults were tuned on synthetic scenes
    (flat shapes on noisy backgrounds) and COCO-like photos for speed: a 640x480 image
    takes about half a second on one core. None of them comes from a paper."""

    # Longest side (pixels) of the working copy; masks are upsampled afterwards.
    work_max_side: int = 320
    # Felzenszwalb-Huttenlocher over-segmentations: one per scale (larger = coarser).
    felzenszwalb_scales: tuple[float, ...] = (100.0, 400.0)
    # Gaussian pre-smoothing of Felzenszwalb (skimage's default), which tames pixel noise.
    felzenszwalb_sigma: float = 0.8
    # Smallest Felzenszwalb segment, as a fraction of the working image's pixels.
    min_segment_frac: float = 0.001
    # SLIC over-segmentations: one per target superpixel count.
    slic_segments: tuple[int, ...] = (200,)
    # SLIC colour/space trade-off (skimage's default for Lab images).
    slic_compactness: float = 10.0
    # Merging cost = colour distance / colour_scale + size_weight * (joint area / image area).
    colour_scale: float = 10.0
    size_weight: float = 1.0
    # Candidates outside [min_area_frac, max_area_frac] of the image are dropped.
    min_area_frac: float = 0.005
    max_area_frac: float = 0.9
    # Candidates whose CIELAB distance to their surroundings is below this are invisible
    # (about one just-noticeable difference, ~2.3) and dropped: a flat image gives none.
    min_contrast: float = 2.0
    # Two candidates with mask IoU above this are duplicates; the better-scored one stays.
    dedupe_iou: float = 0.9
    # Score = contrast_weight * contrast + (1 - contrast_weight) * compactness, in [0, 1].
    contrast_weight: float = 0.6
    # CIELAB distance to the surrounding regions at which the contrast term reaches 0.5.
    contrast_scale: float = 20.0
    max_proposals: int = 100

    def __post_init__(self) -> None:
        if self.work_max_side < 8:
            raise ValueError(f"work_max_side must be >= 8; got {self.work_max_side}")
        if not 0.0 <= self.min_area_frac <= self.max_area_frac <= 1.0:
            raise ValueError("need 0 <= min_area_frac <= max_area_frac <= 1")
        if not (self.felzenszwalb_scales or self.slic_segments):
            raise ValueError("at least one Felzenszwalb scale or SLIC segment count is needed")


@dataclass
class _RegionGraph:
    """Statistics of one over-segmentation with ``K`` regions.

    Attributes:
        labels: ``int64 [h, w]`` region index per pixel, ``0..K-1``.
        sizes: ``float64 [K]`` pixel counts.
        colours: ``float64 [K, 3]`` mean CIELAB colour.
        contacts: ``float64 [K, K]`` symmetric count of 4-neighbour pixel pairs between regions.
        border: ``float64 [K]`` pixel edges on the image border (counted as perimeter).
    """

    labels: np.ndarray
    sizes: np.ndarray
    colours: np.ndarray
    contacts: np.ndarray
    border: np.ndarray

    @classmethod
    def build(cls, labels: np.ndarray, lab: np.ndarray) -> _RegionGraph:
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.reshape(lab.shape[:2]).astype(np.int64)
        k = int(labels.max()) + 1
        flat = labels.ravel()
        sizes = np.bincount(flat, minlength=k).astype(np.float64)
        sums = np.stack(
            [np.bincount(flat, weights=lab[..., c].ravel(), minlength=k) for c in range(3)], 1
        )
        pairs = []
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            differ = a != b
            pairs.append(a[differ] * k + b[differ])
        codes = np.concatenate(pairs)
        contacts = np.bincount(codes, minlength=k * k).reshape(k, k).astype(np.float64)
        contacts = contacts + contacts.T
        border = sum(
            np.bincount(edge, minlength=k)
            for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1])
        ).astype(np.float64)
        return cls(labels, sizes, sums / sizes[:, None], contacts, border)

    def merge_hierarchy(self, colour_scale: float, size_weight: float) -> np.ndarray:
        """Greedy agglomeration; returns every region ever formed as ``bool [C, K]`` members.

        Cost of merging adjacent regions i, j: ``|c_i - c_j| / colour_scale + size_weight *
        (s_i + s_j) / image area`` -- similar colours first, small regions before large ones.
        """
        k = len(self.sizes)
        total = float(self.sizes.sum())
        members = np.zeros((2 * k - 1, k), dtype=bool)
        members[np.arange(k), np.arange(k)] = True
        sizes = list(self.sizes)
        sums = list(self.colours * self.sizes[:, None])
        neighbours = [set(np.flatnonzero(row).tolist()) for row in self.contacts > 0]
        alive = [True] * k

        def cost(i: int, j: int) -> float:
            mean_i, mean_j = sums[i] / sizes[i], sums[j] / sizes[j]
            colour = float(np.sqrt(((mean_i - mean_j) ** 2).sum()))
            return colour / colour_scale + size_weight * (sizes[i] + sizes[j]) / total

        heap = [(cost(i, j), i, j) for i in range(k) for j in neighbours[i] if i < j]
        heapq.heapify(heap)
        count = k
        while heap:
            _, i, j = heapq.heappop(heap)
            if not (alive[i] and alive[j]):
                continue
            new = count
            count += 1
            alive[i] = alive[j] = False
            alive.append(True)
            members[new] = members[i] | members[j]
            sizes.append(sizes[i] + sizes[j])
            sums.append(sums[i] + sums[j])
            around = (neighbours[i] | neighbours[j]) - {i, j}
            neighbours.append(around)
            for n in around:
                neighbours[n].discard(i)
                neighbours[n].discard(j)
                neighbours[n].add(new)
                heapq.heappush(heap, (cost(n, new), n, new))
        return members[:count]

    def describe(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boundary contrast and compactness, each ``float64 [C]``, of regions ``bool [C, K]``.

        Contrast is the CIELAB distance between the region's mean colour and the mean colour
        just outside its boundary (neighbours weighted by shared boundary length; 0 for a
        region without neighbours). Compactness, in [0, 1], is the square root of the
        isoperimetric quotient ``4 pi area / perimeter^2`` (pixel-edge perimeter, image border
        included), clipped to 1.
        """
        inside = members.astype(np.float64)
        area = inside @ self.sizes
        colour = (inside @ (self.colours * self.sizes[:, None])) / np.maximum(area, 1)[:, None]
        touching = (inside @ self.contacts) * (1.0 - inside)  # boundary pairs per outside region
        boundary = touching.sum(1)
        ring_weight = np.maximum(boundary, 1e-9)[:, None]
        ring = (touching @ self.colours) / ring_weight
        distance = np.sqrt(((colour - ring) ** 2).sum(1))
        contrast = np.where(boundary > 0, distance, 0.0)
        perimeter = boundary + inside @ self.border
        quotient = 4.0 * np.pi * area / np.maximum(perimeter, 1.0) ** 2
        return contrast, np.sqrt(np.minimum(quotient, 1.0))


@register_proposals("superpixel")
class SuperpixelProposals:
    """Class-agnostic proposals from multi-scale superpixels merged into object-like regions.

    Example:
        >>> generator = SuperpixelProposals(max_proposals=50)
        >>> proposals = generator(image)  # MaskProposals, masks bool [N, H, W], scores [N]
    """

    name = "superpixel"

    def __init__(self, config: SuperpixelConfig | None = None, **overrides: Any) -> None:
        """``overrides`` replace fields of ``config`` (e.g. ``max_proposals=20``)."""
        self.config = replace(config or SuperpixelConfig(), **overrides)

    def __call__(self, image: Image.Image, *, image_key: Any = None) -> MaskProposals:
        """Proposals for ``image`` (any PIL mode); ``image_key`` is ignored."""
        cfg = self.config
        image = to_rgb(image)
        width, height = image.size
        work = _downscale(image, cfg.work_max_side)
        if min(work.size) < 4:
            return no_proposals(
                height, width, f"a {width}x{height} image is too small or thin to segment"
            )
        rgb = np.asarray(work)
        lab = rgb2lab(rgb)
        graphs = [_RegionGraph.build(labels, lab) for labels in _oversegment(rgb, cfg)]

        members, scores = [], []
        for graph in graphs:
            candidates = graph.merge_hierarchy(cfg.colour_scale, cfg.size_weight)
            areas = candidates @ graph.sizes
            keep = area_keep(areas, graph.sizes.sum(), cfg.min_area_frac, cfg.max_area_frac)
            candidates = candidates[keep]
            contrast, compactness = graph.describe(candidates)
            visible = contrast >= cfg.min_contrast
            contrast = contrast[visible] / (contrast[visible] + cfg.contrast_scale)
            members.append(candidates[visible])
            scores.append(
                cfg.contrast_weight * contrast + (1 - cfg.contrast_weight) * compactness[visible]
            )
        scores_all = np.concatenate(scores)
        if scores_all.size == 0:
            return no_proposals(height, width, "no region of usable size and contrast was found")

        atoms, atom_sizes, atom_members = _atoms(graphs, members)
        order = np.argsort(-scores_all, kind="stable")
        kept = greedy_dedupe(iou_matrix(atom_members, atom_sizes), order, cfg.dedupe_iou)
        kept = kept[: cfg.max_proposals]
        small = atom_members[kept][:, atoms]  # bool [N, h, w]
        masks = resize_masks(small, (height, width))
        nonempty = masks.reshape(len(masks), -1).any(1)
        if not nonempty.any():
            return no_proposals(height, width, "every region vanished when upsampled")
        scores_kept = np.clip(scores_all[kept], 0.0, 1.0).astype(np.float32)
        if nonempty.all():  # no copy of the full-size masks (the common case)
            return MaskProposals(masks, scores_kept)
        return MaskProposals(masks[nonempty], scores_kept[nonempty])


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` with its longest side at most ``max_side`` (antialiased), never enlarged."""
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _oversegment(rgb: np.ndarray, cfg: SuperpixelConfig) -> list[np.ndarray]:
    """Label maps ``int [h, w]`` of every configured over-segmentation of ``uint8 [h, w, 3]``."""
    pixels = rgb.shape[0] * rgb.shape[1]
    min_size = max(1, round(cfg.min_segment_frac * pixels))
    maps = [
        felzenszwalb(rgb, scale=scale, sigma=cfg.felzenszwalb_sigma, min_size=min_size)
        for scale in cfg.felzenszwalb_scales
    ]
    for segments in cfg.slic_segments:
        n = max(1, min(int(segments), pixels // 16))
        maps.append(slic(rgb, n_segments=n, compactness=cfg.slic_compactness, start_label=0))
    return maps


def _atoms(
    graphs: list[_RegionGraph], members: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The common refinement of all over-segmentations and every candidate on it.

    Returns:
        atoms: ``int64 [h, w]`` atom index per pixel.
        sizes: ``float64 [A]`` atom pixel counts.
        atom_members: ``bool [C, A]`` candidates (all graphs, in order) as unions of atoms.
    """
    code = np.zeros(graphs[0].labels.size, dtype=np.int64)
    for graph in graphs:  # code the label tuple, renumbering each step to stay below P * K
        code = np.unique(code * len(graph.sizes) + graph.labels.ravel(), return_inverse=True)[1]
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    atoms = inverse.reshape(graphs[0].labels.shape)
    sizes = np.bincount(inverse.ravel(), minlength=len(first)).astype(np.float64)
    atom_members = np.concatenate(
        [
            member[:, graph.labels.ravel()[first]]
            for graph, member in zip(graphs, members, strict=True)
        ],
        0,
    )
    return atoms, sizes, atom_members
