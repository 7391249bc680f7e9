"""``refseg train MODEL``: train models on the one training loop (:mod:`refseg.train.loop`).

``refseg train clip`` trains a tiny CLIP preset on ShapesRef (the packaged demo models);
``refseg train clipseg`` a CLIPSeg decoder (:mod:`refseg.commands.train_clipseg`);
``refseg train risclip`` one RISCLIP stage (:mod:`refseg.risclip.command`). The loop's
options (:func:`refseg.train.loop.add_loop_arguments`) are shared by every model kind;
``--help`` shows every default, and the options a preset sets say so.
"""

from __future__ import annotations

import argparse

from refseg.train.contrastive import (
    POOL_CAP,
    PRESET_TRAINING,
    PRESETS,
    ContrastiveConfig,
    train_contrastive,
)
from refseg.train.options import add_loop_arguments, loop_config_from_args

# Fields of ContrastiveConfig the `clip` command takes from the command line when given.
_CLIP_OPTIONS = (
    "steps",
    "batch_size",
    "seed",
    "lr",
    "warmup_steps",
    "pool_size",
    "held_out_size",
    "on_the_fly",
    "negatives",
    "positions",
    "crop_fraction",
    "probe_scenes",
    "probe_seed",
    "init",
    "negative_weight",
    "composition",
    "twins",
    "max_objects",
    "spatial_readout",
    "token_readout",
    "lock_image",
    "image_lr_scale",
    "structure_weight",
    "patch_weight",
)


