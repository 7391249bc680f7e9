"""CLIP in one file: ModifiedResNet and ViT image towers, the text tower, and the hooks
referring segmentation needs.

Parameter names follow OpenAI's ``clip/model.py`` exactly, so OpenAI and open_clip state
dicts load with ``strict=True`` and no renaming. Tokens are batch-first: ``[B, L, C]``.

Hooks (plain methods, no monkey-patching):

- ``ModifiedResNet.trunk`` / ``.attnpool``: the 2048x7x7 map before attention pooling.
- ``VisionTransformer.embed`` / ``.run_blocks`` / ``.head``: token states after any block.
- ``VisionTransformer.forward_masked``: N masks over one image, the last k blocks masked,
  the first L-k blocks run once.
- ``VisionTransformer.block_outputs``: intermediate activations of chosen blocks.
- ``dense_embeddings`` (both towers): MaskCLIP-style per-patch embeddings in the joint space.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refseg.clip.config import CLIPConfig, TextConfig, VisionConfig
from refseg.clip.masked_tokens import compact_tokens, mask_groups


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (as OpenAI's, for fp16 safety)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Weights cast too: CPU layer_norm rejects fp32 input with bf16/fp16 weights.
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Unlike the seeds' fork, ``attn_mask`` is honoured: an additive float mask
    ``[L, L]`` or ``[B, L, L]`` (``-inf`` blocks a key), broadcast over heads.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: ``[B, L, C]`` -> ``[B, L, C]``."""
        batch, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # conventions differ (MHA vs SDPA): refuse to guess
                raise TypeError("attn_mask must be an additive float mask (-inf blocks a key)")
            attn_mask = attn_mask.to(x.dtype)
            if attn_mask.dim() == 3:  # [B, L, L] -> [B, 1, L, L]
                attn_mask = attn_mask[:, None]
        out = F.scaled_dot_product_attention(
            self._split_heads(q), self._split_heads(k), self._split_heads(v), attn_mask=attn_mask
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))

    def first_query(
        self, x: torch.Tensor, key_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The first token's output only, ``[B, L, C] -> [B, 1, C]``: every key and value, one
        query, for a third of the projections when the other tokens' outputs are unused.
        ``key_bias [L]`` is added to the logits of each key."""
        batch, _, width = x.shape
        q = F.linear(x[:, :1], self.in_proj_weight[:width], self.in_proj_bias[:width])
        k, v = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:]).chunk(2, dim=-1)
        mask = None if key_bias is None else key_bias.to(x.dtype)[None]  # [1, L]
        out = F.scaled_dot_product_attention(
            self._split_heads(q), self._split_heads(k), self._split_heads(v), attn_mask=mask
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, 1, width))

    def value_only(self, x: torch.Tensor) -> torch.Tensor:
        """Each token attending only to itself: ``out_proj(v)``. ``[B, L, C] -> [B, L, C]``."""
        width = x.shape[-1]
        v = F.linear(x, self.in_proj_weight[2 * width :], self.in_proj_bias[2 * width :])
        return self.out_proj(v)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, mlp_width),
                gelu=QuickGELU() if quick_gelu else nn.GELU(),
                c_proj=nn.Linear(mlp_width, width),
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))

    def forward_first_token(
        self, x: torch.Tensor, key_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`forward`'s first token only, ``[B, L, C] -> [B, 1, C]``: a final block whose
        other outputs are discarded costs 2/12 of its full work per token (keys and values)
        instead of 12/12. ``key_bias [L]``: additive logits per key, as in :meth:`forward`."""
        first = x[:, :1] + self.attn.first_query(self.ln_1(x), key_bias)
        return first + self.mlp(self.ln_2(first))

    def forward_value_only(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP's last block: attention replaced by each token's own value."""
        x = x + self.attn.value_only(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(
        self, width: int, layers: int, heads: int, mlp_width: int, quick_gelu: bool
    ) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, quick_gelu) for _ in range(layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        """Run blocks ``start .. end-1`` on ``x: [B, L, C]``."""
        for block in self.resblocks[start:end]:
            x = block(x, attn_mask)
        return x


def interpolate_pos_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ``[1 + g*g, C]`` positional embedding (first row = class/mean token) to ``grid``.

    Bicubic on the square grid; used to run a 224-trained tower at another resolution
    (CLIPSeg runs ViT-B/16 at 352x352).
    """
    old = round((pos.shape[0] - 1) ** 0.5)
    if (old, old) == tuple(grid):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos])


def at_input_size(config: CLIPConfig, size: int) -> CLIPConfig:
    """``config`` with a ViT's input side set to ``size`` px (its patch grid follows)."""
    if config.vision.image_size == size:
        return config
    return dataclasses.replace(
        config,
        vision=dataclasses.replace(config.vision, image_size=size),
        preprocess=dataclasses.replace(config.preprocess, image_size=size),
    )


