"""Shared tiny fixtures: a BPE vocabulary learnt in the test, and tiny random CLIPs.

Everything is built in memory (no network, no downloaded weights) and takes milliseconds.

Fixtures:
    tiny_bpe: ``(vocab, merges)`` laid out like OpenAI's: 256 byte symbols, the same with
        ``</w>``, the learnt merges, then ``<|startoftext|>`` and ``<|endoftext|>`` (largest id).
    tiny_tokenizer: :class:`ClipTokenizer` over ``tiny_bpe`` with context length 16.
    write_tokenizer_files: ``f(directory, kind="tokenizer.json" | "vocab+merges") -> directory``.
    tiny_vit_config / tiny_rn_config: small :class:`CLIPConfig` instances (head size 32, so
        they need a config to load; see ``openai_vit_config`` / ``openai_rn_config`` for the
        64-channels-per-head sizes whose architecture can be inferred from the weights).
    tiny_clip / tiny_rn_clip: random-weight :class:`CLIP` in eval mode, every parameter and
        BatchNorm statistic perturbed so that any mix-up of weights changes the outputs.
    tiny_clip_dir: ``tiny_clip`` written with :func:`save_clip` (``load_clip(dir)`` loads it).
    shapes_scene: ``f(*(shape, colour, size, x, y)) -> Scene``, a hand-made ShapesRef scene of
        10x10 squares centred at the given fractions of a 100 px image (known centroids).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE

from refseg import runtime
from refseg.clip import CLIP, CLIPConfig, ClipTokenizer, TextConfig, VisionConfig, save_clip
from refseg.clip.config import PreprocessConfig
from refseg.clip.tokenizer import (
    EOT_TOKEN,
    SOT_TOKEN,
    build_bpe_tokenizer,
    clip_normalizer,
    clip_pre_tokenizer,
)
from refseg.data.shapes import Scene, ShapeObject

# Tiny models gain nothing from intra-op threads, and on a shared CPU each multi-threaded op
# waits for its sibling threads to be scheduled (a 1x1 conv: ~50 ms with 2 busy threads versus
# ~0.03 ms with one). One thread keeps the whole suite fast.
torch.set_num_threads(1)
# Measured runtime settings (refseg.runtime) go to a throw-away cache, not the user's home.
os.environ.setdefault("REFSEG_CACHE_DIR", tempfile.mkdtemp(prefix="refseg-test-cache-"))


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread on a shared, busy machine (modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def auto_backend_is_torch(monkeypatch):
    """``backend="auto"`` (the default) runs torch, as where ONNX Runtime is not installed
    (CI), so the suite computes the same numbers everywhere and exports nothing; the tests of
    auto's choice patch ``runtime.onnx_installed`` back."""
    monkeypatch.setattr(runtime, "onnx_installed", lambda: False)


TINY_CONTEXT = 16
_CORPUS = [
    "the cat lying on the scooter seat",
    "a man in a red shirt holding a blue umbrella",
    "left zebra next to the tree",
    "the giraffe's head, far right!",
    "person on the left wearing glasses",
    "it's the second bowl of soup from the top",
    "they're standing by 2 white cars",
]


