"""Adapters on a frozen CLIP block, built by wrapping it (CLIP's code is not forked).

RISCLIP attaches a bottleneck adapter (down-projection, non-linearity, up-projection)
residually to the MHSA and to the MLP of every block of both towers (paper, "Adapters").
Placement [D]: sequential on each sub-layer's output, ``y = f(x) + W_up GELU(W_down f(x))``,
with ``W_up`` and its bias zero so an untrained adapter adds exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refseg.clip.model import ResidualAttentionBlock


class Adapter(nn.Module):
    """``x -> W_up GELU(W_down x)``; the caller adds it to ``x``. Starts as exact zero."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class AdaptedBlock(nn.Module):
    """A frozen :class:`ResidualAttentionBlock` with an adapter after its attention and MLP.

    The block's own modules (``ln_1``, ``attn``, ``ln_2``, ``mlp``) are used as they are;
    ``adapters=False`` gives the plain block (the ablation without adapters).
    """

    def __init__(self, block: ResidualAttentionBlock, bottleneck: int, adapters: bool) -> None:
        super().__init__()
        self.block = block
        width = block.ln_1.normalized_shape[0]
        self.attn_adapter = Adapter(width, bottleneck) if adapters else None
        self.mlp_adapter = Adapter(width, bottleneck) if adapters else None

    @staticmethod
    def _adapt(adapter: Adapter | None, h: torch.Tensor) -> torch.Tensor:
        return h if adapter is None else h + adapter(h)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self._adapt(self.mlp_adapter, self.block.mlp(self.block.ln_2(x)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, C] -> [B, L, C]``, as the wrapped block's ``forward``."""
        x = x + self._adapt(self.attn_adapter, self.block.attn(self.block.ln_1(x), attn_mask))
        return self._mlp(x)

    def forward_value_only(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP's last block (each token attends to itself), adapters included."""
        x = x + self._adapt(self.attn_adapter, self.block.attn.value_only(self.block.ln_1(x)))
        return self._mlp(x)
