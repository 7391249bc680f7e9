"""``refseg segment IMAGE TEXT [TEXT ...]``: masks (and overlays) for expressions.

Any system (``--system``); dense systems can also write their probability map
(``--heatmap``). ``--prompt-image SUPPORT --prompt-mask SUPPORT_MASK`` gives an example of
the object instead of (or besides) a sentence, for systems that take visual prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refseg.commands.options import (
    add_model_options,
    apply_runtime_options,
    check_device,
    check_max_pixels,
    check_output_file,
    check_texts,
    load_system,
)
from refseg.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment the object each expression describes",
        description="Segment the object each expression describes in IMAGE. With several "
        "expressions, output files get _1, _2, ... before their extension.",
        epilog="""examples:
  refseg segment examples/shapes_scene.png "the red circle" --out mask.png \\
      --clip shapes-vit --proposals superpixel --overlay overlay.png
  refseg segment photo.jpg "the man in the red shirt" "the car on the left" --out m.png
  refseg segment photo.jpg "the dog" --json        # JSON (mask as COCO RLE), no files
  refseg segment photo.jpg "the dog" --system maskclip --out m.png --heatmap heat.png
""",
    )
    parser.add_argument("image", help="image file (any format Pillow reads)")
    parser.add_argument(
        "texts", nargs="*", metavar="TEXT", help="referring expression(s); optional with a prompt"
    )
    parser.add_argument(
        "--out",
        help="mask PNG to write (255 = object); required unless --json (default: no file)",
    )
    parser.add_argument(
        "--overlay", help="also write the image with the mask drawn on it (default: none)"
    )
    parser.add_argument(
        "--heatmap",
        help="dense systems: also write the probability map over the image (default: none)",
    )
    parser.add_argument(
        "--prompt-image",
        metavar="SUPPORT",
        help="visual prompt: an example image of the object (default: none, text only)",
    )
    parser.add_argument(
        "--prompt-mask",
        metavar="SUPPORT_MASK",
        help="visual prompt: the object's mask in it (default: none)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per expression; without --out it holds the mask as COCO "
        "RLE (segmentation) and no file is written",
    )
    add_model_options(parser)
    parser.set_defaults(func=run, trailing_positional="texts")
    return parser


def output_paths(path: str | None, count: int) -> list[Path | None]:
    """One path per expression: ``path`` itself for one, ``stem_i.ext`` for several."""
    if path is None:
        return [None] * count
    base = Path(path)
    if count == 1:
        return [base]
    return [base.with_name(f"{base.stem}_{i}{base.suffix}") for i in range(1, count + 1)]


def run(args: argparse.Namespace) -> int:
    from refseg.image_io import load_image
    from refseg.systems.base import VisualPrompt

    check_device(args.device)
    check_max_pixels(args.max_pixels)
    check_texts(args.texts)
    if (args.prompt_image is None) != (args.prompt_mask is None):
        raise InputError("a visual prompt needs both --prompt-image and --prompt-mask")
    if not args.texts and args.prompt_image is None:
        raise InputError("give at least one expression (TEXT), or a visual prompt")
    if args.out is None and not args.json:
        raise InputError("give --out MASK.png, or --json to print the results without files")
    count = max(len(args.texts), 1)
    for option, path in (
        ("--out", args.out),
        ("--overlay", args.overlay),
        ("--heatmap", args.heatmap),
    ):
        for output in output_paths(path, count):
            if output is not None:  # every file is checked before any computation
                check_output_file(output, option, image=True)
    apply_runtime_options(args)
    image = load_image(args.image)  # fail on a bad image before loading any model
    options = {}
    if args.prompt_image is not None:
        options["prompt"] = VisualPrompt.build(args.prompt_image, args.prompt_mask)
    system = load_system(args)
    system.check_options(options)  # a system without visual prompts: refuse before any work
    if args.heatmap and not system.dense:
        raise InputError(f"--heatmap needs a dense system; {system.name} has no probability map")
    check_k = getattr(system, "check_k", None)
    if callable(check_k):
        check_k(args.k)
    system.set_image(image, image_key=Path(args.image).name)
    results = system.query(args.texts, **options)
    masks = output_paths(args.out, len(results))
    overlays = output_paths(args.overlay, len(results))
    heatmaps = output_paths(args.heatmap, len(results))
    for result, mask_path, overlay_path, heatmap_path in zip(
        results, masks, overlays, heatmaps, strict=True
    ):
        if mask_path is not None:
            result.save_mask(mask_path)
        if overlay_path is not None:
            result.save_overlay(image, overlay_path)
        if heatmap_path is not None:
            result.save_heatmap(heatmap_path, image)
        if args.json:
            record = result.to_dict(rle=mask_path is None)
            record["mask_path"] = str(mask_path) if mask_path else None
            record["overlay_path"] = str(overlay_path) if overlay_path else None
            if heatmap_path is not None:
                record["heatmap_path"] = str(heatmap_path)
            print(json.dumps(record))
        else:
            paths = [p for p in (mask_path, overlay_path, heatmap_path) if p is not None]
            where = " -> " + ", ".join(map(str, paths))
            score = "none" if result.score is None else f"{result.score:.4f}"
            label = repr(result.text) if result.text else "(visual prompt)"
            print(f"{label}: phrase {result.phrase!r}, score {score}{where}")
    return 0
