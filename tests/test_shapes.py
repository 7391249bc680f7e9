"""ShapesRef generator: scenes, the referring checker, captions, the refer-layout writer, CLI."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from refseg.cli import main
from refseg.data.shapes import (
    CROP_FILL,
    KINDS,
    AbsoluteProgram,
    AttributeProgram,
    ComparativeProgram,
    Filter,
    RelationalProgram,
    Scene,
    ShapeObject,
    ShapesConfig,
    caption_vocabulary,
    evaluate,
    generate_image,
    object_caption,
    program_from_dict,
    program_to_dict,
    render_object_crop,
    resolve,
    sample_scene,
    sample_training_pairs,
    scene_captions,
    scene_rng,
    split_of,
    training_pair,
    write_shapesref,
)
from refseg.data.shapes.render import place_outline, polygon_mask
from refseg.errors import InputError
from refseg.masks import decode_segmentation, mask_bbox

SEED = 7
N_SCENES = 24  # scenes checked in the property tests (~0.2 s)


@pytest.fixture(scope="module")
def generated() -> list[tuple[Scene, list]]:
    return [generate_image(SEED, i) for i in range(N_SCENES)]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- hand-built scenes for the checker ------------------------------------------------------


def _box_scene(boxes: list[tuple[str, str, int, int, int]], size: int = 100) -> Scene:
    """Scene of square masks; each box is (shape, color, x0, y0, side) in pixels."""
    masks = np.zeros((len(boxes), size, size), dtype=bool)
    objects = []
    for k, (shape, color, x0, y0, side) in enumerate(boxes):
        masks[k, y0 : y0 + side, x0 : x0 + side] = True
        center = (x0 + side / 2, y0 + side / 2)
        objects.append(ShapeObject(shape, color, "medium", center, float(side), 0.0, (0, 0, 0)))
    return Scene(
        objects=tuple(objects),
        image=np.zeros((size, size, 3), dtype=np.uint8),
        masks=masks,
        full_areas=masks.reshape(len(boxes), -1).sum(axis=1),
        config=ShapesConfig(image_size=size),
    )


def test_centroids_are_fractions_of_the_image_side():
    scene = _box_scene([("square", "red", 10, 60, 10)])
    np.testing.assert_allclose(scene.centroids, [[0.145, 0.645]])
    assert scene.areas.tolist() == [100]


@pytest.mark.parametrize(("side_b", "expected"), [(9, 0), (10, None)])
def test_biggest_needs_an_area_ratio_of_one_and_a_half(side_b, expected):
    # areas 144 vs 81 (ratio 1.78: clear) and 144 vs 100 (ratio 1.44: ambiguous)
    scene = _box_scene([("circle", "red", 5, 5, 12), ("circle", "red", 60, 60, side_b)])
    assert resolve(ComparativeProgram(Filter(shape="circle"), "biggest"), scene) == expected


def test_superlative_needs_two_candidates():
    scene = _box_scene([("circle", "red", 5, 5, 20), ("star", "red", 60, 60, 5)])
    assert resolve(ComparativeProgram(Filter(shape="circle"), "biggest"), scene) is None
    assert resolve(ComparativeProgram(Filter(), "biggest"), scene) == 0
    assert resolve(ComparativeProgram(Filter(), "smallest"), scene) == 1


@pytest.mark.parametrize(("x_second", "expected"), [(40, 0), (25, None)])
def test_leftmost_needs_a_clear_gap(x_second, expected):
    # centroids x = 0.2 and 0.45 (gap 0.25 > 0.12) or 0.2 and 0.3 (gap 0.1 < 0.12)
    scene = _box_scene([("star", "red", 15, 10, 10), ("star", "red", x_second, 70, 10)])
    assert resolve(AbsoluteProgram(Filter(shape="star"), "left"), scene) == expected


def test_single_candidate_must_lie_on_the_named_side():
    scene = _box_scene([("star", "red", 10, 45, 10), ("heart", "blue", 80, 45, 10)])
    assert resolve(AbsoluteProgram(Filter(shape="star"), "left"), scene) == 0
    assert resolve(AbsoluteProgram(Filter(shape="star"), "right"), scene) is None
    assert resolve(AbsoluteProgram(Filter(shape="heart"), "right"), scene) == 1
    # centred at x = 0.48: not "on the left" even though it is the only star
    centred = _box_scene([("star", "red", 43, 45, 10), ("heart", "blue", 80, 45, 10)])
    assert resolve(AbsoluteProgram(Filter(shape="star"), "left"), centred) is None


def test_relation_is_ambiguous_when_another_candidate_is_on_that_side():
    anchor = ("star", "blue", 60, 45, 10)  # centroid (0.65, 0.5)
    clear = _box_scene([("circle", "red", 10, 45, 10), ("circle", "red", 85, 45, 10), anchor])
    program = RelationalProgram(Filter(shape="circle"), "left", Filter(color="blue"))
    assert resolve(program, clear) == 0
    assert evaluate(program, clear) == ([0], [0])
    # a second circle just left of the anchor (gap 0.05) makes "left of" ambiguous
    crowded = _box_scene([("circle", "red", 10, 45, 10), ("circle", "red", 55, 10, 4), anchor])
    assert resolve(program, crowded) is None
    assert evaluate(program, crowded)[1] == [0, 1]
    # far off the horizontal (more than 45 degrees) is not "left of"
    steep = _box_scene([("circle", "red", 40, 0, 10), ("circle", "red", 85, 45, 10), anchor])
    assert resolve(program, steep) is None


def test_relation_with_an_ambiguous_anchor_refers_to_nothing():
    scene = _box_scene(
        [("circle", "red", 10, 45, 10), ("star", "blue", 60, 45, 10), ("star", "blue", 80, 5, 8)]
    )
    program = RelationalProgram(Filter(shape="circle"), "left", Filter(shape="star"))
    assert resolve(program, scene) is None


def test_attribute_program_counts_matches():
    scene = _box_scene([("circle", "red", 10, 10, 10), ("circle", "blue", 60, 60, 10)])
    assert resolve(AttributeProgram(Filter(shape="circle")), scene) is None
    assert resolve(AttributeProgram(Filter(color="blue")), scene) == 1
    assert resolve(AttributeProgram(Filter(color="green")), scene) is None


def test_program_dict_round_trip_and_bad_kind():
    program = RelationalProgram(Filter("circle", "red"), "above", Filter("star", "blue", "large"))
    data = program_to_dict(program)
    assert data["kind"] == "relational" and data["anchor"]["size"] == "large"
    assert program_from_dict(data) == program
    with pytest.raises(InputError, match="unknown program kind"):
        program_from_dict({"kind": "ordinal", "filter": {}})


# --- sampled scenes ---------------------------------------------------------------------------


def test_scenes_respect_counts_visibility_and_colour_separation(generated):
    config = ShapesConfig()
    for scene, _ in generated:
        assert config.min_objects <= len(scene) <= config.max_objects
        assert scene.image.shape == (224, 224, 3) and scene.image.dtype == np.uint8
        assert scene.masks.sum(axis=0).max() == 1  # visible masks never overlap
        assert np.all(scene.areas >= config.min_visible_fraction * scene.full_areas)
        assert np.all(scene.areas > 0)
        # the recorded geometry redraws each full shape; visible pixels lie inside it
        full = [
            polygon_mask(place_outline(o.shape, o.scale, o.rotation) + o.center, 224, 224)
            for o in scene.objects
        ]
        assert [int(f.sum()) for f in full] == scene.full_areas.tolist()
        assert all(not np.any(v & ~f) for v, f in zip(scene.masks, full, strict=True))
        for i in range(len(scene)):
            for j in range(i + 1, len(scene)):
                if scene.objects[i].color == scene.objects[j].color:  # drawn apart
                    assert not np.any(full[i] & full[j])


def test_every_expression_picks_exactly_its_referent(generated):
    kinds: Counter[str] = Counter()
    for scene, expressions in generated:
        for index, sentences in enumerate(expressions):
            assert len({e.text for e in sentences}) == len(sentences)
            for expression in sentences:
                clear, possible = evaluate(expression.program, scene)
                assert clear == possible == [index], expression.text
                assert expression.kind == expression.program.kind
                kinds[expression.kind] += 1
    assert set(kinds) == set(KINDS)
    assert min(kinds.values()) >= 10  # every kind is common, not a curiosity


def test_scene_depends_only_on_seed_and_index():
    a = sample_scene(scene_rng(3, 5))
    b = sample_scene(scene_rng(3, 5))
    c = sample_scene(scene_rng(3, 6))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, c.image)
    with pytest.raises(InputError):
        scene_rng(-1, 0)


def test_smaller_images_scale_the_world():
    scene = sample_scene(scene_rng(0, 0), ShapesConfig(image_size=64))
    assert scene.image.shape == (64, 64, 3) and scene.masks.shape[1:] == (64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 16}, {"min_objects": 4, "max_objects": 3}, {"area_ratio": 0.5},
     {"size_classes": (("huge", 0.3, 0.6),)}],
)  # fmt: skip
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(InputError):
        ShapesConfig(**kwargs)


# --- captions and training pairs --------------------------------------------------------------


def test_captions_are_deterministic_and_use_the_vocabulary(generated):
    vocabulary = set(caption_vocabulary())
    for scene, expressions in generated:
        captions = scene_captions(scene, np.random.default_rng(1))
        assert captions == scene_captions(scene, np.random.default_rng(1))
        assert len(captions) >= 2
        texts = captions + [object_caption(o, np.random.default_rng(2)) for o in scene.objects]
        texts += [e.text for sentences in expressions for e in sentences]
        for text in texts:
            assert text == text.strip() and "  " not in text
            assert set(text.split()) <= vocabulary, text


def test_grouped_caption_counts_objects():
    scene = _box_scene(
        [("circle", "red", 5, 5, 10), ("circle", "red", 60, 5, 10), ("star", "orange", 5, 60, 10)]
    )
    grouped = scene_captions(scene, np.random.default_rng(0))[0]
    assert "two red" in grouped and ("circles" in grouped or "disks" in grouped)
    assert "an orange star" in grouped


def test_object_crop_masks_out_everything_else():
    scene = _box_scene([("circle", "red", 10, 10, 30), ("star", "blue", 20, 20, 30)])
    scene.masks[0] &= ~scene.masks[1]  # the star occludes the circle's bottom-right corner
    scene.image[scene.masks[0]] = (200, 0, 0)
    scene.image[scene.masks[1]] = (0, 0, 200)
    crop = np.asarray(render_object_crop(scene, 0, size=60))
    assert crop.shape == (60, 60, 3)
    assert tuple(crop[-1, -1]) == CROP_FILL  # the occluded corner is filled, not blue
    assert tuple(crop[0, 0]) == (200, 0, 0)
    assert not np.any(np.all(crop == (0, 0, 200), axis=-1))
    with pytest.raises(InputError):
        render_object_crop(scene, 2)


def test_training_pairs_are_deterministic_and_mixed():
    first = list(sample_training_pairs(seed=4, n=12))
    second = list(sample_training_pairs(seed=4, n=12))
    assert [c for _, c in first] == [c for _, c in second]
    assert all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(first, second, strict=True))
    assert all(image.size == (224, 224) and image.mode == "RGB" for image, _ in first)
    # pair i shows either the whole training-stream scene i or a crop of it: both occur
    whole = [
        np.array_equal(np.asarray(image), sample_scene(scene_rng(4, i, "training")).image)
        for i, (image, _) in enumerate(first)
    ]
    assert 0 < sum(whole) < len(first)
    only_crops = list(sample_training_pairs(seed=4, n=3, crop_fraction=1.0, crop_size=32))
    assert all(image.size == (32, 32) for image, _ in only_crops)
    with pytest.raises(InputError):
        next(sample_training_pairs(seed=4, n=1, crop_fraction=1.5))


def test_training_pair_is_the_streams_pair_and_position_captions_are_opt_in():
    stream = list(sample_training_pairs(seed=4, n=8, crop_fraction=0.3))
    positions = []
    for index, (image, caption) in enumerate(stream):
        pair = training_pair(4, index, crop_fraction=0.3)
        assert pair.caption == caption and pair.image.tobytes() == image.tobytes()
        assert (pair.crop is None) == np.array_equal(np.asarray(image), pair.scene.image)
        # with positions the scene is the same; only the scene captions drawn from grow
        placed = training_pair(4, index, crop_fraction=0.3, positions=True)
        assert np.array_equal(placed.scene.image, pair.scene.image)
        if pair.crop is None:
            rng = scene_rng(4, index, "training")
            sample_scene(rng)
            rng.random()
            captions = scene_captions(pair.scene, rng, positions=True)
            positions += [c for c in captions if c.endswith(("left", "right", "top", "bottom"))]
    assert positions and all(set(c.split()) <= set(caption_vocabulary()) for c in positions)


def test_vocabulary_is_sorted_unique_words():
    vocabulary = caption_vocabulary()
    assert vocabulary == sorted(set(vocabulary))
    assert {"red", "circle", "circles", "left", "biggest", "beneath", "an"} <= set(vocabulary)
    assert all(" " not in word and word.islower() for word in vocabulary)


# --- writer and CLI ---------------------------------------------------------------------------


def test_writer_is_byte_deterministic(tmp_path):
    write_shapesref(tmp_path / "a", seed=SEED, images=4)
    write_shapesref(tmp_path / "b", seed=SEED, images=4)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == {"shapesref/instances.json", "shapesref/refs(unc).p"} | {
        f"shapesref/images/shapesref_{i:06d}.png" for i in range(4)
    }
    assert a == b


def test_image_content_does_not_depend_on_dataset_size(tmp_path):
    write_shapesref(tmp_path / "small", seed=SEED, images=2)
    write_shapesref(tmp_path / "large", seed=SEED, images=4)
    small, large = _files(tmp_path / "small"), _files(tmp_path / "large")
    for name in ("shapesref_000000.png", "shapesref_000001.png"):
        assert small[f"shapesref/images/{name}"] == large[f"shapesref/images/{name}"]
    refs_small = pickle.loads(small["shapesref/refs(unc).p"])
    refs_large = pickle.loads(large["shapesref/refs(unc).p"])
    assert refs_large[: len(refs_small)] == refs_small


def test_written_dataset_round_trips(tmp_path):
    images = 10
    summary = write_shapesref(tmp_path, seed=SEED, images=images)
    root = tmp_path / "shapesref"
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    coco = json.loads((root / "instances.json").read_text())
    assert summary.refs == len(refs) and summary.annotations == len(coco["annotations"])
    assert summary.splits == {"train": 8, "val": 1, "test": 1}
    assert [c["name"] for c in coco["categories"]][:4] == ["circle", "square", "triangle", "star"]
    assert {c["supercategory"] for c in coco["categories"]} == {"shape"}

    scenes = {i + 1: generate_image(SEED, i)[0] for i in range(images)}
    annotations = {a["id"]: a for a in coco["annotations"]}
    ann_index: dict[int, int] = {}
    for image in coco["images"]:
        assert (root / "images" / image["file_name"]).is_file()
        assert (image["height"], image["width"]) == (224, 224)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == len(scenes[image["id"]])
        for k, ann in enumerate(anns):
            assert isinstance(ann["segmentation"][0], list)  # COCO polygons, as RefCOCO's
            mask = decode_segmentation(ann["segmentation"], image["height"], image["width"])
            assert np.array_equal(mask, scenes[image["id"]].masks[k])
            assert mask.any() and ann["area"] == int(mask.sum())
            assert tuple(ann["bbox"]) == mask_bbox(mask) and ann["iscrowd"] == 0
            assert ann["color"] == scenes[image["id"]].objects[k].color
            ann_index[ann["id"]] = k

    split_of_image: dict[int, set[str]] = {}
    sent_ids = []
    for ref in refs:
        ann = annotations[ref["ann_id"]]
        assert ref["image_id"] == ann["image_id"] and ref["category_id"] == ann["category_id"]
        assert ref["file_name"] == f"shapesref_{ref['image_id'] - 1:06d}.png"
        assert ref["split"] == split_of(ref["image_id"] - 1)
        split_of_image.setdefault(ref["image_id"], set()).add(ref["split"])
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        sent_ids += ref["sent_ids"]
        scene = scenes[ref["image_id"]]
        for sentence in ref["sentences"]:
            assert sentence["tokens"] == sentence["sent"].split() and sentence["kind"] in KINDS
            # the program picks the object whose mask is the annotation's mask
            picked = resolve(program_from_dict(sentence["program"]), scene)
            assert picked == ann_index[ref["ann_id"]]
            mask = decode_segmentation(ann["segmentation"], scene.height, scene.width)
            assert np.array_equal(scene.masks[picked], mask)
    assert all(len(splits) == 1 for splits in split_of_image.values())  # splits are per image
    assert len(sent_ids) == len(set(sent_ids))
    assert len({r["ref_id"] for r in refs}) == len(refs)


def test_cli_writes_the_dataset(tmp_path, capsys):
    assert main(["data", "shapes", str(tmp_path), "--images", "6", "--seed", "3", "--quiet"]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    assert (tmp_path / "shapesref" / "refs(unc).p").is_file()
    assert len(list((tmp_path / "shapesref" / "images").glob("*.png"))) == 6
    coco = json.loads((tmp_path / "shapesref" / "instances.json").read_text())
    assert coco["info"]["seed"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "shapes", "OUT", "--quiet", "--images", "0"], "--images must be at least 1"),
        (["data", "shapes", "OUT", "--quiet", "--size", "8"], "image_size must be >= 32"),
        (["data", "shapes", "OUT", "--quiet", "--seed", "-2"], "--seed must be non-negative"),
        (["data"], "choose a dataset"),
    ],
)
def test_cli_rejects_bad_input(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
