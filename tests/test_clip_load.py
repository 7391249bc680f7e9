"""load_clip / save_clip: checkpoint formats, errors, the Hub cache, preprocessing, dtypes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from refseg.clip import LoadedClip, available_models, build_model, load_clip, save_clip
from refseg.clip.config import CLIP_MEAN, CLIP_STD
from refseg.clip.convert import config_from_hf
from refseg.clip.load import read_state_dict
from refseg.clip.preprocess import mean_color, resize_for_clip
from refseg.errors import CheckpointFormatError, CheckpointNotFoundError
from refseg.image_io import load_image

TEXTS = ["the cat lying on the scooter seat", "a man holding 2 umbrellas!"]


def _outputs(model_or_loaded, pixels, ids, tokenizer):
    """Image and text embeddings of a CLIP module or a LoadedClip, through the same code path
    (LoadedClip's), so that loaded weights must match bit for bit."""
    if not hasattr(model_or_loaded, "tokenizer"):
        model_or_loaded = LoadedClip(model_or_loaded, tokenizer, "reference")
    with torch.inference_mode():
        return model_or_loaded.encode_image(pixels), model_or_loaded.encode_text(ids)


def _assert_same_outputs(reference, loaded, tokenizer):
    size = reference.config.vision.image_size
    torch.manual_seed(7)
    pixels = torch.randn(2, 3, size, size)
    ids = tokenizer(TEXTS)
    expected = _outputs(reference, pixels, ids, tokenizer)
    actual = _outputs(loaded, pixels, ids, tokenizer)
    assert torch.equal(expected[0], actual[0])
    assert torch.equal(expected[1], actual[1])


def _openai_state(model) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


class _Node(nn.Module):
    """One level of a TorchScript module tree whose state_dict has the given keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    """Save a scripted module whose ``state_dict()`` holds exactly ``state`` (OpenAI keys),
    plus the non-weight attributes OpenAI's archives carry. The loader only reads
    ``state_dict()``; scripting our CLIP itself is not possible (Python-side shape logic)."""
    root = _Node()
    extras = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}
    for key, value in {**state, **{k: torch.tensor(v) for k, v in extras.items()}}.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Node())
            node = getattr(node, part)
        node.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


# --- formats -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_openai_state_dict_round_trip(
    tmp_path,
    tower,
    openai_vit_config,
    openai_rn_config,
    make_clip,
    tiny_tokenizer,
    write_tokenizer_files,
):
    config = openai_vit_config if tower == "vit" else openai_rn_config
    model = make_clip(config, seed=11)
    # OpenAI's archives hold fp16 weights; round ours so that every format stores the same values.
    model.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    state = _openai_state(model)
    half_state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tok_dir = write_tokenizer_files(tmp_path / "tok")
    files = {
        "model.pt": lambda p: torch.save(state, p),
        "wrapped.pth": lambda p: torch.save(
            {"state_dict": {f"module.{k}": v for k, v in state.items()}}, p
        ),
        "weights.bin": lambda p: torch.save(state, p),
        "weights.safetensors": lambda p: save_file(state, str(p)),
        "scripted.pt": lambda p: _torchscript_archive(half_state, p),
        "half.safetensors": lambda p: save_file(half_state, str(p)),
    }
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        loaded = load_clip(path, device="cpu", tokenizer=tok_dir / "tokenizer.json")
        inferred = loaded.config
        assert inferred.vision.layers == config.vision.layers, name
        assert inferred.vision.heads == config.vision.heads, name
        assert inferred.vision.image_size == config.vision.image_size, name
        assert (inferred.text.width, inferred.text.heads) == (64, 1), name
        _assert_same_outputs(model, loaded, tiny_tokenizer)


def test_tokenizer_found_beside_the_weights(
    tmp_path, openai_vit_config, make_clip, tiny_tokenizer, write_tokenizer_files
):
    model = make_clip(openai_vit_config)
    save_file(_openai_state(model), str(tmp_path / "clip.safetensors"))
    write_tokenizer_files(tmp_path, "vocab+merges")
    loaded = load_clip(tmp_path / "clip.safetensors", device="cpu")
    assert torch.equal(loaded.tokenize(TEXTS), tiny_tokenizer(TEXTS))
    _assert_same_outputs(model, loaded, tiny_tokenizer)


def test_open_clip_directory_reads_its_config(
    tmp_path, openai_vit_config, make_clip, tiny_tokenizer, write_tokenizer_files
):
    openai_vit_config.quick_gelu = False
    model = make_clip(openai_vit_config)
    save_file(_openai_state(model), str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": {"quick_gelu": False},
                "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            }
        )
    )
    write_tokenizer_files(tmp_path)
    loaded = load_clip(tmp_path, device="cpu")
    assert loaded.config.quick_gelu is False
    assert loaded.config.preprocess.mean == (0.5, 0.5, 0.5)
    _assert_same_outputs(model, loaded, tiny_tokenizer)


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_save_clip_round_trip_keeps_any_head_size(
    tmp_path, tower, tiny_clip, tiny_rn_clip, tiny_tokenizer
):
    """Head size 32 cannot be inferred from shapes: the config travels in the metadata."""
    model = tiny_clip if tower == "vit" else tiny_rn_clip
    model.config.preprocess.resize_mode = "squash"
    directory = save_clip(model, tiny_tokenizer, tmp_path / "saved", {"trained_on": "shapes"})
    loaded = load_clip(directory, device="cpu")
    assert loaded.config == model.config
    assert loaded.name == str(directory)
    _, metadata = read_state_dict(directory / "model.safetensors")
    assert metadata["trained_on"] == "shapes"
    assert torch.equal(loaded.tokenize(TEXTS), tiny_tokenizer(TEXTS))
    _assert_same_outputs(model, loaded, tiny_tokenizer)


def test_hf_config_with_only_changed_keys_takes_transformers_defaults():
    """transformers 4.x often saved sub-configs as diffs from the defaults (ViT-B/32 sizes)."""
    from transformers import CLIPConfig as HFConfig

    sparse = {
        "model_type": "clip",
        "projection_dim": 512,
        "text_config": {"bos_token_id": 0, "eos_token_id": 2, "model_type": "clip_text_model"},
        "vision_config": {"dropout": 0.0, "model_type": "clip_vision_model"},
    }
    config = config_from_hf(sparse)
    assert config == config_from_hf(HFConfig().to_dict())
    assert (config.vision.layers, config.vision.width, config.vision.heads) == (12, 768, 12)
    assert (config.vision.patch_size, config.vision.mlp_width) == (32, 3072)
    assert (config.text.layers, config.text.width, config.text.mlp_width) == (12, 512, 2048)
    assert config.quick_gelu and config.text.context_length == 77
    sparse["vision_config"]["patch_size"] = 16
    assert config_from_hf(sparse).vision.patch_size == 16
    with pytest.raises(CheckpointFormatError, match="'siglip' model, not CLIP"):
        config_from_hf({**sparse, "model_type": "siglip"})
    with pytest.raises(CheckpointFormatError, match="different activations"):
        config_from_hf({**sparse, "vision_config": {"hidden_act": "gelu"}})


def test_build_model_infers_the_architecture(openai_rn_config, make_clip):
    model = make_clip(openai_rn_config)
    rebuilt = build_model(model.state_dict())
    assert rebuilt.config.vision.layers == (1, 1, 1, 1)
    assert rebuilt.config.vision.heads == 4 and rebuilt.config.embed_dim == 16
    assert not rebuilt.training
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


# --- errors --------------------------------------------------------------------------------


@pytest.fixture
def openai_files(tmp_path, openai_vit_config, make_clip, write_tokenizer_files):
    """An OpenAI-format ``clip.pt`` and ``clip.safetensors`` with a tokenizer beside them."""
    state = _openai_state(make_clip(openai_vit_config))
    torch.save(state, tmp_path / "clip.pt")
    save_file(state, str(tmp_path / "clip.safetensors"))
    write_tokenizer_files(tmp_path)
    return tmp_path, state


def test_missing_path_raises_not_found_and_lists_names(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no CLIP checkpoint at .*nope.pt") as info:
        load_clip(tmp_path / "nope.pt", device="cpu")
    assert "ViT-B/32" in str(info.value) and "RN50" in str(info.value)
    with pytest.raises(CheckpointNotFoundError, match="checkpoint file not found"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_unknown_name_lists_valid_names():
    with pytest.raises(CheckpointNotFoundError) as info:
        load_clip("ViT-Q/99", device="cpu")
    for name in available_models():
        assert name in str(info.value)


def test_directory_without_weights(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no weights in"):
        load_clip(tmp_path, device="cpu")


def test_text_file_named_pt(tmp_path):
    (tmp_path / "clip.pt").write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointFormatError, match="cannot read .*clip.pt as a PyTorch"):
        load_clip(tmp_path / "clip.pt", device="cpu")


def test_json_named_safetensors(tmp_path):
    (tmp_path / "clip.safetensors").write_text(json.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors file"):
        load_clip(tmp_path / "clip.safetensors", device="cpu")


def test_state_dict_of_another_model(tmp_path):
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.ReLU()).state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(CheckpointFormatError, match="not a CLIP checkpoint"):
        load_clip(tmp_path / "mlp.pt", device="cpu")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointFormatError, match="does not hold a state dict of tensors"):
        load_clip(tmp_path / "meta.pt", device="cpu")


def test_vision_weights_without_text_tower(tmp_path, openai_files):
    directory, state = openai_files
    save_file(
        {k: v for k, v in state.items() if k.startswith("visual.")},
        str(directory / "v.safetensors"),
    )
    with pytest.raises(CheckpointFormatError, match="key 'ln_final.weight' is missing"):
        load_clip(directory / "v.safetensors", device="cpu")


@pytest.mark.parametrize("name", ["clip.pt", "clip.safetensors"])
def test_truncated_files(openai_files, name):
    directory, _ = openai_files
    data = (directory / name).read_bytes()
    (directory / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        load_clip(directory / name, device="cpu")


def test_mismatched_shape_names_the_key(openai_files):
    directory, state = openai_files
    key = "visual.transformer.resblocks.1.mlp.c_fc.weight"
    bad = dict(state)
    bad[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file(bad, str(directory / "bad.safetensors"))
    with pytest.raises(CheckpointFormatError, match="shape") as info:
        load_clip(directory / "bad.safetensors", device="cpu")
    assert key in str(info.value) and "(257, 64)" in str(info.value)


def test_missing_and_unexpected_keys_are_listed(openai_files):
    directory, state = openai_files
    bad = {k: v for k, v in state.items() if k != "visual.ln_post.bias"}
    bad["visual.extra_head.weight"] = torch.zeros(2)
    torch.save(bad, directory / "bad.pt")
    with pytest.raises(CheckpointFormatError) as info:
        load_clip(directory / "bad.pt", device="cpu")
    message = str(info.value)
    assert "missing: visual.ln_post.bias" in message
    assert "unexpected: visual.extra_head.weight" in message


def test_hf_weights_without_config_json(tmp_path):
    save_file(
        {"text_model.final_layer_norm.weight": torch.ones(4)}, str(tmp_path / "model.safetensors")
    )
    with pytest.raises(CheckpointNotFoundError, match="config.json is missing"):
        load_clip(tmp_path, device="cpu")


def test_tokenizer_larger_than_the_embedding(
    tmp_path, openai_vit_config, make_clip, write_tokenizer_files
):
    openai_vit_config.text.vocab_size = 100
    torch.save(make_clip(openai_vit_config).state_dict(), tmp_path / "clip.pt")
    write_tokenizer_files(tmp_path)
    with pytest.raises(
        CheckpointFormatError, match="tokenizer has .* tokens but the model embeds only 100"
    ):
        load_clip(tmp_path / "clip.pt", device="cpu")


# --- named checkpoints through the Hugging Face cache ---------------------------------------


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _fake_hub_cache(root, repo_id, files: dict[str, bytes]):
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_named_checkpoint_loads_from_the_hub_cache_offline(
    tmp_path, offline, openai_vit_config, make_clip, tiny_tokenizer, write_tokenizer_files
):
    """The name only picks the repo; the architecture comes from the (tiny) weights."""
    model = make_clip(openai_vit_config, seed=5)
    save_file(_openai_state(model), str(tmp_path / "w.safetensors"))
    write_tokenizer_files(tmp_path)
    cache = tmp_path / "cache"
    _fake_hub_cache(
        cache,
        "timm/vit_base_patch32_clip_224.openai",
        {
            "open_clip_model.safetensors": (tmp_path / "w.safetensors").read_bytes(),
            "tokenizer.json": (tmp_path / "tokenizer.json").read_bytes(),
        },
    )
    for spelling in ("ViT-B/32", "vit_b_32"):
        loaded = load_clip(spelling, device="cpu", cache_dir=cache)
        assert loaded.name == "ViT-B/32"
        _assert_same_outputs(model, loaded, tiny_tokenizer)


def test_openai_vocabulary_without_tokenizer_takes_it_from_the_cache(
    tmp_path, offline, openai_vit_config, make_clip, write_tokenizer_files
):
    """A bare OpenAI-format file with OpenAI's 49408-token vocabulary borrows the tokenizer
    from ViT-B/32's repo in ``cache_dir``, without needing that repo's weights."""
    openai_vit_config.text.vocab_size = 49408
    model = make_clip(openai_vit_config)
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    write_tokenizer_files(tmp_path / "tok")
    cache = tmp_path / "cache"
    _fake_hub_cache(
        cache,
        "timm/vit_base_patch32_clip_224.openai",
        {
            "tokenizer.json": (tmp_path / "tok" / "tokenizer.json").read_bytes(),
        },
    )
    loaded = load_clip(tmp_path / "clip.pt", device="cpu", cache_dir=cache)
    assert loaded.tokenizer.vocab_size == len(
        json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    )
    with pytest.raises(
        CheckpointNotFoundError, match="no tokenizer files beside .* tokenizer=PATH"
    ):
        load_clip(tmp_path / "clip.pt", device="cpu", cache_dir=tmp_path / "empty")


def test_empty_cache_offline_fails_fast_naming_the_repo(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError, match="timm/resnet50_clip.openai") as info:
        load_clip("RN50", device="cpu", cache_dir=tmp_path / "empty")
    assert time.perf_counter() - start < 2.0
    assert "cannot be reached" in str(info.value)


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    """Not offline, but nothing listens at the endpoint: one refused connect, no retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError, match="timm/vit_base_patch16_clip_224.openai"):
        load_clip("ViT-B/16", device="cpu", cache_dir=tmp_path / "empty")
    assert time.perf_counter() - start < 5.0


