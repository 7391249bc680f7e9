"""Does a CLIP read composition in ShapesRef scenes? Relation, attribute-binding and position
probes on scenes no model was trained on.

Each probe pairs a caption that is true for a scene with a recomposition of its words that is
clearly false for it (the hard negatives of :mod:`refseg.data.shapes.negatives`), and asks
whether the image is closer to the true one; 50 % is chance (ARO's relation and attribution
probes, Yuksekgonul et al., ICLR 2023, in ShapesRef's words):

- ``relation``: "a red circle left of a blue star" vs "a blue star left of a red circle";
- ``binding``: "a red circle and a blue star" vs "a blue circle and a red star";
- ``position``: "a red circle on the left" vs "a red circle on the right".

Every candidate of a scene is asked (one per meaning). A candidate whose negative means the
same as the caption (two objects of one colour swap colours) is a *tie* and one whose
negative is not clearly false (another red circle elsewhere) is *not false*: both are counted
and left out of the accuracy. Scenes come from the "probe" random stream, which neither the
benchmark datasets nor training ever draw from.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from refseg.clip.loaded import LoadedClip
from refseg.data.shapes.config import ShapesConfig
from refseg.data.shapes.negatives import (
    OPPOSITE,
    Caption,
    ListCaption,
    PositionCaption,
    RelationCaption,
    meaning,
    mention_of,
    truth,
)
from refseg.data.shapes.programs import SIDES, on_side, related_pairs
from refseg.data.shapes.scene import Scene, sample_scene, scene_rng
from refseg.errors import InputError

PROBE_KINDS: tuple[str, ...] = ("relation", "binding", "position")
PROBE_STREAM = "probe"
# Outcomes of one candidate pair.
SCORED, TIE, NOT_FALSE = "scored", "tie", "not_false"


@dataclass(frozen=True)
class ProbePair:
    """A true caption and its clearly false twin for one scene."""

    kind: str
    positive: str
    negative: str


@dataclass
class ProbeCount:
    """Outcomes of one probe's candidate pairs over all scenes; ``accuracy`` counts scored
    pairs only."""

    scored: int = 0
    hits: int = 0  # image strictly closer to the true caption
    equal_scores: int = 0  # exactly as close to both (a bag-of-words encoder): half a hit
    ties: int = 0
    not_false: int = 0
    absent: int = 0  # scenes without any candidate (e.g. no clearly related pair)

    @property
    def accuracy(self) -> float:
        return (self.hits + self.equal_scores / 2) / self.scored if self.scored else float("nan")


@dataclass
class ProbeResult:
    clip: str
    seed: int
    scenes: int
    counts: dict[str, ProbeCount] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "clip": self.clip,
            "seed": self.seed,
            "scenes": self.scenes,
            "stream": PROBE_STREAM,
            "probes": {
                kind: {**asdict(count), "accuracy": round(count.accuracy, 4)}
                for kind, count in self.counts.items()
            },
        }


def _candidates(scene: Scene, kind: str) -> list[tuple[Caption, Caption]]:
    """Every (true caption, recomposed caption) of one probe kind, in canonical words."""
    objects = scene.objects
    if kind == "relation":
        out: list[tuple[Caption, Caption]] = []
        for i, j, relation in related_pairs(scene):
            pair = (mention_of(objects[i]), mention_of(objects[j]))
            out.append(
                (RelationCaption("", pair, relation), RelationCaption("", pair[::-1], relation))
            )
        return out
    if kind == "binding":
        out = []
        for i, j in combinations(range(len(objects)), 2):
            a, b = mention_of(objects[i]), mention_of(objects[j])
            swapped = (replace(a, color=b.color), replace(b, color=a.color))
            out.append((ListCaption("", (a, b)), ListCaption("", swapped)))
        return out
    if kind == "position":
        return [
            (
                PositionCaption("", (mention_of(objects[i]),), side),
                PositionCaption("", (mention_of(objects[i]),), OPPOSITE[side]),
            )
            for i in range(len(objects))
            for side in SIDES
            if on_side(scene, i, side)[0]
        ]
    raise InputError(f"unknown probe {kind!r}; expected one of {', '.join(PROBE_KINDS)}")


def probe_pairs(scene: Scene) -> tuple[list[ProbePair], dict[str, Counter[str]]]:
    """Every candidate of every probe kind in the scene, one per meaning ("A left of B" and
    "B right of A" are one): the pairs to score, and per kind how many candidates were
    :data:`SCORED`, :data:`TIE` or :data:`NOT_FALSE`."""
    pairs: list[ProbePair] = []
    outcomes: dict[str, Counter[str]] = {}
    for kind in PROBE_KINDS:
        counts: Counter[str] = Counter()
        seen = set()
        for positive, negative in _candidates(scene, kind):
            if meaning(positive) in seen:
                continue
            seen.add(meaning(positive))
            if truth(positive, scene) is not True:  # never happens: candidates are built true
                raise AssertionError(f"probe caption {positive.text!r} is not true for its scene")
            if meaning(negative) == meaning(positive):
                counts[TIE] += 1
            elif truth(negative, scene) is not False:
                counts[NOT_FALSE] += 1
            else:
                counts[SCORED] += 1
                pairs.append(ProbePair(kind, positive.text, negative.text))
        outcomes[kind] = counts
    return pairs, outcomes


@torch.inference_mode()
def pair_margins(clip: LoadedClip, scene: Scene, pairs: list[ProbePair]) -> list[float]:
    """For each pair, cosine(image, true caption) - cosine(image, false caption)."""
    if not pairs:
        return []
    pixels = clip.preprocess(scene.pil_image(), mode="squash")[None]
    image = F.normalize(clip.encode_image(pixels).float(), dim=-1)
    texts = [t for pair in pairs for t in (pair.positive, pair.negative)]
    text = F.normalize(clip.encode_texts(texts).float(), dim=-1)
    sims = (text @ image[0]).view(len(pairs), 2)
    return (sims[:, 0] - sims[:, 1]).tolist()


def run_probe(
    clip: LoadedClip,
    seed: int,
    scenes: int,
    *,
    config: ShapesConfig | None = None,
    progress: bool = False,
) -> ProbeResult:
    """Score the three probes on ``scenes`` scenes of the probe stream of ``seed``."""
    if scenes < 1:
        raise InputError(f"--scenes must be >= 1; got {scenes}")
    result = ProbeResult(clip.name, seed, scenes, {kind: ProbeCount() for kind in PROBE_KINDS})
    for index in tqdm(range(scenes), desc="probe", disable=not progress, mininterval=2):
        scene = sample_scene(scene_rng(seed, index, PROBE_STREAM), config)
        pairs, outcomes = probe_pairs(scene)
        for kind, outcome in outcomes.items():
            count = result.counts[kind]
            count.ties += outcome[TIE]
            count.not_false += outcome[NOT_FALSE]
            count.absent += not outcome
        for pair, margin in zip(pairs, pair_margins(clip, scene, pairs), strict=True):
            count = result.counts[pair.kind]
            count.scored += 1
            count.hits += margin > 0
            count.equal_scores += margin == 0
    return result