def learn_bpe(
    corpus: list[str], vocab_size: int = 700
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges on ``corpus`` with CLIP's pre-tokenisation, then lay the vocabulary
    out as OpenAI's ``vocab.json`` is: bytes, bytes + ``</w>``, merges, SOT, EOT."""
    learner = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    learner.normalizer = clip_normalizer()
    learner.pre_tokenizer = clip_pre_tokenizer()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    learner.train_from_iterator(corpus, trainer)
    merges = [tuple(m) for m in json.loads(learner.to_str())["model"]["merges"]]
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab: dict[str, int] = {}
    for token in [*tokens, SOT_TOKEN, EOT_TOKEN]:
        vocab.setdefault(token, len(vocab))
    return vocab, merges  # type: ignore[return-value]


@pytest.fixture(scope="session")
def tiny_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return learn_bpe(_CORPUS)


@pytest.fixture
def tiny_tokenizer(tiny_bpe) -> ClipTokenizer:
    vocab, merges = tiny_bpe
    return ClipTokenizer(build_bpe_tokenizer(vocab, merges), context_length=TINY_CONTEXT)


@pytest.fixture
def write_tokenizer_files(tiny_bpe) -> Callable[..., Path]:
    """Write the tiny vocabulary as ``tokenizer.json`` or as ``vocab.json`` + ``merges.txt``."""
    vocab, merges = tiny_bpe

    def write(directory: Path, kind: str = "tokenizer.json") -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "tokenizer.json":
            build_bpe_tokenizer(vocab, merges).save(str(directory / "tokenizer.json"))
        elif kind == "vocab+merges":
            (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
            lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
            (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            raise ValueError(kind)
        return directory

    return write


def _text_config(vocab_size: int, width: int, heads: int) -> TextConfig:
    return TextConfig(
        context_length=TINY_CONTEXT, vocab_size=vocab_size, width=width, heads=heads, layers=2
    )


@pytest.fixture
def tiny_vit_config(tiny_bpe) -> CLIPConfig:
    """ViT: 32x32 image, 8x8 patches (4x4 grid), width 64, 3 blocks, 2 heads; text width 32."""
    return CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, layers=3, width=64, heads=2, patch_size=8),
        text=_text_config(len(tiny_bpe[0]), width=32, heads=2),
        preprocess=PreprocessConfig(image_size=32),
    )


@pytest.fixture
def tiny_rn_config(tiny_bpe) -> CLIPConfig:
    """ModifiedResNet (1,1,1,1), stem width 8 (256-channel 2x2 map at 64x64), 8 pool heads."""
    return CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=8, heads=8),
        text=_text_config(len(tiny_bpe[0]), width=32, heads=2),
        preprocess=PreprocessConfig(image_size=64),
    )


@pytest.fixture
def openai_vit_config(tiny_vit_config) -> CLIPConfig:
    """Like ``tiny_vit_config`` with 64 channels per head (shape inference can rebuild it)."""
    tiny_vit_config.vision.heads = 1
    tiny_vit_config.text = _text_config(tiny_vit_config.text.vocab_size, width=64, heads=1)
    return tiny_vit_config


@pytest.fixture
def openai_rn_config(tiny_rn_config) -> CLIPConfig:
    """Like ``tiny_rn_config`` with 64 channels per head (256 // 64 = 4 pool heads)."""
    tiny_rn_config.vision.heads = 4
    tiny_rn_config.text = _text_config(tiny_rn_config.text.vocab_size, width=64, heads=1)
    return tiny_rn_config


def random_clip(config: CLIPConfig, seed: int = 0) -> CLIP:
    """A :class:`CLIP` in eval mode whose every weight and BatchNorm statistic is random."""
    torch.manual_seed(seed)
    model = CLIP(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "logit_scale":
                continue
            param.add_(0.05 * torch.randn_like(param))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.copy_(torch.empty_like(buffer).uniform_(0.5, 1.5))
    return model.eval()


@pytest.fixture
def make_clip() -> Callable[..., CLIP]:
    """``make_clip(config, seed=0)``: a random-weight CLIP for any config."""
    return random_clip


@pytest.fixture
def tiny_clip(tiny_vit_config) -> CLIP:
    return random_clip(tiny_vit_config)


@pytest.fixture
def tiny_rn_clip(tiny_rn_config) -> CLIP:
    return random_clip(tiny_rn_config)


@pytest.fixture
def tiny_clip_dir(tmp_path, tiny_clip, tiny_tokenizer) -> Path:
    return save_clip(tiny_clip, tiny_tokenizer, tmp_path / "tiny-vit")


def _shapes_scene(*objects: tuple[str, str, str, float, float]) -> Scene:
    size = 100
    masks, placed = [], []
    for shape, color, size_name, x, y in objects:
        mask = np.zeros((size, size), dtype=bool)
        cx, cy = round(x * size), round(y * size)
        mask[cy - 5 : cy + 5, cx - 5 : cx + 5] = True
        masks.append(mask)
        placed.append(ShapeObject(shape, color, size_name, (cx, cy), 10.0, 0.0, (0, 0, 0)))
    return Scene(
        objects=tuple(placed),
        image=np.zeros((size, size, 3), dtype=np.uint8),
        masks=np.stack(masks),
        full_areas=np.full(len(objects), 100, dtype=np.int64),
    )


@pytest.fixture
def shapes_scene() -> Callable[..., Scene]:
    return _shapes_scene
