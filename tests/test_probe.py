"""`refseg probe`: candidate pairs, ties and not-false negatives counted apart, and a
bag-of-words encoder scoring exactly chance on relation and binding."""

from __future__ import annotations

import json

import torch

from refseg.cli import main
from refseg.eval.probe import (
    NOT_FALSE,
    SCORED,
    TIE,
    ProbePair,
    pair_margins,
    probe_pairs,
    run_probe,
)


class _FakeClip:
    """LoadedClip's encode interface: one constant image feature; texts encoded by
    ``text_feature(text)``."""

    name = "fake"

    def __init__(self, text_feature) -> None:
        self.text_feature = text_feature

    def preprocess(self, image, mode=None) -> torch.Tensor:
        return torch.zeros(3, 4, 4)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(pixels), 8)

    def encode_texts(self, texts) -> torch.Tensor:
        return torch.stack([self.text_feature(t) for t in texts])


def _bag_of_words(text: str) -> torch.Tensor:
    feature = torch.zeros(8)
    for word in text.split():
        feature[sum(map(ord, word)) % 8] += 1.0
    return feature


def test_pairs_of_a_hand_made_scene(shapes_scene):
    scene = shapes_scene(("circle", "red", "small", 0.2, 0.5), ("star", "blue", "small", 0.8, 0.5))
    pairs, outcomes = probe_pairs(scene)
    assert {(p.kind, p.positive, p.negative) for p in pairs} == {
        # "a blue star right of a red circle" means the same: asked once
        ("relation", "a red circle left of a blue star", "a blue star left of a red circle"),
        ("binding", "a red circle and a blue star", "a blue circle and a red star"),
        ("position", "a red circle on the left", "a red circle on the right"),
        ("position", "a blue star on the right", "a blue star on the left"),
    }
    assert outcomes["relation"] == {SCORED: 1}
    assert outcomes["position"] == {SCORED: 2}


def test_ties_and_not_false_negatives_are_counted_not_scored(shapes_scene):
    scene = shapes_scene(
        ("circle", "red", "small", 0.2, 0.5),
        ("star", "red", "small", 0.5, 0.5),
        ("circle", "red", "small", 0.8, 0.5),
    )
    pairs, outcomes = probe_pairs(scene)
    # binding: every pair has one colour (swapping colours is a tie)
    assert outcomes["binding"] == {TIE: 2}  # circle+star, circle+circle: 2 meanings
    # relation: "red circle left of red star" vs "red star left of red circle": the second
    # holds through the other circle; "red circle left of red circle" swaps into itself
    assert outcomes["relation"][NOT_FALSE] == 2 and outcomes["relation"][TIE] == 1
    assert not [p for p in pairs if p.kind in ("binding", "relation")]
    # "a red circle on the right" holds through the other circle
    assert outcomes["position"] == {NOT_FALSE: 2}


class _NoScene:
    def pil_image(self) -> None:
        return None


def test_margins_are_true_minus_false():
    features = {"yes": torch.tensor([1.0, 0.0]), "no": torch.tensor([0.0, 1.0])}
    clip = _FakeClip(lambda t: features[t])
    clip.encode_image = lambda pixels: torch.tensor([[2.0, 0.0]])
    pairs = [ProbePair("relation", "yes", "no"), ProbePair("relation", "no", "yes")]
    assert pair_margins(clip, _NoScene(), pairs) == [1.0, -1.0]


def test_a_bag_of_words_encoder_scores_chance_on_relation_and_binding():
    result = run_probe(_FakeClip(_bag_of_words), seed=3, scenes=12)
    for kind in ("relation", "binding"):
        count = result.counts[kind]
        assert count.scored > 0 and count.hits == 0 and count.equal_scores == count.scored
        assert count.accuracy == 0.5
    position = result.counts["position"]  # "left" and "right" are different words
    assert position.scored > 0 and position.equal_scores < position.scored


def test_command_prints_and_writes_counts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "probe.json"
    code = main(
        [
            "probe",
            "--clip",
            "shapes-vit",
            "--scenes",
            "3",
            "--seed",
            "5",
            "--quiet",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "relation" in printed and "binding" in printed and "position" in printed
    record = json.loads(out.read_text())
    assert record["clip"] == "shapes-vit" and record["scenes"] == 3 and record["seed"] == 5
    for count in record["probes"].values():
        assert 0 <= count["hits"] <= count["scored"]
    assert sum(c["scored"] + c["ties"] + c["not_false"] for c in record["probes"].values()) > 0


def test_bad_options_are_one_line_errors(capsys):
    assert main(["probe", "--clip", "shapes-vit", "--scenes", "0"]) == 2
    assert "refseg: error: --scenes must be >= 1" in capsys.readouterr().err
    assert main(["probe", "--clip", "shapes-vit", "--seed", "-1"]) == 2
