"""``refseg eval``: run a system on a dataset split and score it (cached, resumable, sharded).

    refseg eval --dataset data/refer --name refcoco --split val --proposals sam --out runs/rc
    refseg eval ... --shard 0/4 --out runs/rc-0    # then: refseg merge runs/rc-* --out runs/rc
    refseg eval ... --sweep alpha=0.5,0.85,0.95,1.0 k=1,2,3
    refseg eval ... --system maskclip --clip shapes-vit --sweep threshold=0.3,0.5,0.7
    torchrun --nproc_per_node 4 -m refseg eval ... --out runs/rc   # ranks split the images

Rerunning the same command into the same --out resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from refseg.commands.dataset_options import add_dataset_arguments
from refseg.commands.options import (
    SAM_NAMES_HELP,
    add_model_options,
    apply_runtime_options,
    check_device,
    check_max_pixels,
    check_output_dir,
    load_system,
)
from refseg.errors import DatasetError, InputError

PROPOSALS_HELP = (
    f"auto | {SAM_NAMES_HELP} | superpixel | gt (ground-truth masks from instances.json: "
    "enables mc-acc) | a COCO-results JSON file (the paper used FreeSOLO's)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a method on a dataset split (resumable, shardable, sweeps)",
        description="Evaluate a segmentation method on a dataset split: predictions, metrics "
        "and a report in --out. Rerun the same command to resume an interrupted run.",
        epilog="""examples:
  refseg data shapes data                  # ShapesRef, offline, in data/shapesref
  refseg eval --dataset data --name shapesref --split val --clip shapes-vit \\
      --proposals superpixel --limit 20
  refseg eval --dataset refer/data --name refcoco --split val --proposals sam \\
      --sweep alpha=0.85,0.95 k=2,3
  refseg eval ... --shard 0/2 --out runs/s0     # and on another machine:
  refseg eval ... --shard 1/2 --out runs/s1
  refseg merge runs/s0 runs/s1                  # the whole split's metrics and report
