"""Score-map baseline: MaskCLIP-style dense scores averaged inside each proposal.

MaskCLIP (Zhou et al., ECCV 2022) reads a per-patch embedding in CLIP's joint space off the
last block (ViT: each token attends only to itself; ResNet: each position's value through the
pooling's output projection); see ``dense_embeddings`` in :mod:`refseg.clip.model`. The
cosine of every patch with the text gives a score map; a proposal's score is the map's mean
inside the proposal, weighted by the mask resized bilinearly to the patch grid. (The
reference code, ``model/backbone.py`` ``generate_score_map``, computes the same cosine map.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refseg.clip.loaded import LoadedClip
from refseg.methods.base import ImageContext, Method, TextBatch
from refseg.methods.baselines import grid_weights, mean_in_masks, mixed_text_features, no_proposals
from refseg.methods.global_local import GlobalLocalConfig, is_vit


def unit_dense_embeddings(clip: LoadedClip, context: ImageContext) -> torch.Tensor:
    """Per-patch unit embeddings ``float32 [h, w, D]`` of the context's image (cached)."""

    def compute() -> torch.Tensor:
        dense = clip.model.visual.dense_embeddings(clip.to_model(context.pixels))[0]
        return F.normalize(dense.float(), dim=-1)

    return context.cached(("dense", "unit"), compute, "dense")


def score_map(dense: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine of each patch with each text: ``dense [h, w, D]`` and ``text_features [T, D]``,
    both unit length -> ``[T, h, w]``."""
    return torch.einsum("hwd,td->thw", dense, text_features.to(dense))


class ScoreMapMethod(Method):
    """Mean of the dense patch-text cosine inside each proposal."""

    name = "score-map"

    def scores(
        self, clip: LoadedClip, context: ImageContext, text: TextBatch, params: GlobalLocalConfig
    ) -> torch.Tensor:
        if len(context.proposals) == 0:
            return no_proposals(text)
        dense = unit_dense_embeddings(clip, context)
        maps = score_map(dense, mixed_text_features(text, params, is_vit(clip.model)))
        return mean_in_masks(maps, grid_weights(context, maps.shape[-2:]))
