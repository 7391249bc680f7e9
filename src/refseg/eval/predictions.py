"""Prediction files: one JSON list, one record per expression; reading, writing, scoring.

Format (what ``refseg eval`` writes and ``refseg score`` reads)::

    [{"sent_id": 12, "segmentation": {"size": [H, W], "counts": "<COCO RLE>"}}, ...]

``segmentation`` is a COCO RLE of the predicted mask at the image's original resolution,
``counts`` a compressed ``str`` (uncompressed list counts are read too). Extra keys are
kept and ignored by scoring, except the optional ``category_id`` (class of the chosen
proposal, with ground-truth proposals), which enables mc-acc. Typical extras: ``score``,
``ref_id``, ``proposal``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from refseg.errors import InputError
from refseg.eval.metrics import MetricsAccumulator, MetricsResult, strict_precision
from refseg.fileio import write_atomic
from refseg.masks import decode_rle, encode_rle

if TYPE_CHECKING:
    from refseg.data import ImageSample


def prediction_record(sent_id: int, mask: np.ndarray, **extra: Any) -> dict[str, Any]:
    """A prediction record for expression ``sent_id`` from a mask ``bool [H, W]``."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W]; got shape {mask.shape}")
    return {"sent_id": int(sent_id), "segmentation": encode_rle(mask), **extra}


def read_predictions(path: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Read and validate a predictions file; returns ``{sent_id: record}`` in file order.

    Raises:
        InputError: the file is missing, not JSON, not a list of records, a record lacks a
            valid ``sent_id`` or ``segmentation``, or a ``sent_id`` appears twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"predictions file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "a predictions file is a JSON list of {\"sent_id\", \"segmentation\"} records"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file; expected a JSON list") from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply to be a predictions file") from None
    if not isinstance(data, list):
        raise InputError(
            f"{path} must hold a JSON list of prediction records; got {type(data).__name__}"
        )
    records: dict[int, dict[str, Any]] = {}
    first_index: dict[int, int] = {}
    for index, record in enumerate(data):
        sent_id = _validate_record(record, index, path)
        if sent_id in records:
            raise InputError(
                f"{path}: sent_id {sent_id} appears twice (records {first_index[sent_id]} and "
                f"{index}); keep exactly one prediction per expression"
            )
        records[sent_id] = record
        first_index[sent_id] = index
    return records


def _validate_record(record: Any, index: int, path: Path) -> int:
    where = f"{path}: record {index}"
    if not isinstance(record, dict):
        raise InputError(f"{where} must be an object; got {type(record).__name__}")
    sent_id = record.get("sent_id")
    if isinstance(sent_id, bool) or not isinstance(sent_id, int):
        raise InputError(f"{where} needs an integer \"sent_id\"; got {sent_id!r}")
    rle = record.get("segmentation")
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InputError(
            f"{where} (sent_id {sent_id}) needs a \"segmentation\" COCO RLE "
            "{\"size\": [H, W], \"counts\": str}"
        )
    size = rle["size"]
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)
    ):
        raise InputError(f"{where} (sent_id {sent_id}): RLE size must be [H, W]; got {size!r}")
    if not isinstance(rle["counts"], str | list):
        raise InputError(f"{where} (sent_id {sent_id}): RLE counts must be a string")
    category = record.get("category_id")
    if category is not None and (isinstance(category, bool) or not isinstance(category, int)):
        raise InputError(
            f"{where} (sent_id {sent_id}): category_id must be an integer; got {category!r}"
        )
    return sent_id


def prediction_size(record: dict[str, Any]) -> tuple[int, int]:
    """``(height, width)`` of a record's mask, without decoding it."""
    height, width = record["segmentation"]["size"]
    return int(height), int(width)


def prediction_mask(record: dict[str, Any]) -> np.ndarray:
    """Decode a record's mask to ``bool [H, W]``.

    Raises:
        InputError: the RLE is corrupt.
    """
    try:
        mask = decode_rle(record["segmentation"])
    except Exception as exc:  # pycocotools raises assorted types on corrupt counts
        raise InputError(
            f"sent_id {record.get('sent_id')}: cannot decode the RLE segmentation ({exc})"
        ) from None
    if mask.shape != prediction_size(record):
        raise InputError(
            f"sent_id {record.get('sent_id')}: RLE decodes to {mask.shape}, "
            f"not its declared size {prediction_size(record)}"
        )
    return mask


def write_predictions(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write records (see :func:`prediction_record`) atomically, refusing duplicate ids."""
    records = list(records)
    seen: set[int] = set()
    for record in records:
        sent_id = int(record["sent_id"])
        if sent_id in seen:
            raise InputError(f"sent_id {sent_id} appears twice; keep one prediction each")
        seen.add(sent_id)
    write_json_atomic(path, records)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, honouring the umask (see refseg.fileio).

    Readers never see a half-written file, and an interrupted run leaves the old one intact.
    """
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")


@dataclass
class ScoreReport:
    """Outcome of :func:`score_predictions`.

    Attributes:
        metrics: the aggregated metrics (groups = expression kinds, when the dataset has them).
        missing_sent_ids: expressions of the split without a prediction (scored as IoU 0).
        unmatched_sent_ids: predictions whose ``sent_id`` is not in the split (ignored).
    """

    metrics: MetricsResult
    missing_sent_ids: list[int] = field(default_factory=list)
    unmatched_sent_ids: list[int] = field(default_factory=list)


def score_predictions(
    dataset: Iterable[ImageSample], predictions: dict[int, dict[str, Any]]
) -> ScoreReport:
    """Score ``{sent_id: record}`` against every expression of ``dataset``.

    Each target mask is decoded once per referent. mc-acc / cc-oIoU are computed when any
    record carries a ``category_id`` (the class of the chosen ground-truth proposal).
    precision@X follows the dataset's own evaluator (PhraseCut: IoU > X; others: IoU >= X).

    Raises:
        InputError: a prediction's mask size differs from its image's size.
    """
    use_categories = any("category_id" in record for record in predictions.values())
    accumulator = MetricsAccumulator(strict=strict_precision(getattr(dataset, "name", None)))
    missing: list[int] = []
    seen: set[int] = set()
    for image in dataset:
        for referent in image.referents:
            for expression in referent.sentences:
                sent_id = expression.sent_id
                seen.add(sent_id)
                groups = () if expression.kind is None else (expression.kind,)
                target_category = referent.category_id if use_categories else None
                record = predictions.get(sent_id)
                if record is None:
                    missing.append(sent_id)
                    accumulator.add_missing(
                        referent.mask, target_category=target_category, groups=groups
                    )
                    continue
                if prediction_size(record) != (image.height, image.width):
                    height, width = prediction_size(record)
                    raise InputError(
                        f"the prediction for sent_id {sent_id} is {height}x{width} but image "
                        f"{image.image_id} ({image.file_name}) is {image.height}x{image.width}; "
                        "predictions must be at the image's original resolution"
                    )
                pred_category = record.get("category_id")
                accumulator.add(
                    prediction_mask(record),
                    referent.mask,
                    pred_category=None if pred_category is None else int(pred_category),
                    target_category=target_category,
                    groups=groups,
                )
    unmatched = [sent_id for sent_id in predictions if sent_id not in seen]
    return ScoreReport(accumulator.result(), missing, unmatched)
