"""Composition captions and twin scenes (image-side hard negatives, issue #13): a twin differs
from its scene only in what the caption is about, the caption is false for the twin and the
twin's caption true; twins join the training batch as pairs of their own."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from refseg.data.shapes.captions import composition_caption, training_pair
from refseg.data.shapes.negatives import (
    ListCaption,
    PositionCaption,
    RelationCaption,
    parse_caption,
    truth,
)
from refseg.data.shapes.scene import sample_scene, scene_rng
from refseg.data.shapes.twins import make_twin, mirror_scene, swap_colors
from refseg.train.fresh_pairs import FreshPairs
from test_train_negatives import negclip_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _scenes(count: int, seed: int = 3):
    return [sample_scene(scene_rng(seed, i, "training")) for i in range(count)]


def test_composition_captions_are_true_and_of_every_kind():
    kinds: Counter[str] = Counter()
    for index, scene in enumerate(_scenes(60)):
        text = composition_caption(scene, np.random.default_rng(index))
        structure = parse_caption(text)
        assert structure is not None and structure.text == text
        assert truth(structure, scene) is True, text
        if isinstance(structure, ListCaption):
            a, b = structure.mentions
            assert len(structure.mentions) == 2 and a.color != b.color and a.noun != b.noun
        kinds[type(structure).__name__] += 1
    # drawn uniformly among the kinds a scene allows; few scenes hold two objects differing
    # in both colour and shape (the shape and colour pools are often of size 1)
    assert kinds["RelationCaption"] >= 12 and kinds["PositionCaption"] >= 12
    assert kinds["ListCaption"] >= 4


def test_composition_zero_draws_the_earlier_stream():
    for index in range(20):
        old = training_pair(4, index, crop_fraction=0.3, positions=True)
        new = training_pair(4, index, crop_fraction=0.3, positions=True, composition=0.0)
        assert old.caption == new.caption and old.crop == new.crop
    mixed = [training_pair(4, i, crop_fraction=0.0, composition=1.0).caption for i in range(30)]
    parsed = [parse_caption(text) for text in mixed]
    # composition captions only: a relation, two objects or a side, never a full list
    assert all(
        isinstance(p, RelationCaption | PositionCaption)
        or (isinstance(p, ListCaption) and len(p.mentions) == 2)
        for p in parsed
    )


def test_mirror_flips_positions_and_nothing_else():
    scene = _scenes(1)[0]
    twin = mirror_scene(scene, horizontal=True)
    assert np.array_equal(twin.image[:, ::-1], scene.image)
    assert np.array_equal(twin.masks[:, :, ::-1], scene.masks)
    assert [(o.shape, o.color, o.size_name) for o in twin.objects] == [
        (o.shape, o.color, o.size_name) for o in scene.objects
    ]
    np.testing.assert_allclose(twin.centroids[:, 0], 1.0 - scene.centroids[:, 0], atol=1.5 / 224)
    np.testing.assert_allclose(twin.centroids[:, 1], scene.centroids[:, 1])


def test_swapped_colours_change_only_the_two_objects_pixels():
    scene = next(s for s in _scenes(20) if len({o.color for o in s.objects}) >= 2)
    i = 0
    j = next(k for k, o in enumerate(scene.objects) if o.color != scene.objects[0].color)
    twin = swap_colors(scene, i, j)
    changed = (twin.image != scene.image).any(axis=-1)
    assert not (changed & ~(scene.masks[i] | scene.masks[j])).any()  # nothing else moved
    assert changed[scene.masks[i]].mean() > 0.9  # clipping at 0/255 may keep a few
    a, b = scene.objects[i], scene.objects[j]
    assert (twin.objects[i].color, twin.objects[j].color) == (b.color, a.color)
    # the painted colour moved with the name: mean pixel of i in the twin ~ j's RGB
    mean_i = twin.image[scene.masks[i]].astype(float).mean(axis=0)
    assert np.abs(mean_i - np.array(b.rgb)).max() < 6.0


def test_twin_makes_the_caption_false_and_its_own_caption_true():
    made: Counter[str] = Counter()
    for index, scene in enumerate(_scenes(80, seed=7)):
        text = composition_caption(scene, np.random.default_rng(index))
        twin = make_twin(text, scene)
        if twin is None:
            continue
        made[twin.kind] += 1
        assert truth(parse_caption(text), scene) is True
        assert truth(parse_caption(text), twin.scene) is False, text
        assert truth(parse_caption(twin.caption), twin.scene) is True, twin.caption
        assert truth(parse_caption(twin.caption), scene) is False, twin.caption
        assert sorted(twin.caption.split()) == sorted(text.split()) or twin.kind == "mirror"
    assert made["mirror"] >= 20 and made["swap-colors"] >= 5
    assert make_twin("a red circle", _scenes(1)[0]) is None  # single objects: no twin


def test_twins_join_the_batch_next_to_their_pair():
    pairs = FreshPairs(2, 16, 32, negatives=3, crop_fraction=0.0, composition=1.0, twins=True)
    samples = [pairs[i] for i in range(16)]
    twins = [s for s in samples if s.twin is not None]
    assert len(twins) >= 8
    for sample in twins:
        assert sample.twin.caption != sample.caption
        assert not torch.equal(sample.twin.image, sample.image)
    plain = FreshPairs(2, 16, 32, negatives=3, crop_fraction=0.0, composition=1.0)[0]
    assert (plain.caption, plain.negatives) == (samples[0].caption, samples[0].negatives)

    task = negclip_task(composition=1.0, twins=True, crop_fraction=0.0)
    task.train_dataset()
    batch = task.collate(samples)
    assert batch.images.shape[0] == batch.tokens.shape[0] == 16 + len(twins)
    assert batch.negative_tokens.shape[0] == 3 * (16 + len(twins))
    first = next(i for i, s in enumerate(samples) if s.twin is not None)
    assert torch.equal(batch.images[first], samples[first].image)
    assert torch.equal(batch.images[first + 1], samples[first].twin.image)  # right after it


def test_new_options_need_fresh_pairs_and_parse():
    from refseg.cli import build_parser
    from refseg.errors import InputError
    from refseg.train.contrastive import ContrastiveConfig

    for option in ({"composition": 0.5}, {"twins": True}, {"max_objects": 3}):
        with pytest.raises(InputError, match="on-the-fly"):
            ContrastiveConfig(preset="tiny-vit", **option)
    with pytest.raises(InputError, match="composition"):
        ContrastiveConfig(preset="tiny-vit", on_the_fly=True, composition=1.5)
    args = build_parser().parse_args(
        ["train", "clip", "--preset", "shapes-vit", "--out", "x", "--on-the-fly",
         "--composition", "0.8", "--twins", "--max-objects", "3"]
    )  # fmt: skip
    assert (args.composition, args.twins, args.max_objects) == (0.8, True, 3)
    few = FreshPairs(1, 12, 32, negatives=0, crop_fraction=0.0, max_objects=2)
    from refseg.data.shapes.captions import training_pair as pair_of

    for index in range(12):
        pair = pair_of(1, index, crop_fraction=0.0, positions=True, config=few.scenes)
        assert len(pair.scene) <= 2 and few[index].caption == pair.caption  # what it trains on
    assert max(len(pair_of(1, i, crop_fraction=0.0).scene) for i in range(12)) > 2
