"""``refseg segment IMAGE TEXT [TEXT ...]``: masks (and overlays) for expressions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refseg.commands.options import add_model_options, check_device


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment the object each expression describes",
        description="Segment the object each expression describes in IMAGE. With several "
        "expressions, output files get _1, _2, ... before their extension.",
    )
    parser.add_argument("image", help="image file (any format Pillow reads)")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="referring expression(s)")
    parser.add_argument("--out", required=True, help="mask PNG to write (255 = object)")
    parser.add_argument("--overlay", help="also write the image with the mask drawn on it")
    parser.add_argument("--json", action="store_true", help="print one JSON object per expression")
    add_model_options(parser)
    parser.set_defaults(func=run)
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
    from refseg.segmenter import DEFAULT_MAX_PIXELS, Segmenter

    check_device(args.device)
    image = load_image(args.image)  # fail on a bad image before loading any model
    segmenter = Segmenter.from_pretrained(
        clip=args.clip,
        proposals=args.proposals,
        method=args.method,
        alpha=args.alpha,
        beta=args.beta,
        k=args.k,
        normalization=args.normalization,
        pixels=args.pixels,
        device=args.device,
        spacy_pipeline=args.spacy,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
    )
    segmenter.set_image(image, image_key=Path(args.image).name)
    results = segmenter.query(args.texts)
    masks = output_paths(args.out, len(results))
    overlays = output_paths(args.overlay, len(results))
    for result, mask_path, overlay_path in zip(results, masks, overlays, strict=True):
        result.save_mask(mask_path)
        if overlay_path is not None:
            result.save_overlay(image, overlay_path)
        if args.json:
            record = result.to_dict()
            record["mask_path"] = str(mask_path)
            record["overlay_path"] = str(overlay_path) if overlay_path else None
            print(json.dumps(record))
        else:
            where = f" -> {mask_path}" + (f", {overlay_path}" if overlay_path else "")
            score = "none" if result.score is None else f"{result.score:.4f}"
            print(f"{result.text!r}: phrase {result.phrase!r}, score {score}{where}")
    return 0
