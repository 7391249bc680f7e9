"""RISCLIP: zero-init equality with CLIP's MaskCLIP grounding, losses, the two stages."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_clip
from refseg.clip import CLIPConfig, LoadedClip, PreprocessConfig, TextConfig, VisionConfig
from refseg.clip.load import packaged_model_dir
from refseg.clip.tokenizer import ClipTokenizer
from refseg.data.shapes import ShapesConfig, write_shapesref
from refseg.errors import InputError
from refseg.masks import iou
from refseg.risclip import Risclip, RisclipConfig, cfe_pairs, preset
from refseg.risclip.evaluate import THRESHOLDS
from refseg.risclip.io import load_risclip, read_risclip
from refseg.risclip.losses import dice_loss, focal_loss, risclip_loss
from refseg.risclip.task import RisclipTask, RisclipTaskConfig
from refseg.train.memo import FrozenMemo

TINY = RisclipConfig(
    clip="tiny",
    image_size=32,
    adapter_width=8,
    cfe_width=16,
    cfe_heads=2,
    ske_heads=2,
    decoder_widths=(8, 8, 8, 8),
    lr=3e-3,
    batch_size=4,
)


@pytest.fixture(scope="module")
def shapes_tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_directory(packaged_model_dir("shapes-vit"), 32)


@pytest.fixture
def small_clip(shapes_tokenizer) -> LoadedClip:
    """Random ViT CLIP (3 image blocks, 2 text blocks: unequal depths) with ShapesRef's words."""
    config = CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, layers=3, width=32, heads=2, patch_size=8),
        text=TextConfig(
            context_length=32, vocab_size=shapes_tokenizer.vocab_size, width=32, heads=2, layers=2
        ),
        preprocess=PreprocessConfig(image_size=32, resize_mode="squash"),
    )
    return LoadedClip(random_clip(config), shapes_tokenizer, "tiny")


def _texts(clip: LoadedClip) -> torch.Tensor:
    return clip.tokenize(["the red circle", "a small blue square on the left of the star"])


def test_untrained_grounding_is_clips_maskclip_grounding_exactly(small_clip):
    model = Risclip(small_clip.model, TINY, small_clip.tokenizer.eot_id).eval()
    pixels = torch.randn(2, 3, 32, 32)
    tokens = _texts(small_clip)
    with torch.no_grad():
        ours = model(pixels, tokens).patch_logits
        dense = small_clip.model.visual.dense_embeddings(pixels)  # [B, h, w, D]
        text = small_clip.encode_text(tokens)  # refseg's encode path (trims padding)
        scale = small_clip.model.logit_scale.exp()
        cos = torch.einsum("bhwd,bd->bhw", F.normalize(dense, dim=-1), F.normalize(text, dim=-1))
        expected = scale * cos
    assert ours.shape == (2, 4, 4)
    assert torch.equal(ours, expected)
    # Every module takes part: a non-zero adapter, CFE or SKE output changes the map.
    for param in (
        model.text_blocks[0].mlp_adapter.up.weight,
        model.cfe[0].s2v.weight,
        model.ske.layers[0].mlp.c_proj.weight,
    ):
        with torch.no_grad():
            param.normal_(0, 0.5)
            assert not torch.allclose(model(pixels, tokens).patch_logits, expected, atol=1e-4)
            param.zero_()


def test_cfe_pairs_follow_the_shallower_tower():
    assert cfe_pairs(12, 12) == [(k, k) for k in range(12)]
    assert cfe_pairs(24, 12) == [(2 * k + 1, k) for k in range(12)]  # ViT-L/14
    assert cfe_pairs(6, 3) == [(1, 0), (3, 1), (5, 2)]  # shapes-vit
    assert cfe_pairs(2, 4) == [(0, 1), (1, 3)]


def test_presets_and_ablation_switches(small_clip):
    assert preset("vit-b16-refcoco").taps(12) == (2, 5, 8, 11)
    assert preset("vit-l14-refcoco").taps(24) == (5, 11, 17, 23)
    assert preset("shapes").image_size == 112
    bare = TINY.ablated(use_adapters=False, use_cfe=False, use_ske=False, use_decoder=False)
    model = Risclip(small_clip.model, bare, small_clip.tokenizer.eot_id)
    trained = {k for k in model.trained_state() if "running" not in k}
    assert trained == {"grounding.scale", "grounding.bias"}
    full = Risclip(small_clip.model, TINY, small_clip.tokenizer.eot_id)
    assert any(k.startswith("decoder.") for k in full.trained_state())
    with pytest.raises(InputError):
        preset("nope")


