"""CLIPSeg's decoder (Lüddecke & Ecker 2022, §3): FiLM, three post-norm blocks, a conv head.

Parameter names are those of the official ``CLIPDensePredT`` state dicts (``film_mul``,
``film_add``, ``reduces.N``, ``blocks.N``, ``trans_conv``), so ``rd64-uni*.pth`` load
strictly once their unused ``reduce.*`` leftover is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from refseg.clipseg.config import DecoderConfig


def _head(config: DecoderConfig) -> nn.Module:
    """Patch grid ``[B, D, h, w]`` -> logits ``[B, 1, h*u, w*u]``.

    The plain head upsamples by the patch size p; the refined one by ``(p // 4) ** 2`` (two
    transposed convs of kernel = stride = p // 4, as the official code and HF), which is p
    for ViT-B/16's 16 px patches.
    """
    d, p = config.reduce_dim, config.patch_size
    if not config.refined:  # rd64-uni: one transposed conv, kernel = stride = patch
        return nn.ConvTranspose2d(d, 1, kernel_size=p, stride=p)
    k = p // 4  # rd64-uni-refined: two x4 transposed convs for ViT-B/16
    return nn.Sequential(
        nn.Conv2d(d, d, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(d, d // 2, kernel_size=k, stride=k),
        nn.ReLU(),
        nn.ConvTranspose2d(d // 2, 1, kernel_size=k, stride=k),
    )


class CLIPSegDecoder(nn.Module):
    """Skip activations of a frozen CLIP plus a conditional vector -> per-pixel logits.

    Deepest first: ``a = R0(h_deep)``; FiLM once on all tokens (``film_mul(c) * a +
    film_add(c)``, ``c`` the un-normalised CLIP embedding); ``a = B0(a)``; then
    ``a = B_i(a + R_i(h_i))`` for shallower skips. The class token is dropped before the head.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        d, depth = config.reduce_dim, len(config.extract_layers)
        self.film_mul = nn.Linear(config.cond_dim, d)
        self.film_add = nn.Linear(config.cond_dim, d)
        self.reduces = nn.ModuleList(nn.Linear(config.width, d) for _ in range(depth))
        # torch's post-norm block (ReLU, eps 1e-5), not CLIP's pre-norm one; batch-first
        # changes only the tensor layout, not the parameters.
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, config.heads, config.ffn_dim, config.dropout, batch_first=True
            )
            for _ in range(depth)
        )
        self.trans_conv = _head(config)

    def forward(
        self,
        activations: Sequence[torch.Tensor],
        cond: torch.Tensor,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, 1, h*u, w*u]`` (u: the head's upsampling, see :func:`_head`).

        Args:
            activations: ``[B, 1 + h*w, width]`` per extract layer, shallow to deep (the
                order of ``config.extract_layers``).
            cond: ``[B, cond_dim]`` conditional vectors.
            grid: ``(h, w)`` patch grid; square when omitted.
        """
        if len(activations) != len(self.reduces):
            raise ValueError(f"expected {len(self.reduces)} activations, got {len(activations)}")
        a: torch.Tensor | None = None
        for i, (h, reduce, block) in enumerate(
            zip(reversed(list(activations)), self.reduces, self.blocks, strict=True)
        ):
            a = reduce(h) if a is None else a + reduce(h)
            if i == 0:
                a = self.film_mul(cond)[:, None] * a + self.film_add(cond)[:, None]
            a = block(a)
        assert a is not None
        tokens = a[:, 1:]  # drop the class token
        batch, length, dim = tokens.shape
        if grid is None:
            side = round(length**0.5)
            grid = (side, side)
        if grid[0] * grid[1] != length:
            raise ValueError(f"{length} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
        x = tokens.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])
        return self.trans_conv(x)
