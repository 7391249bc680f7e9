"""CLIPSeg parity with transformers' ``CLIPSegForImageSegmentation`` on small random models.

The HF model is saved as a Hugging Face directory and read back through refseg's own loader
and converter (``load_clipseg(dir, extract_layers="hf_compat")``); logits must agree to
1e-4 for text and for visual conditionals, with both heads.
"""

from __future__ import annotations

import json

import pytest
import torch

from refseg.clip import ClipTokenizer, build_bpe_tokenizer
from refseg.clipseg import load_clipseg
from refseg.clipseg.prompts import VisualPromptConfig, engineer_visual_prompt

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4


def hf_clipseg_config(vocab_size: int, eot_id: int, refined: bool, layers=(3, 6, 9)):
    """ViT of 10 blocks (width 32, 8 px patches, 4x4 grid at 32 px), text width 32, D=16."""
    return transformers.CLIPSegConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "eos_token_id": eot_id,
            "bos_token_id": eot_id - 1,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 10,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
        extract_layers=list(layers),
        reduce_dim=16,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=48,
        use_complex_transposed_convolution=refined,
    )


def random_hf_model(config, seed: int = 0):
    """Every weight random (HF zero-initialises biases and sets LayerNorms to 1), at
    scales that keep activations O(1), so any key mix-up shows and logits stay O(10)."""
    torch.manual_seed(seed)
    model = transformers.CLIPSegForImageSegmentation(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "logit_scale" in name:
                continue
            if param.ndim >= 2:  # matrices, convs, embeddings: unit-variance outputs
                param.normal_(0.0, param[0].numel() ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                param.normal_(1.0, 0.1)
            else:  # biases, class embedding
                param.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tiny_bpe):
    """Both heads, built once: ``{refined: (hf_model, directory)}`` (HF layout + tokenizer)."""
    vocab, merges = tiny_bpe
    tokenizer = ClipTokenizer(build_bpe_tokenizer(vocab, merges), context_length=16)
    root = tmp_path_factory.mktemp("hf-clipseg")
    built = {}
    for refined in (True, False):
        hf = random_hf_model(hf_clipseg_config(tokenizer.vocab_size, tokenizer.eot_id, refined))
        directory = root / ("refined" if refined else "plain")
        hf.save_pretrained(directory)
        (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
        (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        built[refined] = (hf, directory)
    return built


@pytest.fixture
def hf_pair(hf_dirs):
    """``make(refined) -> (hf_model, loaded_refseg)``: the HF directory read by refseg."""

    def make(refined: bool):
        hf, directory = hf_dirs[refined]
        return hf, load_clipseg(directory, extract_layers="hf_compat", device="cpu")

    return make


@pytest.mark.parametrize("refined", [True, False], ids=["refined", "plain"])
def test_text_conditionals_match_transformers(hf_pair, refined):
    hf, ours = hf_pair(refined)
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 48, 48)  # 6x6 grid: the positional table is interpolated
    texts = ["the cat lying on the scooter seat", "left zebra"]
    token_ids = ours.tokenize(texts)
    with torch.no_grad():
        expected = hf(input_ids=token_ids, pixel_values=pixels).logits
        cond = ours.text_conditionals(texts)
        logits = ours.model(pixels, cond)[:, 0]
    # Plain head: x8 (the patch); refined: x(8 // 4) ** 2 = x4, as HF and the official code.
    side = 24 if refined else 48
    assert logits.shape == expected.shape == (2, side, side)
    assert expected.abs().max() > 0.1  # not a degenerate all-zero comparison
    diff = (logits - expected).abs().max()
    print(
        f"text parity ({refined=}): max abs diff {diff:.2e}, max |logit| {expected.abs().max():.1f}"
    )
    assert diff < TOLERANCE


@pytest.mark.parametrize("refined", [True, False], ids=["refined", "plain"])
def test_visual_conditionals_match_transformers(hf_pair, refined):
    hf, ours = hf_pair(refined)
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 32, 32)
    support = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 8:14] = True
    masks[1, 10:30, 2:31] = True
    engineered = torch.stack(
        [
            engineer_visual_prompt(s, m, 32, VisualPromptConfig())
            for s, m in zip(support, masks, strict=True)
        ]
    )
    with torch.no_grad():
        expected = hf(pixel_values=pixels, conditional_pixel_values=engineered).logits
        cond = ours.model.encode_image(engineered)
        logits = ours.model(pixels, cond)[:, 0]
    assert expected.abs().max() > 0.1
    diff = (logits - expected).abs().max()
    print(
        f"visual parity ({refined=}): max diff {diff:.2e}, max |logit| {expected.abs().max():.1f}"
    )
    assert diff < TOLERANCE


def test_paper_layers_differ_from_hf_compat(hf_pair, hf_dirs):
    """The block-index trap: reading the same HF weights at (3, 7, 9) changes the logits."""
    hf, ours = hf_pair(True)
    paper = load_clipseg(hf_dirs[True][1], device="cpu")  # default: paper layers
    assert ours.config.decoder.extract_layers == (3, 6, 9)
    assert paper.config.decoder.extract_layers == (3, 7, 9)
    pixels = torch.randn(1, 3, 32, 32)
    cond = ours.text_conditionals(["left zebra"])
    with torch.no_grad():
        diff = (ours.model(pixels, cond) - paper.model(pixels, cond)).abs().max()
    assert diff > 1e-3


def test_registry_name_loads_from_the_hub_cache_offline(hf_dirs, tmp_path, monkeypatch):
    """``clipseg-rd64-refined`` resolves to CIDAS/clipseg-rd64-refined in huggingface_hub's
    cache (a fake one holding the HF directory's files), with no network."""
    from huggingface_hub import constants

    from refseg.errors import CheckpointNotFoundError
    from test_clip_load import _fake_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _, directory = hf_dirs[True]
    files = {path.name: path.read_bytes() for path in directory.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(files)
    _fake_hub_cache(tmp_path / "cache", "CIDAS/clipseg-rd64-refined", files)
    named = load_clipseg(
        "clipseg-rd64-refined", cache_dir=tmp_path / "cache", extract_layers="hf_compat"
    )
    direct = load_clipseg(directory, extract_layers="hf_compat", device="cpu")
    pixels, cond = torch.randn(1, 3, 32, 32), torch.randn(1, 24)
    with torch.no_grad():
        assert torch.equal(named.model.cpu()(pixels, cond), direct.model(pixels, cond))
    with pytest.raises(CheckpointNotFoundError, match="CIDAS/clipseg-rd64"):
        load_clipseg("clipseg-rd64", cache_dir=tmp_path / "empty")
