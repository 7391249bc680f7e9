"""A finished run directory as a report reads it: settings, metrics, sweep, per-expression rows.

Everything comes from the run's files (``config.json``, ``metrics.json``, ``predictions.json``,
``sweep.json``); the dataset recorded in ``config.json`` is opened only for what the files
lack (images and ground truth for the gallery; IoUs of runs older than the ``iou`` key).
Keys missing from older runs' files are tolerated: the report says what it could not show.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refseg.data import ExpressionItem, ImageDataset, open_dataset
from refseg.errors import InputError, RefsegError
from refseg.eval.predictions import prediction_mask, prediction_size, read_predictions
from refseg.eval.runner import (
    CONFIG_FILE,
    METRICS_FILE,
    PARTIAL_DIR,
    PREDICTIONS_FILE,
    SWEEP_JSON,
    PartialLog,
)

# An expression is "right" when its IoU reaches the P@0.5 threshold (the usual criterion).
RIGHT_IOU = 0.5


@dataclass
class ExpressionResult:
    """One expression of a run.

    Attributes:
        sent_id: the expression's id.
        record: the prediction record (mask as RLE, score, ...).
        iou: IoU with the target in [0, 1]; ``None`` while unknown.
        phrase: the extracted target phrase, when the run recorded it.
        top: the best proposals ``[{"proposal", "score", "iou"}]``, when recorded.
    """

    sent_id: int
    record: dict[str, Any]
    iou: float | None = None
    phrase: str | None = None
    top: list[dict[str, Any]] = field(default_factory=list)

    @property
    def right(self) -> bool:
        return self.iou is not None and self.iou >= RIGHT_IOU


@dataclass
class RunData:
    """A run directory's files, read and checked."""

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    sweep: list[dict[str, Any]]
    results: dict[int, ExpressionResult]  # by sent_id, in the predictions file's order
    iou_source: str | None = None  # where the IoUs came from, for the report's notes

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.config.get("settings") or {})

    @property
    def split_key(self) -> tuple[Any, Any, Any]:
        """``(dataset, split_by, split)``: runs compared side by side must share it."""
        settings = self.settings
        name = settings.get("dataset")
        return (str(name).lower() if name else None, settings.get("split_by"),
                settings.get("split"))

    @property
    def has_proposals(self) -> bool:
        """Whether the system chose among proposals (its records name one)."""
        return any(r.record.get("proposal") is not None or r.top for r in self.results.values())

    def ious(self) -> np.ndarray:
        """The known IoUs, in file order."""
        return np.array([r.iou for r in self.results.values() if r.iou is not None], float)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise InputError(f"{path} is missing: {what}") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path} is not valid JSON; the run directory is damaged") from None


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read a finished run directory (IoUs from the records, or from the partial logs).

    Raises:
        InputError: a required file (config.json, metrics.json, predictions.json) is missing
            or damaged; the message says how to finish the run.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    config = _read_json(run_dir / CONFIG_FILE, "not a refseg eval run directory")
    metrics = _read_json(
        run_dir / METRICS_FILE,
        "the run is unfinished; rerun its refseg eval command (or refseg merge its shards)",
    )
    sweep: list[dict[str, Any]] = []
    if (run_dir / SWEEP_JSON).is_file():
        sweep = _read_json(run_dir / SWEEP_JSON, "sweep results")
        if not isinstance(sweep, list) or not all(isinstance(row, dict) for row in sweep):
            raise InputError(f"{run_dir / SWEEP_JSON} must hold a list of sweep rows")
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise InputError(f"{run_dir}: config.json and metrics.json must hold JSON objects")
    records = read_predictions(run_dir / PREDICTIONS_FILE)
    results = {sent_id: _result(sent_id, record) for sent_id, record in records.items()}
    run = RunData(run_dir, config, metrics, sweep, results)
    if results and all(r.iou is not None for r in results.values()):
        run.iou_source = "predictions.json"
    else:
        _ious_from_partial_logs(run)
    return run


def _result(sent_id: int, record: dict[str, Any]) -> ExpressionResult:
    iou = record.get("iou")
    phrase = record.get("phrase")
    top = record.get("top")
    return ExpressionResult(
        sent_id,
        record,
        iou=float(iou) if isinstance(iou, int | float) and not isinstance(iou, bool) else None,
        phrase=phrase if isinstance(phrase, str) else None,
        top=[t for t in top if isinstance(t, dict)] if isinstance(top, list) else [],
    )


def _ious_from_partial_logs(run: RunData) -> None:
    """Fill missing IoUs from ``partial/*.jsonl`` (runs written before records had ``iou``)."""
    found = 0
    for path in sorted((run.run_dir / PARTIAL_DIR).glob("*.jsonl")):
        try:
            outcomes = PartialLog(path).load()
        except RefsegError:
            continue
        for outcome in outcomes.values():
            for expression, choice in zip(outcome.expressions, outcome.choices[0], strict=False):
                result = run.results.get(expression.get("sent_id"))
                if result is not None and result.iou is None:
                    _, inter, union, _ = choice
                    result.iou = inter / union if union else 0.0
                    found += 1
    if found:
        run.iou_source = "partial logs"


def fill_ious_from_dataset(run: RunData, items: Mapping[int, ExpressionItem]) -> int:
    """Compute the IoUs still unknown from the ground truth (``items``: sent_id ->
    :class:`~refseg.data.ExpressionItem`); returns how many were computed."""
    computed = 0
    for result in run.results.values():
        item = items.get(result.sent_id)
        if result.iou is not None or item is None:
            continue
        target = item.referent.mask
        if prediction_size(result.record) != target.shape:
            continue
        mask = prediction_mask(result.record)
        union = int(np.count_nonzero(mask | target))
        result.iou = int(np.count_nonzero(mask & target)) / union if union else 0.0
        computed += 1
    if computed:
        run.iou_source = "ground truth of the dataset"
    return computed


# ------------------------------------------------------------------------------ dataset
def open_run_dataset(config: Mapping[str, Any]) -> tuple[ImageDataset | None, str | None]:
    """The dataset split a run was evaluated on, or ``(None, why not)``.

    Paths in config.json are as typed on the command line: relative ones are taken from
    the current directory.
    """
    settings = config.get("settings") or {}
    root, name, split = settings.get("dataset_root"), settings.get("dataset"), settings.get("split")
    if not root or not name or not split:
        return None, "config.json does not record the dataset (dataset_root, dataset, split)"
    try:
        dataset = open_dataset(
            root, str(name), str(split), split_by=settings.get("split_by"),
            image_dir=settings.get("images"),
        )
    except RefsegError as exc:
        return None, f"the dataset recorded in config.json cannot be opened: {exc}"
    return dataset, None


def expression_items(dataset: ImageDataset, wanted: Iterable[int]) -> dict[int, ExpressionItem]:
    """``{sent_id: ExpressionItem}`` for the wanted expressions (one pass over the split)."""
    wanted = set(wanted)
    items: dict[int, ExpressionItem] = {}
    for item in dataset.expressions():
        if item.expression.sent_id in wanted:
            items[item.expression.sent_id] = item
            if len(items) == len(wanted):
                break
    return items


__all__ = [
    "RIGHT_IOU",
    "ExpressionResult",
    "RunData",
    "expression_items",
    "fill_ious_from_dataset",
    "load_run",
    "open_run_dataset",
]
