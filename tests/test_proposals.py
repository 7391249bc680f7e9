"""Mask proposal generators: superpixel, file (COCO results) and ground truth."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from refseg.errors import InputError
from refseg.masks import encode_rle, iou
from refseg.proposals import MaskProposals, available_proposals, create_proposals
from refseg.proposals.filtering import greedy_dedupe, iou_matrix, rank_and_cap
from refseg.proposals.from_file import FileProposals
from refseg.proposals.ground_truth import GroundTruthProposals
from refseg.proposals.superpixel import SuperpixelConfig, SuperpixelProposals

# ---------------------------------------------------------------- synthetic scenes


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return list(zip(cx + radii * np.cos(angles), cy - radii * np.sin(angles), strict=True))


def shapes_scene(width: int, height: int, seed: int) -> tuple[Image.Image, list[np.ndarray]]:
    """Circle, square, triangle and star in flat colours on a noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(60, 200, 3) + rng.normal(0, 40, (height, width, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    side = min(width, height)
    shapes = [("circle", 0.25, 0.3, 0.13), ("square", 0.7, 0.3, 0.12)]
    shapes += [("triangle", 0.3, 0.72, 0.15), ("star", 0.72, 0.72, 0.17)]
    colours = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 220, 30)]
    masks = []
    for (kind, fx, fy, fr), colour in zip(shapes, colours, strict=True):
        stencil = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(stencil)
        cx, cy, r = fx * width, fy * height, fr * side
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif kind == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif kind == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=255)
        else:
            draw.polygon(_star(cx, cy, r), fill=255)
        image.paste(colour, mask=stencil)
        masks.append(np.asarray(stencil) > 0)
    return image, masks


@pytest.fixture(scope="module")
def scene() -> tuple[Image.Image, list[np.ndarray], MaskProposals]:
    image, masks = shapes_scene(224, 224, seed=0)
    return image, masks, SuperpixelProposals()(image)


# ---------------------------------------------------------------- superpixel


def test_superpixel_recovers_every_drawn_shape(scene):
    image, masks, proposals = scene
    assert proposals.masks.shape[1:] == (224, 224)
    for mask in masks:
        assert max(iou(mask, candidate) for candidate in proposals.masks) > 0.8


def test_superpixel_scores_sorted_in_unit_range_and_masks_distinct(scene):
    _, _, proposals = scene
    scores = proposals.scores
    assert 0 < len(proposals) <= 100
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(np.diff(scores) <= 0)
    pairwise = iou_matrix(proposals.masks.reshape(len(proposals), -1))
    np.fill_diagonal(pairwise, 0)
    assert pairwise.max() <= 0.9 + 0.02  # dedupe at work resolution; upsampling may shift a bit


def test_superpixel_drops_tiny_and_huge_regions(scene):
    _, _, proposals = scene
    fractions = proposals.masks.reshape(len(proposals), -1).mean(1)
    assert fractions.min() >= 0.004 and fractions.max() <= 0.91


def test_superpixel_large_image_is_fast_and_full_size():
    image, masks = shapes_scene(640, 480, seed=1)
    generator = create_proposals("superpixel", max_proposals=20)
    start = time.perf_counter()
    proposals = generator(image)
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0  # ~0.5 s on one free core; generous for shared CI machines
    assert proposals.masks.shape[1:] == (480, 640) and 0 < len(proposals) <= 20
    for mask in masks:
        assert max(iou(mask, candidate) for candidate in proposals.masks) > 0.8


@pytest.mark.parametrize("size", [(1, 1), (3, 500), (500, 3), (4, 4), (9, 7)])
def test_superpixel_odd_sizes_give_defined_result(size):
    width, height = size
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proposals = SuperpixelProposals()(Image.fromarray(pixels))
    assert proposals.masks.shape[1:] == (height, width)
    if len(proposals) == 0:
        assert any("no mask proposals" in str(w.message) for w in caught)


def test_superpixel_flat_image_gives_zero_proposals_with_warning():
    with pytest.warns(RuntimeWarning, match="no mask proposals"):
        proposals = SuperpixelProposals()(Image.new("RGB", (96, 64), (10, 120, 30)))
    assert len(proposals) == 0 and proposals.image_size == (64, 96)


def test_superpixel_accepts_grey_and_rgba_images():
    image, _ = shapes_scene(120, 90, seed=2)
    generator = SuperpixelProposals(max_proposals=10)
    rgb = generator(image)
    rgba = generator(image.convert("RGBA"))  # opaque: same pixels after compositing
    np.testing.assert_array_equal(rgb.masks, rgba.masks)
    grey = generator(image.convert("L"))
    assert grey.masks.shape[1:] == (90, 120) and len(grey) > 0


def test_superpixel_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_area_frac"):
        SuperpixelConfig(min_area_frac=0.5, max_area_frac=0.1)
    with pytest.raises(ValueError, match="Felzenszwalb"):
        SuperpixelConfig(felzenszwalb_scales=(), slic_segments=())


# ---------------------------------------------------------------- filtering helpers


