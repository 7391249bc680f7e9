"""``refseg train clipseg``: train a CLIPSeg decoder over a frozen CLIP on the shared loop.

Data: any refer-layout dataset (``--dataset shapesref|refcoco|...``) or PhraseCut
(``--dataset phrasecut``, ``--data`` the folder holding ``refer_<split>.json``).
"""

from __future__ import annotations

import argparse

from refseg.clipseg.config import resolve_layers
from refseg.clipseg.prompts import TEMPLATE_MODES
from refseg.commands.dataset_options import add_dataset_arguments, resolve_dataset_arguments
from refseg.errors import InputError
from refseg.train.options import add_loop_arguments, loop_config_from_args

EPILOG = """examples:
  refseg train clipseg --dataset DATA --name shapesref --clip shapes-vit --clip-source shapes-vit \\
      --image-size 112 --extract-layers 1,3,4 --ffn-dim 256 --steps 600 --threads 1 --out runs/cs
  refseg train clipseg --dataset PHRASECUT --name phrasecut --steps 50000 --out runs/pc

Defaults follow the official rd64-uni-refined recipe (PhraseCut+, ViT-B/16 at 352, blocks
3,7,9, D=64, FFN 2048, AdamW 1e-3 cosine to 1e-4, batch 64, 20 % negatives, visual supports
mixed with text weight U(0, 0.5), random templates)."""


def _layers(value: str) -> tuple[int, ...]:
    try:
        return resolve_layers(value if not value[:1].isdigit() else value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad block indices {value!r}") from None


def add_subparser(commands: argparse._SubParsersAction) -> None:
    """Register ``clipseg`` under ``refseg train``."""
    parser = commands.add_parser(
        "clipseg",
        help="train a CLIPSeg decoder over a frozen CLIP (text + visual prompts)",
        description=(
            "Train the CLIPSeg decoder (frozen CLIP, BCE on logits, PC+ negatives, visual "
            "supports, prompt templates). Writes model.safetensors (loadable with "
            "refseg.clipseg.load_clipseg) and TRAINING.json to --out."
        ),
        epilog=EPILOG,
    )
    data = parser.add_argument_group("data")
    add_dataset_arguments(data, name_default="shapesref", legacy_data=True)
    data.add_argument("--split", default="train", help="training split (default: train)")
    data.add_argument("--val-split", default="val", help="validation split ('none': no val)")
    model = parser.add_argument_group("model")
    model.add_argument("--clip", default="ViT-B/16", help="frozen CLIP: name or path (a ViT)")
    model.add_argument(
        "--clip-source",
        default=None,
        help="store this CLIP name instead of its weights (decoder-only file; default: the "
        "weights are stored)",
    )
    model.add_argument("--image-size", type=int, default=352, help="input side (default: 352)")
    model.add_argument(
        "--pixel-stats",
        default="imagenet",
        choices=("imagenet", "clip"),
        help="normalisation: ImageNet's (the official decoders') or the CLIP's own",
    )
    model.add_argument(
        "--extract-layers",
        type=_layers,
        default=(3, 7, 9),
        help="0-based CLIP blocks: 'paper' (3,7,9), 'hf_compat' (3,6,9) or e.g. 1,3,4",
    )
    model.add_argument("--reduce-dim", type=int, default=64, help="decoder width D (default: 64)")
    model.add_argument("--ffn-dim", type=int, default=2048, help="decoder FFN (default: 2048)")
    model.add_argument("--plain-head", action="store_true", help="rd64-uni's one-conv head")
    optim = parser.add_argument_group("optimisation and sampling")
    optim.add_argument("--lr", type=float, default=1e-3, help="peak LR (default: 1e-3)")
    optim.add_argument("--lr-min", type=float, default=1e-4, help="final LR (default: 1e-4)")
    optim.add_argument("--negative-prob", type=float, default=0.2, help="PC+ negatives (0.2)")
    optim.add_argument(
        "--text-weight-max", type=float, default=0.5, help="w ~ U(0, this) (default: 0.5)"
    )
    optim.add_argument("--no-visual", action="store_true", help="text conditionals only")
    optim.add_argument(
        "--template", default="random", choices=TEMPLATE_MODES, help="text prompt templates"
    )
    optim.add_argument(
        "--variants", type=int, default=1, help="random draws per sample (default: 1)"
    )
    optim.add_argument(
        "--eval-expressions", type=int, default=300, help="val expressions per evaluation"
    )
    add_loop_arguments(parser, {"batch_size": 64, "steps": 20000, "seed": 0})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refseg.clipseg.data import SampleConfig
    from refseg.clipseg.task import CLIPSegTask, CLIPSegTaskConfig
    from refseg.train.loop import train

    resolve_dataset_arguments(args)
    if args.image_size <= 0:
        raise InputError(f"--image-size must be positive; got {args.image_size}")
    sample = SampleConfig(
        image_size=args.image_size,
        negative_prob=args.negative_prob,
        visual_support=not args.no_visual,
        text_weight_max=args.text_weight_max,
        template=args.template,
        seed=args.seed,
        variants=args.variants,
    )
    config = CLIPSegTaskConfig(
        data_root=args.dataset,
        dataset=args.name,
        split=args.split,
        val_split=None if args.val_split.lower() == "none" else args.val_split,
        split_by=args.split_by,
        image_dir=args.images,
        clip=args.clip,
        clip_source=args.clip_source,
        image_size=args.image_size,
        pixel_stats=args.pixel_stats,
        extract_layers=args.extract_layers,
        reduce_dim=args.reduce_dim,
        refined=not args.plain_head,
        ffn_dim=args.ffn_dim,
        lr=args.lr,
        lr_min=args.lr_min,
        sample=sample,
        eval_expressions=args.eval_expressions,
    )
    loop = loop_config_from_args(args)
    result = train(CLIPSegTask(config), loop)
    if result.main_process:
        evaluation = result.record.get("evaluation") or {}
        chosen = result.model.config.threshold
        print(
            f"saved {args.out}: final loss {result.record.get('final_loss')}; val mIoU "
            f"{evaluation.get(f'miou@{chosen}', float('nan')):.1f}, oIoU "
            f"{evaluation.get(f'oiou@{chosen}', float('nan')):.1f} at the chosen threshold "
            f"{chosen}"
        )
    return 0