def _presets_epilog() -> str:
    base = ContrastiveConfig(preset="tiny-vit")
    rows = []
    for name in PRESETS:
        values = {**{k: getattr(base, k) for k in _CLIP_OPTIONS}, **PRESET_TRAINING.get(name, {})}
        rows.append(
            f"  {name:<14} {values['steps']:>6} {values['batch_size']:>6} "
            f"{values['lr']:>8.0e} {values['warmup_steps']:>7}"
        )
    return "\n".join(
        [
            "presets (training defaults; shapes-* are the shipped models, tiny-* for tests):",
            f"  {'preset':<14} {'steps':>6} {'batch':>6} {'lr':>8} {'warmup':>7}",
            *rows,
            "",
            "examples:",
            "  refseg train clip --preset shapes-vit --out runs/vit --threads 1",
            "  refseg train clip --preset shapes-vit --out runs/vit --threads 1 --resume",
            "  refseg train clip --preset shapes-vit --out runs/negclip --threads 1 "
            "--on-the-fly --positions --negatives 3 --eval-every 100 --probe-scenes 100",
            "  torchrun --nproc_per_node 2 -m refseg train clip --preset shapes-vit "
            "--out runs/vit --threads 1",
            "",
            "Ctrl-C or SIGTERM writes OUT/checkpoint.pt after the current step; --resume "
            "continues and gives the same weights as an uninterrupted run.",
        ]
    )


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
            "load_clip), checkpoint.pt for --resume and metrics.jsonl. Runs on one process "
            "or under torchrun / accelerate launch."
        ),
        epilog=_presets_epilog(),
    )
    clip.add_argument("--preset", required=True, choices=list(PRESETS), help="see below")
    add_loop_arguments(
        clip,
        {"seed": 0},
        set_elsewhere={"steps": "the preset's", "batch_size": "the preset's"},
    )
    base = ContrastiveConfig(preset="tiny-vit")
    clip.add_argument(
        "--init",
        metavar="CLIP",
        help="start from this CLIP (a name such as shapes-vit, or a saved directory) and keep "
        "its tokenizer; it must be the --preset's architecture (default: random weights)",
    )
    clip.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    clip.add_argument(
        "--warmup-steps", type=int, metavar="N", help="linear warm-up (default: the preset's)"
    )
    clip.add_argument(
        "--pool-size",
        type=int,
        metavar="N",
        help=f"pairs rendered up front (default: min({POOL_CAP}, steps x batch size))",
    )
    clip.add_argument(
        "--held-out-size",
        type=int,
        metavar="N",
        help=f"held-out pairs for the retrieval accuracy (default: {base.held_out_size})",
    )
    negclip = clip.add_argument_group(
        "hard negatives (NegCLIP; the shipped models use none of these)"
    )
    negclip.add_argument(
        "--on-the-fly",
        action="store_true",
        default=None,
        help="render fresh pairs every step (steps x batch size of them) instead of a pool",
    )
    negclip.add_argument(
        "--negatives",
        type=int,
        metavar="N",
        help=f"hard negative captions per scene pair, NegCLIP loss (needs --on-the-fly; "
        f"default: {base.negatives})",
    )
    negclip.add_argument(
        "--positions",
        action="store_true",
        default=None,
        help='scene captions may say where an object lies ("... on the left"; needs --on-the-fly)',
    )
    negclip.add_argument(
        "--crop-fraction",
        type=float,
        metavar="F",
        help=f"share of single-object crop pairs on the fly (default: {base.crop_fraction})",
    )
    negclip.add_argument(
        "--negative-weight",
        type=float,
        metavar="W",
        help="add W x a focused loss: each image against its own caption and own hard "
        f"negatives only (default: {base.negative_weight}, plain NegCLIP)",
    )
    negclip.add_argument(
        "--composition",
        type=float,
        metavar="F",
        help="share of scene pairs captioned like the probes: a relation, two objects, a "
        f"position (needs --on-the-fly; default: {base.composition})",
    )
    negclip.add_argument(
        "--twins",
        action="store_true",
        default=None,
        help="image-side hard negatives: relation, position and two-object pairs bring a twin "
        "scene (mirrored, or colours swapped) for which their caption is false into the batch "
        "(needs --on-the-fly; one process)",
    )
    negclip.add_argument(
        "--max-objects",
        type=int,
        metavar="N",
        help="at most N objects per training scene (needs --on-the-fly; default: ShapesRef's "
        "2-6; evaluation keeps them)",
    )
    negclip.add_argument(
        "--spatial-readout",
        action="store_true",
        default=None,
        help="ViT presets: add a zero-initialised linear map of all patch tokens to the image "
        "embedding, so it can say where things are (with --init: only that map is new)",
    )
    negclip.add_argument(
        "--token-readout",
        type=int,
        metavar="H",
        help="ViT presets: add a zero-initialised per-token MLP (hidden width H) of the final "
        "patch tokens, mean-pooled into the image embedding (with --init: only it is new; "
        f"default: {base.token_readout}, none)",
    )
    negclip.add_argument(
        "--lock-image",
        action="store_true",
        default=None,
        help="locked-image tuning: freeze the image tower but for its projection and readouts",
    )
    negclip.add_argument(
        "--image-lr-scale",
        type=float,
        metavar="S",
        help="the image tower learns at S x --lr (its projection and readouts at --lr; "
        f"default: {base.image_lr_scale})",
    )
    negclip.add_argument(
        "--structure-weight",
        type=float,
        metavar="W",
        help="add W x the structure loss: a linear head shared by both towers reads each "
        "object's colour, shape and position from the image embedding and the stated order "
        "from the caption's (needs --on-the-fly; not saved; default: "
        f"{base.structure_weight}, off)",
    )
    negclip.add_argument(
        "--patch-weight",
        type=float,
        metavar="W",
        help="ViT presets, with --structure-weight: add W x a cross entropy in which the head "
        "names the object (colour and shape) under every final patch token of a scene "
        f"(default: {base.patch_weight}, off)",
    )
    negclip.add_argument(
        "--probe-scenes",
        type=int,
        metavar="N",
        help="run the relation/binding/position probes (refseg probe) on N scenes at every "
        "evaluation and keep the best mean(relation, binding) in OUT/best (default: 0, off)",
    )
    negclip.add_argument(
        "--probe-seed",
        type=int,
        metavar="N",
        help=f"seed of those probe scenes (default: {base.probe_seed}; report final figures "
        "with refseg probe on another seed)",
    )
    clip.set_defaults(func=run)
    from refseg.commands.train_clipseg import add_subparser as add_clipseg
    from refseg.risclip.command import add_parser as add_risclip

    add_clipseg(commands)
    add_risclip(commands)


def run(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in _CLIP_OPTIONS}
    config = ContrastiveConfig.for_preset(
        args.preset, **{k: v for k, v in options.items() if v is not None}
    )
    loop = loop_config_from_args(
        args, steps=config.steps, batch_size=config.batch_size, seed=config.seed
    )
    extra = {k: getattr(loop, k) for k in _LOOP_PASS_THROUGH}
    result = train_contrastive(
        config,
        loop.out_dir,
        resume=loop.resume,
        progress=loop.progress,
        command=loop.command,
        **extra,
    )
    if result.main_process:
        numbers = result.record["evaluation"]
        print(
            f"saved {args.out}: final loss {result.record['final_loss']}, held-out "
            f"image->text {numbers.get('image_to_text', float('nan')):.3f}, crop colour+shape "
            f"{numbers.get('crop_color_shape', float('nan')):.3f}, "
            f"{result.record['wall_time_s']} s"
        )
    return 0


# LoopConfig fields train_contrastive takes as loop options (the rest come from the config).
_LOOP_PASS_THROUGH = (
    "grad_accum",
    "mixed_precision",
    "checkpoint_every",
    "eval_every",
    "log_every",
    "max_grad_norm",
    "threads",
    "num_workers",
)
