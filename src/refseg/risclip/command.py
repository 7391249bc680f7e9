"""``refseg train risclip``: one RISCLIP training stage on any refer-layout dataset.

Stage 1 (``--stage 1``) trains adapters, CFE and SKE against the patch-level mask; stage 2
(``--stage 2 --init STAGE1_DIR``) trains the decoder alone. The loop's options (``--out``,
``--steps``, ``--batch-size``, ``--mixed-precision``, ``--resume`` ...) are the shared ones of
:func:`refseg.train.loop.add_loop_arguments`; without ``--steps`` the preset's epochs for the
stage are converted to steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refseg.commands.dataset_options import add_dataset_arguments, resolve_dataset_arguments
from refseg.errors import InputError
from refseg.risclip.config import PRESETS, preset


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``risclip`` under ``refseg train``."""
    from refseg.train.options import add_loop_arguments

    parser = commands.add_parser(
        "risclip",
        help="train RISCLIP (stage 1: adapters/CFE/SKE; stage 2: decoder) on a refer dataset",
        description=__doc__.splitlines()[0].replace("``", ""),
        epilog="""examples:
  refseg train risclip --stage 1 --preset shapes --dataset data --name shapesref --out runs/r1
  refseg train risclip --stage 2 --preset shapes --dataset data --name shapesref \\
      --init runs/r1 --out runs/r2
""",
    )
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="vit-b16-refcoco", help="model and training"
    )
    add_dataset_arguments(parser, legacy_data=True)
    parser.add_argument(
        "--init", type=Path, help="stage 2: the stage-1 output directory (default: none)"
    )
    parser.add_argument("--clip", help="CLIP name or path (default: the preset's)")
    parser.add_argument(
        "--epochs", type=float, help="epochs when --steps is not given (default: the preset's)"
    )
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default: the preset's)")
    parser.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="stage 1: square input side; the CLIP's positional table is interpolated to the "
        "grid (default: the preset's; stage 2 runs at its stage-1 checkpoint's)",
    )
    parser.add_argument(
        "--val-limit", type=int, default=500, help="val expressions scored (default: 500)"
    )
    parser.add_argument(
        "--feature-cache-mb",
        type=int,
        default=2048,
        metavar="MB",
        help="stage 2: memory for the frozen stage-1 outputs, memoised per expression "
        "(0: none; default: 2048)",
    )
    for part in ("adapters", "cfe", "ske"):
        parser.add_argument(f"--no-{part}", action="store_true", help=f"ablation: no {part}")
    add_loop_arguments(
        parser,
        {"seed": 0},
        set_elsewhere={"steps": "the preset's epochs", "batch_size": "the preset's"},
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refseg.risclip.task import RisclipTask, RisclipTaskConfig
    from refseg.train.loop import train
    from refseg.train.options import loop_config_from_args

    resolve_dataset_arguments(args)
    overrides = {
        "use_adapters": not args.no_adapters,
        "use_cfe": not args.no_cfe,
        "use_ske": not args.no_ske,
    }
    if args.clip:
        overrides["clip"] = args.clip
    if args.lr:
        overrides["lr"] = args.lr
    if args.image_size is not None:
        if args.stage == 2:
            raise InputError("--image-size is a stage-1 choice: stage 2 runs at its --init's")
        overrides["image_size"] = args.image_size
    model = preset(args.preset, **overrides)
    task = RisclipTask(
        RisclipTaskConfig(
            stage=args.stage,
            model=model,
            data_root=Path(args.dataset),
            dataset=args.name,
            split_by=args.split_by,
            image_dir=Path(args.images) if args.images else None,
            init=args.init,
            val_limit=args.val_limit,
            feature_cache_mb=args.feature_cache_mb,
        )
    )
    batch_size = args.batch_size or model.batch_size
    steps = args.steps
    if steps is None:
        epochs = args.epochs or (model.epochs_stage1 if args.stage == 1 else model.epochs_stage2)
        steps = task.steps_for_epochs(epochs, batch_size)
    config = loop_config_from_args(args, steps=steps, batch_size=batch_size)
    result = train(task, config)
    val = result.record.get("evaluation") or {}
    print(f"saved {config.out_dir}: {task.name}, {steps} steps; val {val}")
    return 0
