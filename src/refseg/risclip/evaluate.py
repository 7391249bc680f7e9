"""Predicting and scoring RISCLIP masks at each image's own resolution."""

from __future__ import annotations

from collections.abc import Sequence

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


# Probability thresholds swept on val to choose a model's own (stage-1 maps stay low: the
# patch targets are area fractions, mostly below 0.5).
THRESHOLDS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def evaluate_samples(
    model: Risclip, samples: ExpressionSamples, batch_size: int = 16
) -> MetricsResult:
    """mIoU / oIoU (and per expression kind) of ``model`` on every item of ``samples``.

    Each prediction is resized to its image's size and thresholded at the config's
    threshold; the target is the dataset's mask at full resolution.
    """
    threshold = model.config.threshold
    return evaluate_thresholds(model, samples, (threshold,), batch_size)[threshold]


def evaluate_thresholds(
    model: Risclip,
    samples: ExpressionSamples,
    thresholds: Sequence[float],
    batch_size: int = 16,
) -> dict[float, MetricsResult]:
    """:func:`evaluate_samples` at several probability thresholds, in one pass."""
    was_training = model.training
    model.eval()
    metrics = {t: MetricsAccumulator() for t in thresholds}
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
                probs = probs.cpu().numpy()
                for i, prob in zip(chunk, probs, strict=True):
                    _, r, s = samples.items[i]
                    referent = image.referents[r]
                    kind = referent.sentences[s].kind
                    for t, accumulator in metrics.items():
                        accumulator.add(prob > t, referent.mask, groups=kind or ())
    finally:
        model.train(was_training)
    return {t: accumulator.result() for t, accumulator in metrics.items()}
