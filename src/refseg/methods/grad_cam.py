"""Grad-CAM baseline: where CLIP looks when matching the image to the text.

Grad-CAM (Selvaraju et al., ICCV 2017) of the cosine between the image embedding and the
text vector, on the activations entering the image tower's last stage:

- ViT: the patch tokens entering the last block (the tokens leaving it do not reach the
  image embedding, which reads only the class token, so their gradient is zero);
- ResNet: the layer4 map (before attention pooling), as in the reference code.

With ``A [P, C]`` those activations and ``S`` the cosine, the channel weights are the
spatially averaged gradient ``w = mean_p dS/dA[p]`` and the map is ``relu(A w)`` on the
``h x w`` grid. A proposal's score is the map's mean inside the proposal (weighted by the
mask resized to the grid).

The reference's ``generate_grad_cam`` (``model/backbone.py``) differs: it backpropagates the
*negated* similarity, weights the per-position-normalised map and applies no ReLU. We follow
the Grad-CAM paper.

Without proposals the paper's baseline thresholds the CAM into a mask directly. The method
returns the usual empty ``[T, 0]`` scores then; the helpers :func:`grad_cam_map` and
:func:`cam_mask` give that mask, e.g. for a Segmenter result without proposals::

    cam = grad_cam_map(clip, context.pixels, mixed_text_features(text, params, vit)[i])
    mask = cam_mask(cam, context.original_size)

Gradients need autograd while the Segmenter runs under ``torch.inference_mode()``: the
computation re-enables it locally and clones every tensor it differentiates through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from refseg.clip.loaded import LoadedClip
from refseg.clip.model import ModifiedResNet, VisionTransformer
from refseg.methods.base import ImageContext, Method, TextBatch
from refseg.methods.baselines import grid_weights, mean_in_masks, mixed_text_features, no_proposals
from refseg.methods.global_local import GlobalLocalConfig, is_vit, rn_trunk
from refseg.methods.global_local_method import vit_tokens_after

# Threshold on the min-max normalised CAM when it is turned into a mask. The paper and the
# reference code do not state one; 0.5 is the usual choice for CAM-to-mask conversion.
CAM_THRESHOLD = 0.5


@dataclass
class CamTarget:
    """Where Grad-CAM looks.

    Attributes:
        activations: ``[P, C]`` the activations, ``P = h * w`` grid cells in row-major order.
        grid: ``(h, w)``.
        tail: the rest of the image tower, activations ``[P, C]`` -> embedding ``[D]``.
    """

    activations: torch.Tensor
    grid: tuple[int, int]
    tail: Callable[[torch.Tensor], torch.Tensor]


def vit_cam_target(
    visual: VisionTransformer, tokens: torch.Tensor, grid: tuple[int, int]
) -> CamTarget:
    """Target on the patch tokens entering the last block: ``tokens [1, 1 + P, C]``."""
    cls, last = tokens[0, :1], visual.num_blocks - 1

    def tail(patches: torch.Tensor) -> torch.Tensor:
        x = torch.cat([cls.clone(), patches])[None]  # clone: ``cls`` may be an inference tensor
        return visual.head(visual.run_blocks(x, last))[0]

    return CamTarget(tokens[0, 1:], (int(grid[0]), int(grid[1])), tail)


def rn_cam_target(visual: ModifiedResNet, features: torch.Tensor) -> CamTarget:
    """Target on the layer4 map ``features [1, C, h, w]`` (not per-position normalised)."""
    channels, height, width = features.shape[1:]

    def tail(activations: torch.Tensor) -> torch.Tensor:
        grid = activations.t().reshape(1, channels, height, width)
        return visual.attnpool(grid)[0]

    return CamTarget(features[0].flatten(1).t(), (height, width), tail)


def grad_cam_weights(target: CamTarget, text_features: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights ``float32 [T, C]``: ``mean_p dS_t / dA[p]`` with ``S_t`` the
    cosine of the image embedding with ``text_features[t]`` (``[T, D]``).

    One backward pass through the tail per text; runs under ``torch.inference_mode()`` too.
    """
    with torch.inference_mode(False), torch.enable_grad():
        activations = target.activations.detach().clone().requires_grad_(True)
        texts = F.normalize(text_features.detach().clone().float(), dim=-1)
        embedding = F.normalize(target.tail(activations).float(), dim=-1)  # [D]
        if texts.ndim != 2 or texts.shape[1] != embedding.shape[0]:
            raise ValueError(
                f"text features must be [T, {embedding.shape[0]}]; got {tuple(texts.shape)}"
            )
        weights = []
        for text in texts.to(embedding.device):
            (grad,) = torch.autograd.grad(embedding @ text, activations, retain_graph=True)
            weights.append(grad.detach().float().mean(dim=0))
    if not weights:
        return torch.zeros((0, target.activations.shape[1]))
    return torch.stack(weights)


