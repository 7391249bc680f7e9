"""Decoder weights from the official files and from Hugging Face's port, onto refseg's names.

refseg's decoder keys are the official ones (``film_mul``, ``reduces.N``, ``blocks.N.*``,
``trans_conv.*``); official files only lose their unused ``reduce.*`` leftover. Hugging Face
(``CLIPSegForImageSegmentation``) renames them and splits attention into q/k/v (SPEC §2):

====================================  =========================================
Hugging Face                          refseg / official
====================================  =========================================
decoder.film_mul|film_add.*           film_mul|film_add.*
decoder.reduces.N.*                   reduces.N.*
decoder.transposed_convolution.*      trans_conv.*
decoder.layers.N.self_attn.q|k|v_proj blocks.N.self_attn.in_proj_weight|bias rows
                                      0:D | D:2D | 2D:3D (concatenated)
decoder.layers.N.self_attn.out_proj   blocks.N.self_attn.out_proj
decoder.layers.N.mlp.fc1|fc2          blocks.N.linear1|linear2
decoder.layers.N.layer_norm1|2        blocks.N.norm1|norm2
clip.* (CLIPSegModel)                 refseg CLIP names (refseg.clip.convert)
====================================  =========================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from refseg.clip.config import CLIPConfig
from refseg.clip.convert import config_from_hf, convert_hf_state_dict, fuse_qkv
from refseg.clipseg.config import HF_COMPAT_LAYERS, PAPER_LAYERS, CLIPSegConfig, DecoderConfig
from refseg.errors import CheckpointFormatError

# Keys of the official files that are not part of the model (an unused ``nn.Linear``).
OFFICIAL_LEFTOVER_PREFIX = "reduce."
_HF_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_HF_BLOCK_RENAMES = {
    "self_attn.out_proj.": "self_attn.out_proj.",
    "mlp.fc1.": "linear1.",
    "mlp.fc2.": "linear2.",
    "layer_norm1.": "norm1.",
    "layer_norm2.": "norm2.",
}
HF_CLIP_PREFIXES = ("clip.", "clipseg.")


def convert_official_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``rd64-uni*.pth`` -> refseg decoder keys (drops ``reduce.*``, nothing else)."""
    return {k: v for k, v in state.items() if not k.startswith(OFFICIAL_LEFTOVER_PREFIX)}


def is_hf_clipseg_state_dict(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("decoder.transposed_convolution") for k in state)


def convert_hf_decoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``decoder.*`` keys (prefix already removed) -> refseg decoder keys.

    Raises:
        CheckpointFormatError: a key it does not know, or incomplete q/k/v projections.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(("film_mul.", "film_add.", "reduces.")):
            out[key] = value
        elif key.startswith("transposed_convolution."):
            out["trans_conv." + key[len("transposed_convolution.") :]] = value
        elif match := _HF_LAYER.fullmatch(key):
            index, rest = match.groups()
            prefix = f"blocks.{index}."
            parts = rest.split(".")
            if parts[0] == "self_attn" and parts[1] in ("q_proj", "k_proj", "v_proj"):
                qkv.setdefault((prefix, parts[2]), {})[parts[1]] = value
                continue
            for old, new in _HF_BLOCK_RENAMES.items():
                if rest.startswith(old):
                    out[prefix + new + rest[len(old) :]] = value
                    break
            else:
                raise CheckpointFormatError(f"unexpected key in HF CLIPSeg decoder: decoder.{key}")
        else:
            raise CheckpointFormatError(f"unexpected key in HF CLIPSeg decoder: decoder.{key}")
    out.update(fuse_qkv(qkv, "self_attn."))
    return out


