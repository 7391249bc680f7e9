"""CLIPSeg (Lüddecke & Ecker, CVPR 2022) on refseg's CLIP: text or example-image prompts.

A frozen CLIP ViT and a 1.1 M-parameter decoder (SPEC §2). Modules: ``config`` (decoder
shape, skip blocks, input pipeline), ``decoder``, ``model`` (CLIP + decoder), ``prompts``
(templates, visual prompt engineering), ``convert`` (official and Hugging Face keys),
``load`` (every weight format), ``loaded`` (conditionals and probability maps), ``system``
(the ``clipseg`` :class:`~refseg.systems.DenseSystem`), ``data`` + ``task`` (training on the
shared loop).
"""

from refseg.clipseg.config import (
    HF_COMPAT_LAYERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_PRESETS,
    PAPER_LAYERS,
    CLIPSegConfig,
    DecoderConfig,
)
from refseg.clipseg.decoder import CLIPSegDecoder
from refseg.clipseg.load import (
    HUB_MODELS,
    available_models,
    build_clipseg,
    load_clipseg,
    save_clipseg,
)
from refseg.clipseg.loaded import LoadedCLIPSeg, QueryState, mix_conditionals, resize_logits
from refseg.clipseg.model import CLIPSeg, decoder_config_for
from refseg.clipseg.prompts import TEMPLATES, VisualPromptConfig, engineer_visual_prompt
from refseg.clipseg.system import CLIPSegSystem, build_system

__all__ = [
    "HF_COMPAT_LAYERS",
    "HUB_MODELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYER_PRESETS",
    "PAPER_LAYERS",
    "TEMPLATES",
    "CLIPSeg",
    "CLIPSegConfig",
    "CLIPSegSystem",
    "CLIPSegDecoder",
    "DecoderConfig",
    "LoadedCLIPSeg",
    "QueryState",
    "VisualPromptConfig",
    "available_models",
    "build_clipseg",
    "build_system",
    "decoder_config_for",
    "engineer_visual_prompt",
    "load_clipseg",
    "mix_conditionals",
    "resize_logits",
    "save_clipseg",
]
