"""The report's figures as PNG bytes: precision@X, IoU histogram, per-kind bars, sweep maps.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
backend switch), so it runs headless and in threads. matplotlib is the optional extra
``report``: importing this module without it raises ``ImportError``.
"""

from __future__ import annotations

import io
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from refseg.eval.metrics import PRECISION_THRESHOLDS, precision_key

DPI = 100
WIDE = 9.0  # inches: figures with two panels of grouped bars or heat maps
# One colour per run (matplotlib's tab10, colour-blind friendlier than its first default).
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
Series = tuple[str, np.ndarray]  # (run label, per-expression IoUs in [0, 1])


def _figure(width: float, height: float, *, bottom: float = 0.6, wspace: float = 0.35
            ) -> Figure:
    """A figure with fixed margins in inches (``bottom``: room for the x labels). Fixed
    margins instead of a layout engine halve the drawing time; the labels are short."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.25 / width, bottom=bottom / height,
                           top=1 - 0.4 / height, wspace=wspace, hspace=0.45)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG (metadata stripped, so equal figures give equal bytes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def precision_curve(series: Sequence[Series]) -> Figure:
    """Precision@X (percent of expressions with IoU >= X) for X in [0, 1], one line per
    run; the thresholds of the metrics table are marked."""
    figure = _figure(6.0, 3.6)
    axes = figure.add_subplot()
    xs = np.linspace(0.0, 1.0, 101)
    for i, (label, ious) in enumerate(series):
        if ious.size == 0:
            continue
        ys = 100.0 * (ious[None, :] >= xs[:, None] - 1e-12).mean(axis=1)
        axes.plot(xs, ys, color=_color(i), label=label)
        marks = np.array(PRECISION_THRESHOLDS)
        axes.plot(marks, 100.0 * (ious[None, :] >= marks[:, None]).mean(axis=1), "o",
                  color=_color(i), markersize=4)
    axes.set(xlabel="IoU threshold X", ylabel="precision@X (%)", xlim=(0, 1), ylim=(0, 101),
             title="Precision at IoU threshold")
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize="small")
    return figure


def iou_histogram(series: Sequence[Series], bins: int = 20) -> Figure:
    """Per-expression IoU counts in ``bins`` equal bins of [0, 1] (steps for several runs)."""
    figure = _figure(6.0, 3.6)
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i, (label, ious) in enumerate(series):
        if len(series) == 1:
            axes.hist(ious, bins=edges, color=_color(i), edgecolor="white", label=label)
        else:
            axes.hist(ious, bins=edges, histtype="step", linewidth=1.8, color=_color(i),
                      label=label)
    axes.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set(xlabel="IoU", ylabel="expressions", xlim=(0, 1), title="IoU per expression")
    if len(series) > 1:
        axes.legend(fontsize="small")
    return figure


def kind_bars(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> Figure | None:
    """mIoU and precision@0.5 per expression kind (``metrics.json`` groups), grouped bars
    per run; ``None`` when no run has kinds."""
    kinds = list(dict.fromkeys(k for _, m in runs for k in (m.get("groups") or {})))
    if not kinds:
        return None
    figure = _figure(WIDE if len(runs) > 1 else 8.0, 3.6, bottom=0.75, wspace=0.08)
    panels = figure.subplots(1, 2, sharey=True)
    width = 0.8 / len(runs)
    positions = np.arange(len(kinds))
    for axes, metric, title in zip(panels, ("mIoU", precision_key(0.5)),
                                   ("mIoU", "P@0.5"), strict=True):
        for i, (label, metrics) in enumerate(runs):
            groups = metrics.get("groups") or {}
            values = [float((groups.get(k) or {}).get(metric) or 0.0) for k in kinds]
            bars = axes.bar(positions + (i - (len(runs) - 1) / 2) * width, values, width,
                            color=_color(i), label=label)
            axes.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=1)
        counts = [(runs[0][1].get("groups") or {}).get(k, {}).get("n_expressions") for k in kinds]
        axes.set_xticks(positions, [f"{k}\n(n={n})" if n else k for k, n in
                                    zip(kinds, counts, strict=True)], fontsize="small")
        axes.set(title=f"{title} by expression kind", ylim=(0, 105))
    panels[0].set_ylabel("%")
    if len(runs) > 1:
        panels[1].legend(fontsize="small")
    return figure


def sweep_plot(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Figure | None:
    """The sweep's mIoU and oIoU: lines over one key, a heat map over two (one row of maps
    per value of a third). ``None`` without rows or keys."""
    keys = [k for k in keys if rows and all(_is_number(row.get(k)) for row in rows)]
    if not rows or not keys:
        return None
    if len(keys) == 1:
        return _sweep_lines(rows, keys[0])
    x_key, y_key, *rest = keys
    slices = sorted({row.get(rest[0]) for row in rows}) if rest else [None]
    figure = _figure(WIDE, 3.3 * len(slices))
    panels = np.atleast_2d(figure.subplots(len(slices), 2, squeeze=False))
    for r, value in enumerate(slices):
        subset = [row for row in rows if not rest or row.get(rest[0]) == value]
        for c, metric in enumerate(("mIoU", "oIoU")):
            suffix = f", {rest[0]}={value:g}" if rest else ""
            _heat_map(panels[r][c], subset, x_key, y_key, metric, f"{metric}{suffix}")
    return figure


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _sweep_lines(rows: Sequence[Mapping[str, Any]], key: str) -> Figure:
    figure = _figure(6.0, 3.6)
    axes = figure.add_subplot()
    ordered = sorted(rows, key=lambda row: row[key])
    xs = [row[key] for row in ordered]
    for i, metric in enumerate(("mIoU", "oIoU")):
        axes.plot(xs, [row.get(metric) for row in ordered], "o-", color=_color(i), label=metric)
    axes.set(xlabel=key, ylabel="%", title=f"Sweep over {key}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _heat_map(axes: Any, rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str,
              metric: str, title: str) -> None:
    xs = sorted({row[x_key] for row in rows})
    ys = sorted({row[y_key] for row in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    for row in rows:
        value = row.get(metric)
        if value is not None:
            grid[ys.index(row[y_key]), xs.index(row[x_key])] = float(value)
    image = axes.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    best = np.nanmax(grid) if np.isfinite(grid).any() else None
    for (y, x), value in np.ndenumerate(grid):
        if np.isfinite(value):
            bold = "bold" if value == best else "normal"
            axes.text(x, y, f"{value:.1f}", ha="center", va="center", fontsize="small",
                      color="white" if value < np.nanmean(grid) else "black", fontweight=bold)
    axes.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    axes.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    axes.set(xlabel=x_key, ylabel=y_key, title=title)
    axes.figure.colorbar(image, ax=axes, shrink=0.9)


__all__ = ["iou_histogram", "kind_bars", "png_bytes", "precision_curve", "sweep_plot"]