# --- preprocessing ------------------------------------------------------------------------


def _bands(width: int, height: int) -> Image.Image:
    """Three vertical bands: red | green | blue."""
    array = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    array[:, :third, 0] = array[:, third : 2 * third, 1] = array[:, 2 * third :, 2] = 255
    return Image.fromarray(array)


def test_center_crop_and_squash_sizes(tiny_clip_dir):
    clip = load_clip(tiny_clip_dir, device="cpu")
    wide = _bands(96, 32)
    for mode in ("center_crop", "squash"):
        assert clip.preprocess(wide, mode).shape == (3, 32, 32)
        assert clip.preprocess(wide, mode).dtype == torch.float32
    assert resize_for_clip(wide, 32, "center_crop").size == (32, 32)
    assert resize_for_clip(_bands(20, 50), 32, "center_crop").size == (32, 32)
    crop = np.asarray(resize_for_clip(wide, 32, "center_crop"))
    squash = np.asarray(resize_for_clip(wide, 32, "squash"))
    assert crop[:, 4:28, 1].min() > 200 and crop[:, 4:28, 0].max() < 50  # the green middle only
    assert squash[:, :8, 0].min() > 200 and squash[:, -8:, 2].min() > 200  # all three bands


def test_squash_of_a_square_image_equals_center_crop(tiny_clip_dir):
    clip = load_clip(tiny_clip_dir, device="cpu")
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8))
    assert torch.equal(clip.preprocess(square, "squash"), clip.preprocess(square, "center_crop"))


