"""SAM-family automatic mask generation: AMG helpers, preprocessing, generator, loading.

The models are a tiny random ``SamModel`` and ``Sam2Model`` (input 128x128) saved into
tmp_path and loaded through the same directory path users take; nothing touches the network.
Generator tests run on both through the ``tiny_dir`` fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refseg.errors import CheckpointFormatError, CheckpointNotFoundError, InputError, RefsegError
from refseg.proposals import MaskProposals, create_proposals
from refseg.proposals.amg import (
    box_iou,
    box_nms,
    masks_to_boxes,
    point_grid,
    remove_small_regions,
    stability_score,
)
from refseg.proposals.sam import (
    SAM_CHECKPOINTS,
    ProposalStats,
    SamInputTransform,
    SamProposalConfig,
    SamProposals,
    _Candidates,
    resolve_sam_checkpoint,
)
from refseg.proposals.sam_input import Sam2InputTransform

transformers = pytest.importorskip("transformers")

INPUT_SIZE = 128


def _tiny_sam_config():
    from transformers.models.sam.configuration_sam import (
        SamConfig,
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    hidden = 16
    vision = SamVisionConfig(
        hidden_size=32, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2,
        image_size=INPUT_SIZE, patch_size=16, window_size=4, global_attn_indexes=[1],
        num_pos_feats=hidden // 2, mlp_dim=64,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=hidden, image_size=INPUT_SIZE, patch_size=16, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=hidden, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
        iou_head_hidden_dim=16,
    )
    return SamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )


def _tiny_sam2_parts() -> dict:
    """Sub-configs of a tiny SAM 2 (Hiera with 4 stages, strides 4-32; 128x128 input)."""
    hidden = 32
    backbone = dict(
        model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1,
        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 2],
        global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2],
        image_size=[INPUT_SIZE, INPUT_SIZE],
    )
    sides = [INPUT_SIZE // 4, INPUT_SIZE // 8, INPUT_SIZE // 16]
    return dict(
        vision_config=dict(
            backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[side, side] for side in sides], fpn_hidden_size=hidden,
        ),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=INPUT_SIZE, patch_size=16),
        mask_decoder_config=dict(
            hidden_size=hidden, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
            iou_head_hidden_dim=16,
        ),
    )


def _tiny_sam2_config():
    return transformers.Sam2Config(**_tiny_sam2_parts())


def _saved_tiny(tmp_path_factory, model_class, config, name: str) -> Path:
    """A tiny random model of ``model_class`` saved in the transformers layout."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(name)
    model_class(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory) -> Path:
    return _saved_tiny(tmp_path_factory, transformers.SamModel, _tiny_sam_config(), "tiny_sam")


@pytest.fixture(scope="module")
def tiny_sam2_dir(tmp_path_factory) -> Path:
    return _saved_tiny(tmp_path_factory, transformers.Sam2Model, _tiny_sam2_config(),
                       "tiny_sam2")


