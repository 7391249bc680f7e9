"""Mask proposals read from a file in COCO results format (e.g. FreeSOLO or SAM outputs).

Accepted JSON layouts (``segmentation`` is a COCO RLE -- ``counts`` as str, bytes or a raw
list -- or a list of polygons):

* COCO results: ``[{"image_id": 1, "segmentation": {...}, "score": 0.9,
  "category_id": 1}, ...]``; entries may carry ``"file_name"`` instead of or besides
  ``image_id``;
* COCO dataset style: ``{"images": [{"id", "file_name", "height", "width"}, ...],
  "annotations": [...]}`` (``images`` lets a results list be found by file name);
* per-image mapping: ``{"000001.jpg": [entries], ...}`` keyed by file name or image id.

A missing ``score`` counts as 1.0. The image is chosen with ``image_key``: an ``int`` image
id, or a file name / path (only its base name is compared).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refseg.errors import InputError
from refseg.masks import MaskFormatError, decode_segmentation, resize_masks
from refseg.proposals.base import MaskProposals, register_proposals
from refseg.proposals.filtering import no_proposals, rank_and_cap

# A mask may be declared at most this many times the image's side (proposals computed on
# the full-size original of a downscaled image); more is refused before anything is decoded.
MAX_SIZE_RATIO = 4


@dataclass
class ImageRecord:
    """The annotations of one image in a :class:`CocoMaskIndex`.

    ``height``/``width`` are the size polygons are drawn at (``None``: use the image's).
    """

    image_id: int | None = None
    file_name: str | None = None
    height: int | None = None
    width: int | None = None
    annotations: list[dict[str, Any]] = field(default_factory=list)


class CocoMaskIndex:
    """COCO-style masks grouped per image and found by image id or file (base) name.

    Shared by file proposals and ground-truth proposals. Build it with :meth:`parse`.
    """

    def __init__(self, records: Sequence[ImageRecord], source: str) -> None:
        self.records = list(records)
        self.source = source
        self._by_id = {r.image_id: r for r in self.records if r.image_id is not None}
        self._by_name = {r.file_name: r for r in self.records if r.file_name is not None}

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def parse(cls, data: Any, source: str) -> CocoMaskIndex:
        """Index any accepted layout (see the module docstring).

        Raises:
            InputError: the data has none of the accepted layouts, or an entry is malformed.
        """
        if isinstance(data, Mapping) and "annotations" in data:
            return cls._parse_dataset(data, source)
        if isinstance(data, Mapping):
            records = []
            for key, entries in data.items():
                _check_list(entries, f"{source}: value of key {key!r}")
                image_id = int(key) if str(key).isdigit() else None
                name = None if image_id is not None else _basename(key)
                record = ImageRecord(image_id, name)
                for i, entry in enumerate(entries):
                    record.annotations.append(_check_entry(entry, f"{source}: [{key!r}][{i}]"))
                records.append(record)
            return cls(records, source)
        if isinstance(data, list):
            return cls(_group_results(data, source, {}), source)
        raise InputError(
            f"{source}: expected a COCO results list, a dict with 'annotations', or a dict "
            f"of per-image lists; got a JSON {type(data).__name__}"
        )

    @classmethod
    def _parse_dataset(cls, data: Mapping[str, Any], source: str) -> CocoMaskIndex:
        images = data.get("images", [])
        _check_list(images, f"{source}: 'images'")
        _check_list(data["annotations"], f"{source}: 'annotations'")
        known: dict[int, ImageRecord] = {}
        for i, image in enumerate(images):
            if not isinstance(image, Mapping) or not _is_int(image.get("id")):
                raise InputError(f"{source}: images[{i}] needs an integer 'id'")
            known[int(image["id"])] = ImageRecord(
                int(image["id"]),
                _basename(image["file_name"]) if image.get("file_name") else None,
                _optional_int(image.get("height")),
                _optional_int(image.get("width")),
            )
        return cls(_group_results(data["annotations"], source, known), source)

    def find(self, image_key: Any) -> ImageRecord | None:
        """The record for an image id (int) or file name/path (str); ``None`` if unknown."""
        if isinstance(image_key, (bool, np.bool_)):
            return None
        if _is_int(image_key):
            return self._by_id.get(int(image_key))
        if isinstance(image_key, (str, os.PathLike)):
            text = os.fspath(image_key)
            record = self._by_name.get(_basename(text))
            if record is None and text.strip().isdigit():
                record = self._by_id.get(int(text))
            return record
        return None

    def masks(self, record: ImageRecord, height: int, width: int) -> MaskProposals:
        """Decode ``record``'s annotations at ``height x width`` (resizing where needed).

        ``scores`` are filled (1.0 where missing); ``categories`` and ``ids`` when every
        annotation has ``category_id`` / ``id``.

        Raises:
            InputError: a segmentation cannot be decoded.
        """
        entries = record.annotations
        if not entries:
            return MaskProposals.empty(height, width)
        masks = np.zeros((len(entries), height, width), dtype=bool)
        for i, entry in enumerate(entries):
            masks[i] = self._decode(entry, record, height, width)
        scores = np.asarray([float(e.get("score", 1.0)) for e in entries], dtype=np.float32)
        categories = _all_ints(entries, "category_id")
        return MaskProposals(masks, scores, categories, _all_ints(entries, "id"))

    def _decode(
        self, entry: dict[str, Any], record: ImageRecord, height: int, width: int
    ) -> np.ndarray:
        segmentation = entry["segmentation"]
        if isinstance(segmentation, Mapping) and isinstance(segmentation["counts"], bytearray):
            segmentation = {**segmentation, "counts": bytes(segmentation["counts"])}
        draw_h, draw_w = record.height or height, record.width or width
        where = record.file_name or record.image_id
        declared = segmentation.get("size") if isinstance(segmentation, Mapping) else None
        declared_h, declared_w = (draw_h, draw_w) if declared is None else declared
        if declared_h > MAX_SIZE_RATIO * height or declared_w > MAX_SIZE_RATIO * width:
            what = "an RLE 'size'" if declared is not None else "its 'images' record"
            raise InputError(
                f"{self.source}: image {where!r} is {width} x {height} but {what} declares "
                f"{declared_w} x {declared_h} (more than {MAX_SIZE_RATIO}x a side); masks "
                "must be drawn at the image's size"
            )
        try:
            mask = decode_segmentation(segmentation, draw_h, draw_w)
        except MaskFormatError as exc:
            raise InputError(
                f"{self.source}: cannot decode a segmentation of image {where!r}: {exc}"
            ) from None
        except Exception as exc:  # pycocotools raises bare exceptions on bad counts
            raise InputError(
                f"{self.source}: cannot decode a segmentation of image {where!r} ({exc}); "
                "expected COCO RLE {'size': [h, w], 'counts': ...} or polygons [[x, y, ...]]"
            ) from None
        return resize_masks(mask, (height, width))


@dataclass(frozen=True)
class FileProposalConfig:
    """Filtering of proposals read from a file."""

    # Yu et al., CVPR 2023 (Sec. 4.1): FreeSOLO masks with score > 0.1, up to 100 per image.
    min_score: float | None = 0.1
    max_proposals: int | None = 100


@register_proposals("file")
class FileProposals:
    """Proposals looked up per image in a COCO-results JSON file (or already-parsed data).

    Example:
        >>> generator = FileProposals("freesolo_val.json")
        >>> proposals = generator(image, image_key=139)  # or image_key="000000000139.jpg"
    """

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        data: Any = None,
        config: FileProposalConfig | None = None,
        **overrides: Any,
    ) -> None:
        """Read ``path`` (or use ``data``, the same structure already loaded).

        ``overrides`` replace fields of ``config`` (``min_score``, ``max_proposals``).

        Raises:
            InputError: no source, missing/unreadable/malformed file.
        """
        self.config = replace(config or FileProposalConfig(), **overrides)
        if (path is None) == (data is None):
            raise InputError("file proposals need exactly one of a JSON path or parsed data")
        if path is not None:
            data, source = read_json(Path(path), "COCO-results proposal file"), str(path)
        else:
            source = "proposal data"
        self.index = CocoMaskIndex.parse(data, source)

    def __call__(self, image: Image.Image, *, image_key: Any = None) -> MaskProposals:
        """The file's masks for ``image_key`` at ``image``'s size, best score first.

        With ``image_key=None`` a file holding a single image is used as is. An unknown key
        gives zero proposals and a warning.

        Raises:
            InputError: ``image_key`` is None and the file holds several images; bad masks.
        """
        width, height = image.size
        if image_key is None:
            if len(self.index) != 1:
                raise InputError(
                    f"{self.index.source} holds masks for {len(self.index)} images; pass the "
                    "image id or file name (image_key) to choose one"
                )
            record = self.index.records[0]
        else:
            record = self.index.find(image_key)
        if record is None:
            return no_proposals(height, width, f"image {image_key!r} is not in {self.index.source}")
        proposals = self.index.masks(record, height, width)
        proposals = rank_and_cap(proposals, self.config.min_score, self.config.max_proposals)
        if len(proposals) == 0:
            return no_proposals(
                height,
                width,
                f"no mask of image {image_key!r} in {self.index.source} "
                f"scores above {self.config.min_score}",
            )
        return proposals


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``; ``what`` names the expected content in error messages.

    Raises:
        InputError: the file is missing or not valid JSON.
    """
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        with path.open("rb") as stream:
            return json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); expected {what}") from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply to be {what}") from None


