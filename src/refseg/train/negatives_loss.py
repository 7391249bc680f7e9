"""NegCLIP's contrastive loss: CLIP's InfoNCE with hard negative captions added on the text side.

Yuksekgonul et al., ICLR 2023, "When and why vision-language models behave like
bags-of-words, and what to do about it", Sec. 4: each image's hard negatives (its caption
with the words recomposed, :mod:`refseg.data.shapes.negatives`) are appended to the batch's
texts. Image-to-text cross-entropy runs over all ``B + M`` texts, so every image must beat
its own negatives and everyone else's; text-to-image runs over the batch only (a negative
has no image of its own), as in the authors' code.

Pure functions of tensors: the trainer's CLIP task calls them with encoded features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negclip_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_features: torch.Tensor,
    logit_scale: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image->text [B, B + M], text->image [B, B])`` scaled cosine logits.

    Args:
        image_features, text_features: ``[B, D]``, pair ``i`` is row ``i`` of both.
        negative_features: ``[M, D]`` hard negative captions (``M`` may be 0).
        logit_scale: scalar, the log of the inverse temperature.
        caption_ids: ``int64 [B]``; off-diagonal pairs sharing an id mean the same and are
            masked out (``-inf``) instead of counting as negatives. ``None``: no masking.
        negative_ids: ``int64 [M]`` in the same id space; a negative whose id is image
            ``i``'s caption id means image ``i``'s caption and is masked for row ``i``.
    """
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features differ in shape: {tuple(image_features.shape)} vs "
            f"{tuple(text_features.shape)}"
        )
    if negative_features.ndim != 2 or negative_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"negative features must be [M, {text_features.shape[1]}]")
    image = F.normalize(image_features, dim=-1)
    texts = F.normalize(torch.cat([text_features, negative_features]), dim=-1)
    scale = logit_scale.exp()
    batch = image.shape[0]
    image_to_text = scale * image @ texts.t()  # [B, B + M]
    text_to_image = image_to_text[:, :batch].t()  # [B, B]: batch texts only
    if caption_ids is not None:
        same = caption_ids[:, None] == caption_ids[None, :]
        same.fill_diagonal_(False)
        text_to_image = text_to_image.masked_fill(same, float("-inf"))
        if negative_ids is not None:
            same = torch.cat([same, caption_ids[:, None] == negative_ids[None, :]], dim=1)
        else:
            same = torch.cat([same, same.new_zeros(batch, negative_features.shape[0])], dim=1)
        image_to_text = image_to_text.masked_fill(same, float("-inf"))
    return image_to_text, text_to_image


def negclip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_features: torch.Tensor,
    logit_scale: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """NegCLIP loss: mean of image->text cross-entropy over batch texts plus hard negatives
    and text->image cross-entropy over the batch. With ``M = 0`` it is CLIP's symmetric
    InfoNCE. Arguments as :func:`negclip_logits`."""
    image_to_text, text_to_image = negclip_logits(
        image_features, text_features, negative_features, logit_scale, caption_ids, negative_ids
    )
    target = torch.arange(image_to_text.shape[0], device=image_to_text.device)
    return (F.cross_entropy(image_to_text, target) + F.cross_entropy(text_to_image, target)) / 2


@torch.no_grad()
def hard_negative_accuracy(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_features: torch.Tensor,
    negative_owner: torch.Tensor,
) -> float:
    """Fraction of hard negatives their own image scores strictly below its true caption
    (the probes' measure, on a training batch); ``nan`` without negatives.

    Args:
        negative_owner: ``int64 [M]``, the batch row each negative was made for.
    """
    if negative_features.shape[0] == 0:
        return float("nan")
    image = F.normalize(image_features, dim=-1)[negative_owner]
    positive = (image * F.normalize(text_features, dim=-1)[negative_owner]).sum(dim=-1)
    negative = (image * F.normalize(negative_features, dim=-1)).sum(dim=-1)
    return float((positive > negative).float().mean())


def own_negatives_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_features: torch.Tensor,
    valid: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Focused hard-negative term: per image, cross-entropy over its own caption and its own
    ``K`` negatives only, averaged over images that have at least one real negative
    (0 when none has).

    Args:
        image_features, text_features: ``[B, D]``.
        negative_features: ``[B * K, D]``, row-major: image ``i``'s are rows ``iK..iK+K-1``.
        valid: ``bool [B * K]``, real negatives (padding is left out of the softmax).
    """
    batch = image_features.shape[0]
    if negative_features.shape[0] % batch or valid.shape[0] != negative_features.shape[0]:
        raise ValueError(
            f"negatives must be [B * K, D] with a flag each; got {tuple(negative_features.shape)}"
            f" for B={batch} and {tuple(valid.shape)} flags"
        )
    count = negative_features.shape[0] // batch
    image = F.normalize(image_features, dim=-1)
    positive = (image * F.normalize(text_features, dim=-1)).sum(dim=-1, keepdim=True)  # [B, 1]
    negatives = F.normalize(negative_features, dim=-1).view(batch, count, -1)
    negative = torch.einsum("bd,bkd->bk", image, negatives)  # [B, K]
    logits = logit_scale.exp() * torch.cat([positive, negative], dim=1)
    # mask after scaling: -inf times the scale would give the temperature a NaN gradient
    padding = torch.cat([valid.new_zeros(batch, 1), ~valid.view(batch, count)], dim=1)
    logits = logits.masked_fill(padding, float("-inf"))
    rows = valid.view(batch, count).any(dim=1)
    if not rows.any():
        return positive.sum() * 0.0  # keeps the graph; logits hold -inf
    target = torch.zeros(int(rows.sum()), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits[rows], target)