@pytest.fixture(params=["sam", "sam2"])
def tiny_dir(request) -> Path:
    """A tiny checkpoint directory of each family: the generator tests run on both."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    pixels[10:30, 15:40] = (250, 20, 20)  # a flat red block
    return Image.fromarray(pixels)


ACCEPT_ALL = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, mask_threshold=-1e4)


# ---------------------------------------------------------------- AMG helpers


def test_point_grid_matches_formula():
    n = 3
    grid = point_grid(n)
    expected = [((k % n + 0.5) / n, (k // n + 0.5) / n) for k in range(n * n)]
    assert grid.shape == (9, 2) and grid.dtype == torch.float32
    assert torch.allclose(grid, torch.tensor(expected))
    assert torch.equal(point_grid(1), torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError):
        point_grid(0)


def test_stability_score_on_hand_built_logits():
    logits = torch.tensor(
        [
            [[-2.0, -0.5, 0.5], [1.5, 3.0, 0.2]],  # >1: 2 pixels, >-1: 5 pixels
            [[-5.0, -5.0, -5.0], [-5.0, -5.0, -5.0]],  # nothing above -1 -> 0
            [[4.0, 4.0, -4.0], [4.0, -4.0, -4.0]],  # 3 and 3 -> 1
        ]
    )
    score = stability_score(logits, mask_threshold=0.0, offset=1.0)
    assert torch.allclose(score, torch.tensor([2 / 5, 0.0, 1.0]))
    # Threshold 0.4, offset 0.3: > 0.7 -> {1.5, 3.0}; > 0.1 -> {0.5, 1.5, 3.0, 0.2}.
    assert stability_score(logits[:1], 0.4, 0.3).item() == pytest.approx(2 / 4)


def test_masks_to_boxes_uses_exclusive_ends():
    masks = torch.zeros((3, 5, 6), dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = True
    boxes = masks_to_boxes(masks)
    expected = torch.tensor([[2, 1, 5, 3], [0, 4, 1, 5], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(boxes, expected)
    assert masks_to_boxes(torch.zeros((0, 4, 4), dtype=torch.bool)).shape == (0, 4)


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    iou = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 1.0], [0.0, 0.0]]))


def _reference_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    """Brute force: repeatedly take the best remaining box, drop those overlapping it."""

    def iou(p, q):
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = w * h
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        return inter / union if union > 0 else 0.0

    remaining = list(range(len(boxes)))
    kept = []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        kept.append(best)
        remaining = [
            i for i in remaining if i != best and iou(boxes[best], boxes[i]) <= threshold
        ]
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_box_nms_equals_brute_force_reference(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    corners = rng.uniform(0, 50, size=(60, 2))
    sizes = rng.uniform(1, 30, size=(60, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    boxes = np.concatenate([boxes, boxes[:5]])  # exact duplicates
    scores = rng.uniform(0, 1, size=len(boxes))
    scores[-2:] = scores[0]  # ties
    keep = box_nms(torch.tensor(boxes), torch.tensor(scores), threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == _reference_nms(boxes.tolist(), scores.tolist(), threshold)


def test_box_nms_empty_input():
    keep = box_nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
    assert keep.shape == (0,)


def test_remove_small_regions_fills_holes_and_drops_islands():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:8, 1:8] = True  # 49-pixel square ...
    mask[4, 4] = False  # ... with a 1-pixel hole
    mask[10:12, 10:12] = True  # 4-pixel island
    cleaned = remove_small_regions(mask, min_area=5)
    expected = np.zeros_like(mask)
    expected[1:8, 1:8] = True
    assert np.array_equal(cleaned, expected)
    assert np.array_equal(remove_small_regions(mask, 0), mask)
    # Only small islands: keep the largest rather than return an empty mask.
    only_small = np.zeros((6, 6), dtype=bool)
    only_small[0, 0] = True
    only_small[3:5, 3:5] = True
    assert np.array_equal(remove_small_regions(only_small, 10), np.pad(
        np.ones((2, 2), bool), ((3, 1), (3, 1))
    ))


# ---------------------------------------------------------------- preprocessing


def test_input_transform_geometry_and_normalisation():
    transform = SamInputTransform(input_size=128)
    assert transform.resized_size(50, 100) == (64, 128)
    assert transform.resized_size(100, 30) == (128, 38)  # 38.4 -> 38
    assert transform.resized_size(60, 100) == (77, 128)  # 76.8 rounds to 77, as in SAM
    mean_colour = tuple(round(m * 255) for m in transform.pixel_mean)
    values = transform.pixel_values(Image.new("RGB", (100, 50), mean_colour))
    assert values.shape == (1, 3, 128, 128)
    assert values.abs().max() < 0.01  # mean colour -> ~0, padding -> 0
    points = transform.points_to_input(torch.tensor([[100.0, 50.0], [0.0, 25.0]]), 50, 100)
    assert torch.allclose(points, torch.tensor([[128.0, 64.0], [0.0, 32.0]]))


def test_preprocessing_matches_transformers_pil_processor():
    module = pytest.importorskip("transformers.models.sam.image_processing_pil_sam")
    processor = module.SamImageProcessorPil(
        size={"longest_edge": INPUT_SIZE}, pad_size={"height": INPUT_SIZE, "width": INPUT_SIZE}
    )
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8))
    reference = processor(picture, return_tensors="pt")
    ours = SamInputTransform(input_size=INPUT_SIZE)
    assert torch.allclose(ours.pixel_values(picture), reference["pixel_values"], atol=1e-5)
    assert tuple(reference["reshaped_input_sizes"][0].tolist()) == ours.resized_size(45, 70)

    low_res = torch.randn(1, 1, 3, 32, 32)  # [images, points, masks, h, w]
    expected = processor.post_process_masks(
        low_res, reference["original_sizes"], reference["reshaped_input_sizes"], binarize=False
    )[0][0]
    got = ours.logits_to_image(low_res[0, 0], (45, 70), (45, 70))
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------- generator


def test_generator_returns_valid_proposals(tiny_dir, image):
    generator = SamProposals(
        str(tiny_dir), device="cpu", points_per_side=4, pred_iou_thresh=0.0,
        stability_score_thresh=0.0, max_proposals=5,
    )
    proposals, stats = generator.generate(image)
    assert isinstance(proposals, MaskProposals)
    assert proposals.masks.dtype == bool and proposals.image_size == (40, 60)
    assert 1 <= len(proposals) <= 5 and stats.returned == len(proposals)
    assert proposals.masks.reshape(len(proposals), -1).any(axis=1).all()  # no empty mask
    assert np.all(np.diff(proposals.scores) <= 0)
    counts = [stats.candidates, stats.after_iou, stats.after_stability, stats.pre_nms,
              stats.after_nms, stats.returned]
    assert counts == sorted(counts, reverse=True) and stats.candidates == 48
    # __call__ is the protocol entry point and gives the same masks.
    again = generator(image, image_key="ignored")
    assert np.array_equal(again.masks, proposals.masks)


def test_accept_all_thresholds_keep_every_candidate(tiny_dir, image):
    generator = SamProposals(
        str(tiny_dir), device="cpu", points_per_side=5, points_per_batch=7,
        box_nms_thresh=1.0, max_proposals=None, **ACCEPT_ALL,
    )
    proposals, stats = generator.generate(image)
    assert stats.points == 25
    assert stats.candidates == stats.after_iou == stats.after_stability == 25 * 3
    assert stats.pre_nms == stats.after_nms == len(proposals) == 75
    assert proposals.masks.all()  # threshold -1e4: every pixel is in
    # All 75 masks are the full image, so NMS at 0.7 keeps exactly one.
    generator.config.box_nms_thresh = 0.7
    assert len(generator(image)) == 1


def test_strict_thresholds_can_return_no_proposals(tiny_dir, image):
    generator = SamProposals(str(tiny_dir), device="cpu", points_per_side=2,
                             pred_iou_thresh=1e6)
    proposals, stats = generator.generate(image)
    assert len(proposals) == 0 and proposals.image_size == (40, 60)
    assert stats.candidates == 12 and stats.after_iou == 0


def test_masks_match_transformers_processor_pipeline(tiny_sam_dir, image):
    """One centre point: our three masks equal SamModel + transformers' own pre/post-processing."""
    module = pytest.importorskip("transformers.models.sam.image_processing_pil_sam")
    processor = module.SamImageProcessorPil(
        size={"longest_edge": INPUT_SIZE}, pad_size={"height": INPUT_SIZE, "width": INPUT_SIZE}
    )
    generator = SamProposals(
        str(tiny_sam_dir), device="cpu", points_per_side=1, pred_iou_thresh=0.0,
        stability_score_thresh=0.0, box_nms_thresh=1.0, max_proposals=None,
    )
    ours = generator(image)

    inputs = processor(image, return_tensors="pt")
    model = generator.model
    with torch.no_grad():
        embeddings = model.get_image_embeddings(inputs["pixel_values"])
        new_h, new_w = inputs["reshaped_input_sizes"][0].tolist()
        point = torch.tensor([[[[30.0 * new_w / 60, 20.0 * new_h / 40]]]])  # the grid's centre
        output = model(image_embeddings=embeddings, input_points=point, multimask_output=True)
    masks = processor.post_process_masks(
        output.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][0].numpy()
    scores = output.iou_scores[0, 0].numpy()
    order = np.argsort(-scores, kind="stable")
    non_empty = [i for i in order if masks[i].any()]
    assert len(ours) == len(non_empty)
    assert np.allclose(ours.scores, scores[non_empty], atol=1e-6)
    assert np.array_equal(ours.masks, masks[non_empty])


