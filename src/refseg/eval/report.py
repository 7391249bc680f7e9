"""Markdown reports of evaluation runs, beside the numbers the paper reports.

- :func:`run_report`: the ``report.md`` of one run (settings, metrics, per-kind breakdown).
- :func:`collect_table`: one table over many run directories (``scripts/reproduce_paper.sh``
  ends with it): ``python -m refseg.eval.report OUT_DIR [...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from refseg.eval.metrics import MetricsResult, strict_precision
from refseg.fileio import write_atomic

# Yu, Seo, Son, "Zero-shot Referring Image Segmentation with Global-Local Context Features",
# CVPR 2023, Table 1 (SPEC section 1): mIoU of Global-Local CLIP with FreeSOLO proposals and
# CLIP ViT-B/32, keyed by (dataset, split_by, split). Listed in the paper's column order.
PAPER_MIOU: dict[tuple[str, str, str], float] = {
    ("refcoco", "unc", "val"): 26.20,
    ("refcoco", "unc", "testA"): 24.94,
    ("refcoco", "unc", "testB"): 26.56,
    ("refcoco+", "unc", "val"): 27.80,
    ("refcoco+", "unc", "testA"): 25.64,
    ("refcoco+", "unc", "testB"): 27.84,
    ("refcocog", "umd", "val"): 33.52,
    ("refcocog", "umd", "test"): 33.67,
    ("refcocog", "google", "val"): 33.61,
}
PAPER_CLIP = "ViT-B/32"
PAPER_SETTING = "Yu et al. CVPR 2023: FreeSOLO proposals, CLIP ViT-B/32"

# What each pixel preset is (refseg.methods.pixels); runs from before the presets existed
# record none and used the clean pipeline.
PIXELS_DESCRIPTION = {
    "reference": "reference (the authors' code: 800-px ImageNet-normalised, FreeSOLO box)",
    "clean": "clean (CLIP statistics, tight box, bicubic)",
}
PIXELS_BEFORE_PRESETS = "clean"


def run_pixels(config: Mapping[str, Any]) -> str:
    """The pixel preset a run used (``clean`` for runs that predate the presets)."""
    return str(config.get("params", {}).get("pixels") or PIXELS_BEFORE_PRESETS)


def paper_miou(dataset: str | None, split_by: str | None, split: str | None, clip: str | None
               ) -> float | None:
    """The paper's mIoU for this split and CLIP, or ``None`` when the paper has none."""
    if not _same_clip(clip, PAPER_CLIP):
        return None
    return PAPER_MIOU.get((str(dataset).lower(), str(split_by), str(split)))


