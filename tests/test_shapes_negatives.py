"""Hard negatives of ShapesRef captions: parsed faithfully, true positives, clearly false
negatives (checked here by an independent brute-force reading of the scene)."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from refseg.data.shapes import ShapeObject
from refseg.data.shapes.captions import scene_captions, training_pair
from refseg.data.shapes.negatives import (
    NEGATIVE_KINDS,
    ListCaption,
    PositionCaption,
    RelationCaption,
    hard_negatives,
    meaning,
    parse_caption,
    sample_pairs_with_negatives,
    truth,
)
from refseg.data.shapes.scene import Scene, sample_scene, scene_rng
from refseg.data.shapes.words import SHAPE_NOUNS, SIZE_WORDS

# --------------------------------------------------------------- independent reading (oracle)

_SHAPE = {noun: shape for shape, nouns in SHAPE_NOUNS.items() for noun in nouns}
_SIZE = {form: name for name, forms in SIZE_WORDS.items() for form in forms}


def _fits(obj: ShapeObject, mention) -> bool:
    return (
        _SHAPE.get(mention.noun, obj.shape) == obj.shape
        and mention.color in (None, obj.color)
        and _SIZE.get(mention.size, obj.size_name) == obj.size_name
    )


def _clearly_false(caption, scene: Scene) -> bool:
    """Brute force over objects and centroids, without refseg's truth()."""
    objs, xy = scene.objects, scene.centroids
    if isinstance(caption, ListCaption):
        slots = [m for m in caption.mentions for _ in range(m.number)]
        return not any(
            all(_fits(objs[k], m) for k, m in zip(chosen, slots, strict=True))
            for chosen in permutations(range(len(objs)), len(slots))
        )
    if isinstance(caption, RelationCaption):
        axis, sign = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}[
            caption.relation
        ]
        target, anchor = caption.mentions
        return not any(
            sign * (xy[i, axis] - xy[j, axis]) > 0
            for i in range(len(objs))
            for j in range(len(objs))
            if i != j and _fits(objs[i], target) and _fits(objs[j], anchor)
        )
    axis, far = {"left": (0, False), "right": (0, True), "top": (1, False), "bottom": (1, True)}[
        caption.side
    ]
    margin = scene.config.side_margin
    return not any(
        (xy[i, axis] > 0.5 - margin if far else xy[i, axis] < 0.5 + margin)
        for i in range(len(objs))
        if _fits(objs[i], caption.mentions[0])
    )


# --------------------------------------------------------------- hand-made scenes


def test_relation_negatives_on_a_hand_made_scene(shapes_scene):
    scene = shapes_scene(("circle", "red", "small", 0.2, 0.5), ("star", "blue", "large", 0.8, 0.5))
    caption = parse_caption("a picture of a red disk to the left of a blue star")
    assert isinstance(caption, RelationCaption) and truth(caption, scene) is True
    negatives = {n.text: n.kind for n in hard_negatives(caption.text, scene)}
    assert negatives == {
        "a picture of a blue disk to the left of a red star": "swap-attribute",
        "a picture of a blue star to the left of a red disk": "swap-relation",
        # "a red disk to the right of a blue star" means "a blue star left of a red disk":
        # the same as the swap, so it is not offered twice
    }
    assert truth(parse_caption("a red circle right of a blue star"), scene) is False


def test_a_negative_true_through_another_object_is_dropped(shapes_scene):
    # Two red circles, one on each side of the star: swapping the relation stays true.
    scene = shapes_scene(
        ("circle", "red", "small", 0.2, 0.5),
        ("star", "blue", "small", 0.5, 0.5),
        ("circle", "red", "small", 0.8, 0.5),
    )
    texts = [n.text for n in hard_negatives("a red circle left of a blue star", scene)]
    assert "a blue star left of a red circle" not in texts
    assert "a red circle right of a blue star" not in texts
    assert texts == ["a blue circle left of a red star"]


def test_ties_are_never_negatives(shapes_scene):
    scene = shapes_scene(("circle", "red", "small", 0.2, 0.5), ("star", "red", "small", 0.8, 0.5))
    # Same colour: swapping colours says the same thing.
    assert hard_negatives("a red circle and a red star", scene) == []
    caption = parse_caption("a red star and a red circle")
    assert meaning(caption) == meaning(parse_caption("an image of a red disk and a red star"))


