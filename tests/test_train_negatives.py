"""``refseg train clip`` with the NegCLIP recipe: fresh pairs on the fly, hard negatives
padded for gathers, 2 ranks = 1 rank with the doubled batch, probe-based best checkpoint; and
the default (pool) path still gives the losses it gave before any of this existed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from refseg.cli import build_parser
from refseg.clip.model import CLIP
from refseg.data.shapes.captions import training_pair
from refseg.data.shapes.negatives import parse_caption, truth
from refseg.errors import InputError
from refseg.train.contrastive import (
    PRESETS,
    ContrastiveConfig,
    ContrastiveTask,
    caption_id,
    preset_config,
    train_contrastive,
)
from refseg.train.fresh_pairs import FreshPairs, pad_negatives
from refseg.train.loop import LoopConfig, train
from support.ranks import run_ranks
from test_train import stand_in_pairs, tiny_config
from test_train_loop import max_diff, save_final, without_key_biases

GOLDEN = Path(__file__).parent / "golden" / "clip_default_losses.json"


pytestmark = pytest.mark.usefixtures("one_thread")


def negclip_config(**overrides) -> ContrastiveConfig:
    """:func:`test_train.tiny_config` on fresh pairs with hard negatives."""
    options = dict(
        steps=3,
        held_out_size=8,
        pool_size=None,
        on_the_fly=True,
        positions=True,
        negatives=3,
        crop_fraction=0.25,
    )
    return tiny_config(**{**options, **overrides})


def negclip_task(**overrides) -> ContrastiveTask:
    return ContrastiveTask(negclip_config(**overrides), evaluate_crops=False, progress=False)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_default_path_gives_the_losses_recorded_before_negatives(tmp_path):
    train_contrastive(
        tiny_config(steps=5),
        tmp_path,
        pair_source=stand_in_pairs,
        progress=False,
        evaluate_crops=False,
        threads=1,
        log_every=1,
    )
    losses = [e["loss"] for e in read_log(tmp_path) if e["split"] == "train"]
    # Same arithmetic, so equal to float32 rounding; not bit for bit, as MKL picks other
    # kernels on other CPUs (AVX2 vs AVX-512 differ by ~1e-7). A real change moves 1e-3+.
    assert losses == pytest.approx(json.loads(GOLDEN.read_text())["losses"], rel=1e-5)
    assert all("hard_negative_accuracy" not in e for e in read_log(tmp_path))


def test_fresh_negatives_are_false_for_their_scene_and_padded_consistently():
    seed, size = 5, 24
    pairs = FreshPairs(seed, size, 32, negatives=3, positions=True, crop_fraction=0.25)
    counts = []
    for index in range(size):
        sample = pairs[index]
        pair = training_pair(seed, index, crop_fraction=0.25, positions=True)
        assert sample.caption == pair.caption and sample.image.shape == (32, 32, 3)
        if pair.crop is not None:
            assert sample.negatives == ()
        for text in sample.negatives:
            assert truth(parse_caption(text), pair.scene) is False, (text, pair.caption)
            assert caption_id(text) != caption_id(sample.caption)
        counts.append(len(sample.negatives))
    assert sum(counts) > size  # scene pairs mostly have several
    again = FreshPairs(seed, size, 32, negatives=3, positions=True, crop_fraction=0.25)[3]
    assert torch.equal(again.image, pairs[3].image)  # a pure function of (seed, index)
    assert (again.caption, again.negatives) == (pairs[3].caption, pairs[3].negatives)

    task = negclip_task(steps=3)
    task.train_dataset()
    batch = task.collate([pairs[i] for i in range(8)])
    assert batch.negative_tokens.shape[0] == batch.negative_ids.shape[0] == 8 * 3
    assert int(batch.negative_valid.sum()) == sum(counts[:8])
    for row in range(8):
        texts, valid = pad_negatives(pairs[row].caption, pairs[row].negatives, 3)
        assert len(texts) == 3 and valid == [True] * counts[row] + [False] * (3 - counts[row])
        assert texts[counts[row] :] == [pairs[row].caption] * (3 - counts[row])
        ids = batch.negative_ids[row * 3 : row * 3 + 3]
        assert (ids[counts[row] :] == batch.caption_ids[row]).all()  # padding: its own id
    with pytest.raises(ValueError):
        pad_negatives("a", ("b", "c"), 1)


def test_padding_does_not_change_the_loss():
    # the same samples padded to 3 or to 6 negatives: padding is dropped after the gather
    base = negclip_task(negatives=3)
    base.train_dataset()
    rows = sorted(range(len(base.fresh)), key=lambda i: -len(base.fresh[i].negatives))[:8]
    samples = [base.fresh[i] for i in rows]
    wide = negclip_task(negatives=6)
    wide.train_dataset()
    wide.tokenizer = base.tokenizer  # its corpus may differ; the model must not
    losses = []
    for task in (base, wide):
        torch.manual_seed(0)
        model = CLIP(preset_config("tiny-vit", task.tokenizer.vocab_size, 32))
        loss, numbers = task.loss(model, task.collate(samples))
        losses.append((float(loss.detach()), numbers["negatives"]))
    assert losses[0][1] == losses[1][1] == sum(len(s.negatives) for s in samples) > 8
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)


def _train_negclip(rank: int, out: Path) -> None:
    task = negclip_task()
    loop = LoopConfig(out_dir=out / "run", steps=3, batch_size=8, threads=1, progress=False,
                      log_every=1)
    save_final(train(task, loop), out / f"negclip.{rank}.pt")


def test_two_ranks_with_negatives_train_as_one_rank_with_the_doubled_batch(tmp_path):
    _train_negclip(0, tmp_path / "single")
    run_ranks(_train_negclip, 2, tmp_path / "ddp")
    one = torch.load(tmp_path / "single" / "negclip.0.pt")
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"negclip.{r}.pt") for r in (0, 1))
    assert max_diff(rank0, rank1) == 0.0
    assert max_diff(without_key_biases(one), without_key_biases(rank0)) < 1e-5
    logs = [read_log(tmp_path / d / "run") for d in ("single", "ddp")]
    train_logs = [[e for e in log if e["split"] == "train"] for log in logs]
    for a, b in zip(*train_logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["negatives"] == b["negatives"] > 0  # every rank counted the global batch
        assert a["hard_negative_accuracy"] == pytest.approx(b["hard_negative_accuracy"])


def test_best_checkpoint_is_chosen_by_the_probes(tmp_path):
    task = negclip_task(steps=4, probe_scenes=4, probe_seed=1)
    result = train(task, LoopConfig(out_dir=tmp_path, steps=4, batch_size=8, threads=1,
                                    progress=False, eval_every=1))
    val = {e["step"]: e for e in read_log(tmp_path) if e["split"] == "val"}
    assert sorted(val) == [1, 2, 3, 4]
    for entry in val.values():
        assert entry["probe_mean"] == pytest.approx(
            (entry["probe_relation"] + entry["probe_binding"]) / 2
        )
        assert 0.0 <= entry["probe_position"] <= 1.0
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    means = [val[s]["probe_mean"] for s in sorted(val)]
    assert best["metric"] == "probe_mean" and best["value"] == max(means)
    assert best["step"] == sorted(val)[means.index(max(means))]  # the first best
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert result.record["pool_pairs"] is None and result.record["config"]["negatives"] == 3


def test_options_are_checked_and_parsed():
    with pytest.raises(InputError, match="on-the-fly"):
        ContrastiveConfig(preset="tiny-vit", negatives=3)
    with pytest.raises(InputError, match="on-the-fly"):
        ContrastiveConfig(preset="tiny-vit", positions=True)
    with pytest.raises(InputError, match="negatives"):
        ContrastiveConfig(preset="tiny-vit", on_the_fly=True, negatives=99)
    assert preset_config("shapes-vit-224", 300, 32).vision.image_size == 224
    assert "shapes-vit-224" in PRESETS
    parser = build_parser()
    args = parser.parse_args(["train", "clip", "--preset", "shapes-vit-224", "--out", "x",
                              "--on-the-fly", "--positions", "--negatives", "3",
                              "--probe-scenes", "100"])
    assert (args.on_the_fly, args.positions, args.negatives, args.probe_scenes) == (
        True, True, 3, 100)
    plain = parser.parse_args(["train", "clip", "--preset", "shapes-vit", "--out", "x"])
    # unset: the config's defaults, so the shipped commands train as before
    assert (plain.on_the_fly, plain.negatives, plain.positions, plain.probe_scenes) == (
        None, None, None, None)


def test_init_starts_from_saved_weights_and_keeps_their_tokenizer(tmp_path):
    from refseg.clip.load import load_clip

    train(negclip_task(steps=1), LoopConfig(out_dir=tmp_path / "a", steps=1,
          batch_size=8, threads=1, progress=False))
    saved = load_clip(tmp_path / "a", device="cpu")
    task = negclip_task(steps=1, init=str(tmp_path / "a"), negative_weight=1.0)
    model = task.build_model()
    assert task.tokenizer is task._initial().tokenizer  # no BPE trained: ids keep their meaning
    assert task.tokenizer("a red circle").tolist() == saved.tokenizer("a red circle").tolist()
    assert max_diff(model.state_dict(), saved.model.state_dict()) == 0.0
    result = train(task, LoopConfig(out_dir=tmp_path / "b", steps=1, batch_size=8, threads=1,
                                    progress=False, log_every=1))
    assert result.record["init"]["source"] == str(tmp_path / "a")
    assert len(result.record["init"]["weights_sha256"]) == 64
    logged = [e for e in read_log(tmp_path / "b") if e["split"] == "train"]
    assert all(math.isfinite(e["loss"]) for e in logged)
    with pytest.raises(InputError, match="not a tiny-rn model"):
        negclip_task(preset="tiny-rn", init=str(tmp_path / "a")).build_model()
    with pytest.raises(InputError, match="negative_weight needs"):
        negclip_config(negatives=0, negative_weight=1.0)


def test_locked_image_tuning_trains_only_the_projection_readout_and_text(tmp_path):
    """LiT with a token readout: the image tower stays bit-identical but for ``proj`` and
    the new readout, which starts at zero; the text tower learns."""
    from refseg.clip.load import load_clip

    train(negclip_task(steps=1), LoopConfig(out_dir=tmp_path / "a", steps=1,
          batch_size=8, threads=1, progress=False))
    before = load_clip(tmp_path / "a", device="cpu").model.state_dict()
    task = negclip_task(steps=2, init=str(tmp_path / "a"), token_readout=8, lock_image=True)
    start = task.build_model().state_dict()
    assert all(torch.count_nonzero(start[f"visual.token_readout.2.{k}"]) == 0
               for k in ("weight", "bias"))
    train(task, LoopConfig(out_dir=tmp_path / "b", steps=2, batch_size=8, threads=1,
                           progress=False))
    trained = load_clip(tmp_path / "b", device="cpu")
    assert trained.config.vision.token_readout == 8
    after = trained.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k.startswith("visual.")} == {"visual.proj"}
    assert any(not k.startswith("visual.") for k in changed)  # the text tower trained
    assert torch.count_nonzero(after["visual.token_readout.2.weight"]) > 0
    with pytest.raises(InputError, match="lock_image freezes"):
        negclip_config(structure_weight=1.0, patch_weight=1.0, lock_image=True)
    with pytest.raises(InputError, match="token_readout"):
        negclip_config(token_readout=-1)


def test_image_lr_scale_slows_only_the_image_tower():
    task = negclip_task(steps=10, warmup_steps=0, token_readout=8, image_lr_scale=0.1)
    model = task.build_model()
    optimizer = task.optimizer(model)
    scheduler = task.scheduler(optimizer, 10)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    full = named["visual.proj"]
    assert rate[id(full)] == pytest.approx(task.config.lr)
    for name in ("visual.conv1.weight", "visual.class_embedding", "visual.ln_post.weight"):
        assert rate[id(named[name])] == pytest.approx(0.1 * task.config.lr)
    for name in ("visual.token_readout.0.weight", "token_embedding.weight", "logit_scale"):
        assert rate[id(named[name])] == pytest.approx(task.config.lr)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(task.config.lr)  # what logs read
    optimizer.step()  # no gradients: nothing moves, but the scheduler may step after it
    scheduler.step()
    assert {round(g["lr"] / g["lr_scale"], 12) for g in optimizer.param_groups} == {
        round(optimizer.param_groups[0]["lr"], 12)
    }
    assert len(negclip_task().optimizer(negclip_task().build_model()).param_groups) == 2
    with pytest.raises(InputError, match="image_lr_scale"):
        negclip_config(image_lr_scale=0.0)


def test_spatial_readout_starts_from_saved_weights_with_only_the_new_map_at_zero(tmp_path):
    from refseg.clip.load import load_clip

    train(negclip_task(steps=1), LoopConfig(out_dir=tmp_path / "a", steps=1,
          batch_size=8, threads=1, progress=False))
    saved = load_clip(tmp_path / "a", device="cpu")
    task = negclip_task(steps=2, init=str(tmp_path / "a"), spatial_readout=True)
    model = task.build_model()
    state = model.state_dict()
    assert torch.count_nonzero(state.pop("visual.spatial_proj")) == 0
    assert max_diff(state, saved.model.state_dict()) == 0.0
    train(task, LoopConfig(out_dir=tmp_path / "b", steps=2, batch_size=8, threads=1,
                           progress=False))
    trained = load_clip(tmp_path / "b", device="cpu")
    assert trained.config.vision.spatial_readout  # the saved config says how to rebuild it
    assert torch.count_nonzero(trained.model.visual.spatial_proj) > 0  # and it was trained
    with pytest.raises(InputError, match="needs a ViT"):
        negclip_task(preset="tiny-rn", spatial_readout=True).model_config()
    with pytest.raises(InputError, match="needs a ViT"):  # refused before any rendering
        negclip_config(preset="tiny-rn", token_readout=8)