def _same_clip(name: str | None, wanted: str) -> bool:
    def simple(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    return name is not None and simple(name) == simple(wanted)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def run_report(
    config: Mapping[str, Any],
    metrics: MetricsResult,
    *,
    images: int,
    no_proposal_images: int = 0,
) -> str:
    """Markdown report of one run (``config`` as in config.json)."""
    settings = config.get("settings", {})
    params = config.get("params", {})
    name, split, split_by = settings.get("dataset"), settings.get("split"), settings.get("split_by")
    title = f"{name} {split}" + (f" ({split_by})" if split_by else "")
    shard = config.get("shard")
    where = "merged shards" if config.get("merged_from") else f"shard {shard}"
    lines = [f"# refseg eval: {title}", ""]
    lines += ["| setting | value |", "|---|---|"]
    knobs = ", ".join(f"{k} {v}" for k, v in params.items())
    if settings.get("dense"):  # a dense system: no method, pixel preset, proposals, phrases
        lines.append(f"| system | {settings.get('system')} ({knobs}), dense |")
        lines.append(f"| CLIP | {settings.get('clip')} |")
    else:
        lines.append(f"| method | {settings.get('method')} ({knobs}) |")
        lines.append(f"| CLIP | {settings.get('clip')} |")
        pixels = run_pixels(config)
        lines.append(f"| pixels | {PIXELS_DESCRIPTION.get(pixels, pixels)} |")
        lines.append(f"| proposals | {settings.get('proposals')} |")
        lines.append(f"| noun phrases | {settings.get('phrases') or 'whole sentence (no spaCy)'} |")
    no_prop = f" ({no_proposal_images} without proposals: IoU 0)" if no_proposal_images else ""
    lines.append(f"| images | {images}{no_prop}, {where} |")
    lines.append(f"| expressions | {metrics.n_expressions} |")
    rule = "IoU > X (the benchmark's rule)" if strict_precision(name) else "IoU >= X"
    lines.append(f"| precision@X counts | {rule} |")
    lines.append("")

    paper = paper_miou(name, split_by, split, settings.get("clip"))
    values = metrics.to_dict()
    header = "| metric | this run |" + (" paper |" if paper is not None else "")
    lines += [header, "|---|---:|" + ("---:|" if paper is not None else "")]
    for key, value in values.items():
        if key in ("groups", "n_expressions") or key.startswith("n_"):
            continue
        row = f"| {key} | {_fmt(value)} |"
        if paper is not None:
            row += f" {_fmt(paper) if key == 'mIoU' else ''} |"
        lines.append(row)
    if paper is not None:
        lines += ["", f"Paper: {PAPER_SETTING}; this run's proposals: {settings.get('proposals')}."]
    if metrics.groups:
        lines += ["", "Per expression kind:", ""]
        lines += ["| kind | n | oIoU | mIoU | P@0.5 |", "|---|---:|---:|---:|---:|"]
        for kind, group in metrics.groups.items():
            p50 = group.precision.get(0.5)
            lines.append(
                f"| {kind} | {group.n_expressions} | {_fmt(group.oiou)} | {_fmt(group.miou)} "
                f"| {_fmt(p50)} |"
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- collecting
def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Finished, complete run directories at or below ``paths``.

    Shard directories (``shard`` other than ``0/1``) are left out: merge them first.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        candidates = [path] if (path / "metrics.json").is_file() else sorted(
            p.parent for p in path.rglob("metrics.json")
        )
        for run in candidates:
            config = _read(run / "config.json")
            if config is None or config.get("shard") not in (None, "0/1"):
                continue
            if run not in found:
                found.append(run)
    return found


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    keys = list(PAPER_MIOU)
    key = (str(row["dataset"]).lower(), str(row["split_by"]), str(row["split"]))
    position = keys.index(key) if key in keys else len(keys)
    return (
        str(row["clip"]), position, str(row["dataset"]), str(row["split"]), str(row["method"]),
        str(row["run"]),
    )


def run_method(settings: Mapping[str, Any]) -> str:
    """``system`` for a dense system, ``method`` for global-local, ``system/method`` for
    another proposal system (runs from before systems existed record only a method)."""
    system, method = settings.get("system"), settings.get("method")
    if system in (None, "global-local"):
        return str(method or "global-local")
    return str(system) if not method or method == system else f"{system}/{method}"


def collect_rows(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per run: what ran, our oIoU / mIoU, and the paper's mIoU where it has one."""
    rows = []
    for run in run_dirs:
        config = _read(run / "config.json") or {}
        metrics = _read(run / "metrics.json") or {}
        settings = config.get("settings", {})
        paper = paper_miou(
            settings.get("dataset"), settings.get("split_by"), settings.get("split"),
            settings.get("clip"),
        )
        rows.append(
            {
                "run": str(run),
                "method": run_method(settings),
                "dataset": settings.get("dataset"),
                "split_by": settings.get("split_by"),
                "split": settings.get("split"),
                "clip": settings.get("clip"),
                "proposals": settings.get("proposals"),
                "alpha": config.get("params", {}).get("alpha"),
                "pixels": run_pixels(config),
                "n": metrics.get("n_expressions"),
                "oIoU": metrics.get("oIoU"),
                "mIoU": metrics.get("mIoU"),
                "paper_mIoU": paper,
            }
        )
    return sorted(rows, key=_order)


def collect_table(run_dirs: Sequence[Path]) -> str:
    """Markdown table of :func:`collect_rows`, with our mIoU minus the paper's."""
    lines = [
        "| run | method | dataset | split | CLIP | proposals | pixels | alpha | expressions "
        "| oIoU | mIoU | paper mIoU | Δ mIoU |",
        "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in collect_rows(run_dirs):
        ours, paper = row["mIoU"], row["paper_mIoU"]
        delta = f"{ours - paper:+.2f}" if ours is not None and paper is not None else "—"
        split = f"{row['split']} ({row['split_by']})" if row["split_by"] else row["split"]
        proposals = Path(str(row["proposals"])).name
        lines.append(
            f"| {Path(row['run']).name} | {row['method']} | {row['dataset']} | {split} "
            f"| {row['clip']} | {proposals} | {row['pixels']} "
            f"| {_fmt(row['alpha'])} "
            f"| {_fmt(row['n'])} | {_fmt(row['oIoU'])} | {_fmt(ours)} | {_fmt(paper)} "
            f"| {delta} |"
        )
    lines += [
        "",
        f"Paper: {PAPER_SETTING} (mIoU; refseg lists its ViT-B/32 numbers only).",
        "pixels: " + "; ".join(PIXELS_DESCRIPTION.values()) + ".",
    ]
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically, honouring the umask (see :mod:`refseg.fileio`)."""
    write_atomic(path, text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m refseg.eval.report DIR [DIR ...] [--out TABLE.md]``."""
    parser = argparse.ArgumentParser(
        prog="python -m refseg.eval.report",
        description="One Markdown table of finished refseg eval runs beside the paper's mIoU.",
    )
    parser.add_argument("paths", nargs="+", metavar="DIR", help="run directories or their parents")
    parser.add_argument("--out", metavar="TABLE.md", help="also write the table to this file")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        print(f"no finished runs (config.json + metrics.json) under {' '.join(args.paths)}",
              file=sys.stderr)
        return 2
    table = collect_table(runs)
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
