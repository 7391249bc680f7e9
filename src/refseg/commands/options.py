"""Command-line options shared by the commands that build a Segmenter (segment, eval, serve).

Options default to ``None`` where the library has a default, so the library's value wins.
"""

from __future__ import annotations

import argparse

from refseg.errors import InputError

# refseg.methods.pixels.PIXEL_PRESETS, spelt out so that --help imports no torch.
PIXEL_PRESETS = ("reference", "clean")

PROPOSALS_HELP = (
    "auto (SAM if its weights are cached, else superpixel) | sam (= sam-vit-base) | "
    "sam-vit-large | sam-vit-huge | a SAM checkpoint directory | superpixel | a COCO-results "
    "JSON file (default: %(default)s)"
)


def add_model_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    proposals_help: str = PROPOSALS_HELP,
    method_help: str = "segmentation method name",
    alpha_help: str = "global/local visual mix (paper 0.95)",
    hyper_parameters: bool = True,
) -> None:
    """``--clip --proposals --method [--alpha --beta --k --normalization --pixels] --device
    --spacy --max-pixels``."""
    parser.add_argument(
        "--clip", default="ViT-B/32", help="CLIP name or checkpoint path (offline demo: shapes-vit)"
    )
    parser.add_argument("--proposals", default="auto", help=proposals_help)
    parser.add_argument("--method", default="global-local", help=method_help)
    if hyper_parameters:
        parser.add_argument("--alpha", type=float, help=alpha_help)
        parser.add_argument("--beta", type=float, help="sentence/phrase text mix (paper 0.5)")
        parser.add_argument("--k", type=int, help="ViT: number of masked final blocks (paper 3)")
        parser.add_argument(
            "--normalization",
            choices=("reference", "unit"),
            help="feature mixing: the authors' code (default) or all unit-normalised",
        )
        parser.add_argument(
            "--pixels",
            choices=PIXEL_PRESETS,
            help="how the image becomes CLIP's pixels: the authors' code (reference, default: "
            "800-px ImageNet-normalised, FreeSOLO box) or clean (CLIP statistics, tight box, "
            "bicubic)",
        )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--spacy", help="spaCy pipeline name or path (default: auto-detect)")
    parser.add_argument(
        "--max-pixels", type=int, help="downscale larger images for processing (default 2048^2)"
    )


def check_device(device: str | None) -> None:
    """Refuse ``--device cuda`` on a machine without CUDA, before any model loads."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
