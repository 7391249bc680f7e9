"""``refseg train clipseg`` end to end on a tiny ShapesRef and the tiny random CLIP."""

from __future__ import annotations

import json

import pytest
import torch

from refseg.cli import main
from refseg.clipseg import load_clipseg
from refseg.clipseg.data import SampleConfig, SegmentationSamples
from refseg.data import open_dataset
from refseg.data.shapes import ShapesConfig, write_shapesref


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapesref(root, seed=3, images=12, config=ShapesConfig(image_size=64), progress=False)
    return root


def test_samples_are_pure_functions_of_the_index_with_negatives_and_supports(shapes_root):
    dataset = open_dataset(shapes_root, "shapesref", "train")
    config = SampleConfig(image_size=32, negative_prob=0.5, seed=1, variants=3)
    samples = SegmentationSamples(dataset, config)
    assert len(samples) == 3 * len(samples.items)
    first = [samples[i] for i in range(len(samples))]
    again = SegmentationSamples(dataset, config)
    for i in (0, 5, len(samples) - 1):
        a, b = first[i], again[i]
        assert a["text"] == b["text"] and a["support"] == b["support"]
        assert torch.equal(a["mask"], b["mask"]) and a["query_key"] == b["query_key"]
    empty = [s for s in first if s["mask"].sum() == 0]
    assert 0.3 * len(first) < len(empty) < 0.7 * len(first)  # PC+ negatives, p = 0.5
    with_support = [s for s in first if s["support"] >= 0]
    assert with_support and all(0 <= s["text_weight"] <= 0.5 for s in with_support)
    assert all(s["text_weight"] == 1.0 for s in first if s["support"] < 0)
    for s in with_support[:5]:  # the support shows another image
        assert samples.items[s["support"]].image != s["query_key"][0]
    assert samples.support_pixels(0).shape == (3, 32, 32)


def test_train_clipseg_cli_writes_a_loadable_model(shapes_root, tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train", "clipseg", "--data", shapes_root, "--clip", tiny_clip_dir,
        "--image-size", "32", "--extract-layers", "0,1,2", "--reduce-dim", "16",
        "--ffn-dim", "32", "--steps", "3", "--batch-size", "4", "--threads", "1",
        "--eval-expressions", "6", "--no-progress", "--out", out,
    ]  # fmt: skip
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["task"] == "clipseg" and record["steps"] == 3
    assert record["extract_layers"] == [0, 1, 2]
    loaded = load_clipseg(out, device="cpu")
    assert loaded.config.decoder.reduce_dim == 16
    assert loaded.config.threshold in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
