"""The CLIPs shipped in the package load offline and pick the right instance in ShapesRef
scenes they never saw (a fresh seed; GT proposals): attribute, position (absolute) and
relational expressions, each against chance; random weights of the same shapes fail."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch

from refseg.clip import CLIP, LoadedClip, load_clip
from refseg.data.shapes import generate_image
from refseg.methods import GlobalLocalConfig
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter

UNSEEN_SEED = 2024  # the shipped models were trained on the "training" stream of seed 0
SCENES = 16
KINDS = ("attribute", "absolute", "relational")
MODELS = ("shapes-vit", "shapes-rn")
# Issue #13: the shipped CLIPs read a scene as a bag of words, so position and relation
# words are left to luck. Measured with GT proposals, alpha 0.5, seed 2024, 16 scenes:
#   absolute   shapes-vit 28/55, shapes-rn 26/55 (an attribute-only reader: 26.9 expected)
#   relational shapes-vit 18/48, shapes-rn 20/48 (an attribute-only reader: 25.6 expected)
# These tests flip to passing (and the strict xfail then fails: remove it) with weights that
# read composition.
WEAK_ON_POSITIONS = pytest.mark.xfail(
    strict=True,
    reason="issue #13: the shipped shapes CLIPs do not read positions or relations yet",
)


@dataclass
class Tally:
    """Right answers for one kind of expression, and what guessing would get.

    ``chance``: expected right answers of a uniform choice among all objects;
    ``attribute_chance``: of a uniform choice among the objects the expression's own
    attributes fit ("the circle on the left" among the circles), i.e. a reader that gets
    every attribute and ignores position and relation words.
    """

    hits: int = 0
    total: int = 0
    chance: float = 0.0
    attribute_chance: float = 0.0


def _tallies(clip: LoadedClip) -> dict[str, Tally]:
    # alpha 0.5: the value chosen on ShapesRef val (benchmarks/shapesref.md); clean pixels:
    # the models were trained on CLIP-normalised, bicubic-resized images (the authors'
    # ImageNet-normalised reference preset is for OpenAI's CLIPs; shapes-vit gets 26/48 with it)
    segmenter = Segmenter(clip, None, config=GlobalLocalConfig(alpha=0.5, pixels="clean"))
    tallies = {kind: Tally() for kind in KINDS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index in range(SCENES):
            scene, expressions = generate_image(UNSEEN_SEED, index)
            asked = [
                (k, e)
                for k, per_object in enumerate(expressions)
                for e in per_object
                if e.kind in KINDS
            ]
            segmenter.set_image(scene.image, proposals=MaskProposals(scene.masks))
            results = segmenter.query([e.text for _, e in asked])
            for (k, expression), result in zip(asked, results, strict=True):
                tally = tallies[expression.kind]
                tally.hits += result.index == k
                tally.total += 1
                tally.chance += 1 / len(scene.masks)
                tally.attribute_chance += 1 / len(expression.program.filter.select(scene))
    return tallies


def _failures(kind: str, tally: Tally) -> list[str]:
    """Why ``tally`` falls short for its kind (empty when it passes)."""
    accuracy = tally.hits / tally.total
    reasons = []
    if accuracy < 0.6:
        reasons.append(f"{tally.hits}/{tally.total} right, below 60%")
    if tally.hits < 2 * tally.chance:
        reasons.append(f"{tally.hits} right vs {tally.chance:.1f} by chance")
    # Position and relation words must add something to reading the attributes.
    if kind != "attribute" and tally.hits < 1.2 * tally.attribute_chance:
        reasons.append(
            f"{tally.hits} right vs {tally.attribute_chance:.1f} for an attribute-only reader"
        )
    return reasons


@pytest.fixture(scope="module")
def shipped_tallies() -> dict[str, dict[str, Tally]]:
    """Both shipped models' tallies, computed once for the module (about 10 s a model)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        clips = {name: load_clip(name, device="cpu") for name in MODELS}
    assert all(clip.name == name for name, clip in clips.items())
    return {name: _tallies(clip) for name, clip in clips.items()}


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_picks_the_described_shape(name, shipped_tallies):
    tally = shipped_tallies[name]["attribute"]
    assert tally.total >= 40
    # measured: 35/48 for both models
    assert not _failures("attribute", tally), f"{name}: {_failures('attribute', tally)}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["absolute", "relational"])
@WEAK_ON_POSITIONS
def test_shipped_model_reads_positions_and_relations(name, kind, shipped_tallies):
    tally = shipped_tallies[name][kind]
    assert tally.total >= 40
    assert not _failures(kind, tally), f"{name} {kind}: {_failures(kind, tally)}"


def test_untrained_weights_fail_every_kind(monkeypatch):
    """The checks can fail: random weights of shapes-vit's shapes (its tokenizer) fail all."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shipped = load_clip("shapes-vit", device="cpu")
    torch.manual_seed(0)
    untrained = LoadedClip(CLIP(shipped.config).eval(), shipped.tokenizer, "untrained")
    tallies = _tallies(untrained)
    # measured: 14/48 attribute, 16/55 absolute, 13/48 relational
    for kind, tally in tallies.items():
        assert _failures(kind, tally), f"untrained weights pass {kind}: {tally}"
