"""Referring-segmentation metrics: oIoU, mIoU, precision@X, mc-acc, cc-oIoU and pixel AP.

One :class:`MetricsAccumulator` collects one record per expression (its intersection and
union pixel counts, and optionally whether the predicted proposal had the right class);
:meth:`MetricsAccumulator.result` turns them into a :class:`MetricsResult`. All metrics
are percentages (0-100), as the papers report them.

Expressions without a prediction (``add_missing``) or whose proposal generator returned
no masks (``add_missing(..., no_proposals=True)``) are *scored*, not skipped: IoU 0,
intersection 0, union = |target|. They are counted in ``n_missing`` and
``n_no_proposals``. The Global-Local CLIP reference evaluation skipped referents without
proposals (``continue``), which inflates its numbers slightly (SPEC section 1.8).

Dense systems (a probability map per expression) also get *pixel AP*, the PhraseCut/CLIPSeg
scorer's (SPEC section 2, ``metrics.py`` ``FixedIntervalMetrics``): at each of 49 thresholds
t = 0.02, 0.04, ..., 0.98 the pixels with p > t are counted, TP and FP summed over all
expressions; precision TP / (1 + TP + FP) and recall TP / (1 + positives) at the thresholds
that predict anything, duplicate pairs dropped, sorted by recall, integrated with Simpson's
rule (``scipy.integrate.simpson``). See :func:`pixel_counts` and :func:`pixel_ap`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from refseg.masks import intersection_union

# Prec@X thresholds reported by RIS papers (LAVT, CRIS, Global-Local CLIP).
PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
# Pixel-AP thresholds of the CLIPSeg scorer: np.linspace(0, 1, 51)[1:-1].
AP_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 51)[1:-1]


@dataclass(frozen=True)
class PixelCounts:
    """One expression's pixel counts for AP: per threshold of :data:`AP_THRESHOLDS`, the
    pixels with probability above it inside (``tp``) and outside (``fp``) the target, and
    the target's size (``positives``)."""

    tp: tuple[int, ...]
    fp: tuple[int, ...]
    positives: int

    def to_list(self) -> list[Any]:
        return [self.positives, list(self.tp), list(self.fp)]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> PixelCounts:
        positives, tp, fp = data
        return cls(tuple(int(v) for v in tp), tuple(int(v) for v in fp), int(positives))


def pixel_counts(probability: np.ndarray, target: np.ndarray) -> PixelCounts:
    """:class:`PixelCounts` of a probability map ``[H, W]`` against a bool target ``[H, W]``."""
    if probability.shape != target.shape:
        raise ValueError(f"shapes differ: {probability.shape} vs {target.shape}")
    target = target.astype(bool, copy=False)
    # level[i] = how many thresholds pixel i exceeds (p > t_j holds exactly for j < level).
    level = np.searchsorted(AP_THRESHOLDS, np.asarray(probability, dtype=np.float64), "left")
    n = len(AP_THRESHOLDS)

    def above(values: np.ndarray) -> tuple[int, ...]:
        per_level = np.bincount(values.ravel(), minlength=n + 1)
        return tuple(int(v) for v in np.cumsum(per_level[::-1])[::-1][1:])

    return PixelCounts(above(level[target]), above(level[~target]), int(target.sum()))


def pixel_ap(counts: Iterable[PixelCounts]) -> float | None:
    """Pixel AP in percent over expressions (the CLIPSeg scorer); ``None`` without counts,
    0 when no threshold predicts any pixel."""
    from scipy.integrate import simpson

    counts = list(counts)
    if not counts:
        return None
    tp = np.sum([c.tp for c in counts], axis=0, dtype=np.float64)
    fp = np.sum([c.fp for c in counts], axis=0, dtype=np.float64)
    positives = float(sum(c.positives for c in counts))
    made = tp + fp > 0
    recalls = tp[made] / (1.0 + positives)
    precisions = tp[made] / (1.0 + tp[made] + fp[made])
    pairs = sorted(set(zip(recalls.tolist(), precisions.tolist(), strict=True)))
    if len(pairs) < 2:
        return 0.0
    recall, precision = (np.array(v) for v in zip(*pairs, strict=True))
    return 100.0 * float(simpson(precision, x=recall))

# Whether an IoU exactly at X counts differs between the field's evaluators, so each
# benchmark uses its own: LAVT's RefCOCO code counts IoU >= X; CRIS's code and PhraseCut's
# evaluator.py count IoU > X. Datasets named here are scored with ">", all others with ">=".
STRICT_PRECISION_DATASETS: frozenset[str] = frozenset({"phrasecut"})