def test_min_mask_region_area_cleans_masks(tiny_dir, image):
    options = dict(device="cpu", points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    raw = SamProposals(str(tiny_dir), **options)(image)
    assert any(not np.array_equal(remove_small_regions(m, 30), m) for m in raw.masks)
    cleaned = SamProposals(str(tiny_dir), min_mask_region_area=30, **options)(image)
    assert len(cleaned) >= 1
    for mask in cleaned.masks:
        assert np.array_equal(remove_small_regions(mask, 30), mask)


def test_large_image_is_handled_at_bounded_resolution(tiny_dir):
    big = Image.new("RGB", (300, 200), (10, 200, 30))  # larger than the 128 input
    generator = SamProposals(str(tiny_dir), device="cpu", points_per_side=2,
                             pred_iou_thresh=0.0, stability_score_thresh=0.0)
    proposals = generator(big)
    assert proposals.image_size == (200, 300)


def test_registry_builds_generator_with_overrides(tiny_dir, image):
    generator = create_proposals("sam", model=str(tiny_dir), device="cpu",
                                 points_per_side=2, **ACCEPT_ALL)
    expected = {"SamModel": "sam", "Sam2Model": "sam2"}[type(generator.model).__name__]
    assert generator.name == expected  # the family that made the masks, in results
    assert generator.config.points_per_side == 2
    assert generator.transform.input_size == INPUT_SIZE


def test_accepts_a_model_instance(tiny_dir, image):
    from_dir = SamProposals(str(tiny_dir), device="cpu", points_per_side=2, **ACCEPT_ALL)
    model = type(from_dir.model).from_pretrained(tiny_dir)
    from_instance = SamProposals(model, points_per_side=2, **ACCEPT_ALL)
    assert from_instance.family is from_dir.family
    assert type(from_instance.transform) is type(from_dir.transform)
    assert np.array_equal(from_instance(image).masks, from_dir(image).masks)


def test_bad_options_raise_input_error(tiny_sam_dir):
    with pytest.raises(InputError, match="points_per_side"):
        SamProposalConfig(points_per_side=0)
    with pytest.raises(InputError, match="box_nms_thresh"):
        SamProposalConfig(box_nms_thresh=1.5)
    with pytest.raises(InputError, match="max_proposals"):
        SamProposalConfig(max_proposals=0)
    with pytest.raises(InputError, match="unknown SAM option.*pointz"):
        SamProposals(str(tiny_sam_dir), device="cpu", pointz=3)
    with pytest.raises(InputError, match="SamModel"):
        SamProposals(42)
    with pytest.raises(InputError, match="Sam2Model"):
        SamProposals(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- checkpoint loading


def _offline_empty_cache(monkeypatch, tmp_path: Path) -> Path:
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("name", ["sam-vit-base", "sam2.1-hiera-tiny"])
def test_offline_without_cache_fails_fast_with_instructions(monkeypatch, tmp_path, name):
    _offline_empty_cache(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError) as info:
        SamProposals(name)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    repo = SAM_CHECKPOINTS[name]
    assert repo in message and "HF_HUB_OFFLINE" in message
    assert f"hf download {repo}" in message


def test_unreachable_hub_fails_fast_with_the_download_command(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("refseg.proposals.sam.hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_sam_checkpoint("sam-vit-large", cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert "the Hub cannot be reached" in message
    assert "hf download facebook/sam-vit-large" in message and "--proposals DIR" in message


@pytest.mark.parametrize("name", sorted(SAM_CHECKPOINTS))
def test_sam_sizes_are_proposal_names(monkeypatch, name):
    seen = {}

    def fake_loader(model, **kwargs):
        seen["model"] = model
        raise CheckpointNotFoundError("stop here")

    monkeypatch.setattr("refseg.proposals.sam.load_sam_model", fake_loader)
    with pytest.raises(CheckpointNotFoundError, match="stop here"):
        create_proposals(name)
    assert seen["model"] == name


def test_a_checkpoint_directory_is_a_proposal_name(tiny_dir):
    generator = create_proposals(str(tiny_dir))
    assert isinstance(generator, SamProposals)


def test_download_failure_becomes_checkpoint_not_found(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def no_network(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("local_files_only", False)))
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr("refseg.proposals.sam.hub_reachable", lambda: True)
    with pytest.raises(CheckpointNotFoundError, match="could not download.*sam-vit-large"):
        resolve_sam_checkpoint("sam-vit-large", cache_dir=tmp_path)
    assert calls == [("facebook/sam-vit-large", True), ("facebook/sam-vit-large", False)]


@pytest.mark.parametrize(
    ("name", "folder", "transform"),
    [("sam-vit-huge", "tiny_sam_dir", SamInputTransform),
     ("sam2.1-hiera-small", "tiny_sam2_dir", Sam2InputTransform)],
)
def test_cached_name_loads_without_network(request, monkeypatch, tmp_path, name, folder, transform):
    import huggingface_hub

    folder = request.getfixturevalue(folder)
    calls = []

    def cached(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("local_files_only", False)))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    generator = SamProposals(name, device="cpu", cache_dir=tmp_path, points_per_side=2)
    assert calls == [(SAM_CHECKPOINTS[name], True)]
    assert type(generator.transform) is transform
    assert generator.transform.input_size == INPUT_SIZE


def test_unknown_name_and_bad_paths(tmp_path, tiny_sam_dir):
    with pytest.raises(CheckpointNotFoundError, match="sam-vit-base"):
        resolve_sam_checkpoint("not-a-model")
    weights = tmp_path / "sam_vit_b.pth"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="is a file"):
        resolve_sam_checkpoint(weights)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        resolve_sam_checkpoint(empty)
    other = tmp_path / "clip"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointFormatError, match="not SAM"):
        resolve_sam_checkpoint(other)
    (empty / "config.json").write_text((tiny_sam_dir / "config.json").read_text())
    with pytest.raises(CheckpointNotFoundError, match="no weights"):
        resolve_sam_checkpoint(empty)


def test_mismatched_or_incomplete_weights_are_rejected(tmp_path, tiny_sam_dir):
    from safetensors.torch import load_file, save_file

    resized = tmp_path / "resized"
    resized.mkdir()
    config = json.loads((tiny_sam_dir / "config.json").read_text())
    config["vision_config"]["mlp_dim"] = 48
    (resized / "config.json").write_text(json.dumps(config))
    (resized / "model.safetensors").write_bytes((tiny_sam_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointFormatError):
        SamProposals(str(resized), device="cpu")

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_sam_dir / "config.json").read_text())
    state = load_file(tiny_sam_dir / "model.safetensors")
    dropped = next(key for key in state if key.startswith("mask_decoder."))
    del state[dropped]
    save_file(state, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointFormatError, match="missing_keys"):
        SamProposals(str(partial), device="cpu")


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RefsegError, match=r"pip install refseg\[sam\]"):
        SamProposals("sam-vit-base")