def test_resize_mode_comes_from_the_config(tiny_clip, tiny_tokenizer, tmp_path):
    tiny_clip.config.preprocess.resize_mode = "squash"
    clip = load_clip(save_clip(tiny_clip, tiny_tokenizer, tmp_path / "m"), device="cpu")
    wide = _bands(96, 32)
    assert torch.equal(clip.preprocess(wide), clip.preprocess(wide, "squash"))
    assert not torch.equal(clip.preprocess(wide), clip.preprocess(wide, "center_crop"))
    with pytest.raises(ValueError, match="resize mode must be one of"):
        clip.preprocess(wide, "stretch")


def test_normalisation_uses_clip_statistics(tiny_clip_dir):
    clip = load_clip(tiny_clip_dir, device="cpu")
    assert clip.config.preprocess.mean == CLIP_MEAN and clip.config.preprocess.std == CLIP_STD
    assert CLIP_MEAN == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert CLIP_STD == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    white = clip.preprocess(Image.new("RGB", (40, 40), (255, 255, 255)))
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(white[:, 0, 0], expected, atol=1e-6)
    assert torch.allclose(white, expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-6)
    background = clip.preprocess(Image.new("RGB", (40, 40), mean_color(clip.config.preprocess)))
    assert background.abs().max() < 0.5 / 255 / min(CLIP_STD)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_grey_and_rgba_images_through_load_image(tmp_path, tiny_clip_dir, mode):
    clip = load_clip(tiny_clip_dir, device="cpu")
    rng = np.random.default_rng(1)
    if mode == "RGBA":
        image = Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA")
    else:
        image = Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).convert(mode)
    image.save(tmp_path / "img.png")
    pixels = clip.preprocess(load_image(tmp_path / "img.png"))
    assert pixels.shape == (3, 32, 32) and torch.isfinite(pixels).all()
    if mode in ("L", "I;16"):
        raw = pixels * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
        assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(
            raw[1], raw[2], atol=1e-5
        )
    with torch.inference_mode():
        assert clip.encode_image(pixels[None]).shape == (1, 16)