def strict_precision(dataset_name: str | None) -> bool:
    """True when ``dataset_name``'s own evaluator counts a hit at X only for IoU > X."""
    return (dataset_name or "").lower() in STRICT_PRECISION_DATASETS


@dataclass(frozen=True)
class ExpressionScore:
    """What one expression contributes to the metrics.

    ``class_correct`` is ``None`` when the target category is unknown (no mc-acc).
    """

    intersection: int
    union: int
    missing: bool = False
    no_proposals: bool = False
    class_correct: bool | None = None
    groups: tuple[str, ...] = ()
    pixels: PixelCounts | None = None

    @property
    def iou(self) -> float:
        """Intersection over union; 0 when the union is empty (nothing to find, nothing found)."""
        return self.intersection / self.union if self.union else 0.0


@dataclass(frozen=True)
class MetricsResult:
    """Aggregated metrics, in percent.

    Attributes:
        oiou: overall IoU = 100 * sum(I) / sum(U).
        miou: 100 * mean of per-expression IoU.
        precision: threshold -> 100 * fraction of expressions with IoU >= threshold
            (IoU > threshold for an accumulator built with ``strict=True``).
        n_expressions: expressions scored (missing ones included).
        n_missing: expressions without a prediction (scored as IoU 0).
        n_no_proposals: expressions whose generator gave no masks (scored as IoU 0).
        mc_acc: 100 * fraction whose predicted proposal's class equals the target's,
            over expressions with a known target class; ``None`` when none had one.
        cc_oiou: oIoU over the class-correct subset; ``None`` with ``mc_acc``.
        ap: pixel AP (dense systems, see the module docstring); ``None`` otherwise.
        groups: the same metrics per group (e.g. per expression kind).
    """

    oiou: float
    miou: float
    precision: dict[float, float]
    n_expressions: int
    n_missing: int
    n_no_proposals: int = 0
    mc_acc: float | None = None
    cc_oiou: float | None = None
    groups: dict[str, MetricsResult] = field(default_factory=dict)
    ap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``oIoU``, ``mIoU``, ``precision@0.5`` ... ``precision@0.9``,
        ``n_expressions``, ``n_missing``; then, only when they apply, ``n_no_proposals``
        (when > 0), ``mc-acc`` and ``cc-oIoU`` (when classes were given), ``AP`` (dense
        systems) and ``groups``.
        """
        out: dict[str, Any] = {"oIoU": self.oiou, "mIoU": self.miou}
        for threshold, value in self.precision.items():
            out[precision_key(threshold)] = value
        out["n_expressions"] = self.n_expressions
        out["n_missing"] = self.n_missing
        if self.n_no_proposals:
            out["n_no_proposals"] = self.n_no_proposals
        if self.mc_acc is not None:
            out["mc-acc"] = self.mc_acc
            out["cc-oIoU"] = self.cc_oiou
        if self.ap is not None:
            out["AP"] = self.ap
        if self.groups:
            out["groups"] = {name: group.to_dict() for name, group in self.groups.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricsResult:
        """Inverse of :meth:`to_dict`."""
        precision = {
            float(key.split("@", 1)[1]): float(value)
            for key, value in data.items()
            if key.startswith("precision@")
        }
        groups = {name: cls.from_dict(value) for name, value in data.get("groups", {}).items()}
        return cls(
            oiou=float(data["oIoU"]),
            miou=float(data["mIoU"]),
            precision=precision,
            n_expressions=int(data["n_expressions"]),
            n_missing=int(data["n_missing"]),
            n_no_proposals=int(data.get("n_no_proposals", 0)),
            mc_acc=data.get("mc-acc"),
            cc_oiou=data.get("cc-oIoU"),
            groups=groups,
            ap=data.get("AP"),
        )


def precision_key(threshold: float) -> str:
    """``0.5 -> "precision@0.5"``."""
    return f"precision@{threshold:g}"


class MetricsAccumulator:
    """Collects per-expression scores; :meth:`result` aggregates them.

    Call one of :meth:`add`, :meth:`add_counts` or :meth:`add_missing` once per expression.
    ``groups`` names the breakdowns an expression belongs to (a string or several).
    Accumulators from shards combine with :meth:`merge`.
    """

    def __init__(
        self, thresholds: Sequence[float] = PRECISION_THRESHOLDS, *, strict: bool = False
    ) -> None:
        if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
            raise ValueError(f"precision thresholds must lie in (0, 1]; got {thresholds}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.strict = strict  # precision@X counts IoU > X (PhraseCut) instead of IoU >= X
        self.records: list[ExpressionScore] = []

    def __len__(self) -> int:
        return len(self.records)

    def add(
        self,
        pred_mask: np.ndarray | None,
        target_mask: np.ndarray,
        *,
        pred_category: int | None = None,
        target_category: int | None = None,
        groups: str | Iterable[str] = (),
    ) -> float:
        """Score one prediction ``bool [H, W]`` against its target ``bool [H, W]``.

        ``pred_mask=None`` means no prediction (see :meth:`add_missing`). Returns the IoU.

        Raises:
            ValueError: the two masks differ in shape.
        """
        if pred_mask is None:
            self.add_missing(target_mask, target_category=target_category, groups=groups)
            return 0.0
        inter, union = intersection_union(pred_mask, target_mask)
        return self.add_counts(
            inter,
            union,
            pred_category=pred_category,
            target_category=target_category,
            groups=groups,
        )

    def add_counts(
        self,
        intersection: int,
        union: int,
        *,
        pred_category: int | None = None,
        target_category: int | None = None,
        groups: str | Iterable[str] = (),
        pixels: PixelCounts | None = None,
    ) -> float:
        """Score one expression from its pixel counts; returns its IoU.

        ``pixels``: the probability map's :class:`PixelCounts` (dense systems: pixel AP).
        """
        intersection, union = int(intersection), int(union)
        if not 0 <= intersection <= union:
            raise ValueError(f"need 0 <= intersection <= union; got {intersection}, {union}")
        record = ExpressionScore(
            intersection,
            union,
            class_correct=_class_correct(pred_category, target_category),
            groups=_as_groups(groups),
            pixels=pixels,
        )
        self.records.append(record)
        return record.iou

    def add_missing(
        self,
        target: np.ndarray | int,
        *,
        no_proposals: bool = False,
        target_category: int | None = None,
        groups: str | Iterable[str] = (),
    ) -> None:
        """Score an expression with no prediction as IoU 0 (intersection 0, union |target|).

        Args:
            target: the target mask ``bool [H, W]`` or its pixel count.
            no_proposals: the generator returned no masks (counted in ``n_no_proposals``
                instead of ``n_missing``).
        """
        area = int(np.count_nonzero(target)) if isinstance(target, np.ndarray) else int(target)
        if area < 0:
            raise ValueError(f"target area must be >= 0; got {area}")
        self.records.append(
            ExpressionScore(
                0,
                area,
                missing=not no_proposals,
                no_proposals=no_proposals,
                class_correct=_class_correct(None, target_category),
                groups=_as_groups(groups),
            )
        )

    def merge(self, other: MetricsAccumulator) -> None:
        """Append another accumulator's records (e.g. from another shard)."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge accumulators with different precision thresholds")
        if other.strict != self.strict:
            raise ValueError("cannot merge accumulators with different precision rules")
        self.records.extend(other.records)

    def result(self) -> MetricsResult:
        """Aggregate all records, with a breakdown per group name (sorted)."""
        names = sorted({name for record in self.records for name in record.groups})
        groups = {
            name: _aggregate(
                [r for r in self.records if name in r.groups], self.thresholds, self.strict
            )
            for name in names
        }
        overall = _aggregate(self.records, self.thresholds, self.strict)
        return replace(overall, groups=groups)


