"""The dataset options every command that reads a dataset spells the same way.

``--dataset ROOT --name NAME [--split-by S] [--images DIR]``: the root folder (the refer data
folder, or the PhraseCut folder), the dataset's name under it, the refer split scheme and an
image folder. ``refseg eval``, ``score``, ``train clipseg`` and ``train risclip`` all take them.

The trainers once spelt these differently (``train clipseg --data ROOT --dataset NAME``,
``train risclip --dataset ROOT --name NAME``); ``--data`` is kept as a deprecated alias of
``--dataset``, and with ``--data`` given, ``--dataset`` keeps its old meaning of the name, so
the commands recorded in shipped ``TRAINING.json`` files still run.
"""

from __future__ import annotations

import argparse
import sys

from refseg.errors import InputError

NAME_HELP = "refcoco, refcoco+, refcocog, shapesref, phrasecut, ..."


def add_dataset_arguments(
    group: argparse._ActionsContainer,
    *,
    name_default: str | None = None,
    legacy_data: bool = False,
) -> None:
    """Add ``--dataset``, ``--name``, ``--split-by`` and ``--images`` to ``group``.

    Args:
        name_default: default of ``--name`` (``None``: the option is required).
        legacy_data: also accept the trainers' old ``--data ROOT``; call
            :func:`resolve_dataset_arguments` after parsing.
    """
    group.add_argument(
        "--dataset",
        required=not legacy_data,
        metavar="ROOT",
        help="dataset root: the refer data folder, or the PhraseCut folder for --name phrasecut"
        + (" (required; no default)" if legacy_data else ""),
    )
    group.add_argument(
        "--name",
        required=name_default is None and not legacy_data,
        default=None if legacy_data else name_default,
        help=NAME_HELP
        + (f" (default: {name_default})" if name_default else " (required; no default)"),
    )
    group.add_argument(
        "--split-by", help="refer split scheme (default: per dataset: unc; umd for refcocog)"
    )
    group.add_argument(
        "--images", metavar="DIR", help="image folder (default: found under the root)"
    )
    if legacy_data:
        group.add_argument("--data", dest="legacy_data", metavar="ROOT", help=argparse.SUPPRESS)
        group.set_defaults(name_default=name_default)


def resolve_dataset_arguments(args: argparse.Namespace) -> None:
    """Turn the old ``--data ROOT [--dataset NAME]`` spelling into ``--dataset``/``--name``
    (with a note on stderr) and check that a root and a name were given."""
    legacy = getattr(args, "legacy_data", None)
    if legacy is not None:
        if args.dataset is not None and args.name is not None:
            raise InputError(
                "--data is the old spelling of --dataset ROOT; give --dataset ROOT --name NAME"
            )
        if args.dataset is not None:  # old meaning: --dataset was the name
            args.name = args.dataset
        args.dataset = legacy
        print(
            "note: --data ROOT [--dataset NAME] is deprecated; use --dataset ROOT --name NAME",
            file=sys.stderr,
        )
    if args.dataset is None:
        raise InputError("give the dataset root with --dataset ROOT")
    if args.name is None:
        args.name = getattr(args, "name_default", None)
    if args.name is None:
        raise InputError(f"give the dataset name with --name ({NAME_HELP})")