def split_hf_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """HF ``CLIPSegForImageSegmentation`` weights -> ``(clip, decoder)`` in refseg names."""
    clip_part: dict[str, torch.Tensor] = {}
    decoder_part: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("decoder."):
            decoder_part[key[len("decoder.") :]] = value
            continue
        for prefix in HF_CLIP_PREFIXES:
            if key.startswith(prefix):
                clip_part[key[len(prefix) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointFormatError(
            "unexpected keys in HF CLIPSeg weights (neither clip.* nor decoder.*): "
            + ", ".join(sorted(unknown))
        )
    return convert_hf_state_dict(clip_part), convert_hf_decoder(decoder_part)


def configs_from_hf(
    hf_config: Mapping[str, Any],
    extract_layers: tuple[int, ...] | None = None,
    image_size: int = 352,
) -> tuple[CLIPConfig, CLIPSegConfig]:
    """refseg configs from an HF CLIPSeg ``config.json`` dict.

    ``extract_layers=None`` takes the file's value, except HF's default (3, 6, 9), which is
    read as the paper's (3, 7, 9): HF's converter wrote the class default into every CIDAS
    config while the published decoders were trained on (3, 7, 9) (SPEC §2). Pass
    ``HF_COMPAT_LAYERS`` to reproduce HF's numbers.
    """
    model_type = hf_config.get("model_type", "clipseg")
    if model_type != "clipseg":
        raise CheckpointFormatError(f"config.json describes a {model_type!r} model, not CLIPSeg")
    if int(hf_config.get("conditional_layer", 0)) != 0:
        raise CheckpointFormatError("only conditional_layer 0 (FiLM before block 0) is supported")
    clip_config = config_from_hf({**hf_config, "model_type": "clip"})
    clip_config.preprocess.image_size = image_size
    layers = tuple(hf_config.get("extract_layers", HF_COMPAT_LAYERS))
    if extract_layers is None:
        extract_layers = PAPER_LAYERS if layers == HF_COMPAT_LAYERS else layers
    decoder = DecoderConfig(
        width=clip_config.vision.width,
        cond_dim=clip_config.embed_dim,
        patch_size=clip_config.vision.patch_size,
        extract_layers=extract_layers,
        reduce_dim=int(hf_config.get("reduce_dim", 64)),
        heads=int(hf_config.get("decoder_num_attention_heads", 4)),
        ffn_dim=int(hf_config.get("decoder_intermediate_size", 2048)),
        refined=bool(hf_config.get("use_complex_transposed_convolution", False)),
    )
    return clip_config, CLIPSegConfig(decoder=decoder, image_size=image_size)


def decoder_config_from_state(
    state: Mapping[str, torch.Tensor], extract_layers: tuple[int, ...]
) -> dict[str, Any]:
    """Decoder sizes read off official weights: reduce_dim, width, cond_dim, ffn, head kind."""
    try:
        film = state["film_mul.weight"]
        reduce = state["reduces.0.weight"]
        ffn = state["blocks.0.linear1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointFormatError(
            f"not a CLIPSeg decoder state dict: key {exc.args[0]!r} is missing"
        ) from None
    refined = "trans_conv.0.weight" in state
    return {
        "reduce_dim": film.shape[0],
        "cond_dim": film.shape[1],
        "width": reduce.shape[1],
        "ffn_dim": ffn,
        "refined": refined,
        "extract_layers": extract_layers,
    }


def to_hf_decoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """refseg/official decoder keys -> HF ``decoder.*`` keys (the inverse of
    :func:`convert_hf_decoder`; official files may still carry ``reduce.*``, dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in convert_official_state_dict(state).items():
        if key.startswith("trans_conv."):
            out["decoder.transposed_convolution." + key[len("trans_conv.") :]] = value
        elif match := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
            index, rest = match.groups()
            prefix = f"decoder.layers.{index}."
            if rest.startswith("self_attn.in_proj_"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            for hf, ours in _HF_BLOCK_RENAMES.items():
                if rest.startswith(ours):
                    out[prefix + hf + rest[len(ours) :]] = value
                    break
            else:
                raise CheckpointFormatError(f"unexpected decoder key: {key}")
        else:
            out["decoder." + key] = value
    return out