def test_iou_matrix_matches_pixel_iou_and_region_weights():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 10, 12)) > 0.5
    matrix = iou_matrix(masks.reshape(4, -1))
    assert matrix[1, 2] == pytest.approx(iou(masks[1], masks[2]), abs=1e-6)
    # two regions of 3 and 1 pixels: {0} vs {0, 1} -> 3 / 4
    regions = iou_matrix(np.array([[True, False], [True, True]]), np.array([3.0, 1.0]))
    assert regions[0, 1] == pytest.approx(0.75)


def test_greedy_dedupe_keeps_best_of_duplicates():
    pairwise = np.array([[1.0, 0.95, 0.1], [0.95, 1.0, 0.2], [0.1, 0.2, 1.0]])
    assert greedy_dedupe(pairwise, np.array([1, 0, 2]), 0.9).tolist() == [1, 2]


def test_rank_and_cap_sorts_thresholds_and_caps():
    proposals = MaskProposals(np.zeros((4, 2, 2), bool), scores=np.array([0.2, 0.05, 0.9, 0.5]))
    kept = rank_and_cap(proposals, min_score=0.1, max_proposals=2)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5])


# ---------------------------------------------------------------- file proposals


def _random_masks(count: int, height: int, width: int, seed: int) -> np.ndarray:
    masks = np.zeros((count, height, width), dtype=bool)
    rng = np.random.default_rng(seed)
    for mask in masks:
        y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
        mask[y : y + rng.integers(3, height - y), x : x + rng.integers(3, width - x)] = True
    return masks


@pytest.fixture()
def results_file(tmp_path):
    masks = _random_masks(4, 20, 30, seed=1)
    scores = [0.3, 0.95, 0.05, 0.6]  # 0.05 is below the default min_score of 0.1
    entries = [
        {"image_id": 7, "segmentation": encode_rle(m), "score": s, "category_id": 1 + i}
        for i, (m, s) in enumerate(zip(masks, scores, strict=True))
    ]
    entries.append({"image_id": 8, "segmentation": encode_rle(masks[0]), "score": 0.5})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(entries))
    return path, masks


def test_file_round_trip_exact_masks_in_score_order(results_file):
    path, masks = results_file
    generator = create_proposals(str(path))  # a .json path selects the file generator
    assert isinstance(generator, FileProposals)
    proposals = generator(Image.new("RGB", (30, 20)), image_key=7)
    assert proposals.scores.tolist() == pytest.approx([0.95, 0.6, 0.3])
    np.testing.assert_array_equal(proposals.masks, masks[[1, 3, 0]])
    assert proposals.categories.tolist() == [2, 4, 1]


def test_file_min_score_and_max_proposals_overrides(results_file):
    path, _ = results_file
    everything = FileProposals(path, min_score=None)(Image.new("RGB", (30, 20)), image_key=7)
    assert len(everything) == 4
    top = FileProposals(path, max_proposals=1)(Image.new("RGB", (30, 20)), image_key="7")
    assert top.scores.tolist() == pytest.approx([0.95])


def test_file_resizes_masks_to_the_image(results_file):
    path, masks = results_file
    proposals = FileProposals(path)(Image.new("RGB", (60, 40)), image_key=7)
    assert proposals.masks.shape == (3, 40, 60)
    upsampled = np.kron(masks[1], np.ones((2, 2), dtype=bool))
    assert iou(proposals.masks[0], upsampled) > 0.95


def test_file_unknown_image_gives_zero_proposals_with_warning(results_file):
    path, _ = results_file
    with pytest.warns(RuntimeWarning, match="not in"):
        proposals = FileProposals(path)(Image.new("RGB", (30, 20)), image_key=123)
    assert len(proposals) == 0 and proposals.image_size == (20, 30)


def test_file_needs_image_key_when_it_holds_several_images(results_file):
    path, _ = results_file
    with pytest.raises(InputError, match="image_key"):
        FileProposals(path)(Image.new("RGB", (30, 20)))


def test_file_all_below_min_score_warns():
    entry = {"image_id": 1, "segmentation": encode_rle(np.ones((4, 4), bool)), "score": 0.01}
    with pytest.warns(RuntimeWarning, match="scores above"):
        proposals = FileProposals(data=[entry])(Image.new("RGB", (4, 4)))
    assert len(proposals) == 0


def test_file_polygons_bytes_counts_and_file_names():
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 8.0, 2.0, 8.0]]
    mask = np.zeros((10, 16), bool)
    mask[3:8, 4:10] = True
    rle = encode_rle(mask)
    data = [
        {"file_name": "dir/a.jpg", "segmentation": square, "score": 0.4},
        {
            "file_name": "dir/a.jpg",
            "id": 5,
            "segmentation": {**rle, "counts": rle["counts"].encode()},
        },
    ]
    generator = FileProposals(data=data)
    proposals = generator(Image.new("RGB", (16, 10)), image_key="/elsewhere/a.jpg")
    np.testing.assert_array_equal(proposals.masks[0], mask)  # bytes RLE; missing score = 1
    drawn = np.zeros((10, 16), bool)
    drawn[2:9, 2:13] = True
    assert iou(proposals.masks[1], drawn) > 0.6 and proposals.masks[1, 5, 7]
    assert proposals.ids is None  # not every entry has an id


