"""``refseg train clip``: train a tiny CLIP preset on ShapesRef (the packaged demo models).

Options default to ``None`` so :class:`refseg.train.ContrastiveConfig`'s defaults win.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from refseg.train.contrastive import PRESETS, ContrastiveConfig, train_contrastive


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train models", description="Train models shipped with or used by refseg."
    )
    commands = parser.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    clip = commands.add_parser(
        "clip",
        help="train a tiny CLIP on ShapesRef (contrastive, deterministic on CPU)",
        description=(
            "Train a tiny CLIP preset on ShapesRef image/caption pairs. Writes "
            "model.safetensors, tokenizer.json and TRAINING.json to --out (loadable with "
            "load_clip), and checkpoint.pt periodically for --resume."
        ),
    )
    clip.add_argument("--preset", required=True, choices=sorted(PRESETS))
    clip.add_argument("--out", required=True, metavar="DIR", help="output directory")
    clip.add_argument("--steps", type=int, default=None, help="optimiser steps")
    clip.add_argument("--seed", type=int, default=None, help="seed of data, init and batches")
    clip.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    clip.add_argument("--batch-size", type=int, default=None)
    clip.add_argument("--lr", type=float, default=None, help="peak learning rate")
    clip.add_argument("--pool-size", type=int, default=None, help="pairs rendered up front")
    clip.add_argument(
        "--resume", action="store_true", help="continue from DIR/checkpoint.pt (same options)"
    )
    clip.add_argument("--no-progress", action="store_true", help="no progress bar")
    clip.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = {
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "pool_size": args.pool_size,
    }
    config = ContrastiveConfig.for_preset(
        args.preset, **{k: v for k, v in options.items() if v is not None}
    )
    command = shlex.join(["refseg", *sys.argv[1:]]) if sys.argv[1:] else None
    result = train_contrastive(
        config, args.out, resume=args.resume, progress=not args.no_progress, command=command
    )
    record = result.record
    crops = record["crop_accuracy"] or {}
    print(
        f"saved {args.out}: final loss {record['final_loss']}, held-out image->text "
        f"{record['held_out_retrieval']['image_to_text']:.3f}, crop colour+shape "
        f"{crops.get('color_shape', float('nan')):.3f}, {record['wall_time_s']} s"
    )
    return 0
