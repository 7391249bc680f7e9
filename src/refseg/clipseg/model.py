"""CLIPSeg as one module: a frozen refseg CLIP (any ViT) and a trainable decoder.

``forward(pixels, cond)`` gives logits at the input resolution. The CLIP stays frozen:
``requires_grad`` is off and ``train()`` keeps it in eval mode, so only the decoder learns.
"""

from __future__ import annotations

import torch
from torch import nn

from refseg.clip.model import CLIP, VisionTransformer
from refseg.clipseg.config import CLIPSegConfig, DecoderConfig
from refseg.clipseg.decoder import CLIPSegDecoder
from refseg.errors import CheckpointFormatError


def decoder_config_for(clip: CLIP, **overrides: object) -> DecoderConfig:
    """A :class:`DecoderConfig` whose CLIP-dependent sizes are read off ``clip``."""
    visual = clip.visual
    if not isinstance(visual, VisionTransformer):
        raise CheckpointFormatError("CLIPSeg needs a ViT image tower; this CLIP is a ResNet")
    sizes = {
        "width": visual.conv1.out_channels,
        "cond_dim": clip.config.embed_dim,
        "patch_size": visual.patch_size,
    }
    return DecoderConfig(**{**sizes, **overrides})  # type: ignore[arg-type]


class CLIPSeg(nn.Module):
    """Frozen CLIP + :class:`CLIPSegDecoder`. State-dict keys: ``clip.*`` and ``decoder.*``."""

    def __init__(self, clip: CLIP, config: CLIPSegConfig) -> None:
        super().__init__()
        visual = clip.visual
        if not isinstance(visual, VisionTransformer):
            raise CheckpointFormatError("CLIPSeg needs a ViT image tower; this CLIP is a ResNet")
        dec = config.decoder
        expected = (visual.conv1.out_channels, clip.config.embed_dim, visual.patch_size)
        if (dec.width, dec.cond_dim, dec.patch_size) != expected:
            raise CheckpointFormatError(
                f"decoder expects a CLIP of width {dec.width}, embedding {dec.cond_dim}, patch "
                f"{dec.patch_size}; this CLIP has {expected[0]}, {expected[1]}, {expected[2]}"
            )
        if dec.extract_layers[-1] >= visual.num_blocks:
            raise CheckpointFormatError(
                f"extract layers {dec.extract_layers} need {dec.extract_layers[-1] + 1} CLIP "
                f"blocks; this CLIP has {visual.num_blocks}"
            )
        self.config = config
        self.clip = clip
        for param in self.clip.parameters():
            param.requires_grad_(False)
        self.clip.eval()
        self.decoder = CLIPSegDecoder(dec)

    def train(self, mode: bool = True) -> CLIPSeg:
        super().train(mode)
        self.clip.eval()  # frozen: no dropout or statistics updates, ever
        return self

    @property
    def visual(self) -> VisionTransformer:
        return self.clip.visual  # type: ignore[return-value]

    @torch.no_grad()
    def activations(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Residual-stream tokens ``[B, 1 + h*w, width]`` after each extract layer."""
        return self.visual.block_outputs(pixels, self.config.decoder.extract_layers)

    def decode(
        self, activations: list[torch.Tensor], cond: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Decoder only (CLIP activations given): logits ``[B, 1, H', W']``."""
        dtype = self.decoder.film_mul.weight.dtype
        return self.decoder([a.to(dtype) for a in activations], cond.to(dtype), grid)

    def forward(self, pixels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``[B, 3, H, W]`` and conditionals ``[B, E]`` -> ``[B, 1, H', W']``
        (``H' = H`` for 16 px patches and ``H`` a multiple of 16)."""
        return self.decode(self.activations(pixels), cond, self.visual.patch_grid(pixels))

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Support images ``[B, 3, H, W]`` -> CLIP embeddings ``[B, E]`` (visual conditionals)."""
        return self.clip.encode_image(pixels)
