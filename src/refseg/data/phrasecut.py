"""VGPhraseCut (Wu et al., CVPR 2020) as the same image-by-image iterable as the refer datasets.

Layout (github ChenyunWu/PhraseCutDataset, ``data/VGPhraseCut_v0/``)::

    refer_<split>.json           list of tasks {task_id, image_id, phrase, ann_ids,
                                 instance_boxes, Polygons, phrase_structure}
    image_data_split.json        optional: [{image_id, width, height, split, ...}]
                                 (also published as image_data_split3000.json)
    images/<image_id>.jpg        Visual Genome images

Each task is one :class:`Referent` with one :class:`Expression`. ``Polygons`` holds, per
instance, a list of polygons of ``[x, y]`` points; the target is the union of all
instances. Tasks have string ids, so expressions get ``sent_id`` = the task's position
in ``refer_<split>.json`` (stable for a given file) and keep ``task_id`` on the referent.

A split name joined with ``_`` (``val_miniv``) is the union of its parts' files, as the
dataset's own loader reads it: ``refer_val.json`` lacks the 100 miniv images, so the whole
validation set is ``val_miniv``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from refseg.data.refer import (
    README_HINT,
    Expression,
    ImageDataset,
    ImageSample,
    Referent,
    load_json,
)
from refseg.errors import DatasetError

# Splits published with the dataset ("miniv": 100 validation images for debugging, not in
# refer_val.json; "val_miniv" is the whole validation set).
PHRASECUT_SPLITS: tuple[str, ...] = ("train", "val", "test", "miniv")
IMAGE_INFO_FILES: tuple[str, ...] = ("image_data_split.json", "image_data_split3000.json")


def polygons_to_mask(
    polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int
) -> np.ndarray:
    """Union of filled polygons (lists of ``[x, y]``) as ``bool [height, width]``.

    Rasterised as the PhraseCut evaluation does, so scores match its numbers: coordinates
    truncated to integers, outline and interior both filled, polygons of < 2 points skipped.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) < 2:
            continue
        points = [(int(x), int(y)) for x, y in polygon]
        draw.polygon(points, outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


class PhraseCutDataset(ImageDataset):
    """A VGPhraseCut split, iterated image by image.

    Args:
        root: the folder holding ``refer_<split>.json`` (``.../VGPhraseCut_v0``).
        split: ``train``, ``val``, ``test``, ``miniv`` (or any ``refer_<split>.json``), or
            parts joined with ``_`` such as ``val_miniv``: the union of their files.
        image_dir: where ``<image_id>.jpg`` live; default ``root/images``.

    Raises:
        DatasetError: the split file is missing or malformed, or an image's size is
            unknown (no image info entry and no image file).
    """

    name = "phrasecut"

    def __init__(
        self, root: str | os.PathLike, split: str, image_dir: str | os.PathLike | None = None
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.image_dir = Path(image_dir) if image_dir is not None else self.root / "images"
        if image_dir is not None and not self.image_dir.is_dir():
            raise DatasetError(f"image directory not found: {self.image_dir}")
        tasks: list[Any] = []
        for path in self._split_files():
            part = load_json(path)
            if not isinstance(part, list):
                raise DatasetError(f"{path} must hold a list of tasks; {README_HINT}")
            tasks += part
        self._image_info = self._load_image_info()
        self._index(tasks)

    def _split_files(self) -> list[Path]:
        """``refer_<split>.json``; for ``a_b`` without such a file, refer_a.json + refer_b.json."""
        path = self.root / f"refer_{self.split}.json"
        if path.is_file():
            return [path]
        parts = self.split.split("_")
        if len(parts) > 1 and all(parts):
            paths = [self.root / f"refer_{part}.json" for part in parts]
            if all(p.is_file() for p in paths):
                return paths
        present = sorted(
            p.name[len("refer_") : -len(".json")]
            for p in self.root.glob("refer_*.json")
            if not p.name.startswith("refer_input_")  # phrases without masks
        )
        if self.split in PHRASECUT_SPLITS or not present:
            raise DatasetError(f"missing dataset file: {path} ({README_HINT})")
        raise DatasetError(
            f"PhraseCut has no split {self.split!r} in {self.root}; "
            f"valid splits: {', '.join(present)}"
        )

    def _load_image_info(self) -> dict[int, dict[str, Any]]:
        for file_name in IMAGE_INFO_FILES:
            path = self.root / file_name
            if path.is_file():
                info = load_json(path)
                try:
                    return {int(item["image_id"]): item for item in info}
                except (KeyError, TypeError, ValueError):
                    raise DatasetError(f"{path} is not a list of image records") from None
        return {}

    def _index(self, tasks: list[Any]) -> None:
        self._tasks_by_image: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        names: set[str] = set()
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or "image_id" not in task or "Polygons" not in task:
                raise DatasetError(
                    f"PhraseCut split {self.split!r}: task {index} lacks image_id / Polygons; "
                    f"{README_HINT}"
                )
            name = _category_name(task)
            if name is not None:
                names.add(name)
            self._tasks_by_image.setdefault(int(task["image_id"]), []).append((index, task))
        self._order = list(self._tasks_by_image)
        self._category_ids = {name: i for i, name in enumerate(sorted(names))}
        self._num_expressions = len(tasks)

    @property
    def num_expressions(self) -> int:
        """Number of phrases (tasks) in the split."""
        return self._num_expressions

    @property
    def categories(self) -> dict[int, str]:
        """Category id -> name (ids are positions in the split's sorted category names)."""
        return {i: name for name, i in self._category_ids.items()}

    def _image_ids(self) -> Sequence[int]:
        return self._order

    def _image_size(self, image_id: int, path: Path) -> tuple[int, int]:
        info = self._image_info.get(image_id)
        if info is not None:
            return int(info["height"]), int(info["width"])
        if path.is_file():
            with Image.open(path) as image:  # reads the header only
                return image.height, image.width
        raise DatasetError(
            f"size of image {image_id} unknown: neither {IMAGE_INFO_FILES[0]} nor {path} "
            f"exists ({README_HINT})"
        )

    def _build(self, image_id: int) -> ImageSample:
        file_name = f"{image_id}.jpg"
        path = self.image_dir / file_name
        height, width = self._image_size(image_id, path)
        referents = [
            self._referent(index, task, height, width)
            for index, task in self._tasks_by_image[image_id]
        ]
        return ImageSample(image_id, file_name, path, height, width, referents)

    def _referent(self, index: int, task: dict[str, Any], height: int, width: int) -> Referent:
        polygons = [polygon for instance in task["Polygons"] for polygon in instance]
        name = _category_name(task)
        structure = task.get("phrase_structure") or {}
        kind = None if structure.get("type") is None else str(structure["type"])
        ann_ids = task.get("ann_ids") or [-1]

        def decode() -> np.ndarray:
            return polygons_to_mask(polygons, height, width)

        return Referent(
            ref_id=index,
            ann_id=int(ann_ids[0]),
            category_id=-1 if name is None else self._category_ids[name],
            sentences=[Expression(index, str(task.get("phrase", "")), kind)],
            mask_source=decode,
            category_name=name,
            task_id=None if task.get("task_id") is None else str(task["task_id"]),
        )


def _category_name(task: dict[str, Any]) -> str | None:
    structure = task.get("phrase_structure")
    name = structure.get("name") if isinstance(structure, dict) else None
    return str(name) if name else None

