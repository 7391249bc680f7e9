"""Cross-modal Feature Extraction (CFE), paper Eqs. 1-3, between a text and an image block.

``t_s = W_t2s t_k``, ``v_s = W_v2s v_l`` (Eq. 1); ``t_m = MHCA(t_s, v_s, v_s)`` (Eq. 2);
``t' = W_s2t t_m`` (Eq. 3), and symmetrically ``v' = W_s2v MHCA(v_s, t_s, t_s)``. Both
outputs are added to their tower's residual stream. [D]: W_s2t and W_s2v start at zero, so
an untrained CFE leaves CLIP unchanged; padding text tokens are masked out as keys.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossModalFeatureExtraction(nn.Module):
    """One CFE module: text width ``text_width``, image width ``image_width``."""

    def __init__(self, text_width: int, image_width: int, width: int, heads: int) -> None:
        super().__init__()
        self.t2s = nn.Linear(text_width, width)
        self.v2s = nn.Linear(image_width, width)
        self.text_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.image_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.s2t = nn.Linear(width, text_width)
        self.s2v = nn.Linear(width, image_width)
        for layer in (self.s2t, self.s2v):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, text_padding: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exchange information between the towers.

        Args:
            text: ``[B, T, Ct]`` text tokens after block k.
            image: ``[B, N, Cv]`` image tokens (class token first) after block l.
            text_padding: ``bool [B, T]``, True at padding tokens (never attended to).

        Returns:
            ``(text + t', image + v')``.
        """
        t_s, v_s = self.t2s(text), self.v2s(image)
        t_m, _ = self.text_attn(t_s, v_s, v_s, need_weights=False)
        v_m, _ = self.image_attn(v_s, t_s, t_s, key_padding_mask=text_padding, need_weights=False)
        return text + self.s2t(t_m), image + self.s2v(v_m)
