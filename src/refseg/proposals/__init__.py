"""Class-agnostic mask proposal generators (SAM, superpixels, files, ground truth)."""

from refseg.proposals.base import (
    MaskProposals,
    ProposalGenerator,
    available_proposals,
    create_proposals,
    register_proposals,
)

__all__ = [
    "MaskProposals",
    "ProposalGenerator",
    "available_proposals",
    "create_proposals",
    "register_proposals",
]
