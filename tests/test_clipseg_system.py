"""``clipseg`` behind the one system interface: text, visual prompts, mixing, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import refseg
from refseg.clipseg import CLIPSegSystem, save_clipseg
from refseg.clipseg.loaded import LoadedCLIPSeg, resize_logits
from refseg.errors import InputError
from test_clipseg_load import tiny_clipseg


@pytest.fixture
def tiny_dir(tmp_path, tiny_clip, tiny_tokenizer):
    loaded = LoadedCLIPSeg(tiny_clipseg(tiny_clip), tiny_tokenizer, "tiny")
    save_clipseg(loaded, tmp_path / "tiny-clipseg")
    return tmp_path / "tiny-clipseg", loaded


def _image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_text_queries_give_the_models_maps_at_the_image_size(tiny_dir):
    directory, loaded = tiny_dir
    system = refseg.load("clipseg", model=directory, device="cpu", threshold=0.5)
    assert isinstance(system, CLIPSegSystem) and system.dense
    image = _image(0)
    system.set_image(image)
    results = system.query(["left zebra", "the cat"])
    expected = loaded.probabilities(
        loaded.encode_query(image), loaded.text_conditionals(["left zebra", "the cat"])
    ).numpy()
    for result, probs in zip(results, expected, strict=True):
        assert result.probability.shape == (30, 40)
        assert np.allclose(result.probability, probs, atol=1e-6)
        assert np.array_equal(result.mask, probs > 0.5)
    assert system.describe()["extract_layers"] == [0, 1, 2]


def test_path_is_recognised_as_clipseg(tiny_dir):
    directory, _ = tiny_dir
    assert isinstance(refseg.load(directory, device="cpu"), CLIPSegSystem)


def test_visual_prompt_alone_and_mixed_with_text(tiny_dir):
    directory, loaded = tiny_dir
    system = refseg.load("clipseg", model=directory, device="cpu")
    image, example = _image(1), _image(2, (48, 36))
    mask = np.zeros((36, 48), dtype=bool)
    mask[4:20, 10:30] = True
    system.set_image(image)
    (alone,) = system.query([], prompt_image=example, prompt_mask=mask)
    visual = loaded.visual_conditionals([example], [mask])
    state = loaded.encode_query(image)
    assert np.allclose(alone.probability, loaded.probabilities(state, visual)[0].numpy(), atol=1e-6)
    (mixed,) = system.query(["the cat"], prompt_image=example, prompt_mask=mask, text_weight=0.25)
    cond = 0.25 * loaded.text_conditionals(["the cat"]) + 0.75 * visual
    logits = resize_logits(loaded.decode(state, cond), (30, 40))
    assert np.allclose(mixed.probability, torch.sigmoid(logits)[0].numpy(), atol=1e-6)


def test_bad_options_are_user_errors(tiny_dir):
    directory, _ = tiny_dir
    system = refseg.load("clipseg", model=directory, device="cpu")
    system.set_image(_image(0))
    with pytest.raises(InputError):
        system.query(["x"], template="random")
    with pytest.raises(InputError):
        system.query(["x"], text_weight=0.5)  # no visual prompt to mix with
    with pytest.raises(InputError):
        system.query(["x"], alpha=0.5)