def grad_cams(target: CamTarget, text_features: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps ``relu(A w_t)``: ``text_features [T, D]`` -> ``float32 [T, h, w]`` (>= 0)."""
    weights = grad_cam_weights(target, text_features)  # [T, C]
    cams = F.relu(weights @ target.activations.detach().float().t().to(weights.device))
    return cams.reshape(-1, *target.grid)


def cam_target(clip: LoadedClip, pixels: torch.Tensor) -> CamTarget:
    """The Grad-CAM target of one preprocessed image ``pixels [1, 3, S, S]``."""
    visual = clip.model.visual
    pixels = clip.to_model(pixels)
    if isinstance(visual, VisionTransformer):
        tokens = visual.run_blocks(visual.embed(pixels), 0, visual.num_blocks - 1)
        return vit_cam_target(visual, tokens, visual.patch_grid(pixels))
    return rn_cam_target(visual, visual.trunk(pixels))


def grad_cam_map(
    clip: LoadedClip, pixels: torch.Tensor, text_features: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM ``float32 [h, w]`` of one image ``pixels [1, 3, S, S]`` for one text
    vector ``text_features [D]`` (normalised here)."""
    return grad_cams(cam_target(clip, pixels), text_features.reshape(1, -1))[0]


def cam_mask(
    cam: torch.Tensor, size: tuple[int, int], threshold: float = CAM_THRESHOLD
) -> np.ndarray:
    """Turn a CAM ``[h, w]`` into a ``bool [H, W]`` mask of an image of ``size = (H, W)``.

    The CAM is resized bilinearly to the image (the CLIP input squashes the whole image, so
    the grid spans it), min-max normalised and thresholded. A constant CAM (e.g. all zero:
    nothing matched) gives an empty mask.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    resized = F.interpolate(
        cam.detach().float().cpu()[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0]
    low, high = resized.min(), resized.max()
    if not high > low:
        return np.zeros(size, dtype=bool)
    return ((resized - low) / (high - low) >= threshold).numpy()


def context_cam_target(clip: LoadedClip, context: ImageContext) -> CamTarget:
    """:func:`cam_target` of the context's image, its trunk shared through the cache."""
    visual = clip.model.visual
    if isinstance(visual, VisionTransformer):
        tokens = vit_tokens_after(clip, context, visual.num_blocks - 1)
        return vit_cam_target(visual, tokens, visual.patch_grid(context.pixels))
    trunk = context.cached(
        ("rn-trunk", False), lambda: rn_trunk(visual, clip.to_model(context.pixels), False), "trunk"
    )
    return rn_cam_target(visual, trunk)


class GradCamMethod(Method):
    """Mean Grad-CAM of the image-text cosine inside each proposal."""

    name = "grad-cam"

    def scores(
        self, clip: LoadedClip, context: ImageContext, text: TextBatch, params: GlobalLocalConfig
    ) -> torch.Tensor:
        if len(context.proposals) == 0:
            return no_proposals(text)
        target = context_cam_target(clip, context)
        with context.timed("grad-cam"):
            cams = grad_cams(target, mixed_text_features(text, params, is_vit(clip.model)))
        return mean_in_masks(cams, grid_weights(context, target.grid))
