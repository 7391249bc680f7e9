"""Region-token baseline: a class token per proposal that attends only to the patches inside
the proposal, through an attention mask (no token is zeroed).

ViT (as in "Adapting CLIP for phrase localization", Li et al. 2022, the reference code's
``CLIPMaskedSpatialViT``): from the first masked block ``L - k`` on, each proposal gets a copy
of the class token appended to the sequence. Its query row may see the patches inside its
mask and itself; every original token is blocked from seeing the region tokens, so the patch
tokens evolve exactly as in the plain forward. The region token's final state goes through
``ln_post`` and ``proj``. With a mask covering every patch this is the plain forward; a mask
covering no patch leaves the token attending only to itself. Blocks before ``L - k`` are
shared with Global-Local CLIP (see :func:`vit_tokens_after`). The reference class starts at
block 0 by default; pass ``k >= L`` for that (k is clamped to the number of blocks).

ResNet (no class token; the reference's ``project_seg_attn``): CLIP's attention pooling with
its query, the mean over all positions, allowed to see itself and the positions inside the
mask only. The map is per-position normalised first when ``normalize_positions`` is set, as
for Global-Local CLIP.

Masks are resized bilinearly to the grid and thresholded at :data:`INSIDE_THRESHOLD`.
Scores follow :func:`~refseg.methods.global_local.combine_scores` with ``alpha = 1``, so this
method differs from ``global-only`` only in how the mask enters the image tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refseg.clip.loaded import LoadedClip
from refseg.clip.model import AttentionPool2d, VisionTransformer
from refseg.methods.base import ImageContext, Method, TextBatch
from refseg.methods.baselines import grid_weights, no_proposals
from refseg.methods.global_local import GlobalLocalConfig, combine_scores, is_vit, rn_trunk
from refseg.methods.global_local_method import vit_tokens_after

# A grid cell is inside a proposal when the bilinearly resized mask reaches this value.
INSIDE_THRESHOLD = 0.5
# Region tokens are appended this many proposals at a time, bounding the attention's size.
REGION_BATCH = 128


def region_attention_mask(inside: torch.Tensor) -> torch.Tensor:
    """Additive attention mask for ``[CLS, patches..., region tokens...]``.

    Args:
        inside: ``bool [N, P]``: patch ``p`` lies inside proposal ``n``.

    Returns:
        ``float32 [1 + P + N, 1 + P + N]``: 0 where a query may see a key, ``-inf`` elsewhere.
        Original tokens see each other only; region token ``n`` sees the patches inside
        proposal ``n`` and itself.
    """
    num, patches = inside.shape
    length = 1 + patches + num
    allowed = torch.zeros((length, length), dtype=torch.bool, device=inside.device)
    allowed[: 1 + patches, : 1 + patches] = True
    allowed[1 + patches :, 1 : 1 + patches] = inside
    region = torch.arange(1 + patches, length, device=inside.device)
    allowed[region, region] = True
    mask = torch.zeros((length, length), device=inside.device)
    return mask.masked_fill(~allowed, float("-inf"))


def vit_region_features(
    visual: VisionTransformer, tokens: torch.Tensor, inside: torch.Tensor, start: int
) -> torch.Tensor:
    """Region-token embeddings ``[N, D]`` (not normalised).

    Args:
        tokens: ``[1, 1 + P, C]`` the image's tokens after blocks ``0 .. start-1``.
        inside: ``bool [N, P]`` patches inside each proposal.
        start: the first block in which the region tokens take part.
    """
    chunks = []
    for i in range(0, inside.shape[0], REGION_BATCH):
        part = inside[i : i + REGION_BATCH].to(tokens.device)
        regions = tokens[:, :1].expand(1, part.shape[0], -1)  # copies of the class token
        x = torch.cat([tokens, regions], dim=1)
        x = visual.run_blocks(x, start, None, region_attention_mask(part).to(tokens.dtype))
        region_states = x[0, tokens.shape[1] :, None]  # [n, 1, C]: head reads token 0
        chunks.append(visual.head(region_states))
    return torch.cat(chunks) if chunks else tokens.new_zeros((0, visual.proj.shape[1]))


def rn_region_features(
    pool: AttentionPool2d, features: torch.Tensor, inside: torch.Tensor
) -> torch.Tensor:
    """Attention pooling restricted to each proposal: ``features [1, C, h, w]``,
    ``inside bool [N, h*w]`` -> ``[N, D]`` (not normalised).

    The query stays the mean over all positions; the keys are the mean token and the
    positions inside the mask (the reference's attention mask).
    """
    x = pool._tokens(features)  # [1, 1 + h*w, C]: mean token first
    num, width, heads = inside.shape[0], x.shape[-1], pool.num_heads
    keep = torch.cat([inside.new_ones((num, 1)), inside], dim=1).to(x.device)  # [N, 1+h*w]
    bias = torch.zeros(keep.shape, device=x.device, dtype=x.dtype).masked_fill(~keep, -torch.inf)

    def split(y: torch.Tensor) -> torch.Tensor:  # [1, L, C] -> [N, heads, L, C/heads]
        return y.view(1, y.shape[1], heads, width // heads).transpose(1, 2).expand(num, -1, -1, -1)

    q, k, v = split(pool.q_proj(x[:, :1])), split(pool.k_proj(x)), split(pool.v_proj(x))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :])
    return pool.c_proj(out.transpose(1, 2).reshape(num, width))


def inside_grid(context: ImageContext, grid: tuple[int, int]) -> torch.Tensor:
    """``bool [N, h*w]``: grid cells inside each proposal (resized mask >= threshold)."""
    return (grid_weights(context, grid) >= INSIDE_THRESHOLD).flatten(1)


class RegionTokenMethod(Method):
    """A region token per proposal, attending only to the proposal's patches."""

    name = "region-token"

    def scores(
        self, clip: LoadedClip, context: ImageContext, text: TextBatch, params: GlobalLocalConfig
    ) -> torch.Tensor:
        if len(context.proposals) == 0:
            return no_proposals(text)
        visual = clip.model.visual
        vit = is_vit(clip.model)
        if isinstance(visual, VisionTransformer):
            k = min(params.k, visual.num_blocks)
            start = visual.num_blocks - k
            tokens = vit_tokens_after(clip, context, start)
            inside = inside_grid(context, visual.patch_grid(context.pixels))
            features = context.cached(
                ("region-token", k),
                lambda: vit_region_features(visual, tokens, inside, start),
                "region",
            )
        else:
            norm = params.normalize_positions
            trunk = context.cached(
                ("rn-trunk", norm),
                lambda: rn_trunk(visual, clip.to_model(context.pixels), norm),
                "trunk",
            )
            inside = inside_grid(context, trunk.shape[-2:])
            features = context.cached(
                ("region-token", norm),
                lambda: rn_region_features(visual.attnpool, trunk, inside),
                "region",
            )
        zeros = torch.zeros_like(features)
        return combine_scores(
            features,
            zeros,
            text.sentence_features,
            text.phrase_features,
            1.0,
            params.beta,
            params.normalization,
            vit,
        )
