"""The RISCLIP model (SPEC §3) on refseg's frozen CLIP: adapters, CFE, SKE, decoder.

The two towers step block by block through :class:`AdaptedBlock` wrappers of CLIP's own
blocks; after each paired (image, text) block a CFE module exchanges information. The image
tower's last block runs MaskCLIP-style (every token its own value), so with zero-initialised
adapters, CFE and SKE the patch grounding is exactly CLIP's ``dense_embeddings`` against
``encode_text`` (scaled by CLIP's logit scale). [D] the decoder's ``v_4`` tap is that
value-path stream when it taps the last block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from refseg.clip.model import CLIP, VisionTransformer
from refseg.errors import InputError
from refseg.risclip.adapters import AdaptedBlock
from refseg.risclip.cfe import CrossModalFeatureExtraction
from refseg.risclip.config import RisclipConfig
from refseg.risclip.decoder import LavtDecoder
from refseg.risclip.ske import GroundingHead, SharedSpaceKnowledge


def cfe_pairs(image_blocks: int, text_blocks: int) -> list[tuple[int, int]]:
    """``(image block, text block)`` pairs (0-based) followed by a CFE module.

    Equal depths pair block k with block k; otherwise the shallower tower's every block is
    paired proportionally ([D]; ViT-L/14's 24 image and 12 text blocks: image 2k+1 with
    text k). The last pair is always both towers' last blocks.
    """
    n = min(image_blocks, text_blocks)
    return [
        (round((j + 1) * image_blocks / n) - 1, round((j + 1) * text_blocks / n) - 1)
        for j in range(n)
    ]


class RisclipOutput(NamedTuple):
    patch_logits: torch.Tensor  # [B, h, w] grounding logits on the patch grid
    mask_logits: torch.Tensor  # [B, H, W] at the input size (decoder, or upsampled grounding)


class Risclip(nn.Module):
    """Frozen CLIP + RISCLIP's trained parts. ``forward(pixels, tokens)`` -> logits.

    Args:
        clip: a ViT :class:`CLIP`; its parameters are frozen here (``requires_grad=False``).
        config: architecture and ablation switches.
        eot_id: the tokenizer's end-of-text id (the sentence feature is read there; later
            tokens are padding).
    """

    def __init__(self, clip: CLIP, config: RisclipConfig, eot_id: int) -> None:
        super().__init__()
        if not isinstance(clip.visual, VisionTransformer):
            raise InputError("RISCLIP needs a ViT CLIP (patch tokens); got a ResNet image tower")
        if config.image_size < clip.visual.patch_size:
            raise InputError(
                f"RISCLIP image_size {config.image_size} is smaller than one "
                f"{clip.visual.patch_size}-pixel patch of this CLIP"
            )
        self.config = config
        self.eot_id = int(eot_id)
        self.clip = clip
        clip.requires_grad_(False)
        visual = clip.visual
        width_v, width_t = visual.transformer.width, clip.transformer.width
        self.image_blocks = nn.ModuleList(
            AdaptedBlock(b, config.adapter_width, config.use_adapters)
            for b in visual.transformer.resblocks
        )
        self.text_blocks = nn.ModuleList(
            AdaptedBlock(b, config.adapter_width, config.use_adapters)
            for b in clip.transformer.resblocks
        )
        self.pairs = cfe_pairs(len(self.image_blocks), len(self.text_blocks))
        self.cfe = (
            nn.ModuleList(
                CrossModalFeatureExtraction(width_t, width_v, config.cfe_width, config.cfe_heads)
                for _ in self.pairs
            )
            if config.use_cfe
            else None
        )
        embed_dim = clip.text_projection.shape[1]
        self.ske = (
            SharedSpaceKnowledge(
                embed_dim, config.ske_layers, config.ske_heads, config.ske_mlp_ratio
            )
            if config.use_ske and config.ske_layers > 0
            else None
        )
        self.grounding = GroundingHead(float(clip.logit_scale.detach().exp()))
        self.taps = config.taps(len(self.image_blocks))
        self.decoder = (
            LavtDecoder(width_v, config.decoder_widths, config.decoder_residual)
            if config.use_decoder
            else None
        )

    # ------------------------------------------------------------------ parameter groups

    def stage1_modules(self) -> Iterator[nn.Module]:
        """Adapters, CFE, SKE and the grounding head: what stage 1 trains."""
        for block in (*self.image_blocks, *self.text_blocks):
            for adapter in (block.attn_adapter, block.mlp_adapter):
                if adapter is not None:
                    yield adapter
        for module in (self.cfe, self.ske, self.grounding):
            if module is not None:
                yield module

    def set_stage(self, stage: int) -> None:
        """Make exactly the parameters of training stage 1 or 2 trainable (CLIP never)."""
        if stage not in (1, 2):
            raise InputError(f"RISCLIP training stage must be 1 or 2; got {stage}")
        self.requires_grad_(False)
        if stage == 1:
            for module in self.stage1_modules():
                module.requires_grad_(True)
        elif self.decoder is None:
            raise InputError("stage 2 trains the decoder, but this config has use_decoder=False")
        else:
            self.decoder.requires_grad_(True)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """State of every non-CLIP parameter and buffer (what a RISCLIP checkpoint holds)."""
        frozen = {id(t) for t in self.clip.state_dict(keep_vars=True).values()}
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if id(v) not in frozen}

    # ------------------------------------------------------------------ forward

    def _text_start(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token embeddings, ``bool [B, T]`` padding mask and EOT positions.

        Columns after the batch's last EOT are dropped: attention is causal in the text tower
        and padding keys are masked in CFE and SKE, so results do not change.
        """
        is_eot = tokens == self.eot_id
        if not bool(is_eot.any(dim=1).all()):
            raise InputError("every token row needs an end-of-text token")
        eot = is_eot.int().argmax(dim=1)
        tokens = tokens[:, : int(eot.max()) + 1]
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        padding = positions[None] > eot[:, None]
        x = self.clip.token_embedding(tokens) + self.clip.positional_embedding[: tokens.shape[1]]
        return x, padding, eot

    def forward_patches(
        self, pixels: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Grounding logits ``[B, h, w]`` and the decoder taps ``[B, C, h, w]`` (v_1..v_4)."""
        visual = self.clip.visual
        grid = visual.patch_grid(pixels)
        image = visual.embed(pixels)
        text, padding, eot = self._text_start(tokens)
        causal = self.clip.causal_mask[: text.shape[1], : text.shape[1]].to(text.dtype)
        last = len(self.image_blocks) - 1
        states: dict[int, torch.Tensor] = {}
        next_image = next_text = 0
        for j, (image_block, k) in enumerate(self.pairs):
            while next_image <= image_block:
                block = self.image_blocks[next_image]
                image = block.forward_value_only(image) if next_image == last else block(image)
                states[next_image] = image
                next_image += 1
            while next_text <= k:
                text = self.text_blocks[next_text](text, causal)
                next_text += 1
            if self.cfe is not None:
                text, image = self.cfe[j](text, image, padding)
                states[image_block] = image
        patches = visual.ln_post(image[:, 1:]) @ visual.proj
        rows = torch.arange(text.shape[0], device=text.device)
        # The EOT row is projected on its own, as CLIP's encode_text does, so the untrained
        # model reproduces CLIP bit for bit; SKE contributes its change to the EOT word.
        sentence = self.clip.ln_final(text[rows, eot]) @ self.clip.text_projection
        if self.ske is not None:
            words = self.clip.ln_final(text) @ self.clip.text_projection
            patches, refined = self.ske(patches, words, padding)
            sentence = sentence + (refined - words)[rows, eot]
        logits = self.grounding(patches, sentence).reshape(-1, *grid)
        taps = [
            states[i][:, 1:].transpose(1, 2).reshape(pixels.shape[0], -1, *grid) for i in self.taps
        ]
        return logits, taps

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> RisclipOutput:
        """``pixels [B, 3, S, S]`` (CLIP-normalised), ``tokens int64 [B, L]`` -> logits."""
        size = (pixels.shape[-2], pixels.shape[-1])
        patch_logits, taps = self.forward_patches(pixels, tokens)
        if self.decoder is None:
            mask = F.interpolate(
                patch_logits[:, None], size=size, mode="bilinear", align_corners=False
            )[:, 0]
        else:
            mask = self.decoder(taps, patch_logits, size)
        return RisclipOutput(patch_logits, mask)
