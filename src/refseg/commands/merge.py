"""``refseg merge RUN_DIR [RUN_DIR ...]``: combine the shards of one ``refseg eval`` run.

Checks that the shards share one configuration and cover ``0..N-1`` exactly once, each
finished, then writes predictions.json, metrics.json, report.md (and the sweep files).
No model or dataset is needed: every shard's partial log holds what the metrics need.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "merge",
        help="combine the shards of a refseg eval run",
        description="Combine the run directories of `refseg eval --shard I/N` (all N of them) "
        "into one set of predictions, metrics and report.",
        epilog="""examples:
  refseg merge runs/s0 runs/s1 runs/s2 runs/s3           # written to runs/merged
  refseg merge runs/s0 runs/s1 --out runs/refcoco-val
""",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="shard run directories")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the merged run (default: <first>/../merged); a merge of another "
        "configuration there is refused, never replaced",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from refseg.commands.report import report_after_run
    from refseg.commands.score import format_table
    from refseg.eval.runner import merge_runs

    out = Path(args.out) if args.out else Path(args.run_dirs[0]).resolve().parent / "merged"
    summary = merge_runs(args.run_dirs, out)
    print(f"merged {summary.shards} shards: {summary.images} images")
    print(format_table(summary.metrics, "merged"))
    print(f"wrote {out}/ (predictions.json, metrics.json, report.md, config.json)")
    print(report_after_run(out))
    return 0
