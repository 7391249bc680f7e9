"""Shared-space Knowledge Exploitation (SKE) and the patch-level grounding map.

The paper says SKE uses the alignment of CLIP's image-text shared embedding space to single
out the referent; its mechanism could not be read. **Our reconstruction [D]:** patch tokens
(value path, ``ln_post``, ``proj``) and word tokens (``ln_final``, ``text_projection``) are
already in the joint space; a few pre-LN transformer layers run over ``[patches; words]``
(padding words masked), each residual branch zero-initialised so an untrained SKE is the
identity. The grounding logit is ``s * cos(patch, EOT) + b`` with ``s`` starting at CLIP's
logit scale and ``b`` at 0, both learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refseg.clip.model import ResidualAttentionBlock


def zero_residual_block(width: int, heads: int, mlp_ratio: int) -> ResidualAttentionBlock:
    """refseg.clip's pre-LN block with its two output projections at zero (an identity)."""
    block = ResidualAttentionBlock(width, heads, mlp_ratio * width, quick_gelu=False)
    for layer in (block.attn.out_proj, block.mlp.c_proj):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return block


class SharedSpaceKnowledge(nn.Module):
    """Joint-space transformer over patches and words (the SKE reconstruction)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            zero_residual_block(width, heads, mlp_ratio) for _ in range(layers)
        )

    def forward(
        self, patches: torch.Tensor, words: torch.Tensor, word_padding: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``patches [B, P, D]``, ``words [B, T, D]`` -> the same, refined jointly."""
        x = torch.cat([patches, words], dim=1)
        mask = None
        if word_padding is not None:
            blocked = torch.cat([word_padding.new_zeros(patches.shape[:2]), word_padding], dim=1)
            keys = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device)
            keys = keys.masked_fill(blocked, float("-inf"))
            mask = keys[:, None, :].expand(-1, x.shape[1], -1)  # [B, L, L] additive
        for layer in self.layers:
            x = layer(x, mask)
        return x[:, : patches.shape[1]], x[:, patches.shape[1] :]


class GroundingHead(nn.Module):
    """``s * cos(patch, sentence) + b`` per patch; ``s`` starts at CLIP's logit scale."""

    def __init__(self, logit_scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, patches: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """``patches [B, P, D]``, ``sentence [B, D]`` -> logits ``[B, P]``."""
        cos = torch.einsum(
            "bpd,bd->bp", F.normalize(patches, dim=-1), F.normalize(sentence, dim=-1)
        )
        return self.scale * cos + self.bias