def test_file_dataset_and_mapping_layouts_find_images_by_name_and_id():
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:6] = True
    entry = {"segmentation": encode_rle(mask), "score": 0.7}
    dataset = {
        "images": [{"id": 3, "file_name": "x/000003.jpg", "height": 6, "width": 8}],
        "annotations": [{**entry, "image_id": 3}],
    }
    by_name = FileProposals(data=dataset)(Image.new("RGB", (8, 6)), image_key="000003.jpg")
    np.testing.assert_array_equal(by_name.masks[0], mask)
    mapping = {"000003.jpg": [entry], "9": [entry]}
    assert len(FileProposals(data=mapping)(Image.new("RGB", (8, 6)), image_key=9)) == 1
    assert len(FileProposals(data=mapping)(Image.new("RGB", (8, 6)), image_key="000003.jpg")) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("42", "COCO results list"),
        ('[{"image_id": 1}]', "segmentation"),
        ('[{"image_id": 1, "segmentation": [[1, 2]], "score": 1}]', "polygons"),
        ('[{"segmentation": {"size": [2, 2], "counts": "04"}}]', "image_id"),
        (
            '[{"image_id": 1, "segmentation": {"size": [2, 2], "counts": "04"}, "score": "hi"}]',
            "score",
        ),
        ('{"a.jpg": 3}', "expected a list"),
    ],
)
def test_file_malformed_files_raise_input_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        FileProposals(path)


def test_file_missing_file_and_undecodable_rle_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        FileProposals(tmp_path / "missing.json")
    garbage = [{"image_id": 1, "segmentation": {"size": [4, 4], "counts": "zz!!"}}]
    with pytest.raises(InputError, match="cannot decode"):
        FileProposals(data=garbage)(Image.new("RGB", (4, 4)), image_key=1)


# ---------------------------------------------------------------- ground truth


def _instances() -> tuple[dict, np.ndarray]:
    rle_mask = np.zeros((20, 30), bool)
    rle_mask[10:18, 15:28] = True
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_1.jpg", "height": 20, "width": 30},
            {"id": 2, "file_name": "COCO_2.jpg", "height": 20, "width": 30},
        ],
        "annotations": [
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]],
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 5,
                "iscrowd": 1,
                "segmentation": encode_rle(rle_mask),
            },
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
    }
    return instances, rle_mask


def test_gt_from_dict_fills_categories_ids_and_masks():
    instances, rle_mask = _instances()
    proposals = create_proposals("gt", instances=instances)(Image.new("RGB", (30, 20)), image_key=1)
    assert proposals.ids.tolist() == [11, 12] and proposals.categories.tolist() == [3, 5]
    assert proposals.scores.tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(proposals.masks[1], rle_mask)
    square = np.zeros((20, 30), bool)
    square[2:11, 2:11] = True
    assert iou(proposals.masks[0], square) > 0.75


def test_gt_from_path_by_file_name_without_crowd_and_resized(tmp_path):
    instances, rle_mask = _instances()
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    generator = GroundTruthProposals(path, include_crowd=False)
    proposals = generator(Image.new("RGB", (60, 40)), image_key="COCO_1.jpg")
    assert proposals.ids.tolist() == [11] and proposals.masks.shape == (1, 40, 60)


def test_gt_image_without_annotations_warns():
    instances, _ = _instances()
    with pytest.warns(RuntimeWarning, match="no annotations"):
        proposals = GroundTruthProposals(instances)(Image.new("RGB", (30, 20)), image_key=2)
    assert len(proposals) == 0


@pytest.mark.parametrize("key", [None, 99, "other.jpg"])
def test_gt_without_a_known_image_id_raises(key):
    instances, _ = _instances()
    with pytest.raises(InputError, match="image id"):
        GroundTruthProposals(instances)(Image.new("RGB", (30, 20)), image_key=key)


def test_gt_malformed_instances_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="'images'"):
        GroundTruthProposals({"annotations": []})
    bad = tmp_path / "instances.json"
    bad.write_text("[")
    with pytest.raises(InputError, match="not valid JSON"):
        GroundTruthProposals(bad)


def test_gt_from_masks_resizes_and_numbers_ids():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 2:] = True
    generator = GroundTruthProposals.from_masks({"img": masks})
    proposals = generator(Image.new("RGB", (8, 8)), image_key="img")
    assert proposals.ids.tolist() == [0, 1] and proposals.masks.shape == (2, 8, 8)
    assert proposals.masks[0, :4].all() and not proposals.masks[0, 4:].any()


# ---------------------------------------------------------------- registry


def test_registry_lists_builtin_generators_and_rejects_unknown_names():
    assert {"superpixel", "file", "gt"} <= set(available_proposals())
    with pytest.raises(InputError, match="superpixel") as info:
        create_proposals("nope")
    assert "gt" in str(info.value) and "file" in str(info.value)
