"""LAVT's decoder as RISCLIP uses it: patch grounding + CLIP features -> full-size mask.

Four stages, each ``{3x3 conv -> ReLU -> BN} x 2`` then x2 upsampling (paper, "Decoder"):
``d_4 = D_4([v_4; map_patch])``, ``d_i = D_i([d_{i+1}; u(v_i)])`` for i = 3, 2, 1, where
``v_i`` are intermediate image features (ViT tokens on the patch grid, 1x1-projected [D])
and ``u`` upsamples them to ``d_{i+1}``'s size. A 1x1 conv gives one logit per pixel [D];
with ``residual`` [D] it is added to the upsampled ``map_patch`` and starts at zero, so the
untrained decoder predicts what stage 1 predicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def decoder_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """``{3x3 conv -> ReLU -> BN} x 2`` then bilinear x2 upsampling."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_channels),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    )


class LavtDecoder(nn.Module):
    """Decoder over four feature maps ``v_1..v_4`` (width ``feature_width``) and the map."""

    def __init__(self, feature_width: int, widths: Sequence[int], residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        d4, d3, d2, d1 = (int(w) for w in widths)
        self.lateral = nn.ModuleList(nn.Conv2d(feature_width, w, 1) for w in (d3, d2, d1, d4))
        self.stages = nn.ModuleList(
            [
                decoder_stage(d4 + 1, d4),  # D_4 over [v_4; map_patch]
                decoder_stage(d4 + d3, d3),  # D_3 over [d_4; u(v_3)]
                decoder_stage(d3 + d2, d2),
                decoder_stage(d2 + d1, d1),
            ]
        )
        self.head = nn.Conv2d(d1, 1, 1)
        if residual:  # start as the upsampled map
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(
        self, features: Sequence[torch.Tensor], patch_logits: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Mask logits ``[B, H, W]`` at ``size``.

        Args:
            features: ``v_1..v_4``, each ``[B, C, h, w]`` on the patch grid.
            patch_logits: ``[B, h, w]`` stage-1 grounding logits (``map_patch``).
            size: output ``(H, W)``; the fourth stage ends at ``16 * (h, w)`` and is resized
                when that differs.
        """
        v1, v2, v3, v4 = features
        lat3, lat2, lat1, lat4 = self.lateral
        d = self.stages[0](torch.cat([lat4(v4), patch_logits[:, None]], dim=1))
        for stage, lateral, v in zip(
            self.stages[1:], (lat3, lat2, lat1), (v3, v2, v1), strict=True
        ):
            up = F.interpolate(lateral(v), size=d.shape[-2:], mode="bilinear", align_corners=False)
            d = stage(torch.cat([d, up], dim=1))
        logits = self.head(d)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.residual:
            logits = logits + F.interpolate(
                patch_logits[:, None], size=size, mode="bilinear", align_corners=False
            )
        return logits[:, 0]
