"""``auto``: a cached SAM-family model sized for the device, else the weight-free superpixels.

SAM needs the ``sam`` extra (transformers) and a cached checkpoint; a fresh offline install
has neither, and the superpixel generator keeps it working. ``auto`` never downloads.

On a GPU it prefers ``sam-vit-base`` (the generator of the paper's follow-up) with SAM's own
32x32 prompt grid. On a CPU the mask decoder, run once per grid point, costs more than the
image encoder (``benchmarks/sam_cost.py``; README, Performance): ``auto`` takes the cached
model that was cheapest per image there and a 16x16 grid, a quarter of the decoder calls
(SAM ViT-B: about 41 s an image instead of 101 s). An option the caller gives always wins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from typing import Any

import torch

from refseg.errors import InputError
from refseg.proposals.base import ProposalGenerator, register_proposals

log = logging.getLogger(__name__)

# Cached models ``auto`` looks for, first found wins. CPU: by measured seconds per image at
# 16x16 (sam_cost.py: SlimSAM-77 29, SAM 2.1 tiny 35, small 37, SAM ViT-B 41), the models
# not measured there placed by encoder size. GPU: the reference's model first, then larger.
AUTO_SAM_ORDER_CPU = (
    "slimsam-77",
    "slimsam-50",
    "sam2.1-hiera-tiny",
    "sam2.1-hiera-small",
    "sam-vit-base",
    "sam2.1-hiera-base-plus",
    "sam2.1-hiera-large",
    "sam-vit-large",
    "sam-vit-huge",
)
AUTO_SAM_ORDER_GPU = (
    "sam-vit-base",
    "sam2.1-hiera-base-plus",
    "sam2.1-hiera-large",
    "sam-vit-large",
    "sam-vit-huge",
    "sam2.1-hiera-small",
    "sam2.1-hiera-tiny",
    "slimsam-50",
    "slimsam-77",
)
AUTO_CPU_POINTS_PER_SIDE = 16


def auto_device(device: str | torch.device | None) -> torch.device:
    """Where SAM would run: the given device, else CUDA when available, else CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"unknown device {device!r}: {exc}") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auto_sam_choice(
    device: str | torch.device | None, cache_dir: str | os.PathLike | None = None
) -> tuple[str, os.PathLike, dict[str, Any]] | None:
    """The cached SAM-family model ``auto`` would use on ``device`` and its option defaults.

    Returns ``(name, checkpoint directory, defaults)`` or ``None`` when nothing is cached.
    """
    from refseg.proposals.sam import cached_sam_checkpoint

    on_cpu = auto_device(device).type == "cpu"
    for name in AUTO_SAM_ORDER_CPU if on_cpu else AUTO_SAM_ORDER_GPU:
        checkpoint = cached_sam_checkpoint(name, cache_dir=cache_dir)
        if checkpoint is not None:
            defaults = {"points_per_side": AUTO_CPU_POINTS_PER_SIDE} if on_cpu else {}
            return name, checkpoint, defaults
    return None


@register_proposals("auto")
def auto_proposals(
    *, device: str | None = None, cache_dir: str | os.PathLike | None = None, **options: Any
) -> ProposalGenerator:
    """A cached SAM-family model for this device if transformers is installed, else superpixels."""
    if importlib.util.find_spec("transformers") is not None:
        from refseg.proposals.sam import SamProposals

        choice = auto_sam_choice(device, cache_dir)
        if choice is not None:
            name, checkpoint, defaults = choice
            settings = {**defaults, **options}
            log.info("proposals: %s from %s, %s", name, checkpoint, settings or "defaults")
            return SamProposals(checkpoint, device=device, **settings)
    from refseg.proposals.superpixel import SuperpixelProposals

    warnings.warn(
        "--proposals auto: no cached SAM-family checkpoint "
        f"({', '.join(AUTO_SAM_ORDER_GPU)}) or no transformers, so the weight-free superpixel "
        "proposals are used (less accurate); for SAM: pip install 'refseg[sam]' and "
        "hf download facebook/sam-vit-base",
        stacklevel=2,
    )
    return SuperpixelProposals(**options)
