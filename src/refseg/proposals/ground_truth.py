"""Ground-truth instance masks as proposals: the paper's upper-bound setting.

Yu et al. (CVPR 2023) also report results with COCO ground-truth masks in place of
FreeSOLO's, which isolates the referent-selection step; mc-acc and cc-oIoU (SPEC section 4)
need the ``categories`` these proposals carry. Every annotation of the image is returned
(crowd ones too, like ``COCO.getAnnIds(imgIds=...)``), in file order, with score 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refseg.errors import InputError
from refseg.masks import resize_masks
from refseg.proposals.base import MaskProposals, register_proposals
from refseg.proposals.filtering import no_proposals
from refseg.proposals.from_file import CocoMaskIndex, read_json


@register_proposals("gt")
class GroundTruthProposals:
    """Instance masks of a COCO ``instances.json`` (or dict), looked up by image id.

    Example:
        >>> generator = GroundTruthProposals("refcoco/instances.json")
        >>> proposals = generator(image, image_key=581857)  # categories and ids filled
    """

    name = "gt"

    def __init__(
        self,
        instances: Mapping[str, Any] | str | os.PathLike | None = None,
        *,
        include_crowd: bool = True,
    ) -> None:
        """Index ``instances`` (a path to ``instances.json`` or the loaded dict).

        Raises:
            InputError: missing, unreadable or malformed instances data.
        """
        self._prebuilt: dict[Any, MaskProposals] = {}
        self.index: CocoMaskIndex | None = None
        if instances is None:
            return
        source = "instances data"
        if not isinstance(instances, Mapping):
            path = Path(instances)
            source = str(path)
            instances = read_json(path, "COCO instances file")
        if not isinstance(instances.get("images"), list) or "annotations" not in instances:
            raise InputError(
                f"{source}: ground-truth proposals need COCO instances with 'images' and "
                "'annotations' lists"
            )
        data = dict(instances)
        if not include_crowd:
            data["annotations"] = [
                a
                for a in instances["annotations"]
                if not (isinstance(a, Mapping) and a.get("iscrowd"))
            ]
        self.index = CocoMaskIndex.parse(data, source)

    @classmethod
    def from_masks(cls, mapping: Mapping[Any, MaskProposals | np.ndarray]) -> GroundTruthProposals:
        """Ground truth given directly: ``{image_key: MaskProposals or bool [N, H, W]}``.

        Arrays get ``ids = 0..N-1`` and no categories. Meant for tests and small tools.
        """
        generator = cls()
        for key, value in mapping.items():
            if not isinstance(value, MaskProposals):
                value = np.asarray(value, dtype=bool)
                value = MaskProposals(value, ids=np.arange(len(value)))
            generator._prebuilt[key] = value
        return generator

    def __call__(self, image: Image.Image, *, image_key: Any = None) -> MaskProposals:
        """All ground-truth masks of ``image_key`` at ``image``'s size.

        Raises:
            InputError: ``image_key`` is None or not an image of the ground truth.
        """
        width, height = image.size
        if image_key is None:
            raise InputError(
                "ground-truth proposals need an image id (image_key), e.g. the COCO "
                "image_id of the referring expression; none was given"
            )
        found = self._prebuilt.get(image_key) if _hashable(image_key) else None
        if found is not None:
            proposals = MaskProposals(
                resize_masks(found.masks, (height, width)),
                np.ones(len(found), dtype=np.float32) if found.scores is None else found.scores,
                found.categories,
                found.ids,
            )
        else:
            record = None if self.index is None else self.index.find(image_key)
            if record is None:
                raise InputError(
                    f"image {image_key!r} has no ground truth here; gt proposals need the "
                    "image id (or file name) of an image in the instances file"
                )
            proposals = self.index.masks(record, height, width)
            proposals.scores = np.ones(len(proposals), dtype=np.float32)
        if len(proposals) == 0:
            return no_proposals(height, width, f"image {image_key!r} has no annotations")
        return proposals


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
