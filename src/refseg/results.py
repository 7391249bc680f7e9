"""The answer to one expression: the chosen mask, its score, and every proposal ranked
(proposal systems) or the probability map (dense systems)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refseg.masks import encode_rle, mask_bbox, resize_masks
from refseg.proposals.base import MaskProposals
from refseg.visualize import heatmap_image, mask_image, overlay_heatmap, overlay_mask


@dataclass
class SegmentationResult:
    """Result of one expression on one image.

    Attributes:
        text: the expression as given.
        phrase: the target noun phrase used for the local text feature.
        mask: bool ``[H, W]`` at the original image size; all False when there were no
            proposals. Dense systems: ``probability > threshold``.
        score: the chosen proposal's score, ``None`` when there were no proposals. Dense
            systems: the map's highest probability.
        index: the chosen proposal's index in ``proposals``, or ``None``.
        ranking: proposal indices, best first.
        scores: score of every proposal, in proposal order (``float32 [N]``).
        proposals: the candidate masks (at the working resolution, see ``original_size``).
        original_size: ``(height, width)`` of the image as given.
        method: the method (proposal systems) or system name that produced it.
        probability: dense systems only: ``float32 [H, W]`` per-pixel probability at the
            original size (proposal fields are then empty); ``None`` otherwise.
        proposal_generator: the generator that made ``proposals`` (``"sam"``,
            ``"superpixel"``, ``"gt"``, ``"file"``; ``"given"`` for masks passed to
            ``set_image``); ``None`` for dense systems.
    """

    text: str
    phrase: str
    mask: np.ndarray
    score: float | None
    index: int | None
    ranking: np.ndarray
    scores: np.ndarray
    proposals: MaskProposals
    original_size: tuple[int, int]
    method: str = "global-local"
    probability: np.ndarray | None = None
    proposal_generator: str | None = None

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        """COCO ``(x, y, w, h)`` of the mask, or ``None`` if empty."""
        return mask_bbox(self.mask)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def proposal_mask(self, index: int) -> np.ndarray:
        """Proposal ``index`` as a bool mask at the original image size."""
        return resize_masks(self.proposals.masks[index], self.original_size)

    def top(self, n: int = 5) -> list[tuple[int, float]]:
        """The ``n`` best ``(proposal index, score)`` pairs."""
        return [(int(i), float(self.scores[i])) for i in self.ranking[:n]]

    def save_mask(self, path: str | os.PathLike) -> Path:
        """Write the mask as an 8-bit PNG (255 = object)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        mask_image(self.mask).save(path)
        return path

    def overlay(self, image: Image.Image) -> Image.Image:
        """``image`` (original size) with the mask drawn on it."""
        return overlay_mask(image, self.mask)

    def save_overlay(self, image: Image.Image, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.overlay(image).save(path)
        return path

    def heatmap(self, image: Image.Image | None = None) -> Image.Image:
        """The probability map in colour, blended onto ``image`` (original size) if given.

        Raises:
            ValueError: the result has no probability map (a proposal system's).
        """
        if self.probability is None:
            raise ValueError(f"{self.method} results have no probability map")
        if image is None:
            return heatmap_image(self.probability)
        return overlay_heatmap(image, self.probability)

    def save_heatmap(self, path: str | os.PathLike, image: Image.Image | None = None) -> Path:
        """Write :meth:`heatmap` as an image file (PNG by extension)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.heatmap(image).save(path)
        return path

    def to_dict(self, top: int = 5, rle: bool = False) -> dict[str, Any]:
        """JSON-ready summary: text, phrase, method, proposal generator, score, bbox, area,
        the ``top`` best proposals (``proposals``: index and score; the service adds their
        masks) and, with ``rle``, the mask as COCO RLE (``segmentation``)."""
        out: dict[str, Any] = {
            "text": self.text,
            "phrase": self.phrase,
            "method": self.method,
            "proposal_generator": self.proposal_generator,
            "score": self.score,
            "proposal": self.index,
            "bbox": list(self.bbox) if self.bbox else None,
            "area": self.area,
            "num_proposals": len(self.proposals),
            "proposals": [{"index": i, "score": s} for i, s in self.top(top)],
        }
        if self.probability is not None:
            out["dense"] = True
        if rle:
            out["segmentation"] = encode_rle(self.mask)
        return out
