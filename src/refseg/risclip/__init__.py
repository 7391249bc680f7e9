"""RISCLIP (Kim et al., NAACL 2024): CLIP's image-text alignment extended to dense grounding.

Modules: :mod:`.config` (settings and presets, [D] fields), :mod:`.adapters`, :mod:`.cfe`,
:mod:`.ske` (SKE reconstruction and grounding head), :mod:`.decoder` (LAVT's),
:mod:`.model` (the assembled network), :mod:`.losses` (DICE + focal), :mod:`.data`,
:mod:`.evaluate`, :mod:`.io` (checkpoints), :mod:`.task` (the two training stages) and
:mod:`.system` (the dense system ``risclip``).
"""

from __future__ import annotations

import os
from typing import Any

from refseg.image_io import DEFAULT_MAX_PIXELS
from refseg.risclip.config import PRESETS, RisclipConfig, preset
from refseg.risclip.model import Risclip, RisclipOutput, cfe_pairs


def build_system(
    checkpoint: str | os.PathLike = "risclip-shapes",
    *,
    clip: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Any:
    """``refseg.load("risclip", ...)``: see :func:`refseg.risclip.system.build_system`.

    Imported lazily, as the system needs :mod:`refseg.systems`.
    """
    from refseg.risclip.system import build_system as build

    return build(checkpoint, clip=clip, threshold=threshold, device=device, max_pixels=max_pixels)


__all__ = [
    "PRESETS",
    "Risclip",
    "RisclipConfig",
    "RisclipOutput",
    "build_system",
    "cfe_pairs",
    "preset",
]
