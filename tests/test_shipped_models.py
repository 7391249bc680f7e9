"""The CLIPs shipped in the package load offline and pick the right instance in ShapesRef
scenes they never saw (a fresh seed; GT proposals; attribute expressions)."""

from __future__ import annotations

import warnings

import pytest

from refseg.clip import load_clip
from refseg.data.shapes import generate_image
from refseg.methods import GlobalLocalConfig
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter

UNSEEN_SEED = 2024  # the shipped models were trained on the "training" stream of seed 0
SCENES = 16


def _attribute_accuracy(segmenter: Segmenter) -> tuple[int, int, float]:
    """(right answers, expressions, expected right answers of a uniform random choice)."""
    hits = total = 0
    chance = 0.0
    for index in range(SCENES):
        scene, expressions = generate_image(UNSEEN_SEED, index)
        asked = [
            (k, e.text)
            for k, per_object in enumerate(expressions)
            for e in per_object
            if e.kind == "attribute"
        ]
        if not asked:
            continue
        segmenter.set_image(scene.image, proposals=MaskProposals(scene.masks))
        results = segmenter.query([text for _, text in asked])
        hits += sum(result.index == k for (k, _), result in zip(asked, results, strict=True))
        total += len(asked)
        chance += len(asked) / len(scene.masks)
    return hits, total, chance


@pytest.mark.parametrize("name", ["shapes-vit", "shapes-rn"])
def test_shipped_model_picks_the_described_shape(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip(name, device="cpu")
    assert clip.name == name
    # alpha 0.5: the value chosen on ShapesRef val (benchmarks/shapesref.md); clean pixels:
    # the models were trained on CLIP-normalised, bicubic-resized images (the authors'
    # ImageNet-normalised reference preset is for OpenAI's CLIPs; shapes-vit gets 26/48 with it)
    segmenter = Segmenter(clip, None, config=GlobalLocalConfig(alpha=0.5, pixels="clean"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hits, total, chance = _attribute_accuracy(segmenter)
    assert total >= 40
    # measured: 35/48 for both models; untrained weights of the same shapes get 13-14/48
    assert hits / total >= 0.6, f"{name}: {hits}/{total} attribute expressions right"
    assert hits >= 2 * chance, f"{name}: {hits} right vs {chance:.1f} expected by chance"