def positions_resized(state: Mapping[str, torch.Tensor], vision: VisionConfig) -> dict:
    """A CLIP state dict whose ViT positional table is resized (bicubic) to ``vision``'s grid,
    so weights trained at one input size load into a model built for another."""
    state = dict(state)
    key = "visual.positional_embedding"
    if vision.is_vit and key in state:
        grid = vision.image_size // vision.patch_size
        state[key] = interpolate_pos_embedding(state[key], (grid, grid))
    return state


COORDINATE_FREQUENCIES = 4


def patch_centres(rows: int, cols: int) -> torch.Tensor:
    """``[rows * cols, 2]`` (x, y) centres of a grid's cells as fractions of the image,
    row-major as the patch tokens."""
    index = torch.arange(rows * cols)
    return torch.stack([(index % cols + 0.5) / cols, (index // cols + 0.5) / rows], dim=1)


def patch_coordinates(
    rows: int, cols: int, frequencies: int = COORDINATE_FREQUENCIES
) -> torch.Tensor:
    """Fixed Fourier features of each patch centre, ``[rows * cols, 4 * frequencies]``
    (row-major, as the patch tokens): sin and cos of ``pi * f * x`` and ``pi * f * y`` for
    ``f = 1 .. frequencies``, with x and y in [0, 1] (:func:`patch_centres`). The same for any
    grid size, so a readout that reads them works at any input size."""
    centres = patch_centres(rows, cols)
    angles = torch.pi * torch.arange(1, frequencies + 1, dtype=torch.float32)
    phases = torch.cat([centres[:, :1] * angles, centres[:, 1:] * angles], dim=1)
    return torch.cat([phases.sin(), phases.cos()], dim=1)


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig, output_dim: int, quick_gelu: bool) -> None:
        super().__init__()
        width, patch = config.width, config.patch_size
        self.patch_size = patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        grid = config.image_size // patch
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        layers = int(config.layers)  # type: ignore[arg-type]
        mlp_width = config.mlp_width or 4 * width
        self.transformer = Transformer(width, layers, config.heads, mlp_width, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.spatial_proj: nn.Parameter | None = None
        if config.spatial_readout:
            self.spatial_proj = nn.Parameter(torch.zeros(grid * grid * width, output_dim))
        self.token_readout: nn.Sequential | None = None
        if config.token_readout:
            hidden = config.token_readout
            self.token_readout = nn.Sequential(
                nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, output_dim)
            )
            nn.init.zeros_(self.token_readout[2].weight)  # starts as the class-token readout
            nn.init.zeros_(self.token_readout[2].bias)

    @property
    def num_blocks(self) -> int:
        return self.transformer.layers

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` -> tokens ``[B, 1 + h*w, C]`` (class token first)."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype))  # [B, C, h, w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_pos_embedding(self.positional_embedding, grid).to(x.dtype)
        return self.ln_pre(x)

    def run_blocks(
        self,
        tokens: torch.Tensor,
        start: int = 0,
        end: int | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token states after blocks ``start .. end-1``: ``[B, L, C] -> [B, L, C]``."""
        return self.transformer(tokens, attn_mask, start, end)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image embedding from final tokens: ``ln_post(CLS) @ proj``, ``[B, L, C] -> [B, D]``;
        with a spatial readout plus ``flatten(ln_post(patches)) @ spatial_proj``, with a token
        readout plus the grid mean of ``token_readout(ln_post(patch))``."""
        embedding = self.ln_post(tokens[:, 0]) @ self.proj
        if self.token_readout is not None:
            embedding = embedding + self.token_readout(self.ln_post(tokens[:, 1:])).mean(dim=1)
        if self.spatial_proj is None:
            return embedding
        patches = self.ln_post(tokens[:, 1:]).flatten(1)
        if patches.shape[1] != self.spatial_proj.shape[0]:
            raise ValueError(
                f"the spatial readout reads the native {self.spatial_proj.shape[0]} patch "
                f"values; got {patches.shape[1]} (another input size?)"
            )
        return embedding + patches @ self.spatial_proj

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` -> embeddings ``[B, D]`` (not normalised)."""
        return self.head(self.run_blocks(self.embed(pixels)))

    def forward_with_patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings of :meth:`forward` and, from the same pass, the final patch tokens
        after ``ln_post`` (``[B, h*w, C]``; what the spatial readout reads)."""
        tokens = self.run_blocks(self.embed(pixels))
        return self.head(tokens), self.ln_post(tokens[:, 1:])

    def patch_grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        return pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size

    def forward_masked(
        self, pixels: torch.Tensor, weights: torch.Tensor, k: int, *, factored: bool = True
    ) -> torch.Tensor:
        """Global-context embeddings of N masks over one image (Global-Local CLIP, ViT path).

        Blocks ``0 .. L-k-1`` run once on the image; before each of the last ``k`` blocks the
        patch tokens are multiplied by the mask weights (the class token is left alone), the
        batch growing from 1 to N at the first masked block. No attention mask: zeroed tokens
        still take part in attention, as in the reference (computed as one token each, see
        :mod:`refseg.clip.masked_tokens`; only the class token of the last block is computed).

        Args:
            pixels: ``[1, 3, H, W]`` one preprocessed image.
            weights: ``[N, h, w]`` soft mask weights on the patch grid (see
                :func:`refseg.masks.soft_resize`).
            k: number of masked final blocks, ``1 <= k <= L``.
            factored: compute as described (``False``: every token of every masked block for
                every mask, the reference's way; the same numbers, more work).

        Returns:
            ``[N, D]`` embeddings (not normalised).
        """
        if pixels.shape[0] != 1:
            raise ValueError(f"forward_masked takes one image; got a batch of {pixels.shape[0]}")
        if not 1 <= k <= self.num_blocks:
            raise ValueError(f"k must be in 1..{self.num_blocks}; got {k}")
        tokens = self.run_blocks(self.embed(pixels), 0, self.num_blocks - k)
        return self.forward_masked_from(tokens, weights, k, factored=factored)

    def forward_masked_from(
        self, tokens: torch.Tensor, weights: torch.Tensor, k: int, *, factored: bool = True
    ) -> torch.Tensor:
        """The masked last-k part of :meth:`forward_masked`, from trunk tokens ``[1, L, C]``."""
        flat = weights.flatten(1).to(tokens.dtype)  # [N, h*w]; N may be 0
        if flat.shape[1] != tokens.shape[1] - 1:
            raise ValueError(
                f"mask weights cover {flat.shape[1]} patches; the image has {tokens.shape[1] - 1}"
            )
        readout = self.spatial_proj is not None or self.token_readout is not None
        if not factored or readout:  # a readout needs every patch
            scale = torch.cat([flat.new_ones(flat.shape[0], 1), flat], dim=1)[..., None]
            x = tokens.expand(flat.shape[0], -1, -1)
            for block in self.transformer.resblocks[self.num_blocks - k :]:
                x = block(x * scale)
            return self.head(x)
        out = tokens.new_empty(flat.shape[0], self.proj.shape[1])
        *blocks, last = self.transformer.resblocks[self.num_blocks - k :]
        for group in mask_groups(flat):  # zero-weight patches folded into one token each
            x, scale, key_bias = compact_tokens(tokens, flat[group])
            logits = key_bias[None].expand(x.shape[1], -1)  # [L, L], the same for every query
            for block in blocks:
                x = block(x * scale, logits)
            out[group] = self.head(last.forward_first_token(x * scale, key_bias))
        return out

    def block_outputs(self, pixels: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Token states ``[B, L, C]`` after each block in ``indices`` (0-based), in that order."""
        wanted = sorted(set(indices))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.num_blocks:
            raise ValueError(f"block indices must be in 0..{self.num_blocks - 1}; got {indices}")
        outputs: dict[int, torch.Tensor] = {}
        x = self.embed(pixels)
        for i, block in enumerate(self.transformer.resblocks[: (wanted[-1] + 1) if wanted else 0]):
            x = block(x)
            outputs[i] = x
        return [outputs[i] for i in indices]

    def dense_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """MaskCLIP dense features: ``[B, 3, H, W] -> [B, h, w, D]`` in the joint space.

        All blocks but the last run normally; in the last, every token attends only to itself
        (its value through ``out_proj``), then ``ln_post`` and ``proj`` apply per token.
        """
        grid = self.patch_grid(pixels)
        x = self.run_blocks(self.embed(pixels), 0, self.num_blocks - 1)
        x = self.transformer.resblocks[-1].forward_value_only(x)
        x = self.ln_post(x[:, 1:]) @ self.proj
        return x.reshape(x.shape[0], grid[0], grid[1], -1)


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased (avg-pool) stride, as in OpenAI's ModifiedResNet."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling: the mean token queries all positions (itself included)."""

    def __init__(self, grid: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(grid * grid + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = heads

    def _tokens(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, 1 + H*W, C]``: mean token first, positions added."""
        x = features.flatten(2).transpose(1, 2)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        pos = interpolate_pos_embedding(self.positional_embedding, features.shape[-2:])
        return x + pos.to(x.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool a feature map ``[B, C, H, W]`` into embeddings ``[B, D]``."""
        x = self._tokens(features)
        batch, length, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        q = self.q_proj(x[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, head_dim]
        return self.c_proj(out.transpose(1, 2).reshape(batch, width))

    def forward_weighted(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``forward(features * weights[:, None])`` for N weight maps of one feature map.

        Every token is ``w_p * F_p + pos_p`` (the mean token ``mean_p(w_p F_p) + pos_0``), so
        its q/k/v projections are ``w_p * (W F_p) + (W pos_p + b)``: the projections of the
        map are computed once, not once per mask. ``features [1, C, H, W]``,
        ``weights [N, H, W]`` -> ``[N, D]``.
        """
        if features.shape[0] != 1:
            raise ValueError("forward_weighted pools one feature map; got a batch")
        x = features.flatten(2)[0].transpose(0, 1)  # [HW, C]
        pos = interpolate_pos_embedding(self.positional_embedding, features.shape[-2:]).to(x.dtype)
        w = weights.flatten(1).to(x.dtype)  # [N, HW]
        batch, width = w.shape[0], x.shape[1]
        heads, head_dim = self.num_heads, width // self.num_heads

        def project(linear: nn.Linear, with_mean: bool) -> torch.Tensor:
            per_position = x @ linear.weight.T  # W F_p, [HW, C]
            offsets = F.linear(pos, linear.weight, linear.bias)  # W pos + b, [1 + HW, C]
            mean = (w @ per_position) / x.shape[0]  # W mean_p(w_p F_p), [N, C]
            if not with_mean:
                return mean[:, None] + offsets[:1]
            rest = w[:, :, None] * per_position + offsets[1:]
            return torch.cat([mean[:, None] + offsets[:1], rest], dim=1)  # [N, 1 + HW, C]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, t.shape[1], heads, head_dim).transpose(1, 2)

        q = split(project(self.q_proj, with_mean=False))
        k = split(project(self.k_proj, with_mean=True))
        v = split(project(self.v_proj, with_mean=True))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(batch, width))

    def dense(self, features: torch.Tensor) -> torch.Tensor:
        """MaskCLIP dense features: every position's value through ``c_proj``.

        ``[B, C, H, W] -> [B, H, W, D]``.
        """
        x = self._tokens(features)[:, 1:]
        out = self.c_proj(self.v_proj(x))
        return out.reshape(features.shape[0], features.shape[-2], features.shape[-1], -1)


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: 3-conv stem, anti-aliased strides, attention pooling."""

    def __init__(self, config: VisionConfig, output_dim: int) -> None:
        super().__init__()
        width = config.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        layers = config.layers
        assert isinstance(layers, tuple)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(
            config.image_size // 32, width * 32, config.heads, output_dim
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling: ``[B, 3, H, W] -> [B, 32*width, H/32, W/32]``."""
        x = pixels.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` -> embeddings ``[B, D]`` (not normalised)."""
        return self.attnpool(self.trunk(pixels))

    def dense_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """MaskCLIP dense features ``[B, H/32, W/32, D]``."""
        return self.attnpool.dense(self.trunk(pixels))


class CLIP(nn.Module):
    """Both towers. Text parameters sit at the top level, as in OpenAI's state dicts."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        vision, text = config.vision, config.text
        if vision.is_vit:
            self.visual: VisionTransformer | ModifiedResNet = VisionTransformer(
                vision, config.embed_dim, config.quick_gelu
            )
        else:
            self.visual = ModifiedResNet(vision, config.embed_dim)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(
            0.01 * torch.randn(text.context_length, text.width)
        )
        self.transformer = Transformer(
            text.width, text.layers, text.heads, text.mlp_width or 4 * text.width, config.quick_gelu
        )
        self.ln_final = LayerNorm(text.width)
        self.text_projection = nn.Parameter(
            text.width**-0.5 * torch.randn(text.width, config.embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("causal_mask", self._causal_mask(text), persistent=False)

    @staticmethod
    def _causal_mask(text: TextConfig) -> torch.Tensor:
        return torch.full((text.context_length, text.context_length), float("-inf")).triu(1)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` (not normalised)."""
        return self.visual(pixels)

    def encode_text(self, token_ids: torch.Tensor, eot_token_id: int | None = None) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, D]``, read at the first end-of-text token.

        With ``eot_token_id=None`` the position of the largest id is used (OpenAI's rule, valid
        for its vocabulary where end-of-text has the largest id).
        """
        length = token_ids.shape[1]
        if length > self.positional_embedding.shape[0]:
            raise ValueError(
                f"{length} tokens exceed the context length {self.positional_embedding.shape[0]}"
            )
        x = self.token_embedding(token_ids) + self.positional_embedding[:length]
        x = self.transformer(x, self.causal_mask[:length, :length])
        x = self.ln_final(x)
        if eot_token_id is None:
            eot = token_ids.argmax(dim=-1)
        else:
            eot = (token_ids == eot_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
