"""RISCLIP's losses: DICE (F-1) + focal, on logits, for both training stages.

Targets may be soft (stage 1 trains against the mask area-pooled to the patch grid), so the
focal loss uses the soft form ``alpha_t (1 - p_t)^gamma BCE`` with
``p_t = p t + (1 - p)(1 - t)`` and ``alpha_t = alpha t + (1 - alpha)(1 - t)``, which equals
Lin et al.'s focal loss on 0/1 targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``.

    ``logits`` and ``target`` are ``[B, ...]``; ``p = sigmoid(logits)``; sums per sample.
    """
    p = torch.sigmoid(logits).flatten(1)
    t = target.to(p.dtype).flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss averaged over every element (Lin et al. 2017, Eq. 5)."""
    t = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (alpha_t * (1 - p_t) ** gamma * ce).mean()


def risclip_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    focal_weight: float,
    smooth: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``dice + focal_weight * focal`` and both parts as floats for the log."""
    dice = dice_loss(logits, target, smooth)
    focal = focal_loss(logits, target, alpha, gamma)
    parts = {"dice": float(dice.detach()), "focal": float(focal.detach())}
    return dice + focal_weight * focal, parts
