"""ShapesRef in the refer layout as the field reads it: polygon segmentations.

The refer API's getMask (and LAVT's, CRIS's and the Global-Local authors' loaders built on
it) tests ``type(segmentation[0]) == list``, rasterises every polygon with pycocotools,
*sums* them and keeps the pixels equal to 1. ``refer_get_mask`` below does the same, so
every ShapesRef ref must load through it, and refseg must score against exactly that mask.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from refseg.data import ReferDataset
from refseg.data.shapes.polygons import mask_to_polygons, polygons_mask
from refseg.data.shapes.writer import generate_image, write_shapesref
from refseg.proposals.ground_truth import GroundTruthProposals


def refer_get_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """The refer API's getMask: polygons only, summed, ``== 1``."""
    segmentation = annotation["segmentation"]
    assert isinstance(segmentation[0], list), "getMask reads segmentation[0] as a polygon"
    rles = coco_mask.frPyObjects(segmentation, height, width)
    summed = np.sum(coco_mask.decode(rles), axis=2)
    return summed == 1


def hole_and_island() -> np.ndarray:
    """A ring with a pixel island in its hole, a separate piece on the left border, and two
    pieces touching diagonally (4-connectivity: separate polygons)."""
    mask = np.zeros((20, 24), dtype=bool)
    mask[2:15, 6:19] = True
    mask[5:12, 9:16] = False  # hole
    mask[8, 12] = True  # island in the hole
    mask[0:6, 0:3] = True  # touches the top-left border
    mask[17, 20] = mask[18, 21] = True  # diagonal neighbours
    mask[19, 23] = True  # the bottom-right pixel
    return mask


def pycocotools_area(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    rles = coco_mask.frPyObjects(polygons, height, width)
    return coco_mask.decode(rles)  # [H, W, P], one layer per polygon


@pytest.mark.parametrize("case", ["hole_and_island", "full", "one_pixel", "scene"])
def test_polygons_rasterise_back_to_the_mask_without_overlaps(case):
    if case == "hole_and_island":
        mask = hole_and_island()
    elif case == "full":
        mask = np.ones((5, 7), dtype=bool)
    elif case == "one_pixel":
        mask = np.zeros((5, 7), dtype=bool)
        mask[0, 6] = True
    else:
        mask = generate_image(seed=2, index=0)[0].masks[0]
    height, width = mask.shape
    polygons = mask_to_polygons(mask)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    assert np.array_equal(polygons_mask(polygons, height, width), mask)
    layers = pycocotools_area(polygons, height, width)
    assert layers.sum(axis=2).max() == 1  # no pixel in two polygons: getMask's "== 1" is safe
    assert np.array_equal(refer_get_mask({"segmentation": polygons}, height, width), mask)


def test_hole_is_cut_into_its_outline_not_a_polygon_of_its_own():
    polygons = mask_to_polygons(hole_and_island())
    # ring (with its hole), island, border piece, two diagonal pixels, corner pixel
    assert len(polygons) == 6


def test_every_shapesref_ref_loads_through_refer_get_mask(tmp_path):
    images = 15
    write_shapesref(tmp_path, seed=4, images=images)
    root = tmp_path / "shapesref"
    coco = json.loads((root / "instances.json").read_text())
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    image_info = {image["id"]: image for image in coco["images"]}
    annotations = {ann["id"]: ann for ann in coco["annotations"]}
    scenes = {i + 1: generate_image(4, i)[0] for i in range(images)}
    field_masks = {}
    for ref in refs:
        ann = annotations[ref["ann_id"]]
        info = image_info[ref["image_id"]]
        mask = refer_get_mask(ann, info["height"], info["width"])
        assert mask.any() and int(mask.sum()) == ann["area"]
        field_masks[ref["ref_id"]] = mask
        # the polygons reproduce the rendered visible mask
        index = [a["id"] for a in coco["annotations"] if a["image_id"] == ref["image_id"]]
        assert np.array_equal(mask, scenes[ref["image_id"]].masks[index.index(ann["id"])])
    # refseg scores against exactly the mask the field's loaders read, in every split
    seen = 0
    for split in ("train", "val", "test"):
        for image in ReferDataset(tmp_path, "shapesref", split):
            for referent in image.referents:
                assert np.array_equal(referent.mask, field_masks[referent.ref_id])
                seen += 1
    assert seen == len(refs) > 0
    # and GT proposals are the same polygons' rasterisation
    proposals = GroundTruthProposals(root / "instances.json")
    first = coco["images"][0]
    size = (first["width"], first["height"])
    generated = proposals(Image.new("RGB", size), image_key=first["id"])
    assert len(generated) == sum(a["image_id"] == first["id"] for a in coco["annotations"])
    for mask, ann_id in zip(generated.masks, generated.ids, strict=True):
        assert np.array_equal(mask, refer_get_mask(annotations[int(ann_id)], *size[::-1]))
