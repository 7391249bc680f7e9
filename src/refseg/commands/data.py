"""``refseg data``: generate or prepare datasets. Sub-commands: ``shapes`` (ShapesRef)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from refseg.errors import InputError

_DEFAULT_SEED = 0
_DEFAULT_IMAGES = 1000


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="generate or prepare datasets",
        description="Generate or prepare datasets.",
    )
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    shapes = datasets.add_parser(
        "shapes",
        help="generate ShapesRef, the synthetic referring-expression dataset",
        description=(
            "Generate ShapesRef (coloured shapes on textured backgrounds, with unambiguous "
            "referring expressions) in the refer layout under OUT_DIR/shapesref."
        ),
        epilog="""examples:
  refseg data shapes data                   # writes data/shapesref
  refseg eval --dataset data --name shapesref --split val --clip shapes-vit
""",
    )
    shapes.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="output folder")
    shapes.add_argument(
        "--seed", type=int, default=None, help=f"random seed (default {_DEFAULT_SEED})"
    )
    shapes.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"number of images (default {_DEFAULT_IMAGES})",
    )
    shapes.add_argument("--size", type=int, default=None, help="image side in pixels (default 224)")
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _run_shapes(args: argparse.Namespace) -> int:
    # Imported here so `refseg --help` does not load the generator.
    from refseg.data.shapes import ShapesConfig, write_shapesref

    config = ShapesConfig()
    if args.size is not None:
        config = replace(config, image_size=args.size)
    summary = write_shapesref(
        args.out_dir,
        seed=_DEFAULT_SEED if args.seed is None else args.seed,
        images=_DEFAULT_IMAGES if args.images is None else args.images,
        config=config,
        progress=not args.quiet,
    )
    splits = ", ".join(f"{name} {count}" for name, count in sorted(summary.splits.items()))
    print(
        f"wrote {summary.images} images ({splits}), {summary.refs} refs and "
        f"{summary.sentences} expressions to {summary.root}"
    )
    return 0


_RUNNERS = {"shapes": _run_shapes}


def run(args: argparse.Namespace) -> int:
    runner = _RUNNERS.get(getattr(args, "dataset", None) or "")
    if runner is None:
        raise InputError(
            f"choose a dataset to build: refseg data {{{','.join(_RUNNERS)}}} ... "
            "(see refseg data --help)"
        )
    return runner(args)