def test_borderline_relations_and_sides_are_neither_true_nor_false(shapes_scene):
    scene = shapes_scene(("circle", "red", "small", 0.47, 0.2), ("star", "blue", "small", 0.5, 0.8))
    assert truth(parse_caption("a red circle left of a blue star"), scene) is None
    assert truth(parse_caption("a blue star right of a red circle"), scene) is None
    assert truth(parse_caption("a red circle above a blue star"), scene) is True
    assert truth(parse_caption("a red circle below a blue star"), scene) is False
    assert truth(parse_caption("a blue star on the right"), scene) is None
    assert truth(parse_caption("a red circle on the left"), scene) is None  # x = 0.465
    assert truth(parse_caption("a red circle at the top"), scene) is True
    assert truth(parse_caption("a red circle at the bottom"), scene) is False
    negatives = hard_negatives("a red circle at the top", scene)
    assert [(n.text, n.kind) for n in negatives] == [
        ("a red circle at the bottom", "wrong-position")
    ]


def test_counted_mentions_need_distinct_objects(shapes_scene):
    scene = shapes_scene(("circle", "red", "small", 0.2, 0.2), ("circle", "red", "large", 0.8, 0.8))
    assert truth(parse_caption("two red circles"), scene) is True
    assert truth(parse_caption("three red circles"), scene) is False
    assert truth(parse_caption("a big red circle and a little red disk"), scene) is True
    assert truth(parse_caption("a big red circle and a big red circle"), scene) is False
    # Sizes swapped between two red circles: the same two objects, a tie, no negative.
    assert hard_negatives("a big red circle and a little red disk", scene) == []


@pytest.mark.parametrize(
    "text",
    ["a red", "a red circle left of", "two red circle", "the red circle", "a red circle on top"],
)
def test_text_outside_the_grammar_gives_no_negatives(text, shapes_scene):
    scene = shapes_scene(("circle", "red", "small", 0.2, 0.5), ("star", "blue", "small", 0.8, 0.5))
    assert parse_caption(text) is None
    assert hard_negatives(text, scene) == []


# --------------------------------------------------------------- sampled scenes


def test_every_training_caption_parses_back_to_itself_and_is_true():
    kinds = set()
    for index in range(60):
        pair = training_pair(11, index, positions=True, crop_fraction=0.2)
        caption = parse_caption(pair.caption)
        assert caption is not None and caption.text == pair.caption
        if pair.crop is None:
            assert truth(caption, pair.scene) is True, pair.caption
            kinds.add(type(caption))
    assert kinds == {ListCaption, RelationCaption, PositionCaption}


def test_every_negative_is_clearly_false_for_its_scene():
    kinds: dict[str, int] = dict.fromkeys(NEGATIVE_KINDS, 0)
    for index in range(40):
        rng = scene_rng(23, index, "training")
        scene = sample_scene(rng)
        for text in scene_captions(scene, rng, positions=True):
            positive = parse_caption(text)
            assert positive is not None and truth(positive, scene) is True, text
            assert not _clearly_false(positive, scene)
            for negative in hard_negatives(text, scene):
                parsed = parse_caption(negative.text)
                assert parsed is not None and parsed.text == negative.text
                assert _clearly_false(parsed, scene), f"{text!r} -> {negative.text!r}"
                assert meaning(parsed) != meaning(positive)
                kinds[negative.kind] += 1
    assert all(count >= 10 for count in kinds.values()), kinds


def test_limit_and_shuffle_are_deterministic(shapes_scene):
    scene = shapes_scene(
        ("circle", "red", "small", 0.2, 0.5),
        ("star", "blue", "large", 0.8, 0.5),
        ("cross", "green", "medium", 0.5, 0.1),
    )
    text = "a small red circle and a large blue star and a medium green cross"
    every = hard_negatives(text, scene)
    assert len(every) == 6  # 3 pairs x (colour, size)
    one = hard_negatives(text, scene, np.random.default_rng(0), limit=2)
    assert one == hard_negatives(text, scene, np.random.default_rng(0), limit=2)
    assert len(one) == 2 and set(one) <= set(every)


def test_stream_with_negatives_keeps_the_plain_pairs():
    stream = list(sample_pairs_with_negatives(2, 12, limit=2, crop_fraction=0.3))
    assert stream == list(sample_pairs_with_negatives(2, 12, limit=2, crop_fraction=0.3))
    with_any = 0
    for index, (image, caption, negatives) in enumerate(stream):
        pair = training_pair(2, index, positions=True, crop_fraction=0.3)
        assert caption == pair.caption and image.tobytes() == pair.image.tobytes()
        assert len(negatives) <= 2 and (pair.crop is None or negatives == [])
        assert all(truth(parse_caption(text), pair.scene) is False for text in negatives)
        with_any += bool(negatives)
    assert with_any >= 3
