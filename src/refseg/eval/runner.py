"""The evaluation runner: cached per image, resumable, sharded, with hyper-parameter sweeps.

For every image of a split (or of one shard of it) the runner sets the image once on a
:class:`~refseg.systems.System` -- proposals and every visual feature computed once -- and
queries all the image's expressions in one batch, for the main parameters and for every
sweep point. It uses the System interface only, so every system (proposal-based or dense)
runs the same way; dense systems need no proposals and also get pixel AP (main point).
Layout of a run directory::

    RUN_DIR/config.json                  what ran (options, versions, shard, the dataset split's
                                         fingerprint); checked on resume before anything is written
    RUN_DIR/partial/shard-I-of-N.jsonl   one line per finished image, appended and fsync'ed
    RUN_DIR/predictions.json             {sent_id, segmentation (RLE), score, ref_id, proposal,
                                          iou, phrase, top: [{proposal, score, iou}] x3}
    RUN_DIR/metrics.json                 MetricsResult.to_dict() (groups = expression kinds)
    RUN_DIR/report.md                    short table, beside the paper's number when known
    RUN_DIR/sweep.json, sweep.md         one row per sweep point (with --sweep)

An interrupted run resumes from the partial file: finished images are skipped, a torn last
line is dropped. The final files are written atomically from the partial file alone, so
:func:`merge_runs` can combine shards without the dataset or the model.

``structure="reference"`` evaluates the way the reference code is structured -- the image
set (proposals and visual features recomputed) for every referent and text encoded one
expression at a time -- with the same outputs; it exists to measure what caching buys
(``benchmarks/eval_throughput.py``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import refseg
from refseg.data import ImageDataset, ImageSample
from refseg.errors import InputError
from refseg.eval.metrics import (
    MetricsAccumulator,
    MetricsResult,
    PixelCounts,
    pixel_counts,
    strict_precision,
)
from refseg.eval.predictions import prediction_record, write_json_atomic, write_predictions
from refseg.eval.report import run_report, write_text_atomic
from refseg.eval.sweep import sweep_markdown, sweep_rows
from refseg.masks import intersection_union
from refseg.results import SegmentationResult
from refseg.systems import System

STRUCTURES = ("cached", "reference")
CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "predictions.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
SWEEP_JSON, SWEEP_MD = "sweep.json", "sweep.md"
PARTIAL_DIR = "partial"
# Best proposals kept per expression in predictions.json ("top"), for the report's gallery.
TOP_PROPOSALS = 3
# config.json entries that decide the results: a resumed run must match them exactly.
IDENTITY_KEYS = ("settings", "params", "sweep", "shard", "dataset_fingerprint")


# ------------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count``: a contiguous, deterministic block of image indices."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(f"bad shard {self.index}/{self.count}: need 0 <= I < N, e.g. 0/4")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"1/4"`` -> ``Shard(1, 4)``."""
        index, sep, count = str(text).partition("/")
        try:
            if sep:
                return cls(int(index), int(count))
        except ValueError:
            pass
        raise InputError(f"bad shard {text!r}: write I/N, e.g. 0/4 for the first of 4")

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def stem(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def indices(self, total: int) -> range:
        """The image indices of this shard among ``total`` images."""
        return range(total * self.index // self.count, total * (self.index + 1) // self.count)


# ------------------------------------------------------------------- per-image outcome
@dataclass
class ImageOutcome:
    """What one image contributes; one line of the partial file.

    Attributes:
        index: position of the image in the split.
        image_id: the dataset's image id (checked on resume).
        n_proposals: proposals the generator returned.
        expressions: per expression ``{"sent_id", "ref_id", "kind", "category_id", "area"}``
            (``category_id`` is the target's class, ``area`` its pixel count).
        choices: per point (0 = main parameters, then the sweep points) and per expression,
            ``[proposal, intersection, union, proposal_category]``; ``proposal`` is ``None``
            when the image had no proposals (or the system is dense),
            ``proposal_category`` when they have no classes.
        predictions: prediction records of the main point, one per expression.
        dense: the system predicted probability maps (no proposals).
        pixels: dense systems: per expression ``PixelCounts.to_list()`` (main point; AP).
    """

    index: int
    image_id: int
    n_proposals: int
    expressions: list[dict[str, Any]]
    choices: list[list[list[Any]]]
    predictions: list[dict[str, Any]]
    dense: bool = False
    pixels: list[list[Any]] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageOutcome:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def accumulate(
    outcomes: Iterable[ImageOutcome], point: int = 0, *, strict: bool = False
) -> MetricsAccumulator:
    """Metrics of sweep point ``point`` (0 = main) over ``outcomes``.

    mc-acc / cc-oIoU are computed when the proposals carried classes (ground truth), as
    ``refseg score`` does when predictions carry ``category_id``. Expressions of an image
    without proposals are scored as IoU 0 and counted in ``n_no_proposals``. ``strict``:
    precision@X counts IoU > X (the benchmark's own rule, see ``strict_precision``).
    """
    outcomes = list(outcomes)
    use_classes = any(c[3] is not None for o in outcomes for c in o.choices[point])
    accumulator = MetricsAccumulator(strict=strict)
    for outcome in outcomes:
        pixels = outcome.pixels if point == 0 and outcome.pixels else None
        pixels = pixels or [None] * len(outcome.choices[point])
        for expression, choice, counts in zip(
            outcome.expressions, outcome.choices[point], pixels, strict=True
        ):
            proposal, inter, union, category = choice
            kind = expression.get("kind")
            groups = (kind,) if kind else ()
            target = expression["category_id"] if use_classes else None
            if proposal is None and not outcome.dense:
                accumulator.add_missing(
                    expression["area"], no_proposals=True, target_category=target, groups=groups
                )
            else:
                accumulator.add_counts(
                    inter,
                    union,
                    pred_category=category,
                    target_category=target,
                    groups=groups,
                    pixels=PixelCounts.from_list(counts) if counts else None,
                )
    return accumulator


# ------------------------------------------------------------------------ partial file
class PartialLog:
    """The append-only per-image log of one shard, locked while a runner writes to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    @contextmanager
    def open(self) -> Iterator[PartialLog]:
        """Hold the file for appending (exclusive lock; another writer gets an error)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a+b")
        try:
            _lock(self._file, self.path)
            yield self
        finally:
            self._file.close()
            self._file = None

    def load(self) -> dict[int, ImageOutcome]:
        """Finished images by index.

        A last line without its newline or not valid JSON was torn by an interruption: it is
        dropped (that image is redone) and, when the log is open for appending, cut off.

        Raises:
            InputError: a line other than the last is not a valid record.
        """
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        outcomes: dict[int, ImageOutcome] = {}
        position = kept = 0
        number = 0
        while position < len(data):
            number += 1
            end = data.find(b"\n", position)
            complete = end != -1
            next_position = end + 1 if complete else len(data)
            line = data[position:next_position].strip()
            if line:
                try:
                    outcome = ImageOutcome.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    outcome = None
                if outcome is None or not complete:
                    if next_position >= len(data):
                        break
                    raise InputError(
                        f"{self.path} line {number} is corrupt; delete that line (or the file, "
                        "to start over) and run again"
                    )
                outcomes[outcome.index] = outcome
            position = kept = next_position
        if self._file is not None and kept != len(data):
            self._file.truncate(kept)
        return outcomes

    def append(self, outcome: ImageOutcome) -> None:
        """Add one finished image durably (flush + fsync), so a crash loses at most it."""
        self._file.write(outcome.to_json().encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def _lock(handle: Any, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no locking
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise InputError(
            f"another refseg eval is writing {path}; wait for it or use another --out"
        ) from None


# ------------------------------------------------------------------------------ config
def environment() -> dict[str, Any]:
    """Versions and the git commit of the refseg source, recorded in config.json."""
    source = Path(refseg.__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5
        )
        commit = done.stdout.strip() or None if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "refseg": refseg.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
    }


def check_resumable(saved: Mapping[str, Any], wanted: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse to mix results of two configurations, or of two versions of the dataset, in one
    run directory.

    Raises:
        InputError: the dataset fingerprint or an identity entry (settings, params, sweep,
            shard) differs; the message lists the differences.
    """
    if saved.get("dataset_fingerprint") != wanted.get("dataset_fingerprint"):
        raise InputError(
            f"{run_dir} was run on other data: the dataset split's fingerprint is "
            f"{str(saved.get('dataset_fingerprint'))[:12]} there, "
            f"{str(wanted.get('dataset_fingerprint'))[:12]} now (the dataset was changed or "
            "regenerated); pass another --out"
        )
    old = _identity(saved)
    new = _identity(json.loads(json.dumps(dict(wanted))))
    diffs = [
        f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if diffs:
        shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
        raise InputError(
            f"{run_dir} holds a run with another configuration ({shown}); rerun with the same "
            "options to resume it, or pass another --out"
        )


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened identity entries, without the backend: every backend is exact in fp32
    (scores equal to 1e-5, like the crop chunk or the matmul path), auto's choice may differ
    between machines (shards), and runs recorded as "torch" before "auto" became the default
    must stay resumable. The precision is compared: bf16 changes results."""
    flat = _flatten({key: config.get(key) for key in IDENTITY_KEYS})
    flat.pop("settings.backend", None)
    return flat


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path} is not valid JSON; the run directory is damaged") from None


# ------------------------------------------------------------------------------ runner
@dataclass
class RunSummary:
    """What :meth:`EvalRunner.run` did."""

    run_dir: Path
    metrics: MetricsResult
    sweep: list[dict[str, Any]]
    images: int  # images in this run's selection
    images_computed: int  # of which computed now (the rest were resumed)
    expressions: int
    no_proposal_images: int
    seconds: float  # wall time of the computed images
    timings: dict[str, float] = field(default_factory=dict)  # per stage, summed over images


class EvalRunner:
    """Evaluate a system on a dataset split into a run directory.

    Args:
        system: any :class:`~refseg.systems.System` (e.g. a ``Segmenter``, or one from
            ``refseg.load``); its settings give the parameter defaults.
        dataset: the split, iterated image by image.
        run_dir: where the run's files go (created; resumed when it holds this run).
        settings: extra description for config.json (paths, names as typed); part of the
            identity a resumed run must match.
        params: query options of the main point, e.g. ``alpha`` / ``beta`` / ``k`` or
            ``threshold`` (``None``: the system's value).
        sweep: extra points ``[{"alpha": 0.5}, ...]`` scored from the same cached features.
        shard: which slice of the images to run.
        limit: only the first ``limit`` images of the split (before sharding).
        structure: ``"cached"`` or ``"reference"`` (see the module docstring).
        progress: show a tqdm bar with images/s and expressions/s.
        command: the command line, recorded in config.json.
    """

    def __init__(
        self,
        system: System,
        dataset: ImageDataset,
        run_dir: str | os.PathLike,
        *,
        settings: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        sweep: Sequence[Mapping[str, Any]] = (),
        shard: Shard = Shard(),
        limit: int | None = None,
        structure: str = "cached",
        progress: bool = True,
        command: Sequence[str] | None = None,
    ) -> None:
        if structure not in STRUCTURES:
            raise InputError(f"unknown structure {structure!r}; choose one of {STRUCTURES}")
        if limit is not None and limit < 1:
            raise InputError(f"--limit must be >= 1; got {limit}")
        self.system = system
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.extra_settings = dict(settings or {})
        self.params = {k: v for k, v in (params or {}).items() if v is not None}
        self.sweep = [dict(point) for point in sweep]
        self.points = [self.params, *self.sweep]
        self.shard = shard
        self.limit = limit
        self.structure = structure
        self.progress = progress
        self.command = list(command) if command is not None else None

    @property
    def segmenter(self) -> System:
        """The system (the name from when only Segmenters were evaluated)."""
        return self.system

    # -- configuration -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The config.json of this run: settings = the dataset, ``system.describe()`` (its
        ``system`` name included) and the extra settings; params = the main point's
        effective query parameters."""
        described = self.system.describe()
        device = described.pop("device", None)
        params = self.system.query_params(**self.params)
        return {
            "settings": self._settings(described, params),
            "params": params,
            "sweep": self.sweep,
            "shard": self.shard.label,
            "dataset_fingerprint": self._fingerprint(),
            "limit": self.limit,
            "num_images": self._num_images(),
            "structure": self.structure,
            "device": device,
            "command": self.command,
            "environment": environment(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _settings(self, described: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "dataset": getattr(self.dataset, "name", None),
            "split": getattr(self.dataset, "split", None),
            "split_by": getattr(self.dataset, "split_by", None),
            **{key: value for key, value in described.items() if key not in params and
               key != "device"},
            **self.extra_settings,
        }

    def _record_settings(self, config: dict[str, Any]) -> None:
        """Rewrite config.json when the system's settings changed while it ran: ``--backend
        auto`` knows what it chose only after measuring on the first image."""
        params = self.system.query_params(**self.params)
        settings = self._settings(self.system.describe(), params)
        if json.loads(json.dumps(settings)) != json.loads(json.dumps(config["settings"])):
            config["settings"] = settings
            write_json_atomic(self.run_dir / CONFIG_FILE, config, indent=2)

    def _num_images(self) -> int:
        total = len(self.dataset)
        return min(total, self.limit) if self.limit else total

    def _fingerprint(self) -> str | None:
        """The whole split's fingerprint (not the --limit prefix: a longer run resumes)."""
        if not hasattr(self, "_dataset_fingerprint"):
            fingerprint = getattr(self.dataset, "fingerprint", None)
            self._dataset_fingerprint = fingerprint() if callable(fingerprint) else None
        return self._dataset_fingerprint

    def check_out_dir(self, config: Mapping[str, Any]) -> bool:
        """Check ``run_dir`` before anything is written; ``True`` when it holds this run.

        Raises:
            InputError: it is a file, holds files but no config.json (not a run: refseg will
                not write over them), or holds a run of another configuration or dataset.
        """
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise InputError(f"--out {self.run_dir} is a file; pass a directory for the run")
        if (self.run_dir / CONFIG_FILE).is_file():
            check_resumable(read_config(self.run_dir), config, self.run_dir)
            return True
        if (self.run_dir / PARTIAL_DIR).is_dir() and any((self.run_dir / PARTIAL_DIR).iterdir()):
            raise InputError(
                f"{self.run_dir} has partial results but no {CONFIG_FILE}, so they cannot be "
                "checked; delete its partial/ folder or pass another --out"
            )
        if self.run_dir.is_dir() and any(
            entry.name != PARTIAL_DIR for entry in self.run_dir.iterdir()
        ):
            raise InputError(
                f"--out {self.run_dir} holds files but is not a refseg run (no {CONFIG_FILE}); "
                "refseg will not write over them: pass a new or empty directory"
            )
        return False

    # -- running -------------------------------------------------------------------------
    def run(self, on_image: Callable[[ImageOutcome], None] | None = None) -> RunSummary:
        """Evaluate the shard's images not finished yet, then write the final files.

        ``on_image`` is called after each image is safely logged (progress hooks, tests).
        """
        config = self.config()
        self.check_out_dir(config)
        selection = self.shard.indices(config["num_images"])
        log = PartialLog(self.run_dir / PARTIAL_DIR / f"{self.shard.stem}.jsonl")
        timings: dict[str, float] = {}
        computed, seconds = 0, 0.0
        with log.open():  # locked: a second eval into this --out stops here, writing nothing
            done = log.load()
            todo = [i for i in selection if i not in done]
            for index in selection:
                if index in done:
                    self._check_same_image(done[index])
            # Written only now that every check has passed (a resume records its command).
            write_json_atomic(self.run_dir / CONFIG_FILE, config, indent=2)
            bar = tqdm(total=len(todo), unit="img", desc="eval", disable=not self.progress)
            n_expr = 0
            start = time.perf_counter()
            with bar:
                for index in todo:
                    outcome = self._evaluate(index, self.dataset[index], timings)
                    log.append(outcome)
                    done[index] = outcome
                    self._record_settings(config)
                    computed += 1
                    n_expr += len(outcome.expressions)
                    seconds = time.perf_counter() - start
                    bar.set_postfix(
                        {"img/s": f"{computed / seconds:.2f}", "expr/s": f"{n_expr / seconds:.1f}"},
                        refresh=False,
                    )
                    bar.update()
                    if on_image is not None:
                        on_image(outcome)
        outcomes = [done[i] for i in selection]
        results = write_outputs(self.run_dir, config, outcomes)
        return RunSummary(
            run_dir=self.run_dir,
            metrics=results[0],
            sweep=sweep_rows(self.sweep, results[1:]) if self.sweep else [],
            images=len(outcomes),
            images_computed=computed,
            expressions=sum(len(o.expressions) for o in outcomes),
            no_proposal_images=sum(map(_lacked_proposals, outcomes)),
            seconds=seconds,
            timings=timings,
        )

    def _check_same_image(self, outcome: ImageOutcome) -> None:
        image_id = self.dataset[outcome.index].image_id
        if image_id != outcome.image_id:
            raise InputError(
                f"{self.run_dir}: image {outcome.index} of the split was {outcome.image_id} when "
                f"it was evaluated but is {image_id} now (the dataset changed); use another --out"
            )

    # -- one image -----------------------------------------------------------------------
    def _evaluate(self, index: int, sample: ImageSample, timings: dict[str, float]) -> ImageOutcome:
        pairs = list(sample.expressions())
        image = sample.load_image()
        key = image_key(getattr(self.system, "proposals", None), sample)
        n_points = len(self.points)
        choices: list[list[list[Any]]] = [[] for _ in range(n_points)]
        predictions: list[dict[str, Any]] = []
        pixels: list[list[Any]] = []
        n_proposals = 0
        if self.structure == "cached":
            groups = [pairs] if pairs else []
        else:  # the reference's structure: the image set again for every referent
            groups = [[(r, e) for e in r.sentences] for r in sample.referents if r.sentences]
        dense = self.system.dense
        for group in groups:
            self._set_image(image, key, timings)
            lookup = _Overlaps()
            texts = [expression.text for _, expression in group]
            for p, point in enumerate(self.points):
                if self.structure == "cached":
                    results = self.system.query(texts, **point)
                else:  # one expression at a time
                    results = [self.system.query([text], **point)[0] for text in texts]
                for (referent, expression), result in zip(group, results, strict=True):
                    n_proposals = len(result.proposals)
                    choice = lookup.choice(result, referent)
                    choices[p].append(choice)
                    if p == 0:
                        record = lookup.record(expression.sent_id, referent, result, choice)
                        predictions.append(record)
                        if dense and result.probability is not None:
                            pixels.append(pixel_counts(result.probability, referent.mask).to_list())
            for stage, value in self.system.stage_timings().items():
                timings[stage] = timings.get(stage, 0.0) + value
        expressions = [
            {
                "sent_id": expression.sent_id,
                "ref_id": referent.ref_id,
                "kind": expression.kind,
                "category_id": referent.category_id,
                "area": int(np.count_nonzero(referent.mask)),
            }
            for referent, expression in pairs
        ]
        return ImageOutcome(
            index,
            sample.image_id,
            n_proposals,
            expressions,
            choices,
            predictions,
            dense=dense,
            pixels=pixels if dense else None,
        )

    def _set_image(self, image: Any, key: Any, timings: dict[str, float]) -> None:
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Images without proposals are expected, scored as IoU 0 and counted.
            warnings.filterwarnings("ignore", message="no mask proposals")
            self.system.set_image(image, image_key=key)
        timings["set_image"] = timings.get("set_image", 0.0) + time.perf_counter() - start


def _lacked_proposals(outcome: ImageOutcome) -> bool:
    """A proposal system found no proposals for an image with expressions (dense: never)."""
    return outcome.n_proposals == 0 and not outcome.dense and bool(outcome.expressions)


def _category(result: SegmentationResult) -> int | None:
    """The chosen proposal's class (ground-truth proposals), else ``None``."""
    categories = result.proposals.categories
    return None if result.index is None or categories is None else int(categories[result.index])


class _Overlaps:
    """Each result's overlap with its target; a proposal's counted once per target."""

    def __init__(self) -> None:
        self._counts: dict[tuple[int, int], tuple[int, int]] = {}

    def _proposal_counts(
        self, result: SegmentationResult, index: int, referent: Any
    ) -> tuple[int, int]:
        key = (index, referent.ref_id)
        if key not in self._counts:
            mask = result.mask if index == result.index else result.proposal_mask(index)
            self._counts[key] = intersection_union(mask, referent.mask)
        return self._counts[key]

    def choice(self, result: SegmentationResult, referent: Any) -> list[Any]:
        """``[proposal, intersection, union, proposal_category]`` of one expression."""
        if result.index is not None:
            inter, union = self._proposal_counts(result, result.index, referent)
            return [result.index, inter, union, _category(result)]
        if not result.mask.any():  # no proposals, or an empty dense mask
            return [None, 0, int(np.count_nonzero(referent.mask)), None]
        return [None, *intersection_union(result.mask, referent.mask), None]

    def record(
        self, sent_id: int, referent: Any, result: SegmentationResult, choice: list[Any]
    ) -> dict[str, Any]:
        """The prediction record of ``result`` (whose :meth:`choice` is ``choice``): the
        mask and, for the report, its IoU, the phrase and the top proposals with their
        scores and IoUs (none for dense systems)."""
        _, inter, union, category = choice
        extra: dict[str, Any] = {
            "score": result.score,
            "ref_id": referent.ref_id,
            "proposal": result.index,
        }
        if category is not None:
            extra["category_id"] = category
        extra["iou"] = inter / union if union else 0.0  # unrounded: compared with 0.5
        extra["phrase"] = result.phrase
        extra["top"] = [
            {
                "proposal": int(p),
                "score": round(float(result.scores[p]), 6),
                "iou": self._iou(result, int(p), referent),
            }
            for p in result.ranking[:TOP_PROPOSALS]
        ]
        return prediction_record(sent_id, result.mask, **extra)

    def _iou(self, result: SegmentationResult, index: int, referent: Any) -> float:
        inter, union = self._proposal_counts(result, index, referent)
        return inter / union if union else 0.0


def image_key(generator: Any, sample: ImageSample) -> Any:
    """The key a proposal generator finds ``sample`` by: its image id, or its file name for
    a results file indexed by file names only."""
    index = getattr(generator, "index", None)
    find = getattr(index, "find", None)
    if callable(find) and find(sample.image_id) is None and find(sample.file_name) is not None:
        return sample.file_name
    return sample.image_id


# ------------------------------------------------------------------------- final files
def write_outputs(
    run_dir: Path, config: Mapping[str, Any], outcomes: Sequence[ImageOutcome]
) -> list[MetricsResult]:
    """Write predictions, metrics, report (and sweep files) from finished images.

    Returns the metrics of the main point followed by those of each sweep point.
    """
    outcomes = sorted(outcomes, key=lambda o: o.index)
    sweep = list(config.get("sweep") or [])
    strict = strict_precision((config.get("settings") or {}).get("dataset"))
    results = [accumulate(outcomes, p, strict=strict).result() for p in range(1 + len(sweep))]
    write_predictions(run_dir / PREDICTIONS_FILE, (r for o in outcomes for r in o.predictions))
    write_json_atomic(run_dir / METRICS_FILE, results[0].to_dict(), indent=2)
    if sweep:
        rows = sweep_rows(sweep, results[1:])
        write_json_atomic(run_dir / SWEEP_JSON, rows, indent=2)
        keys = list(dict.fromkeys(key for point in sweep for key in point))
        title = f"Sweep of {', '.join(keys)} ({len(rows)} points)"
        write_text_atomic(run_dir / SWEEP_MD, sweep_markdown(rows, keys, title))
    no_proposals = sum(map(_lacked_proposals, outcomes))
    report = run_report(config, results[0], images=len(outcomes), no_proposal_images=no_proposals)
    write_text_atomic(run_dir / REPORT_FILE, report)
    return results


# ------------------------------------------------------------------------------- merge
@dataclass
class MergeSummary:
    out_dir: Path
    metrics: MetricsResult
    shards: int
    images: int


def merge_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> MergeSummary:
    """Combine the shards ``0..N-1`` of one configuration into ``out_dir``.

    Raises:
        InputError: a directory is not a run, configurations differ, a shard is missing,
            repeated or unfinished, or ``out_dir`` is one of the shards.
    """
    dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir)
    if not dirs:
        raise InputError("name the shard run directories to merge")
    if any(out.resolve() == d.resolve() for d in dirs):
        raise InputError(f"--out {out} is one of the shards; write the merge elsewhere")
    configs = [read_config(d) for d in dirs]
    shards = []
    for directory, config in zip(dirs, configs, strict=True):
        if not config.get("shard"):
            raise InputError(f"{directory} is itself a merge; merge the shard directories")
        shards.append(Shard.parse(config["shard"]))
    reference = {**configs[0], "shard": None}
    for directory, config in zip(dirs[1:], configs[1:], strict=True):
        check_resumable(reference, {**config, "shard": None}, directory)
        if config.get("num_images") != configs[0].get("num_images"):
            raise InputError(
                f"{directory} covers {config.get('num_images')} images, {dirs[0]} "
                f"{configs[0].get('num_images')}: the shards were run with different --limit"
            )
    count = shards[0].count
    seen: dict[int, Path] = {}
    for directory, shard in zip(dirs, shards, strict=True):
        if shard.count != count:
            raise InputError(f"{directory} is shard {shard.label}, others are of {count} shards")
        if shard.index in seen:
            raise InputError(
                f"shard {shard.label} given twice: {seen[shard.index]} and {directory}"
            )
        seen[shard.index] = directory
    missing = [f"{i}/{count}" for i in range(count) if i not in seen]
    if missing:
        raise InputError(f"shards missing: {', '.join(missing)}; run them, then merge all {count}")
    num_images = int(configs[0]["num_images"])
    outcomes: list[ImageOutcome] = []
    for directory, shard in zip(dirs, shards, strict=True):
        done = PartialLog(directory / PARTIAL_DIR / f"{shard.stem}.jsonl").load()
        wanted = shard.indices(num_images)
        finished = [i for i in wanted if i in done]
        if len(finished) != len(wanted):
            raise InputError(
                f"shard {shard.label} in {directory} is unfinished ({len(finished)} of "
                f"{len(wanted)} images); rerun its refseg eval command to finish it"
            )
        outcomes += [done[i] for i in wanted]
    order = sorted(range(len(dirs)), key=lambda i: shards[i].index)
    merged = {
        **configs[0],
        "shard": None,
        "merged_from": [{"run_dir": str(dirs[i]), "shard": shards[i].label} for i in order],
    }
    # The shards themselves may live inside out (refseg eval under torchrun: out/shards/).
    shard_homes = {p for d in dirs for p in (d.resolve(), *d.resolve().parents)}
    if (out / CONFIG_FILE).is_file():
        # Re-merging the same shards is fine; replacing another configuration's merge is not.
        check_resumable(read_config(out), merged, out)
    elif out.is_dir() and any(p.resolve() not in shard_homes for p in out.iterdir()):
        raise InputError(f"--out {out} holds files but no merged run; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / CONFIG_FILE, merged, indent=2)
    results = write_outputs(out, merged, outcomes)
    return MergeSummary(out, results[0], count, len(outcomes))


__all__ = [
    "STRUCTURES",
    "EvalRunner",
    "ImageOutcome",
    "MergeSummary",
    "PartialLog",
    "RunSummary",
    "Shard",
    "accumulate",
    "check_resumable",
    "image_key",
    "merge_runs",
    "read_config",
    "write_outputs",
]