def test_dice_and_focal_equal_hand_computed_values():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = 0.5, 0.75
    target = torch.tensor([[1.0, 0.0]])
    # dice: (2 * 0.5 + 1) / (1.25 + 1 + 1)
    assert dice_loss(logits, target, smooth=1.0).item() == pytest.approx(1 - 2 / 3.25)
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - 1 / 2.25)
    # focal: 0.25 * (1 - 0.5)^2 * ln 2 and 0.75 * 0.75^2 * ln 4, averaged
    expected = (0.25 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)) / 2
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # soft target 0.5 at p = 0.5: alpha_t = 0.5, p_t = 0.5, BCE = ln 2
    soft = focal_loss(torch.zeros(1, 1), torch.full((1, 1), 0.5))
    assert soft.item() == pytest.approx(0.5 * 0.25 * math.log(2), rel=1e-6)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(
        (0.25 * math.log(2) + 0.75 * math.log(4)) / 2, rel=1e-6
    )


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapesref(root, seed=3, images=4, config=ShapesConfig(image_size=32), progress=False)
    return root


def _task(stage, small_clip, shapes_root, init=None, val="val", **model) -> RisclipTask:
    config = RisclipTaskConfig(
        stage=stage,
        model=TINY.ablated(**model) if model else TINY,
        data_root=shapes_root,
        dataset="shapesref",
        init=init,
        val_split=val,
        val_limit=8,
    )
    return RisclipTask(config, clip=small_clip)


def _train(task: RisclipTask, model: torch.nn.Module, steps: int, batch: dict) -> list[float]:
    optimizer = task.optimizer(model)
    scheduler = task.scheduler(optimizer, steps)
    model.train()
    losses = []
    for _ in range(steps):
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_stage1_trains_its_parts_and_leaves_clip_bit_identical(small_clip, shapes_root, tmp_path):
    task = _task(1, small_clip, shapes_root)
    model = task.build_model()
    assert model.decoder is None  # stage 1 predicts from the grounding map
    clip_before = {k: v.clone() for k, v in small_clip.model.state_dict().items()}
    trained_before = {k: v.clone() for k, v in model.trained_state().items()}
    data = task.train_dataset()
    batch = task.collate([data[i] for i in range(min(4, len(data)))])
    loss, parts = task.loss(model, batch)
    loss.backward()
    assert set(parts) == {"dice", "focal"}
    assert all(p.grad is None for p in small_clip.model.parameters())
    assert all(not p.requires_grad for p in small_clip.model.parameters())
    model.zero_grad()
    _train(task, model, 3, batch)
    after = small_clip.model.state_dict()
    assert all(torch.equal(clip_before[k], after[k]) for k in clip_before)
    changed = {k for k, v in model.trained_state().items() if not torch.equal(v, trained_before[k])}
    assert any("attn_adapter" in k for k in changed) and any(k.startswith("cfe.") for k in changed)
    assert any(k.startswith("ske.") for k in changed) and "grounding.scale" in changed
    task.save_artifact(model, tmp_path / "stage1")
    config, stage, _ = read_risclip(tmp_path / "stage1")
    assert stage == 1 and not config.use_decoder
    scores = task.evaluate(model)
    assert {"mIoU", "oIoU", "miou@0.5", "oiou@0.02"} <= set(scores)
    # the model's own threshold: the one saving chose on val
    assert scores["mIoU"] == scores[f"miou@{model.config.threshold}"]


def test_stage2_changes_only_the_decoder(small_clip, shapes_root, tmp_path):
    stage1 = _task(1, small_clip, shapes_root)
    model1 = stage1.build_model()
    with torch.no_grad():  # a "trained" stage 1: non-zero adapters
        for block in model1.image_blocks:
            block.attn_adapter.up.weight.normal_(0, 0.1)
    stage1.save_artifact(model1, tmp_path / "stage1")
    task = _task(2, small_clip, shapes_root, init=tmp_path / "stage1")
    model = task.build_model()
    before = {k: v.clone() for k, v in model.trained_state().items()}
    assert torch.equal(
        before["image_blocks.0.attn_adapter.up.weight"],
        model1.image_blocks[0].attn_adapter.up.weight,
    )
    clip_before = {k: v.clone() for k, v in small_clip.model.state_dict().items()}
    data = task.train_dataset()
    batch = task.collate([data[i] for i in range(min(4, len(data)))])
    _train(task, model, 3, batch)
    changed = {k for k, v in model.trained_state().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    assert all(torch.equal(v, small_clip.model.state_dict()[k]) for k, v in clip_before.items())
    task.save_artifact(model, tmp_path / "stage2")
    loaded, _ = load_risclip(tmp_path / "stage2", clip=small_clip)
    pixels, tokens = batch["pixels"][:1], batch["tokens"][:1]
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixels, tokens).mask_logits, model(pixels, tokens).mask_logits)


