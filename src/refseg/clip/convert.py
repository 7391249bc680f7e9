"""Third-party checkpoint keys mapped onto refseg's (OpenAI's) names, in one place.

Hugging Face ``CLIPModel`` keys are renamed and its separate q/k/v projections are
concatenated into ``in_proj_weight``; its architecture comes from ``config.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from refseg.clip.config import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from refseg.errors import CheckpointFormatError

# Renames inside one transformer block (HF -> OpenAI).
_BLOCK_RENAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_TOP_RENAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_LAYER_KEY = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)")


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith(("text_model.", "vision_model.")) for k in state_dict)


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` weights -> OpenAI-named weights (unknown keys raise)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif match := _LAYER_KEY.fullmatch(key):
            tower, index, rest = match.groups()
            prefix = (
                "" if tower == "text_model" else "visual."
            ) + f"transformer.resblocks.{index}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in (
                "q_proj",
                "k_proj",
                "v_proj",
            ):
                _, proj, kind = rest.split(".")
                qkv.setdefault((prefix, kind), {})[proj] = value
                continue
            for old, new in _BLOCK_RENAMES.items():
                if rest.startswith(old + "."):
                    out[prefix + new + rest[len(old) :]] = value
                    break
            else:
                raise CheckpointFormatError(f"unexpected key in Hugging Face CLIP weights: {key}")
        else:
            raise CheckpointFormatError(f"unexpected key in Hugging Face CLIP weights: {key}")
    out.update(fuse_qkv(qkv, "attn."))
    return out


def fuse_qkv(
    qkv: Mapping[tuple[str, str], Mapping[str, torch.Tensor]], attention: str
) -> dict[str, torch.Tensor]:
    """Hugging Face's separate ``q_proj/k_proj/v_proj`` weights and biases, collected as
    ``{(block prefix, "weight"|"bias"): {"q_proj": t, ...}}``, as torch's fused
    ``<prefix><attention>in_proj_weight|in_proj_bias`` (rows q, then k, then v).

    Raises:
        CheckpointFormatError: a block lacks one of the three projections.
    """
    out: dict[str, torch.Tensor] = {}
    for (prefix, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise CheckpointFormatError(f"incomplete q/k/v projections under {prefix}")
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[prefix + attention + name] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0
        )
    return out


# transformers' CLIPTextConfig / CLIPVisionConfig defaults (ViT-B/32 sizes). Checkpoints saved
# by transformers 4.x often write only the keys that differ from these, e.g. fine-tunes of
# openai/clip-vit-base-patch32 whose text_config is {"bos_token_id": 0, "eos_token_id": 2, ...}.
_HF_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}
_HF_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
}


def config_from_hf(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """refseg config from an HF CLIP ``config.json`` dict (omitted keys take HF's defaults)."""
    model_type = hf_config.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointFormatError(f"config.json describes a {model_type!r} model, not CLIP")
    # Sub-configs may be absent (all defaults) or, in old files, stored as "*_config_dict".
    text = {**_HF_TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}
    vision = {**_HF_VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
    text.update(hf_config.get("text_config_dict") or {})
    vision.update(hf_config.get("vision_config_dict") or {})
    act = text["hidden_act"]
    if vision["hidden_act"] != act:
        raise CheckpointFormatError("text and vision towers use different activations")
    if act not in ("quick_gelu", "gelu"):
        raise CheckpointFormatError(f"unsupported activation {act!r}")
    image_size = int(vision["image_size"])
    return CLIPConfig(
        embed_dim=int(hf_config.get("projection_dim", 512)),
        vision=VisionConfig(
            image_size=image_size,
            layers=int(vision["num_hidden_layers"]),
            width=int(vision["hidden_size"]),
            heads=int(vision["num_attention_heads"]),
            patch_size=int(vision["patch_size"]),
            mlp_width=int(vision["intermediate_size"]),
        ),
        text=TextConfig(
            context_length=int(text["max_position_embeddings"]),
            vocab_size=int(text["vocab_size"]),
            width=int(text["hidden_size"]),
            heads=int(text["num_attention_heads"]),
            layers=int(text["num_hidden_layers"]),
            mlp_width=int(text["intermediate_size"]),
        ),
        preprocess=PreprocessConfig(image_size=image_size),
        quick_gelu=act == "quick_gelu",
    )