# --- dtypes and imports ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_half_precision_on_cpu_is_close_to_fp32(
    tmp_path, tower, dtype, tiny_clip, tiny_rn_clip, tiny_tokenizer
):
    model = tiny_clip if tower == "vit" else tiny_rn_clip
    directory = save_clip(model, tiny_tokenizer, tmp_path / "m")
    full = load_clip(directory, device="cpu")
    half = load_clip(directory, device="cpu", dtype=dtype)
    assert half.dtype == dtype and half.device.type == "cpu"
    size = model.config.vision.image_size
    pixels = torch.randn(2, 3, size, size)
    ids = full.tokenize(TEXTS)
    with torch.inference_mode():
        for encode, inputs in (
            (lambda c, x: c.encode_image(x), pixels),
            (lambda c, x: c.encode_text(x), ids),
        ):
            reference, approx = encode(full, inputs), encode(half, inputs)
            assert approx.dtype == dtype
            cosine = torch.nn.functional.cosine_similarity(reference, approx.float())
            assert cosine.min() > 0.999
            assert (reference - approx.float()).abs().max() < 0.05 * reference.abs().max()


def test_import_pulls_in_no_torchvision_or_transformers():
    code = (
        "import json, sys, refseg.clip; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torchvision', 'transformers', 'open_clip'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_resnet_state_dict_without_batchnorm_counters_loads(tmp_path, tiny_rn_clip, tiny_tokenizer):
    """Some exports drop BatchNorm's num_batches_tracked; it is not a weight."""
    state = {
        k: v for k, v in tiny_rn_clip.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    rebuilt = build_model(state, tiny_rn_clip.config)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_image(pixels), tiny_rn_clip.encode_image(pixels))
