"""``refseg score``: metrics of a predictions file on a dataset split.

Expressions without a prediction are scored as IoU 0 and reported; predictions whose
``sent_id`` is not in the split are ignored with a warning.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from refseg.commands.dataset_options import add_dataset_arguments
from refseg.commands.options import check_output_file
from refseg.errors import DatasetError, InputError

if TYPE_CHECKING:  # the command's parser is built on every `refseg --help`: keep it light
    from refseg.eval.metrics import MetricsResult


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a predictions file (oIoU, mIoU, precision@X)",
        description=(
            "Score a predictions file (JSON list of {sent_id, segmentation: COCO RLE}) "
            "against a dataset split. Missing expressions count as IoU 0."
        ),
        epilog="""examples:
  refseg score --dataset data --name shapesref --split val \\
      --predictions runs/x/predictions.json
  refseg score --dataset refer/data --name refcocog --split-by umd --split val \\
      --predictions pred.json --out metrics.json
""",
    )
    add_dataset_arguments(parser)
    parser.add_argument("--split", required=True, help="split to score, e.g. val, testA, test")
    parser.add_argument("--predictions", required=True, metavar="PRED.json")
    parser.add_argument(
        "--out", metavar="METRICS.json", help="also write the metrics as JSON (default: only print)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out:
        check_output_file(args.out, "--out")
    from refseg.data import open_dataset
    from refseg.eval.predictions import read_predictions, score_predictions, write_json_atomic

    dataset = open_dataset(
        args.dataset, args.name, args.split, split_by=args.split_by, image_dir=args.images
    )
    if dataset.num_expressions == 0:
        raise DatasetError(f"{args.name} {args.split} has no expressions; nothing to score")
    predictions = read_predictions(args.predictions)
    report = score_predictions(dataset, predictions)
    unmatched = len(report.unmatched_sent_ids)
    if predictions and unmatched > len(predictions) / 2:
        shown = ", ".join(str(s) for s in report.unmatched_sent_ids[:5])
        raise InputError(
            f"{unmatched} of {len(predictions)} predictions have sent_ids that are not in "
            f"{args.name} {args.split} (e.g. {shown}): are they for another split or dataset?"
        )
    if report.unmatched_sent_ids:
        shown = ", ".join(str(s) for s in report.unmatched_sent_ids[:5])
        print(
            f"refseg: warning: {len(report.unmatched_sent_ids)} predictions have sent_ids "
            f"not in {args.name} {args.split} (e.g. {shown}); they were ignored",
            file=sys.stderr,
        )
    scheme = getattr(dataset, "split_by", None)
    title = f"{args.name} {args.split}" + (f" ({scheme})" if scheme else "")
    print(format_table(report.metrics, title))
    if args.out:
        write_json_atomic(args.out, report.metrics.to_dict(), indent=2)
        print(f"wrote {args.out}")
    return 0


def format_table(metrics: MetricsResult, title: str) -> str:
    """An aligned text table: one row per metric, one column overall plus one per group."""
    n, missing = metrics.n_expressions, metrics.n_missing + metrics.n_no_proposals
    lines = [f"{title}: {n} expressions, {missing} without prediction (scored as IoU 0)"]
    columns = {"all": metrics.to_dict()} | {
        name: group.to_dict() for name, group in metrics.groups.items()
    }
    keys = [key for key in columns["all"] if key != "groups"]
    rows = [["metric", *columns]]
    for key in keys:
        rows.append([key, *(_cell(values.get(key)) for values in columns.values())])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
