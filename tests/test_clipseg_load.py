"""load_clipseg / save_clipseg: refseg safetensors, official decoder files, the Hub cache,
strict loading with every key problem listed, and the shipped clipseg-shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from refseg.clip import LoadedClip, save_clip
from refseg.clipseg import CLIPSeg, CLIPSegConfig, decoder_config_for, load_clipseg, save_clipseg
from refseg.clipseg.loaded import LoadedCLIPSeg
from refseg.errors import CheckpointFormatError, CheckpointNotFoundError


def tiny_clipseg(clip, refined: bool = True, seed: int = 0) -> CLIPSeg:
    """A random decoder (every weight perturbed) over the tiny 3-block ViT at 32 px."""
    decoder = decoder_config_for(
        clip, extract_layers=(0, 1, 2), reduce_dim=16, heads=4, ffn_dim=32, refined=refined
    )
    torch.manual_seed(seed)
    model = CLIPSeg(clip, CLIPSegConfig(decoder=decoder, image_size=32))
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture
def tiny_loaded(tiny_clip, tiny_tokenizer) -> LoadedCLIPSeg:
    return LoadedCLIPSeg(tiny_clipseg(tiny_clip), tiny_tokenizer, "tiny")


def _image(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _probabilities(loaded: LoadedCLIPSeg, texts=("left zebra", "the cat")) -> torch.Tensor:
    return loaded.probabilities(
        loaded.encode_query(_image()), loaded.text_conditionals(list(texts))
    )


def test_probabilities_are_at_the_image_size_and_differ_per_prompt(tiny_loaded):
    probs = _probabilities(tiny_loaded)
    assert probs.shape == (2, 30, 40) and probs.dtype == torch.float32
    assert 0 <= float(probs.min()) and float(probs.max()) <= 1
    assert (probs[0] - probs[1]).abs().max() > 1e-4


def test_refseg_file_with_clip_round_trips(tmp_path, tiny_loaded):
    save_clipseg(tiny_loaded, tmp_path / "m")
    loaded = load_clipseg(tmp_path / "m", device="cpu")
    assert loaded.config == tiny_loaded.config
    assert torch.equal(_probabilities(loaded), _probabilities(tiny_loaded))


def test_decoder_only_file_names_its_clip_and_checks_its_fingerprint(
    tmp_path, tiny_loaded, tiny_clip, tiny_tokenizer, make_clip, tiny_vit_config
):
    save_clip(tiny_clip, tiny_tokenizer, tmp_path / "clip")
    path = save_clipseg(tiny_loaded, tmp_path / "dec", clip_source="../clip")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert all(k.startswith("decoder.") for k in handle.keys())
    loaded = load_clipseg(tmp_path / "dec", device="cpu")
    assert torch.allclose(_probabilities(loaded), _probabilities(tiny_loaded), atol=1e-6)
    other = LoadedClip(make_clip(tiny_vit_config, seed=5), tiny_tokenizer, "other")
    with pytest.raises(CheckpointFormatError, match="another CLIP"):
        load_clipseg(tmp_path / "dec", clip=other, device="cpu")


def test_official_file_drops_reduce_and_loads_strictly(
    tmp_path, tiny_loaded, tiny_clip, tiny_tokenizer
):
    """An official-style plain state dict (decoder keys + the unused ``reduce.*``)."""
    state = dict(tiny_loaded.model.decoder.state_dict())
    state["reduce.weight"] = torch.zeros(16, 64)
    state["reduce.bias"] = torch.zeros(16)
    torch.save(state, tmp_path / "rd16-tiny.pth")
    clip = LoadedClip(tiny_clip, tiny_tokenizer, "tiny")
    loaded = load_clipseg(
        tmp_path / "rd16-tiny.pth", clip=clip, extract_layers=(0, 1, 2), device="cpu"
    )
    assert loaded.config.decoder == tiny_loaded.config.decoder
    # The official input pipeline is 352 px; compare the decoders on the same tensors.
    pixels = torch.randn(1, 3, 32, 32)
    cond = torch.randn(1, 16)
    assert torch.equal(loaded.model(pixels, cond), tiny_loaded.model(pixels, cond))


def test_every_key_problem_is_listed(tmp_path, tiny_loaded, tiny_clip, tiny_tokenizer):
    state = dict(tiny_loaded.model.decoder.state_dict())
    del state["blocks.1.norm2.weight"]
    del state["film_add.bias"]
    state["blocks.2.linear2.weight"] = torch.zeros(16, 7)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    clip = LoadedClip(tiny_clip, tiny_tokenizer, "tiny")
    with pytest.raises(CheckpointFormatError) as info:
        load_clipseg(tmp_path / "broken.pth", clip=clip, extract_layers=(0, 1, 2), device="cpu")
    message = str(info.value)
    for key in (
        "blocks.1.norm2.weight",
        "film_add.bias",
        "extra.weight",
        "blocks.2.linear2.weight (file (16, 7), model (16, 32))",
    ):
        assert key in message


def test_bad_sources_are_user_errors(tmp_path, tiny_clip, tiny_tokenizer):
    with pytest.raises(CheckpointNotFoundError, match="clipseg-rd64-refined"):
        load_clipseg(tmp_path / "nothing")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFormatError):
        load_clipseg(tmp_path / "junk.pth", clip=LoadedClip(tiny_clip, tiny_tokenizer, "t"))
    torch.save({"visual.proj": torch.zeros(2)}, tmp_path / "clip.pth")
    with pytest.raises(CheckpointFormatError, match="not a CLIPSeg"):
        load_clipseg(tmp_path / "clip.pth")


def test_resnet_clip_is_refused(tiny_rn_clip):
    with pytest.raises(CheckpointFormatError, match="ViT"):
        decoder_config_for(tiny_rn_clip)


def test_visual_prompts_give_a_conditional_per_example(tiny_loaded):
    image = _image(1, (48, 36))
    mask = np.zeros((36, 48), dtype=bool)
    mask[5:20, 10:30] = True
    cond = tiny_loaded.visual_conditionals([image, image], [mask, ~mask])
    assert cond.shape == (2, 16)
    assert (cond[0] - cond[1]).abs().max() > 1e-4
    with pytest.raises(Exception, match="does not match"):
        tiny_loaded.visual_conditionals([image], [mask[:10]])


def test_threshold_override_and_config_in_metadata(tmp_path, tiny_loaded):
    path = save_clipseg(tiny_loaded, tmp_path / "m")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "refseg-clipseg"
    assert json.loads(meta["config"])["decoder"]["extract_layers"] == [0, 1, 2]
    assert load_clipseg(tmp_path / "m", threshold=0.55, device="cpu").config.threshold == 0.55


def test_metadata_declaring_a_huge_decoder_allocates_nothing(tmp_path, tiny_loaded):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_clipseg(tiny_loaded, tmp_path / "m")
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    config = json.loads(metadata["config"])
    config["decoder"]["ffn_dim"] = 2**31  # 3 blocks x 2 x 16 x 2^31 floats: ~800 GB if built
    metadata["config"] = json.dumps(config)
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(CheckpointFormatError, match="shape: .*linear1"):
        load_clipseg(path, device="cpu")
