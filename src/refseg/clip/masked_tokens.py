"""Compact token sets for Global-Local CLIP's masked ViT blocks (exact, fewer tokens).

Before each masked block the patch tokens are multiplied by their mask weights, so every
patch of weight 0 enters the block as the zero vector: its ``ln_1`` output is the LayerNorm
bias, the same for all of them, so they all offer one key and one value. Their own outputs
are zeroed again before the next block and never read after the last (only the class token
is). ``m`` such tokens therefore act in attention exactly like one zero token whose logit
is raised by ``log m``. A mask covering ``c`` of ``P`` patches needs ``1 + c + 1`` tokens
instead of ``1 + P``; masks are grouped by ``c`` so that padding stays small.
"""

from __future__ import annotations

import torch

# Masks compacted together (sorted by their number of non-zero patches first).
MASKS_PER_GROUP = 16


def mask_groups(weights: torch.Tensor, size: int = MASKS_PER_GROUP) -> list[torch.Tensor]:
    """Indices of ``weights [N, P]``'s rows in groups of ``size`` with similar non-zero counts."""
    order = torch.argsort((weights != 0).sum(dim=1), stable=True)
    return list(order.split(size))


def compact_tokens(
    tokens: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's tokens ``[1, 1 + P, C]`` and ``n`` masks' patch weights ``[n, P]`` ->
    ``(x [n, L, C], scale [n, L, 1], key_bias [L])`` with ``L = 2 + max non-zero count``.

    ``x`` holds the class token, each mask's non-zero patches (padded with some of its zero
    patches, which are themselves valid zero tokens) and one zero token standing for the
    remaining zero patches; ``key_bias`` adds ``log(count)`` to that token's attention logits
    (``-inf`` when none remain). Multiply by ``scale`` before every block as for full tokens.
    """
    num, patches = weights.shape
    nonzero = weights != 0
    length = int(nonzero.sum(dim=1).max()) if num else 0
    # Non-zero patches first, in their original order; then zero patches as padding.
    kept = torch.argsort(nonzero.to(torch.int8), dim=1, descending=True, stable=True)[:, :length]
    cls, grid = tokens[:, :1], tokens[0, 1:]
    x = torch.cat([cls.expand(num, 1, -1), grid[kept], grid.new_zeros(num, 1, grid.shape[-1])],
                  dim=1)
    scale = torch.cat(
        [weights.new_ones(num, 1), weights.gather(1, kept), weights.new_zeros(num, 1)], dim=1
    )[..., None]
    key_bias = tokens.new_zeros(length + 2)
    key_bias[-1] = torch.tensor(float(patches - length), dtype=tokens.dtype).log()
    return x, scale, key_bias