""",
    )
    data = parser.add_argument_group("data")
    add_dataset_arguments(data)
    data.add_argument("--split", required=True, help="val, testA, testB, test, ...")
    data.add_argument(
        "--limit", type=int, metavar="N", help="only the first N images (default: all)"
    )

    model = parser.add_argument_group("method")
    add_model_options(
        model,
        proposals_help=PROPOSALS_HELP,
        alpha_help="global/local visual mix (default: the model's recommended value; for "
        "real CLIPs 0.95 on RefCOCO/+ and 0.85 on RefCOCOg, as in the paper)",
    )

    options = parser.add_argument_group("run")
    options.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<...>)")
    options.add_argument(
        "--shard",
        metavar="I/N",
        help="evaluate slice I of N, 0-based: 0/4 .. 3/4 (combine with refseg merge; "
        "default: the whole split)",
    )
    options.add_argument(
        "--sweep",
        nargs="+",
        action="extend",
        metavar="KEY=V1,V2",
        help="also score a grid over alpha, beta, k (global-local) or threshold (dense "
        "systems) from the same cached features (e.g. alpha=0.5,0.85,0.95,1.0 k=1,2,3; "
        "default: only the chosen values)",
    )
    options.add_argument(
        "--structure",
        choices=("cached", "reference"),
        default="cached",
        help="'reference' recomputes the image per referent and text one at a time "
        "(for benchmarking only; same results)",
    )
    options.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)
    return parser


def default_run_dir(
    args: argparse.Namespace,
    split_by: str | None,
    shard_stem: str | None,
    described: dict[str, Any] | None = None,
) -> Path:
    """``runs/<name>-<split_by>-<split>[-<system>]-<clip>[-<proposals>][-<method>]
    [-shard-I-of-N]``: the system when not global-local; clip and proposals as given, else
    as the system describes them (``described``)."""
    described = described or {}
    clip = args.clip or described.get("clip")
    proposals = args.proposals or described.get("proposals")
    parts = [args.name, split_by, args.split]
    if args.system != "global-local":
        parts.append(Path(args.system).name)
    parts.append(Path(clip).name if clip else None)
    parts.append(Path(proposals).stem if proposals else None)
    if args.method and args.method != "global-local":
        parts.append(args.method)
    if shard_stem:
        parts.append(shard_stem)
    name = "-".join(re.sub(r"[^A-Za-z0-9.+]+", "_", str(p)) for p in parts if p)
    return Path("runs") / name


def run(args: argparse.Namespace) -> int:

    from refseg.clip.recommended import recommended_defaults
    from refseg.commands.report import report_after_run
    from refseg.commands.score import format_table
    from refseg.data import ReferDataset, open_dataset
    from refseg.eval import distributed
    from refseg.eval.metrics import strict_precision
    from refseg.eval.report import PIXELS_DESCRIPTION
    from refseg.eval.runner import EvalRunner, Shard
    from refseg.eval.sweep import check_system_points, grid_points, parse_sweep
    from refseg.methods import ALPHA_BY_DATASET
    from refseg.systems.base import factory_options

    launch = distributed.torchrun_launch()
    if launch is not None and args.shard:
        raise InputError("under torchrun the processes split the images; drop --shard")
    shard = Shard.parse(args.shard) if args.shard else Shard()
    if launch is not None:
        shard = Shard(launch.rank, launch.world_size)
    points = grid_points(parse_sweep(args.sweep)) if args.sweep else []
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1; got {args.limit}")
    check_device(args.device)
    check_max_pixels(args.max_pixels)
    apply_runtime_options(args)
    dataset = open_dataset(
        args.dataset, args.name, args.split, split_by=args.split_by, image_dir=args.images
    )
    if dataset.num_expressions == 0:
        raise DatasetError(f"{args.name} {args.split} has no expressions; nothing to evaluate")
    if args.out:
        check_output_dir(Path(args.out), "--out")  # before any model loads
    alpha, sources = args.alpha, None
    if alpha is None and "alpha" in factory_options(args.system):
        # The model's own recommendation wins; else the paper's alpha for the dataset.
        if "alpha" not in recommended_defaults(args.clip, args.system):
            alpha = ALPHA_BY_DATASET.get(args.name.lower())
            sources = {"alpha": "dataset"} if alpha is not None else None
    proposals: Any = None
    if args.proposals == "gt":
        if not isinstance(dataset, ReferDataset):
            raise InputError("gt proposals need a refer-layout dataset with instances.json")
        from refseg.proposals.ground_truth import GroundTruthProposals

        proposals = GroundTruthProposals(dataset.root / dataset.name / "instances.json")
    system = load_system(args, alpha=alpha, proposals=proposals, value_sources=sources)
    check_system_points(points, system)
    split_by = getattr(dataset, "split_by", None)
    if launch is None:
        out = Path(args.out) if args.out else None
        out = out or default_run_dir(args, split_by, shard_stem(shard), system.describe())
        run_dir = out
    else:
        out = Path(args.out) if args.out else None
        out = out or default_run_dir(args, split_by, None, system.describe())
        run_dir = distributed.shard_dir(out, shard.stem)
    check_output_dir(run_dir, "--out")
    check_k = getattr(system, "check_k", None)
    if callable(check_k):  # an explicit k deeper than the ViT is refused, not clamped
        for k in [args.k, *(point.get("k") for point in points)]:
            check_k(k)
    settings: dict[str, Any] = {"dataset_root": args.dataset, "images": args.images}
    given = {"clip": args.clip, "proposals": args.proposals, "spacy": args.spacy}
    settings.update({key: value for key, value in given.items() if value is not None})
    if args.option:
        settings["options"] = list(args.option)
    runner = EvalRunner(
        system,
        dataset,
        run_dir,
        settings=settings,
        params={
            key: value
            for key, value in (
                ("alpha", alpha),
                ("beta", args.beta),
                ("k", args.k),
                ("threshold", args.threshold),
            )
            if value is not None
        },
        sweep=points,
        shard=shard,
        limit=args.limit,
        structure=args.structure,
        progress=not args.no_progress and (launch is None or launch.main),
        command=["refseg", *sys.argv[1:]],
    )
    if launch is None:
        summary = runner.run()
    else:
        summary = _run_distributed(runner, launch, out)
        if summary is None:
            return 0  # rank 0 reports
    resumed = summary.images - summary.images_computed
    print(
        f"{system.name}: {summary.images} images ({resumed} resumed), "
        f"{summary.expressions} expressions"
        + (
            f"; {summary.no_proposal_images} images had no proposals (scored as IoU 0)"
            if summary.no_proposal_images
            else ""
        )
    )
    title = f"{args.name} {args.split}" + (f" ({split_by})" if split_by else "")
    print(format_table(summary.metrics, title))
    rule = f"precision@X counts {'IoU > X' if strict_precision(args.name) else 'IoU >= X'}"
    pixels = system.query_params(**runner.params).get("pixels")  # global-local's preset
    print(f"pixels: {PIXELS_DESCRIPTION.get(pixels, pixels)}; {rule}" if pixels else rule)
    if summary.sweep:
        print(f"sweep: {len(summary.sweep)} points -> {out / 'sweep.md'}")
    print(f"wrote {out}/ (predictions.json, metrics.json, report.md, config.json)")
    print(report_after_run(out, dataset))
    return 0


def _run_distributed(runner: Any, launch: Any, out: Path) -> Any:
    """Run this rank's shard, wait for all, merge on rank 0 (the others return ``None``)."""
    from dataclasses import replace

    from refseg.eval import distributed
    from refseg.eval.runner import Shard, merge_runs

    with distributed.process_group(launch):
        summary = runner.run()
        counts = distributed.sum_over_ranks(
            [summary.images_computed, summary.expressions, summary.no_proposal_images]
        )
        if launch.main:
            stems = [Shard(i, launch.world_size).stem for i in range(launch.world_size)]
            merged = merge_runs([distributed.shard_dir(out, stem) for stem in stems], out)
            summary = replace(
                summary,
                run_dir=out,
                metrics=merged.metrics,
                images=merged.images,
                images_computed=counts[0],
                expressions=counts[1],
                no_proposal_images=counts[2],
            )
        distributed.barrier()
    return summary if launch.main else None


def shard_stem(shard: Any) -> str | None:
    return None if shard.count == 1 else shard.stem