def _aggregate(
    records: Sequence[ExpressionScore], thresholds: Sequence[float], strict: bool = False
) -> MetricsResult:
    n = len(records)
    ious = [r.iou for r in records]
    hit = (lambda iou, t: iou > t) if strict else (lambda iou, t: iou >= t)
    precision = {t: _percent(sum(hit(iou, t) for iou in ious), n) for t in thresholds}
    classed = [r for r in records if r.class_correct is not None]
    mc_acc = cc_oiou = None
    if classed:
        correct = [r for r in classed if r.class_correct]
        mc_acc = _percent(len(correct), len(classed))
        cc_oiou = _oiou(correct)
    return MetricsResult(
        oiou=_oiou(records),
        miou=100.0 * math.fsum(ious) / n if n else 0.0,
        precision=precision,
        n_expressions=n,
        n_missing=sum(r.missing for r in records),
        n_no_proposals=sum(r.no_proposals for r in records),
        mc_acc=mc_acc,
        cc_oiou=cc_oiou,
        ap=pixel_ap(r.pixels for r in records if r.pixels is not None),
    )


def _oiou(records: Sequence[ExpressionScore]) -> float:
    return _percent(sum(r.intersection for r in records), sum(r.union for r in records))


def _percent(numerator: int, denominator: int) -> float:
    return 100.0 * numerator / denominator if denominator else 0.0


def _class_correct(pred_category: int | None, target_category: int | None) -> bool | None:
    if target_category is None:
        return None
    return pred_category is not None and int(pred_category) == int(target_category)


def _as_groups(groups: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(groups, str):
        return (groups,)
    return tuple(dict.fromkeys(str(g) for g in groups))
