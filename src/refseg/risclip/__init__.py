"""RISCLIP (Kim et al., NAACL 2024): CLIP's image-text alignment extended to dense grounding.

Modules: :mod:`.config` (settings and presets, [D] fields), :mod:`.adapters`, :mod:`.cfe`,
:mod:`.ske` (SKE reconstruction and grounding head), :mod:`.decoder` (LAVT's),
:mod:`.model` (the assembled network), :mod:`.losses` (DICE + focal), :mod:`.data`,
:mod:`.evaluate`, :mod:`.io` (checkpoints), :mod:`.task` (the two training stages) and
:mod:`.system` (the dense system ``risclip``).
"""

from __future__ import annotations

from refseg.risclip.config import PRESETS, RisclipConfig, preset
from refseg.risclip.model import Risclip, RisclipOutput, cfe_pairs

__all__ = [
    "PRESETS",
    "Risclip",
    "RisclipConfig",
    "RisclipOutput",
    "cfe_pairs",
    "preset",
]
