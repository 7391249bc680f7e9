"""refseg's own CLIP: the OpenAI architectures with the hooks referring segmentation needs.

Kept free of torchvision and transformers so it imports everywhere; see the README section
"Why refseg carries its own CLIP".
"""

from refseg.clip.config import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from refseg.clip.hub import HUB_CHECKPOINTS
from refseg.clip.load import available_models, build_model, load_clip, save_clip
from refseg.clip.loaded import LoadedClip
from refseg.clip.model import CLIP
from refseg.clip.tokenizer import ClipTokenizer, build_bpe_tokenizer

__all__ = [
    "CLIP",
    "CLIPConfig",
    "ClipTokenizer",
    "HUB_CHECKPOINTS",
    "LoadedClip",
    "PreprocessConfig",
    "TextConfig",
    "VisionConfig",
    "available_models",
    "build_bpe_tokenizer",
    "build_model",
    "load_clip",
    "save_clip",
]