def test_untrained_residual_decoder_predicts_what_stage1_predicts(small_clip):
    torch.manual_seed(0)
    pixels, tokens = torch.randn(2, 3, 32, 32), _texts(small_clip)
    stage1 = Risclip(small_clip.model, TINY.ablated(use_decoder=False), small_clip.tokenizer.eot_id)
    with torch.no_grad():  # a "trained" stage 1
        for block in stage1.image_blocks:
            block.attn_adapter.up.weight.normal_(0, 0.1)
    full = Risclip(small_clip.model, TINY, small_clip.tokenizer.eot_id)
    full.load_state_dict(stage1.state_dict(), strict=False)
    full.eval()
    with torch.no_grad():
        expected = stage1(pixels, tokens).mask_logits
        assert torch.equal(full(pixels, tokens).mask_logits, expected)
        plain = Risclip(small_clip.model, TINY.ablated(decoder_residual=False),
                        small_clip.tokenizer.eot_id)
        plain.load_state_dict(stage1.state_dict(), strict=False)
        assert not torch.allclose(plain.eval()(pixels, tokens).mask_logits, expected)


def test_stage2_memo_changes_no_number(small_clip, shapes_root, tmp_path):
    stage1 = _task(1, small_clip, shapes_root)
    model1 = stage1.build_model()
    with torch.no_grad():  # a "trained" stage 1: non-zero adapters and CFE
        for block in model1.image_blocks:
            block.attn_adapter.up.weight.normal_(0, 0.1)
        for cfe in model1.cfe:
            for p in cfe.parameters():
                p.normal_(0, 0.05)
    stage1.save_artifact(model1, tmp_path / "stage1")
    cached = _task(2, small_clip, shapes_root, init=tmp_path / "stage1")
    model = cached.build_model()
    data = cached.train_dataset()
    batch = cached.collate([data[i] for i in range(min(4, len(data)))])
    first, _ = cached.loss(model, batch)  # computes and memoises
    assert len(cached._frozen) == batch["mask"].shape[0]
    again, _ = cached.loss(model, batch)  # from the memo
    assert torch.equal(first, again)
    # the same loss as the whole model's forward, and as a task that memoises nothing
    plain = dataclasses.replace(cached.config, feature_cache_mb=0)
    uncached = RisclipTask(plain, clip=small_clip)
    assert torch.equal(uncached.loss(model, batch)[0], first) and not len(uncached._frozen)
    full = model(batch["pixels"], batch["tokens"]).mask_logits
    cfg = cached.model_config
    expected, _ = risclip_loss(full, batch["mask"], alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                               focal_weight=cfg.focal_weight, smooth=cfg.dice_smooth)
    assert torch.allclose(first, expected, rtol=1e-6, atol=1e-7)
    # gradients reach the decoder only, through the memoised features
    first.backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_stage2_needs_a_stage1_checkpoint(small_clip, shapes_root):
    with pytest.raises(InputError, match="--init"):
        _task(2, small_clip, shapes_root)


