"""The training loop's command-line options, shared by ``refseg train clip|clipseg|risclip``.

Every option's help shows its default; a model kind overrides defaults (its usual batch
size, ...) and may mark one as set elsewhere (e.g. "the preset's"), in which case it parses
to ``None`` and the command fills it in.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Mapping
from typing import Any

# Defaults of the loop's options as the CLI shows them (LoopConfig's, plus out/steps/batch
# size, which LoopConfig requires).
LOOP_DEFAULTS: dict[str, Any] = {
    "steps": None,
    "batch_size": None,
    "grad_accum": 1,
    "seed": 0,
    "mixed_precision": "no",
    "checkpoint_every": 100,
    "eval_every": 0,
    "log_every": 10,
    "max_grad_norm": None,
    "threads": None,
    "num_workers": 0,
}

_HELP = {
    "steps": "optimiser steps",
    "batch_size": "global batch per optimiser step (all processes x --grad-accum)",
    "grad_accum": "micro-batches per optimiser step on each process",
    "seed": "seed of initialisation, data and batch order",
    "mixed_precision": "autocast precision (fp16 needs CUDA)",
    "checkpoint_every": "write OUT/checkpoint.pt every N steps (also at the end and on "
    "Ctrl-C/SIGTERM)",
    "eval_every": "validate every N steps and keep the best in OUT/best (0: only at the end)",
    "log_every": "append the mean training loss to OUT/metrics.jsonl every N steps",
    "max_grad_norm": "clip the gradient norm (none: no clipping)",
    "threads": "torch CPU threads per process (none: torch's default)",
    "num_workers": "DataLoader worker processes per process",
}
_TYPES = {"max_grad_norm": float}


def add_loop_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    defaults: Mapping[str, Any] | None = None,
    *,
    set_elsewhere: Mapping[str, str] | None = None,
) -> None:
    """Add ``--out --steps --batch-size --grad-accum --seed --mixed-precision
    --checkpoint-every --eval-every --log-every --max-grad-norm --threads --num-workers
    --resume --no-progress``.

    Args:
        defaults: overrides of :data:`LOOP_DEFAULTS` for this model kind.
        set_elsewhere: options whose default comes from elsewhere, with the words shown in
            ``--help`` (e.g. ``{"steps": "the preset's"}``); they parse to ``None``.
            An option with neither a default nor such a note is required.
    """
    values = {**LOOP_DEFAULTS, **(defaults or {})}
    elsewhere = dict(set_elsewhere or {})
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    for name, default in values.items():
        flag = "--" + name.replace("_", "-")
        if name == "mixed_precision":
            parser.add_argument(
                flag,
                default=default,
                choices=("no", "fp16", "bf16"),
                help=f"{_HELP[name]} (default: {default})",
            )
            continue
        shown = elsewhere.get(name, "none" if default is None else str(default))
        required = default is None and name in ("steps", "batch_size") and name not in elsewhere
        parser.add_argument(
            flag,
            type=_TYPES.get(name, int),
            default=None if name in elsewhere else default,
            required=required,
            metavar="N",
            help=_HELP[name] + ("" if required else f" (default: {shown})"),
        )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (same options); the result equals an "
        "uninterrupted run",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def loop_config_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    """The :class:`refseg.train.loop.LoopConfig` of parsed :func:`add_loop_arguments`
    options; ``overrides`` fill options set elsewhere (and win over the parsed values)."""
    from refseg.train.loop import LoopConfig

    names = {f.name for f in dataclasses.fields(LoopConfig)}
    options = {name: getattr(args, name) for name in LOOP_DEFAULTS if name in names}
    options.update(out_dir=args.out, resume=args.resume, progress=not args.no_progress)
    options["command"] = invoked_command()
    options.update(overrides)
    return LoopConfig(**options)


def invoked_command() -> str | None:
    """The command line as typed (``refseg ...``), for TRAINING.json; ``None`` when refseg
    was called as a library."""
    return shlex.join(["refseg", *sys.argv[1:]]) if sys.argv[1:] else None