def _group_results(entries: Any, source: str, known: dict[int, ImageRecord]) -> list[ImageRecord]:
    """Group annotation entries by image id (or file name when they have no id)."""
    _check_list(entries, source)
    by_name: dict[str, ImageRecord] = {}
    for i, entry in enumerate(entries):
        entry = _check_entry(entry, f"{source}: entry {i}")
        image_id, name = entry.get("image_id"), entry.get("file_name")
        if _is_int(image_id):
            record = known.setdefault(int(image_id), ImageRecord(int(image_id)))
            if record.file_name is None and name:
                record.file_name = _basename(name)
        elif isinstance(name, str) and name:
            record = by_name.setdefault(_basename(name), ImageRecord(None, _basename(name)))
        else:
            raise InputError(f"{source}: entry {i} needs an integer 'image_id' or a 'file_name'")
        record.annotations.append(entry)
    return [*known.values(), *by_name.values()]


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    """``entry`` if it is a dict with a well-formed ``segmentation`` and numeric score."""
    if not isinstance(entry, Mapping):
        raise InputError(f"{where}: expected an object, got {type(entry).__name__}")
    segmentation = entry.get("segmentation")
    if isinstance(segmentation, Mapping):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (
            isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) for s in size)
        ) or not isinstance(counts, (str, bytes, bytearray, list)):
            raise InputError(f"{where}: RLE segmentation needs 'size' [h, w] and 'counts'")
    elif isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise InputError(f"{where}: polygons must be lists of x, y pairs (>= 3 points)")
    else:
        raise InputError(f"{where}: missing 'segmentation' (COCO RLE or polygons)")
    score = entry.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise InputError(f"{where}: 'score' must be a number; got {score!r}")
    return dict(entry)


def _check_list(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a list, got {type(value).__name__}")


def _all_ints(entries: list[dict[str, Any]], key: str) -> np.ndarray | None:
    values = [entry.get(key) for entry in entries]
    return np.asarray(values, dtype=np.int64) if all(_is_int(v) for v in values) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _optional_int(value: Any) -> int | None:
    return int(value) if _is_int(value) and int(value) > 0 else None


def _basename(name: Any) -> str:
    return os.path.basename(str(name).replace("\\", "/"))
