"""Global-Local CLIP as a :class:`~refseg.methods.base.Method` with per-image caching."""

from __future__ import annotations

import torch

from refseg.clip.backend import image_encoder
from refseg.clip.loaded import LoadedClip
from refseg.methods.base import ImageContext, Method, TextBatch
from refseg.methods.global_local import (
    GlobalLocalConfig,
    combine_scores,
    is_vit,
    rn_global_features,
    rn_trunk,
    vit_global_features,
)
from refseg.methods.pixels import local_inputs
from refseg.runtime import encode_in_chunks, local_branch, model_key, settings


def vit_tokens_after(clip: LoadedClip, context: ImageContext, depth: int) -> torch.Tensor:
    """Unmasked tokens ``[1, L, C]`` after the first ``depth`` blocks, cached per depth.

    A new depth continues from the deepest cached shallower state, so sweeping k embeds the
    image once and runs each block at most once.
    """
    visual = clip.model.visual
    key = ("vit-tokens", depth)
    if key in context.cache:
        return context.cache[key]
    shallower = [
        key[1]
        for key in context.cache
        if isinstance(key, tuple) and key[0] == "vit-tokens" and key[1] < depth
    ]
    with context.timed("trunk"):
        if shallower:
            start = max(shallower)
            tokens = context.cache[("vit-tokens", start)]
        else:
            start, tokens = 0, visual.embed(clip.to_model(context.pixels))
        context.cache[key] = visual.run_blocks(tokens, start, depth)
    return context.cache[key]


def global_features(
    clip: LoadedClip, context: ImageContext, params: GlobalLocalConfig
) -> torch.Tensor:
    """f^G ``[N, D]`` for the context's proposals (cached per k / per RN normalisation)."""
    visual = clip.model.visual
    masks = torch.from_numpy(context.proposals.masks)
    factored = settings().global_branch == "factored"
    if is_vit(clip.model):
        k = min(params.k, visual.num_blocks)
        trunk = vit_tokens_after(clip, context, visual.num_blocks - k)
        return context.cached(
            ("global", k), lambda: vit_global_features(visual, trunk, masks, k, factored), "global"
        )
    norm = params.normalize_positions
    trunk = context.cached(
        ("rn-trunk", norm), lambda: rn_trunk(visual, clip.to_model(context.pixels), norm), "trunk"
    )
    return context.cached(
        ("global", norm), lambda: rn_global_features(visual, trunk, masks, factored), "global"
    )


def local_features(clip: LoadedClip, context: ImageContext) -> torch.Tensor:
    """f^L ``[N, D]``: masked crops (per the context's pixel preset) through the full image
    tower (cached per precision).

    The crops go in batches whose size :mod:`refseg.runtime` measures on this machine
    (which also bounds memory for 100+ proposals), under its matmul path and precision,
    through the backend :mod:`refseg.clip.backend` picks.
    """
    precision, backend = settings().precision, settings().backend

    def compute() -> torch.Tensor:
        crops = local_inputs(clip, context)
        with local_branch():
            used, encode = image_encoder(clip, crops)  # auto: may measure on these crops
            key = f"{used}|{model_key(clip.model, clip.device, clip.dtype)}"
            chunks = encode_in_chunks(encode, crops, key)
        if not chunks:
            return crops.new_zeros((0, clip.config.embed_dim))
        return torch.cat(chunks).to(clip.dtype)

    return context.cached(("local", precision, backend), compute, "local")


class GlobalLocalMethod(Method):
    """The paper's method; alpha/beta in the params choose the ablations."""

    name = "global-local"

    def prepare(
        self, clip: LoadedClip, context: ImageContext, params: GlobalLocalConfig
    ) -> None:
        """f^G (for ``params.k``) and f^L, each only if its weight in ``params`` is not 0."""
        if len(context.proposals) == 0:
            return
        if params.alpha > 0:
            global_features(clip, context, params)
        if params.alpha < 1:
            local_features(clip, context)

    def scores(
        self, clip: LoadedClip, context: ImageContext, text: TextBatch, params: GlobalLocalConfig
    ) -> torch.Tensor:
        n = len(context.proposals)
        if n == 0:
            return torch.zeros((len(text.texts), 0))
        # Skip a branch whose weight is zero: the ablations then cost only what they use.
        dim = clip.config.embed_dim
        zeros = torch.zeros((n, dim), device=clip.device)
        g = global_features(clip, context, params) if params.alpha > 0 else zeros
        loc = local_features(clip, context) if params.alpha < 1 else zeros
        return combine_scores(
            g,
            loc,
            text.sentence_features,
            text.phrase_features,
            params.alpha,
            params.beta,
            params.normalization,
            is_vit(clip.model),
        )
