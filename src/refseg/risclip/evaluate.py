"""Predicting and scoring RISCLIP masks at each image's own resolution."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from refseg.eval.metrics import MetricsAccumulator, MetricsResult
from refseg.risclip.data import ExpressionSamples
from refseg.risclip.model import Risclip


@torch.no_grad()
def predict_probabilities(
    model: Risclip, pixels: torch.Tensor, tokens: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """``sigmoid`` of the mask logits ``[B, H, W]``, resized to ``size`` when given."""
    device = next(model.parameters()).device
    logits = model(pixels.to(device), tokens.to(device)).mask_logits
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)
        logits = logits[:, 0]
    return torch.sigmoid(logits.float())


def evaluate_samples(
    model: Risclip, samples: ExpressionSamples, batch_size: int = 16
) -> MetricsResult:
    """mIoU / oIoU (and per expression kind) of ``model`` on every item of ``samples``.

    Each prediction is resized to its image's size and thresholded at the config's
    threshold; the target is the dataset's mask at full resolution.
    """
    was_training = model.training
    model.eval()
    metrics = MetricsAccumulator()
    by_image: dict[int, list[int]] = {}
    for index, (image_index, _, _) in enumerate(samples.items):
        by_image.setdefault(image_index, []).append(index)
    try:
        for image_index, indices in by_image.items():
            image = samples.dataset[image_index]
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                tokens = torch.stack([samples[i]["tokens"] for i in chunk])
                pixels = samples.pixels(image_index).expand(len(chunk), -1, -1, -1)
                probs = predict_probabilities(model, pixels, tokens, (image.height, image.width))
                masks = (probs > model.config.threshold).cpu().numpy()
                for i, mask in zip(chunk, masks, strict=True):
                    _, r, s = samples.items[i]
                    referent = image.referents[r]
                    kind = referent.sentences[s].kind
                    metrics.add(np.asarray(mask), referent.mask, groups=kind or ())
    finally:
        model.train(was_training)
    return metrics.result()
