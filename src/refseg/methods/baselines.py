"""What the paper's baselines share (score map, region token, Grad-CAM): the text vector they
score against, proposals brought onto a feature grid, and a per-cell map averaged in a mask.

The baselines are compared with Global-Local CLIP in the paper (Yu et al., CVPR 2023, Sec. 4),
so they use the same text feature ``t = beta psi(T) + (1 - beta) psi(NP(T))`` and the same
proposals; only the visual side changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refseg.masks import soft_resize
from refseg.methods.base import ImageContext, TextBatch
from refseg.methods.global_local import GlobalLocalConfig

# Score of a proposal with no weight on the feature grid (an empty mask, or one too small for
# bilinear sampling to reach a grid cell). Below every cosine (>= -1) and every Grad-CAM value
# (>= 0), so such a proposal wins only when no proposal reaches the grid; finite so that
# results stay valid JSON.
NO_OVERLAP_SCORE = -2.0


def mixed_text_features(text: TextBatch, params: GlobalLocalConfig, vit: bool) -> torch.Tensor:
    """Unit text vectors ``float32 [T, D]``: the beta mix of sentence and phrase features.

    Mixed as :func:`~refseg.methods.global_local.combine_scores` mixes them, so a baseline and
    Global-Local CLIP see the same text: raw features mixed for ViT under ``"reference"``,
    each unit-normalised first for ResNets or under ``"unit"``.
    """
    s, p = text.sentence_features.float(), text.phrase_features.float()
    if params.normalization == "unit" or not vit:
        s, p = F.normalize(s, dim=-1), F.normalize(p, dim=-1)
    return F.normalize(params.beta * s + (1.0 - params.beta) * p, dim=-1)


def grid_weights(context: ImageContext, grid: tuple[int, int]) -> torch.Tensor:
    """The proposals as soft weights on a feature grid: ``float32 [N, h, w]`` (cached)."""
    grid = (int(grid[0]), int(grid[1]))
    return context.cached(
        ("grid-weights", grid),
        lambda: soft_resize(torch.from_numpy(context.proposals.masks), grid),
        "masks",
    )


def mean_in_masks(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of each map inside each mask: ``maps [T, h, w]``, ``weights [N, h, w]``
    -> ``float32 [T, N]``; a mask of zero total weight scores :data:`NO_OVERLAP_SCORE`."""
    weights = weights.to(device=maps.device, dtype=torch.float32)
    flat = weights.flatten(1)  # [N, h*w]
    total = flat.sum(dim=1)  # [N]
    sums = maps.float().flatten(1) @ flat.t()  # [T, N]
    means = sums / total.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(total > 0, means, torch.full_like(means, NO_OVERLAP_SCORE))


def no_proposals(text: TextBatch) -> torch.Tensor:
    """The ``[T, 0]`` answer of a method for an image without proposals."""
    return torch.zeros((len(text.texts), 0))