def test_overfits_one_image_expression_pair(small_clip):
    torch.manual_seed(0)
    config = TINY.ablated(image_size=64)  # 8x8 patch grid; the decoder ends at 128 -> 64 px
    model = Risclip(small_clip.model, config, small_clip.tokenizer.eot_id)
    task = RisclipTask.__new__(RisclipTask)  # only the loss/optimizer parts are used here
    task.model_config, task.stage = config, 1
    task._frozen = FrozenMemo(0)  # no memo: the stage-1 parts change before stage 2
    mask = torch.zeros(1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    mask[0] = (((yy - 25) ** 2 + (xx - 38) ** 2) < 15**2).float()  # a disc off the patch grid
    batch = {
        "pixels": torch.randn(1, 3, 64, 64),
        "tokens": small_clip.tokenize(["the red circle"]),
        "mask": mask,
        "sent_id": torch.tensor([0]),
    }
    model.set_stage(1)
    _train(task, model, 30, batch)
    model.set_stage(2)
    task.stage = 2
    losses = _train(task, model, 150, batch)
    model.eval()
    with torch.no_grad():
        pred = torch.sigmoid(model(batch["pixels"], batch["tokens"]).mask_logits)[0] > 0.5
    assert losses[-1] < losses[0]
    assert iou(pred.numpy(), mask[0].numpy().astype(bool)) > 0.95


def test_dense_system_serves_a_checkpoint(small_clip, shapes_root, tmp_path):
    from refseg.clip import save_clip
    from refseg.systems import load

    task = _task(1, small_clip, shapes_root)
    model = task.build_model()
    with torch.no_grad():
        model.grounding.bias.fill_(-3.0)
    task.save_artifact(model, tmp_path / "ckpt")
    clip_dir = save_clip(small_clip.model, small_clip.tokenizer, tmp_path / "clip")
    system = load("risclip", checkpoint=str(tmp_path / "ckpt"), clip=str(clip_dir), device="cpu")
    image = task.train_dataset().dataset[0].load_image().resize((48, 40))
    system.set_image(image)
    (result,) = system.query(["the red circle"])
    assert result.probability.shape == (40, 48)
    pixels = system.encode_image(image)
    with torch.no_grad():
        logits = model.eval()(pixels, small_clip.tokenize(["the red circle"])).mask_logits
        expected = torch.sigmoid(F.interpolate(logits[:, None], size=(40, 48), mode="bilinear"))
    np.testing.assert_allclose(result.probability, expected[0, 0].numpy(), atol=1e-5)
    saved, _, _ = read_risclip(tmp_path / "ckpt")
    val = {t: task._last_scores[f"miou@{t}"] for t in THRESHOLDS}
    assert val[saved.threshold] == max(val.values())  # the default threshold is val's best
    assert np.array_equal(result.mask, result.probability > saved.threshold)
    assert system.describe()["use_decoder"] is False


def test_the_training_loop_runs_both_stages(small_clip, shapes_root, tmp_path):
    from refseg.train import loop

    clip_before = {k: v.clone() for k, v in small_clip.model.state_dict().items()}
    config = loop.LoopConfig(
        out_dir=tmp_path / "s1", steps=2, batch_size=2, progress=False, threads=1
    )
    result = loop.train(_task(1, small_clip, shapes_root, val=None), config)
    assert result.record["model"]["use_decoder"] is False
    assert all(torch.equal(v, small_clip.model.state_dict()[k]) for k, v in clip_before.items())
    stage2 = _task(2, small_clip, shapes_root, init=tmp_path / "s1", val=None)
    config = dataclasses.replace(config, out_dir=tmp_path / "s2")
    loop.train(stage2, config)
    loaded, _ = load_risclip(tmp_path / "s2", clip=small_clip)
    assert loaded.decoder is not None
    assert read_risclip(tmp_path / "s2")[1] == 2


def test_packaged_risclip_shapes_loads_offline():
    model, clip = load_risclip("risclip-shapes")
    assert model.config.clip == "shapes-vit" and model.decoder is not None
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    tokens = clip.tokenize(["the red circle"])
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 112, 112), tokens)
    assert out.patch_logits.shape == (1, 7, 7) and out.mask_logits.shape == (1, 112, 112)
    assert torch.isfinite(out.mask_logits).all()


def test_metadata_declaring_a_huge_model_allocates_nothing(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from refseg.errors import CheckpointFormatError
    from refseg.risclip.io import resolve

    with safe_open(str(resolve("risclip-shapes")), framework="pt") as handle:
        metadata = dict(handle.metadata())
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    config = json.loads(metadata["config"])
    config["adapter_width"] = 2**30  # every block's adapters: hundreds of GB if built
    metadata["config"] = json.dumps(config)
    path = tmp_path / "risclip.safetensors"
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(CheckpointFormatError, match="shape"):
        load_risclip(path)


def test_image_size_is_bounded_and_chosen_in_stage1_only(
    small_clip, shapes_root, tmp_path, capsys
):
    from refseg.cli import main

    assert preset("shapes", image_size=224).image_size == 224
    with pytest.raises(InputError, match="<= 2048"):
        preset("shapes", image_size=10**6)  # refused before a grid is allocated
    common = ["train", "risclip", "--preset", "shapes", "--dataset", str(shapes_root),
              "--name", "shapesref", "--out", str(tmp_path / "out")]
    assert main([*common, "--stage", "1", "--image-size", "1000000"]) == 2
    assert "image_size must be <= 2048" in capsys.readouterr().err
    with pytest.raises(InputError, match="smaller than one"):
        Risclip(small_clip.model, TINY.ablated(image_size=1), small_clip.tokenizer.eot_id)
    stage2 = [*common, "--stage", "2", "--init", str(tmp_path), "--image-size", "224"]
    assert main(stage2) == 2
    assert "stage-1 choice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
