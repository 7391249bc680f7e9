"""``refseg probe``: relation, attribute-binding and position probes of a CLIP on fresh
ShapesRef scenes (see :mod:`refseg.eval.probe`)."""

from __future__ import annotations

import argparse

_DEFAULT_SCENES = 300


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="does a CLIP read relations, attribute binding and positions? (ShapesRef)",
        description=(
            "Score a CLIP on ShapesRef scenes it never saw: how often the image prefers a true "
            "caption over a clearly false recomposition of its words (relation arguments "
            "swapped, colours swapped between two objects, the opposite side). 50% is chance. "
            "Pairs whose recomposition means the same (ties) or is not clearly false are "
            "counted and left out."
        ),
        epilog="""examples:
  refseg probe                                  # the shipped shapes-vit
  refseg probe --clip shapes-rn --scenes 100 --json probe.json
""",
    )
    parser.add_argument("--clip", default="shapes-vit", help="CLIP name or checkpoint path")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the probe scene stream (default 0)"
    )
    parser.add_argument(
        "--scenes", type=int, default=_DEFAULT_SCENES, help=f"scenes (default {_DEFAULT_SCENES})"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the counts as JSON (default: only print)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from refseg.clip import load_clip
    from refseg.commands.options import check_device
    from refseg.errors import InputError
    from refseg.eval.predictions import write_json_atomic
    from refseg.eval.probe import run_probe

    if args.seed < 0:
        raise InputError(f"--seed must be >= 0; got {args.seed}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    check_device(args.device)
    clip = load_clip(args.clip, device=args.device)
    result = run_probe(clip, args.seed, args.scenes, progress=not args.quiet)
    print(f"{result.clip}: {args.scenes} probe scenes, seed {args.seed} (50% = chance)")
    for kind, count in result.counts.items():
        equal = f" ({count.equal_scores} equal, half each)" if count.equal_scores else ""
        print(
            f"  {kind:<9} {100 * count.accuracy:5.1f}%  {count.hits}/{count.scored} right{equal}; "
            f"left out: {count.ties} ties, {count.not_false} not clearly false "
            f"({count.absent} scenes without a candidate)"
        )
    if args.json:
        write_json_atomic(args.json, result.to_dict(), indent=2)
    return 0