def test_importing_proposals_does_not_import_transformers():
    code = (
        "import sys, refseg.proposals as p, refseg.proposals.sam; p.available_proposals(); "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- auto


def test_auto_uses_sam_only_when_its_checkpoint_is_cached(monkeypatch, tiny_sam_dir, tmp_path):
    import huggingface_hub

    from refseg.proposals import create_proposals
    from refseg.proposals.superpixel import SuperpixelProposals

    _offline_empty_cache(monkeypatch, tmp_path)
    with pytest.warns(UserWarning, match="superpixel proposals are used.*hf download"):
        assert isinstance(create_proposals("auto"), SuperpixelProposals)

    asked = []

    def cached(repo_id, **kwargs):
        asked.append((repo_id, kwargs.get("local_files_only", False)))
        return str(tiny_sam_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SAM found: no fallback warning
        assert isinstance(create_proposals("auto", device="cpu"), SamProposals)
    assert asked and all(local for _, local in asked)  # never a download


def _cache_holding(monkeypatch, tmp_path, folder, repos):
    """A Hub cache in which only ``repos`` are present (as ``folder``)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    _offline_empty_cache(monkeypatch, tmp_path)

    def cached(repo_id, **kwargs):
        assert kwargs.get("local_files_only"), "auto must never download"
        if repo_id not in repos:
            raise LocalEntryNotFoundError(f"{repo_id} is not cached")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)


def test_auto_takes_the_cheapest_cached_model_and_a_16_grid_on_cpu(
    monkeypatch, tiny_sam_dir, tmp_path
):
    from refseg.proposals import create_proposals
    from refseg.proposals.auto import auto_sam_choice

    repos = {"facebook/sam-vit-base", "Zigeng/SlimSAM-uniform-77"}
    _cache_holding(monkeypatch, tmp_path, tiny_sam_dir, repos)
    name, _, defaults = auto_sam_choice("cpu")
    assert name == "slimsam-77" and defaults == {"points_per_side": 16}
    # On a GPU: the reference's sam-vit-base and SAM's own grid (nothing is loaded here).
    assert auto_sam_choice("cuda")[0::2] == ("sam-vit-base", {})
    generator = create_proposals("auto", device="cpu")
    assert isinstance(generator, SamProposals) and generator.config.points_per_side == 16
    given = create_proposals("auto", device="cpu", points_per_side=7)
    assert given.config.points_per_side == 7  # what the caller says wins

    _cache_holding(monkeypatch, tmp_path, tiny_sam_dir, {"facebook/sam-vit-huge"})
    assert auto_sam_choice("cpu")[0] == "sam-vit-huge"  # any cached model beats superpixels
    _cache_holding(monkeypatch, tmp_path, tiny_sam_dir, set())
    assert auto_sam_choice("cpu") is None
    with pytest.raises(InputError, match="unknown device 'bogus'"):
        auto_sam_choice("bogus")


def test_auto_orders_list_every_sam_name_once():
    from refseg.proposals.auto import AUTO_SAM_ORDER_CPU, AUTO_SAM_ORDER_GPU
    from refseg.proposals.sam import SAM_CHECKPOINTS

    assert sorted(AUTO_SAM_ORDER_CPU) == sorted(AUTO_SAM_ORDER_GPU) == sorted(SAM_CHECKPOINTS)


def test_slimsam_names_point_at_their_hub_repos():
    from refseg.proposals.sam import SAM_CHECKPOINTS

    assert SAM_CHECKPOINTS["slimsam-77"] == "Zigeng/SlimSAM-uniform-77"
    assert SAM_CHECKPOINTS["slimsam-50"] == "Zigeng/SlimSAM-uniform-50"


def test_measured_decoding_batch_gives_the_fixed_batch_masks(tiny_dir, image):
    options = dict(device="cpu", points_per_side=6, pred_iou_thresh=0.0,
                   stability_score_thresh=0.0, max_proposals=None)
    fixed, _ = SamProposals(str(tiny_dir), points_per_batch=64, **options).generate(image)
    for _ in range(2):  # the first calls time the candidate batch sizes
        measured, stats = SamProposals(str(tiny_dir), **options).generate(image)
        assert stats.decoded == stats.points == 36 and stats.skipped == 0
        np.testing.assert_array_equal(measured.masks, fixed.masks)
        np.testing.assert_allclose(measured.scores, fixed.scores, atol=1e-5)


def test_prompt_reduction_only_skips_points_an_accepted_mask_covers(
    tiny_dir, image, monkeypatch
):
    generator = SamProposals(
        str(tiny_dir), device="cpu", points_per_side=8, points_per_batch=4,
        pred_iou_thresh=0.0, stability_score_thresh=0.0, skip_covered_points=True,
    )
    decoded, accepted = [], []
    decode, filter_batch = generator._decode, generator._filter_batch

    def spy_decode(embeddings, points):
        decoded.append(points.clone())
        return decode(embeddings, points)

    def spy_filter(*args):
        union = filter_batch(*args)
        accepted.append(union)
        return union

    monkeypatch.setattr(generator, "_decode", spy_decode)
    monkeypatch.setattr(generator, "_filter_batch", spy_filter)
    _, stats = generator.generate(image)
    assert stats.skipped > 0 and stats.decoded + stats.skipped == stats.points == 64

    # Replay: walk the grid in batches of 4; a point is skipped iff the masks accepted from
    # the batches decoded before it cover its pixel.
    height, width = 40, 60
    grid = point_grid(8) * torch.tensor([width, height])
    covered = torch.zeros((height, width), dtype=torch.bool)
    calls = iter(zip(decoded, accepted, strict=True))
    for start in range(0, 64, 4):
        batch = grid[start : start + 4]
        pixel = batch.long()
        free = ~covered[pixel[:, 1], pixel[:, 0]]
        if not free.any():
            continue
        points, union = next(calls)
        expected = generator.transform.points_to_input(batch[free], height, width)
        torch.testing.assert_close(points, expected)
        if union is not None:
            assert union.shape == (height, width)
            covered |= union
    assert next(calls, None) is None


def test_prompt_reduction_covers_only_masks_that_pass_every_filter(tiny_sam_dir):
    """The union that prompt reduction skips points under holds the accepted masks only:
    not one the predicted-IoU or the stability filter rejected (hand-built decoder output)."""
    generator = SamProposals(str(tiny_sam_dir), device="cpu", skip_covered_points=True,
                             pred_iou_thresh=0.88, stability_score_thresh=0.95)
    side = 32  # any low-res size: logits_to_image scales it to the input, then the image
    logits = torch.full((3, side, side), -10.0)
    logits[0, :16, :16] = 10.0  # confident and stable: accepted
    logits[1, 16:, 16:] = 10.0  # stable but predicted IoU 0.5: rejected
    logits[2, :16, 16:] = 0.5  # confident but unstable (nothing above +1): rejected
    scores = torch.tensor([0.95, 0.5, 0.95])
    size = (INPUT_SIZE, INPUT_SIZE)
    kept, stats = _Candidates(), ProposalStats()
    union = generator._filter_batch(logits, scores, size, size, kept, stats)
    expected = generator.transform.logits_to_image(logits[:1], size, size)[0] > 0
    assert stats.after_iou == 2 and stats.after_stability == 1 and stats.pre_nms == 1
    assert union is not None and torch.equal(union, expected)
    inner, outer = INPUT_SIZE // 2 - 2, INPUT_SIZE // 2 + 2  # bilinear edges in between
    assert union[:inner, :inner].all() and not union[outer:].any() and not union[:, outer:].any()
    assert len(kept.scores) == 1 and kept.scores[0].tolist() == pytest.approx([0.95])


# ---------------------------------------------------------------- SAM 2


def test_sam2_input_stretches_the_image_to_the_square_without_padding():
    transform = Sam2InputTransform(input_size=128)
    mean_colour = tuple(round(m * 255) for m in transform.pixel_mean)
    flat = transform.pixel_values(Image.new("RGB", (60, 40), mean_colour))
    assert flat.shape == (1, 3, 128, 128) and flat.abs().max() < 0.01  # no padded border
    # Left half red, right half blue (40x60): in the square the split is at column 64,
    # on every row (SAM would put the image in the top 85 rows and pad the rest).
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    values = transform.pixel_values(Image.fromarray(pixels))
    red = (1.0 - transform.pixel_mean[0]) / transform.pixel_std[0]
    blue_in_red = (0.0 - transform.pixel_mean[0]) / transform.pixel_std[0]
    torch.testing.assert_close(values[0, 0, :, :62], torch.full((128, 62), red))
    torch.testing.assert_close(values[0, 0, :, 66:], torch.full((128, 62), blue_in_red))
    points = transform.points_to_input(torch.tensor([[60.0, 40.0], [30.0, 10.0]]), 40, 60)
    torch.testing.assert_close(points, torch.tensor([[128.0, 128.0], [64.0, 32.0]]))


def test_sam2_geometry_round_trips_a_mask_onto_a_non_square_image():
    transform = Sam2InputTransform(input_size=128)
    height, width = 40, 60
    # A box in the 32x32 low-res square (rows 8-24, columns 16-32) is rows 10-30 and
    # columns 30-60 of the image: the square's 4 px cells are 1.25 x 1.875 image pixels.
    logits = torch.full((1, 32, 32), -10.0)
    logits[0, 8:24, 16:32] = 10.0
    mask = transform.logits_to_image(logits, (height, width), (height, width))[0] > 0
    expected = torch.zeros((height, width), dtype=torch.bool)
    expected[10:30, 30:60] = True
    assert mask.shape == (height, width)
    disagree = (mask != expected).nonzero()
    # Bilinear edges: only the pixel row/column next to the box's border may differ.
    assert all(r in (9, 10, 29, 30) or c in (29, 30) for r, c in disagree.tolist())
    assert mask[11:29, 31:].all() and not mask[:9].any() and not mask[31:].any()
    assert not mask[:, :29].any()
    # Any image point -> input frame -> the low-res cell under it -> back: covers the point.
    rng = np.random.default_rng(0)
    for x, y in rng.uniform([0, 0], [width, height], size=(20, 2)):
        point = transform.points_to_input(torch.tensor([[x, y]]), height, width)[0]
        cell = (point / 4).long().clamp(max=31)
        low = torch.full((1, 32, 32), -10.0)
        low[0, cell[1], cell[0]] = 10.0
        back = transform.logits_to_image(low, (height, width), (height, width))[0]
        assert back[int(y), int(x)] > -10.0 and back.argmax() // width in range(
            int(y) - 2, int(y) + 3
        )


def test_sam2_masks_match_the_reference_pipeline(tiny_sam2_dir, image):
    """One centre point: our masks equal Sam2Model run on pixels prepared as sam2's
    SAM2Transforms does (float resize to the square, normalise) and logits resized straight
    to the image (its postprocess_masks), written here independently of Sam2InputTransform."""
    generator = SamProposals(
        str(tiny_sam2_dir), device="cpu", points_per_side=1, pred_iou_thresh=0.0,
        stability_score_thresh=0.0, box_nms_thresh=1.0, max_proposals=None,
    )
    ours = generator(image)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    square = torch.nn.functional.interpolate(
        pixels[None], size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True
    )
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        output = generator.model(
            pixel_values=(square - mean) / std,
            input_points=torch.tensor([[[[64.0, 64.0]]]]),  # the 60x40 image's centre
            input_labels=torch.ones((1, 1, 1), dtype=torch.long),
        )
    logits = torch.nn.functional.interpolate(
        output.pred_masks[0], size=(40, 60), mode="bilinear", align_corners=False
    )[0]
    masks = (logits > 0).numpy()
    scores = output.iou_scores[0, 0].numpy()
    order = [i for i in np.argsort(-scores, kind="stable") if masks[i].any()]
    assert len(ours) == len(order) >= 1
    np.testing.assert_allclose(ours.scores, scores[order], atol=1e-6)
    assert np.array_equal(ours.masks, masks[order])


def test_sam2_loads_offline_from_a_directory_with_its_own_defaults(
    monkeypatch, tmp_path, tiny_sam2_dir, tiny_sam_dir, image
):
    import huggingface_hub

    _offline_empty_cache(monkeypatch, tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    generator = SamProposals(str(tiny_sam2_dir), device="cpu", points_per_side=2)
    assert isinstance(generator.model, transformers.Sam2Model)
    assert isinstance(generator.transform, Sam2InputTransform)
    assert generator.family.label == "SAM 2" and generator.name == "sam2"
    # SAM2AutomaticMaskGenerator's defaults (pred_iou_thresh 0.8), SAM's for SAM (0.88);
    # a given config or option wins.
    assert generator.config.pred_iou_thresh == 0.8
    assert SamProposals(str(tiny_sam_dir), device="cpu").config.pred_iou_thresh == 0.88
    explicit = SamProposals(str(tiny_sam2_dir), config=SamProposalConfig(), device="cpu")
    assert explicit.config.pred_iou_thresh == 0.88
    assert SamProposals(str(tiny_sam2_dir), pred_iou_thresh=0.5).config.pred_iou_thresh == 0.5
    assert generator(image).image_size == (40, 60)


def test_a_hub_sam2_video_checkpoint_loads_into_the_image_model(tmp_path, image):
    """Meta's facebook/sam2.1-* repos hold sam2_video checkpoints: the image weights are
    read exactly, the video-memory weights are left out, nothing is reported missing."""
    torch.manual_seed(1)
    config = transformers.Sam2VideoConfig(
        **_tiny_sam2_parts(), image_size=INPUT_SIZE, memory_attention_hidden_size=32,
        memory_encoder_hidden_size=32, mask_downsampler_embed_dim=32,
        memory_fuser_embed_dim=32, memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[8, 8],
    )
    video = transformers.Sam2VideoModel(config)
    video.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sam2_video"
    generator = SamProposals(str(tmp_path), device="cpu", points_per_side=2, **ACCEPT_ALL)
    assert isinstance(generator.model, transformers.Sam2Model)
    video_state = video.state_dict()
    image_state = generator.model.state_dict()
    assert any(key.startswith("memory_") for key in video_state)
    for key, value in image_state.items():
        torch.testing.assert_close(value, video_state[key], rtol=0, atol=0)
    assert len(generator(image)) >= 1


def test_unknown_sam2_name_lists_the_known_ones():
    with pytest.raises(InputError, match="sam2.1-hiera-tiny"):
        create_proposals("sam2.1-hiera-giant")
    with pytest.raises(CheckpointNotFoundError, match="sam2.1-hiera-small"):
        resolve_sam_checkpoint("sam2.1-hiera-giant")


def test_sam2_names_point_at_transformers_repos():
    assert SAM_CHECKPOINTS["sam2.1-hiera-tiny"] == "facebook/sam2.1-hiera-tiny"
    assert SAM_CHECKPOINTS["sam2.1-hiera-small"] == "facebook/sam2.1-hiera-small"


def test_a_transformers_without_sam2_says_to_upgrade(monkeypatch, tiny_sam2_dir):
    # sys.modules' entry: transformers replaces its module object there after import.
    monkeypatch.setattr(sys.modules["transformers"], "Sam2Model", None)
    with pytest.raises(RefsegError, match="Sam2Model.*upgrade transformers"):
        SamProposals(str(tiny_sam2_dir), device="cpu")


@pytest.mark.parametrize(
    ("file_name", "change"),
    [
        ("config.json", {"prompt_encoder_config": {"image_size": 10**9}}),
        ("config.json", {"prompt_encoder_config": {"image_size": 8}}),
        ("preprocessor_config.json", {"image_mean": "abc"}),
        ("preprocessor_config.json", {"image_std": [0.2, 0.0, 0.2]}),
        ("preprocessor_config.json", {"image_std": [0.2, 0.2]}),
    ],
    ids=["huge-input", "tiny-input", "mean-not-a-list", "zero-std", "two-channels"],
)
def test_hostile_checkpoint_configs_are_refused_before_any_allocation(
    tmp_path, tiny_sam2_dir, file_name, change
):
    """A directory's config is data: absurd sizes or statistics give a clear error, not a
    size x size buffer or a traceback."""
    import shutil

    folder = tmp_path / "hostile"
    shutil.copytree(tiny_sam2_dir, folder)
    path = folder / file_name
    data = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointFormatError, match="image_size|per-channel"):
        SamProposals(str(folder), device="cpu")
