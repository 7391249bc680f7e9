"""``refseg report RUN_DIR [RUN_DIR ...]``: the HTML report of finished ``refseg eval`` runs.

One run: ``RUN_DIR/report.html`` and its figures (``report-*.png``) beside it. Several runs
of one split: a page with them side by side and the expressions on which they disagree
(right = IoU >= 0.5), in ``--out`` (default ``compare/`` beside the first run).
``refseg eval`` and ``refseg merge`` write the single-run report themselves
(:func:`report_after_run`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from refseg.errors import RefsegError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="HTML report (plots, gallery) of eval runs; several runs side by side",
        description="Write report.html (self-contained: images embedded, opens offline) and "
        "its figures as PNG files for one finished run directory, or for several runs of one "
        "split side by side with the expressions on which they disagree (right: IoU >= 0.5). "
        "Needs matplotlib (pip install 'refseg[report]').",
        epilog="""examples:
  refseg report runs/shapesref-unc-val-shapes-vit-superpixel
  refseg report runs/a runs/b --out runs/a-vs-b       # two runs of one split compared
""",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    parser.add_argument(
        "--out", metavar="DIR",
        help="where to write (default: the run; several: <first>/../compare)",
    )
    parser.add_argument(
        "--gallery", type=int, default=8, metavar="N",
        help="predictions per gallery section: worst, best, random (default 8)",
    )
    parser.add_argument(
        "--pairs", type=int, default=6, metavar="N",
        help="side-by-side pictures per direction when comparing (all are listed; default 6)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from refseg.eval.html_report import ReportOptions, write_report

    options = ReportOptions(gallery=args.gallery, pairs=args.pairs, seed=args.seed)
    summary = write_report(args.run_dirs, Path(args.out) if args.out else None, options=options)
    print(_describe(summary))
    for pair in summary.disagreements:
        print(
            f"{pair.a.name} right, {pair.b.name} wrong: {len(pair.a_only_right)}; "
            f"{pair.b.name} right, {pair.a.name} wrong: {len(pair.b_only_right)}"
        )
    return 0


def _describe(summary: Any) -> str:
    figures = ", ".join(path.name for path in summary.figures) or "no figures"
    line = f"wrote {summary.path} ({figures})"
    if summary.gallery_note:
        line += f"\ngallery skipped: {summary.gallery_note}"
    return line


def report_after_run(run_dir: Path, dataset: Any = None) -> str:
    """Write a finished run's HTML report; the line to print. Never fails the run: without
    matplotlib, or on a user error, the line says the report was skipped and why."""
    from refseg.eval.html_report import write_report

    try:
        return _describe(write_report([run_dir], dataset=dataset))
    except RefsegError as exc:
        return f"HTML report skipped: {exc}"
