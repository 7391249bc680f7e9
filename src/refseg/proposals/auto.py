"""``auto``: SAM when it can run here without a download, else the weight-free superpixels.

SAM needs the ``sam`` extra (transformers) and a cached checkpoint; a fresh offline install
has neither, and the superpixel generator keeps it working.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from typing import Any

from refseg.proposals.base import ProposalGenerator, register_proposals

log = logging.getLogger(__name__)

AUTO_SAM_CHECKPOINT = "sam-vit-base"


@register_proposals("auto")
def auto_proposals(
    *, device: str | None = None, cache_dir: str | os.PathLike | None = None, **options: Any
) -> ProposalGenerator:
    """SAM (``sam-vit-base``) if transformers is installed and its weights are cached."""
    if importlib.util.find_spec("transformers") is not None:
        from refseg.proposals.sam import SamProposals, cached_sam_checkpoint

        checkpoint = cached_sam_checkpoint(AUTO_SAM_CHECKPOINT, cache_dir=cache_dir)
        if checkpoint is not None:
            log.info("proposals: SAM from %s", checkpoint)
            return SamProposals(checkpoint, device=device, **options)
    from refseg.proposals.superpixel import SuperpixelProposals

    warnings.warn(
        f"--proposals auto: no cached SAM checkpoint ({AUTO_SAM_CHECKPOINT}) or no "
        "transformers, so the weight-free superpixel proposals are used (less accurate); for "
        "SAM: pip install 'refseg[sam]' and hf download facebook/sam-vit-base",
        stacklevel=2,
    )
    return SuperpixelProposals(**options)
