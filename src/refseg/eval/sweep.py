"""Hyper-parameter sweeps: a grid of (alpha, beta, k) points evaluated on cached features
(or of ``threshold`` for dense systems: the probability maps are computed once).

``--sweep alpha=0.5,0.85,0.95,1.0 k=1,2,3`` is the grid of every combination (4 x 3 = 12
points, in the order the keys were given, last key fastest). The runner sets each image
once and scores every point from the same cached visual features: alpha and beta only mix
cached features; each k reuses the ViT token states cached per depth, so the image is
embedded once for the whole sweep (see ``refseg.methods.global_local_method``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from refseg.errors import InputError
from refseg.eval.metrics import MetricsResult
from refseg.methods import GlobalLocalConfig, resolve_method

# Keys a sweep may vary, with the type of their values.
SWEEP_KEYS: dict[str, type] = {"alpha": float, "beta": float, "k": int, "threshold": float}

Point = dict[str, Any]


def parse_sweep(specs: Iterable[str]) -> dict[str, list[Any]]:
    """``["alpha=0.5,1.0", "k=1,2"]`` -> ``{"alpha": [0.5, 1.0], "k": [1, 2]}``.

    Raises:
        InputError: a spec is not ``key=v1,v2,...``, the key is unknown or repeated, or a
            value does not parse.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lower()
        if not sep or not values.strip():
            raise InputError(f"bad sweep {spec!r}: write key=v1,v2,... e.g. alpha=0.5,0.95")
        if key not in SWEEP_KEYS:
            raise InputError(
                f"cannot sweep {key!r}; sweepable keys: {', '.join(SWEEP_KEYS)} (e.g. alpha=0.5,1)"
            )
        if key in grid:
            raise InputError(f"sweep key {key!r} given twice; list all its values once")
        cast = SWEEP_KEYS[key]
        parsed = []
        for text in values.split(","):
            try:
                parsed.append(cast(text.strip()))
            except ValueError:
                raise InputError(
                    f"bad value {text.strip()!r} for {key} in sweep {spec!r}: "
                    f"expected {'an integer' if cast is int else 'a number'}"
                ) from None
        grid[key] = list(dict.fromkeys(parsed))
    return grid


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """Every combination of the grid's values, as ``{key: value}`` dicts."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def check_points(points: Sequence[Point], method: str, config: GlobalLocalConfig) -> None:
    """Fail early on values the config rejects, or keys the method pins (nothing to sweep).

    Raises:
        InputError: e.g. ``alpha=1.5``, or sweeping alpha with ``global-only`` (alpha = 1).
    """
    for point in points:
        try:
            wanted = replace(config, **point)
        except (TypeError, ValueError) as exc:
            raise InputError(f"sweep point {point_label(point)}: {exc}") from None
        _, effective = resolve_method(method, wanted)
        for key, value in point.items():
            if getattr(effective, key) != value:
                raise InputError(
                    f"method {method!r} fixes {key}={getattr(effective, key)}, so sweeping {key} "
                    "changes nothing; sweep another key or use --method global-local"
                )


def check_system_points(points: Sequence[Point], system: Any) -> None:
    """Fail early on points a :class:`~refseg.systems.System` rejects or pins.

    Raises:
        InputError: a key the system has no option for (e.g. ``threshold`` for
            global-local), a bad value, or a key the system fixes.
    """
    for point in points:
        try:
            effective = system.query_params(**point)
        except InputError as exc:
            raise InputError(f"sweep point {point_label(point)}: {exc}") from None
        for key, value in point.items():
            if key in effective and effective[key] != value:
                raise InputError(
                    f"{system.name} fixes {key}={effective[key]} here, so sweeping {key} "
                    "changes nothing; sweep another key"
                )


def point_label(point: Mapping[str, Any]) -> str:
    """``{"alpha": 0.5, "k": 2}`` -> ``"alpha=0.5,k=2"``."""
    return ",".join(f"{key}={value:g}" for key, value in point.items())


def sweep_rows(points: Sequence[Point], results: Sequence[MetricsResult]) -> list[dict[str, Any]]:
    """One JSON-ready row per point: its values, then the metrics (as ``to_dict``)."""
    return [
        {**point, **result.to_dict()} for point, result in zip(points, results, strict=True)
    ]


def sweep_markdown(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], title: str) -> str:
    """A Markdown table of sweep rows; the best mIoU and oIoU are in bold."""
    precision = [k for k in (rows[0] if rows else {}) if k.startswith("precision@")]
    metrics = ["oIoU", "mIoU", *precision]
    best = {m: max((row[m] for row in rows), default=None) for m in ("oIoU", "mIoU")}
    header = [*keys, *(m.replace("precision@", "P@") for m in metrics)]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for row in rows:
        cells = [f"{row[k]:g}" for k in keys]
        for metric in metrics:
            text = f"{row[metric]:.2f}"
            cells.append(f"**{text}**" if best.get(metric) == row[metric] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{rows[0]['n_expressions'] if rows else 0} expressions per point."]
    return "\n".join(lines) + "\n"


__all__ = [
    "SWEEP_KEYS",
    "check_points",
    "check_system_points",
    "grid_points",
    "parse_sweep",
    "point_label",
    "sweep_markdown",
    "sweep_rows",
]
