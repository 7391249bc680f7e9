"""Global-Local CLIP (Yu, Seo, Son, CVPR 2023): the math, apart from I/O.

For mask proposals m of an image I and an expression T:

    f_m = alpha * f^G_m + (1 - alpha) * f^L_m      (visual, per proposal)
    t   = beta * psi(T) + (1 - beta) * psi(NP(T))   (text)
    prediction = argmax_m score(f_m, t)

f^G is the global-context feature (the whole image seen through the mask inside CLIP),
f^L the local-context feature (the masked, cropped proposal through CLIP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refseg.clip.model import CLIP, ModifiedResNet, VisionTransformer
from refseg.masks import soft_resize
from refseg.methods.pixels import check_preset
from refseg.methods.pixels import masked_crops as masked_crops  # re-exported (moved there)

NORMALIZATIONS = ("reference", "unit")

# alpha per dataset, paper Sec. 4.1 ("0.95 for RefCOCO and RefCOCO+, 0.85 for RefCOCOg").
ALPHA_BY_DATASET = {"refcoco": 0.95, "refcoco+": 0.95, "refcocog": 0.85}


@dataclass
class GlobalLocalConfig:
    """Hyper-parameters of Global-Local CLIP; defaults are the paper's."""

    alpha: float = 0.95  # global/local visual mix (paper: 0.95 RefCOCO/+, 0.85 RefCOCOg)
    beta: float = 0.5  # sentence/phrase text mix (paper: 0.5)
    k: int = 3  # ViT: mask the last k blocks (reference: masking_block=9 of 12 for ViT-B/32)
    # "reference": exactly what the authors' code computes (see `combine_scores`).
    # "unit": every feature L2-normalised before mixing, cosine score (a cleaner variant).
    normalization: str = "reference"
    # RN: L2-normalise the 2048-d feature at every position before masking (reference code).
    normalize_positions: bool = True
    # How the image becomes CLIP's pixels (refseg.methods.pixels): "reference" reproduces
    # the authors' code (800-px ImageNet-normalised tensor, FreeSOLO's box, no-antialias
    # resizes); "clean" uses CLIP's statistics, the tight box and bicubic resizes.
    pixels: str = "reference"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1]; got {self.beta}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1; got {self.k}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}")
        check_preset(self.pixels)


def vit_global_features(
    visual: VisionTransformer,
    trunk: torch.Tensor,
    masks: torch.Tensor,
    k: int,
    factored: bool = True,
) -> torch.Tensor:
    """f^G for ViT: ``masks [N, H, W]`` (any resolution) -> ``[N, D]`` raw embeddings.
    ``factored=False`` computes every token, as the reference does (same numbers)."""
    grid = round((trunk.shape[1] - 1) ** 0.5)
    weights = soft_resize(masks, (grid, grid)).to(trunk.device)
    return visual.forward_masked_from(trunk, weights, k, factored=factored)


def rn_trunk(
    visual: ModifiedResNet, pixels: torch.Tensor, normalize_positions: bool
) -> torch.Tensor:
    """Feature map ``[1, C, h, w]`` before pooling, optionally unit length at every position."""
    features = visual.trunk(pixels)
    return F.normalize(features, dim=1) if normalize_positions else features


def rn_global_features(
    visual: ModifiedResNet, trunk: torch.Tensor, masks: torch.Tensor, factored: bool = True
) -> torch.Tensor:
    """f^G for ResNets: the map times each soft mask, then CLIP's attention pooling.

    The pooling query is the mean over all positions, zeros included, and no attention mask
    is used (as in the reference). ``masks [N, H, W]`` -> ``[N, D]``. ``factored=False``
    pools each masked map separately, as the reference does (same numbers).
    """
    weights = soft_resize(masks, trunk.shape[-2:]).to(device=trunk.device, dtype=trunk.dtype)
    if not factored:
        return visual.attnpool(trunk * weights[:, None])
    return visual.attnpool.forward_weighted(trunk, weights)


def combine_scores(
    global_feats: torch.Tensor,
    local_feats: torch.Tensor,
    sentence_feats: torch.Tensor,
    phrase_feats: torch.Tensor,
    alpha: float,
    beta: float,
    normalization: str,
    is_vit: bool,
) -> torch.Tensor:
    """Scores ``[T, N]`` of T expressions against N proposals.

    ``normalization="reference"`` reproduces the authors' code:
      - ViT: raw f^G, f^L mixed; raw sentence/phrase features mixed; cosine of the mixes.
      - ResNet: f^G raw (pooled from the per-position-normalised map), f^L, sentence and
        phrase unit-normalised; score is the plain dot product of the mixes (no cosine).
    ``normalization="unit"``: all four normalised before mixing, cosine of the mixes.
    """
    g, loc = global_feats.float(), local_feats.float()
    s, p = sentence_feats.float(), phrase_feats.float()
    if normalization == "unit":
        g, loc, s, p = (F.normalize(x, dim=-1) for x in (g, loc, s, p))
    elif not is_vit:
        loc, s, p = (F.normalize(x, dim=-1) for x in (loc, s, p))
    visual = alpha * g + (1.0 - alpha) * loc  # [N, D]
    text = beta * s + (1.0 - beta) * p  # [T, D]
    if normalization == "reference" and not is_vit:
        return text @ visual.t()
    return F.normalize(text, dim=-1) @ F.normalize(visual, dim=-1).t()


def is_vit(model: CLIP) -> bool:
    return isinstance(model.visual, VisionTransformer)
