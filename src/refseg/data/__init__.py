"""Datasets for referring segmentation, iterated image by image.

Every dataset is a sequence of :class:`ImageSample` (one image with all its referents and
their expressions) with ``len()``, indexing and a flat ``expressions()`` view.
:func:`open_dataset` picks the reader from a name.
"""

from __future__ import annotations

import os

from refseg.data.phrasecut import PhraseCutDataset, polygons_to_mask
from refseg.data.refer import (
    DEFAULT_SPLIT_BY,
    KNOWN_SPLITS,
    Expression,
    ExpressionItem,
    ImageDataset,
    ImageSample,
    ReferDataset,
    Referent,
)
from refseg.errors import InputError

__all__ = [
    "DEFAULT_SPLIT_BY",
    "KNOWN_SPLITS",
    "Expression",
    "ExpressionItem",
    "ImageDataset",
    "ImageSample",
    "PhraseCutDataset",
    "ReferDataset",
    "Referent",
    "open_dataset",
    "polygons_to_mask",
]


def open_dataset(
    root: str | os.PathLike,
    name: str,
    split: str,
    split_by: str | None = None,
    image_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """Open split ``split`` of dataset ``name`` under ``root``.

    ``name="phrasecut"`` reads the PhraseCut layout with ``root`` = the folder holding
    ``refer_<split>.json``; every other name is a folder ``root/<name>`` in the refer
    layout (refcoco, refcoco+, refcocog, shapesref, ...).
    """
    if name.lower() == "phrasecut":
        if split_by is not None:
            raise InputError("split_by does not apply to PhraseCut; leave it out")
        return PhraseCutDataset(root, split, image_dir=image_dir)
    return ReferDataset(root, name, split, split_by=split_by, image_dir=image_dir)
