"""Contrastive training of tiny CLIPs (the ``clip`` task on the one loop): learning,
determinism, resume, saving, bad options, the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from refseg.cli import build_parser
from refseg.clip import ClipTokenizer, LoadedClip, load_clip
from refseg.errors import CheckpointFormatError, CheckpointNotFoundError, InputError
from refseg.train import sampling
from refseg.train.contrastive import (
    ContrastiveConfig,
    caption_key,
    contrastive_loss,
    learning_rate,
    train_contrastive,
    trim_tokens,
)
from refseg.train.tokenizer import train_bpe, train_clip_tokenizer

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230)}


def stand_in_pairs(seed: int, n: int) -> Iterator[tuple[Image.Image, str]]:
    """A tiny world: one coloured square on grey, left or right; pair i depends on (seed, i)."""
    names = sorted(COLORS)
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        color, side = names[int(rng.integers(3))], ("left", "right")[int(rng.integers(2))]
        pixels = np.full((40, 40, 3), 122, dtype=np.uint8)
        x = 4 if side == "left" else 24
        pixels[14:26, x : x + 12] = COLORS[color]
        yield Image.fromarray(pixels), f"a {color} square on the {side}"


def tiny_config(**overrides) -> ContrastiveConfig:
    options = dict(
        preset="tiny-vit",
        steps=6,
        batch_size=8,
        lr=2e-3,
        warmup_steps=0,
        pool_size=24,
        held_out_size=12,
    )
    return ContrastiveConfig(**{**options, **overrides})


def train(config: ContrastiveConfig, out, **kwargs):
    return train_contrastive(
        config,
        out,
        pair_source=stand_in_pairs,
        progress=False,
        evaluate_crops=False,
        threads=1,
        checkpoint_every=3,
        **kwargs,
    )


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_steps_reduce_the_loss_on_a_fixed_batch(tmp_path):
    # pool == batch: every step sees the same 8 pairs (in another order)
    config = tiny_config(steps=15, pool_size=8)
    train(config, tmp_path)
    losses = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["losses"]
    assert len(losses) == 15
    assert losses[-1] < 0.75 * losses[0]


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny-rn"])
def test_same_seed_gives_bit_identical_weights(tmp_path, preset):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(tiny_config(preset=preset, seed=seed), tmp_path / name)
    first, second, other = (weights(tmp_path / name) for name in "abc")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_config(preset="tiny-rn")  # BatchNorm running stats must resume too
    train(config, tmp_path / "full")

    original = sampling.global_batch_indices

    def crash_at_step_4(step, **kwargs):
        if step == 4:
            raise RuntimeError("crash")
        return original(step, **kwargs)

    monkeypatch.setattr(sampling, "global_batch_indices", crash_at_step_4)
    with pytest.raises(RuntimeError, match="crash"):
        train(config, tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(sampling, "global_batch_indices", original)
    result = train(config, tmp_path / "resumed", resume=True)

    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    full_record = json.loads((tmp_path / "full" / "TRAINING.json").read_text())
    assert result.record["final_loss"] == full_record["final_loss"]


def test_resume_refuses_a_missing_checkpoint_or_other_options(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="without --resume"):
        train(tiny_config(), tmp_path / "none", resume=True)
    train(tiny_config(), tmp_path / "run")
    with pytest.raises(CheckpointFormatError, match="lr"):
        train(tiny_config(lr=1e-2), tmp_path / "run", resume=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointFormatError, match="cannot read"):
        train(tiny_config(), tmp_path / "run", resume=True)


def test_saved_directory_loads_and_the_tokenizer_round_trips(tmp_path):
    result = train(tiny_config(), tmp_path)
    loaded = load_clip(tmp_path, device="cpu")
    assert loaded.config == result.model.config
    captions = ["a red square on the left", "a blue square on the right"]
    assert torch.equal(loaded.tokenize(captions), result.tokenizer(captions))
    with torch.inference_mode():
        # same code path, saved vs in-memory weights: must be bit-identical
        expected = LoadedClip(result.model, result.tokenizer, "trained").encode_texts(captions)
        assert torch.equal(loaded.encode_texts(captions), expected)
    record = json.loads((tmp_path / "TRAINING.json").read_text())
    assert record["steps"] == 6 and record["seed"] == 0 and record["threads"] == 1
    assert 0.0 <= record["evaluation"]["image_to_text"] <= 1.0
    assert record["pool_pairs"] == 24 and record["config"]["lr"] == 2e-3
    assert record["torch_version"] == torch.__version__


def test_bad_options_and_short_pair_sources_are_refused(tmp_path):
    with pytest.raises(InputError, match="steps"):
        tiny_config(steps=0)
    with pytest.raises(InputError, match="pool_size"):
        tiny_config(pool_size=4)
    with pytest.raises(InputError, match="shapes-vit"):
        tiny_config(preset="vit-huge")

    def short_source(seed, n):
        return stand_in_pairs(seed, n - 1)

    with pytest.raises(InputError, match="23 pairs"):
        train_contrastive(
            tiny_config(), tmp_path, pair_source=short_source, progress=False, threads=1
        )


def test_duplicate_captions_are_not_negatives():
    torch.manual_seed(0)
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(2.0)
    all_same = contrastive_loss(image, text, scale, torch.zeros(4, dtype=torch.long))
    assert float(all_same) == pytest.approx(0.0, abs=1e-6)
    distinct = contrastive_loss(image, text, scale, torch.arange(4))
    assert float(distinct) == pytest.approx(float(contrastive_loss(image, text, scale)))
    assert float(distinct) > 0.5


def test_aligned_features_give_a_low_loss_and_shuffled_a_high_one():
    features = torch.eye(6)
    scale = torch.tensor(float(np.log(100.0)))
    assert float(contrastive_loss(features, features, scale)) < 1e-3
    assert float(contrastive_loss(features, features.roll(1, dims=0), scale)) > 10


def test_caption_key_ignores_wording_but_not_meaning():
    assert caption_key("an image of a red disk") == caption_key("a red circle")
    assert caption_key("a big blue box and a red star") == caption_key(
        "a picture of a red star and a large blue square"
    )
    assert caption_key("a red circle") != caption_key("a blue circle")
    assert caption_key("a red circle left of a star") != caption_key("a star left of a red circle")


def test_learning_rate_warms_up_then_decays_to_zero():
    config = ContrastiveConfig(preset="tiny-vit", steps=100, warmup_steps=10, lr=1.0)
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(55, config) == pytest.approx(0.5)
    assert learning_rate(99, config) < 1e-3


def test_trim_tokens_keeps_every_used_column():
    tokens = torch.tensor([[5, 1, 9, 0, 0], [5, 2, 3, 9, 0]])
    assert torch.equal(trim_tokens(tokens), tokens[:, :4])


def test_bpe_is_small_loads_as_clip_tokenizer_and_encodes_unseen_words(tmp_path):
    tokenizer = train_clip_tokenizer(["a red circle", "two blue squares"] * 5, vocab_size=600)
    assert tokenizer.vocab_size <= 600
    assert (tokenizer.sot_id, tokenizer.eot_id) == (
        tokenizer.vocab_size - 2,
        tokenizer.vocab_size - 1,
    )
    assert len(tokenizer.token_ids("red")) == 1  # frequent words become one token
    assert tokenizer.eot_id not in tokenizer.token_ids("zebra ÄÖ 42!")  # bytes, never unknown
    tokenizer.save(tmp_path / "tokenizer.json")
    reloaded = ClipTokenizer.from_file(tmp_path / "tokenizer.json", context_length=32)
    assert torch.equal(reloaded(["a red circle"]), tokenizer(["a red circle"]))
    with pytest.raises(InputError, match="too small"):
        train_bpe(["a red circle"], vocab_size=100)
    with pytest.raises(InputError, match="no text"):
        train_bpe(["", "  "])


def test_cli_parses_train_clip_and_rejects_unknown_presets(capsys):
    parser = build_parser()
    args = parser.parse_args(
        ["train", "clip", "--preset", "shapes-rn", "--out", "x", "--steps", "5"]
    )
    assert (args.preset, args.out, args.steps, args.seed, args.resume) == (
        "shapes-rn",
        "x",
        5,
        0,
        False,
    )
    assert args.batch_size is None  # the preset's
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "clip", "--preset", "nope", "--out", "x"])
