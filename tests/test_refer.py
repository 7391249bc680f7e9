"""Dataset readers on tiny refer-layout and PhraseCut-layout datasets built in tmp_path."""

from __future__ import annotations

import json
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refseg.data import (
    ExpressionItem,
    ImageSample,
    PhraseCutDataset,
    ReferDataset,
    open_dataset,
)
from refseg.errors import DatasetError, InputError
from refseg.masks import encode_rle

# -- a tiny refer dataset --------------------------------------------------------------

IMAGES = [  # id, height, width
    (101, 8, 10),
    (102, 6, 6),
    (103, 5, 5),
]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def rle_rows(height: int, width: int, rows: slice) -> dict:
    mask = np.zeros((height, width), bool)
    mask[rows] = True
    return encode_rle(mask)


ANNOTATIONS = [
    # polygon x 1..5, y 1..4: pycocotools fills the half-open box -> 4 x 3 = 12 pixels
    {"id": 1001, "image_id": 101, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
    # compressed RLE, rows 5 and 6 of a 10-wide image -> 20 pixels
    {"id": 1002, "image_id": 101, "category_id": 2, "segmentation": rle_rows(8, 10, slice(5, 7))},
    # uncompressed (crowd) RLE, column-major counts: 0 off, 6 on, 30 off -> first column
    {
        "id": 1003,
        "image_id": 102,
        "category_id": 1,
        "iscrowd": 1,
        "segmentation": {"size": [6, 6], "counts": [0, 6, 30]},
    },
    {"id": 1004, "image_id": 103, "category_id": 2, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
]
AREAS = {1001: 12, 1002: 20, 1003: 6, 1004: 4}


def sentence(sent_id: int, raw: str, kind: str | None = None) -> dict:
    out = {"sent_id": sent_id, "raw": raw, "sent": raw.lower(), "tokens": raw.lower().split()}
    if kind is not None:
        out["kind"] = kind
    return out


REFS = [
    {
        "ref_id": 1,
        "ann_id": 1001,
        "image_id": 101,
        "split": "val",
        "category_id": 1,
        "sentences": [sentence(11, "The cat on the LEFT", "spatial"), sentence(12, "tabby cat")],
    },
    {
        "ref_id": 2,
        "ann_id": 1002,
        "image_id": 101,
        "split": "val",
        "category_id": 2,
        "sentences": [sentence(21, "brown dog", "attribute")],
    },
    {
        "ref_id": 3,
        "ann_id": 1003,
        "image_id": 102,
        "split": "val",
        "category_id": 1,
        "sentences": [sentence(31, "cat at the edge")],
    },
    {
        "ref_id": 4,
        "ann_id": 1004,
        "image_id": 103,
        "split": "train",
        "category_id": 2,
        "sentences": [sentence(41, "dog")],
    },
]


def file_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def build_refer(
    root: Path,
    name: str = "refcoco",
    split_by: str = "unc",
    refs: list | None = None,
    refs_bytes: bytes | None = None,
    image_dir: str | None = "images/mscoco/images/train2014",
) -> Path:
    """Write ``root/<name>/refs(<split_by>).p``, ``instances.json`` and PNG images."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    data = refs_bytes if refs_bytes is not None else pickle.dumps(REFS if refs is None else refs)
    (folder / f"refs({split_by}).p").write_bytes(data)
    images = [
        {"id": i, "height": h, "width": w, "file_name": file_name(i)} for i, h, w in IMAGES
    ]
    instances = {"images": images, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    (folder / "instances.json").write_text(json.dumps(instances))
    if image_dir is not None:
        write_images(root / image_dir)
    return root


def write_images(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for image_id, height, width in IMAGES:
        pixels = np.full((height, width, 3), image_id % 256, np.uint8)
        Image.fromarray(pixels).save(directory / file_name(image_id), format="PNG")


def py2_pickle(obj) -> bytes:
    """Protocol-2 pickle as Python 2 writes it: ``str`` values are byte strings (UTF-8)."""

    def dump(value) -> bytes:
        if isinstance(value, bool) or value is None:
            raise TypeError(value)
        if isinstance(value, int):
            return b"J" + struct.pack("<i", value)  # BININT
        if isinstance(value, str):
            raw = value.encode("utf-8")
            return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING: a Python 2 str
        if isinstance(value, list):
            return b"](" + b"".join(dump(v) for v in value) + b"e"  # EMPTY_LIST MARK APPENDS
        if isinstance(value, dict):
            items = b"".join(dump(k) + dump(v) for k, v in value.items())
            return b"}(" + items + b"u"  # EMPTY_DICT MARK SETITEMS
        raise TypeError(value)

    return b"\x80\x02" + dump(obj) + b"."


@pytest.fixture
def refer_root(tmp_path: Path) -> Path:
    return build_refer(tmp_path)


# -- refer layout ----------------------------------------------------------------------


def test_iterates_images_with_all_their_referents(refer_root):
    dataset = ReferDataset(refer_root, "refcoco", "val")
    samples = list(dataset)
    assert len(dataset) == 2
    assert [s.image_id for s in samples] == [101, 102]
    assert [[r.ref_id for r in s.referents] for s in samples] == [[1, 2], [3]]
    assert dataset.num_expressions == 4
    first = samples[0]
    assert (first.height, first.width, first.file_name) == (8, 10, file_name(101))
    assert dataset[1].image_id == 102


def test_masks_decode_polygons_and_both_rle_forms(refer_root):
    dataset = ReferDataset(refer_root, "refcoco", "val")
    referents = [r for sample in dataset for r in sample.referents]
    for referent in referents:
        assert referent.mask.dtype == bool
        assert int(referent.mask.sum()) == AREAS[referent.ann_id]
    polygon = referents[0].mask
    assert polygon[1:4, 1:5].all() and polygon.sum() == 12
    assert referents[2].mask[:, 0].all() and referents[2].mask.shape == (6, 6)


def test_expressions_carry_text_kind_and_category(refer_root):
    dataset = ReferDataset(refer_root, "refcoco", "val")
    items = list(dataset.expressions())
    assert all(isinstance(item, ExpressionItem) for item in items)
    assert [item.expression.sent_id for item in items] == [11, 12, 21, 31]
    assert dataset.sent_ids() == [11, 12, 21, 31]
    first = items[0]
    assert first.expression.text == "The cat on the LEFT"
    assert first.expression.normalized == "the cat on the left"
    assert [item.expression.kind for item in items] == ["spatial", None, "attribute", None]
    assert first.referent.category_id == 1 and first.referent.category_name == "cat"
    assert items[2].referent.category_name == "dog"
    assert items[0].image is items[1].image  # same image object for its referents


def test_train_split_only_holds_train_refs(refer_root):
    dataset = ReferDataset(refer_root, "refcoco", "train")
    assert [s.image_id for s in dataset] == [103]
    assert dataset.sent_ids() == [41]


def test_images_load_from_the_refer_toolkit_folder(refer_root):
    dataset = ReferDataset(refer_root, "refcoco", "val")
    assert dataset.image_dir == refer_root / "images/mscoco/images/train2014"
    image = dataset[0].load_image()
    assert image.size == (10, 8) and image.mode == "RGB"


def test_image_dir_resolution_order(tmp_path):
    build_refer(tmp_path, image_dir="images")
    write_images(tmp_path / "train2014")
    # "train2014" comes before the bare "images" folder
    assert ReferDataset(tmp_path, "refcoco", "val").image_dir == tmp_path / "train2014"
    write_images(tmp_path / "refcoco" / "images")
    assert ReferDataset(tmp_path, "refcoco", "val").image_dir == tmp_path / "refcoco" / "images"
    explicit = ReferDataset(tmp_path, "refcoco", "val", image_dir=tmp_path / "images")
    assert explicit.image_dir == tmp_path / "images"


def test_missing_image_is_a_dataset_error_only_when_loaded(tmp_path):
    build_refer(tmp_path, image_dir=None)
    dataset = ReferDataset(tmp_path, "refcoco", "val")  # scoring needs no images
    assert int(dataset[0].referents[0].mask.sum()) == 12
    with pytest.raises(DatasetError, match="image not found.*Datasets"):
        dataset[0].load_image()


def test_explicit_missing_image_dir_is_an_error(refer_root):
    with pytest.raises(DatasetError, match="image directory not found"):
        ReferDataset(refer_root, "refcoco", "val", image_dir=refer_root / "nope")


def test_bad_split_lists_valid_ones(refer_root):
    with pytest.raises(DatasetError, match="valid splits: train, val, testA, testB"):
        ReferDataset(refer_root, "refcoco", "test")


def test_refcocog_google_has_no_test_split(tmp_path):
    build_refer(tmp_path, name="refcocog", split_by="google")
    assert len(ReferDataset(tmp_path, "refcocog", "val", split_by="google")) == 2
    with pytest.raises(DatasetError, match="valid splits: train, val$"):
        ReferDataset(tmp_path, "refcocog", "test", split_by="google")


def test_refcocog_defaults_to_umd(tmp_path):
    build_refer(tmp_path, name="refcocog", split_by="umd")
    dataset = ReferDataset(tmp_path, "refcocog", "val")
    assert dataset.split_by == "umd" and dataset.num_expressions == 4


def test_other_names_autodetect_the_single_refs_file(tmp_path):
    build_refer(tmp_path, name="mine", split_by="custom")
    dataset = ReferDataset(tmp_path, "mine", "val")
    assert dataset.split_by == "custom"
    with pytest.raises(DatasetError, match="valid splits: train, val"):
        ReferDataset(tmp_path, "mine", "testA")  # other names: whatever the file holds


def test_several_refs_files_need_split_by(tmp_path):
    build_refer(tmp_path, name="mine", split_by="a")
    build_refer(tmp_path, name="mine", split_by="b")
    with pytest.raises(DatasetError, match="several split schemes"):
        ReferDataset(tmp_path, "mine", "val")
    assert ReferDataset(tmp_path, "mine", "val", split_by="b").split_by == "b"


def test_missing_refs_file_names_it_and_the_readme(tmp_path):
    build_refer(tmp_path)
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p.*Datasets"):
        ReferDataset(tmp_path, "refcoco", "val", split_by="umd")


def test_missing_instances_file(refer_root):
    (refer_root / "refcoco" / "instances.json").unlink()
    with pytest.raises(DatasetError, match=r"instances\.json.*Datasets"):
        ReferDataset(refer_root, "refcoco", "val")


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="refcoco\\+"):
        ReferDataset(tmp_path, "refcoco+", "val")


def test_ref_pointing_at_unknown_annotation(tmp_path):
    refs = [dict(REFS[0], ann_id=9999)]
    build_refer(tmp_path, refs=refs)
    with pytest.raises(DatasetError, match="annotation 9999"):
        ReferDataset(tmp_path, "refcoco", "val")


def test_python2_pickle_loads_with_latin1_and_repairs_utf8(tmp_path):
    refs = [dict(REFS[0], sentences=[sentence(11, "the café chair")])]
    data = py2_pickle(refs)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # what a plain Python 3 load does with such a file
    build_refer(tmp_path, refs_bytes=data)
    dataset = ReferDataset(tmp_path, "refcoco", "val")
    (item,) = dataset.expressions()
    assert item.expression.text == "the café chair"
    assert item.referent.ref_id == 1 and int(item.referent.mask.sum()) == 12


def test_refs_pickle_with_classes_is_refused(tmp_path):
    build_refer(tmp_path, refs_bytes=pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(DatasetError, match="refusing to load collections.OrderedDict"):
        ReferDataset(tmp_path, "refcoco", "val")


def test_corrupt_refs_pickle(tmp_path):
    build_refer(tmp_path, refs_bytes=b"not a pickle")
    with pytest.raises(DatasetError, match="cannot read"):
        ReferDataset(tmp_path, "refcoco", "val")


def test_open_dataset_picks_the_reader(refer_root):
    assert isinstance(open_dataset(refer_root, "refcoco", "val"), ReferDataset)
    with pytest.raises(InputError, match="split_by"):
        open_dataset(refer_root, "phrasecut", "val", split_by="unc")


# -- PhraseCut layout ------------------------------------------------------------------

RECT = [[1, 1], [5, 1], [5, 4], [1, 4]]  # PhraseCut fills outline too: 5 x 4 = 20 pixels
TASKS = [
    {
        "task_id": "7__1_2",
        "image_id": 7,
        "ann_ids": [1, 2],
        "phrase": "red car",
        "instance_boxes": [[1, 1, 4, 3], [7, 0, 1, 1]],
        # two instances -> union: 20 + 2 x 2 = 24 pixels
        "Polygons": [[RECT], [[[7, 0], [8, 0], [8, 1], [7, 1]]]],
        "phrase_structure": {"name": "car", "attributes": ["red"], "type": "attribute"},
    },
    {
        "task_id": "7__3",
        "image_id": 7,
        "ann_ids": [3],
        "phrase": "sky",
        "instance_boxes": [[0, 6, 9, 1]],
        "Polygons": [[[[0, 6], [9, 6], [9, 7], [0, 7]]]],  # 10 x 2 = 20 pixels
        "phrase_structure": {"name": "sky", "attributes": [], "type": "name"},
    },
    {
        "task_id": "8__4",
        "image_id": 8,
        "ann_ids": [4],
        "phrase": "man on the left",
        "instance_boxes": [[0, 0, 1, 1]],
        "Polygons": [[[[0.9, 0.2], [1.7, 0.0], [1.2, 1.9], [0.0, 1.0]]]],  # -> 2 x 2 = 4
        "phrase_structure": None,
    },
]


@pytest.fixture
def phrasecut_root(tmp_path: Path) -> Path:
    root = tmp_path / "VGPhraseCut_v0"
    (root / "images").mkdir(parents=True)
    (root / "refer_val.json").write_text(json.dumps(TASKS))
    (root / "refer_input_val.json").write_text("[]")
    info = [{"image_id": 7, "width": 10, "height": 8, "split": "val"}]
    (root / "image_data_split.json").write_text(json.dumps(info))
    Image.new("RGB", (5, 6)).save(root / "images" / "8.jpg")  # size read from the header
    return root


def test_phrasecut_tasks_become_referents(phrasecut_root):
    dataset = PhraseCutDataset(phrasecut_root, "val")
    samples: list[ImageSample] = list(dataset)
    assert len(dataset) == 2 and dataset.num_expressions == 3
    assert [s.image_id for s in samples] == [7, 8]
    assert [(s.height, s.width) for s in samples] == [(8, 10), (6, 5)]
    assert samples[0].image_path == phrasecut_root / "images" / "7.jpg"
    car, sky = samples[0].referents
    (man,) = samples[1].referents
    assert [r.task_id for r in (car, sky, man)] == ["7__1_2", "7__3", "8__4"]
    assert dataset.sent_ids() == [0, 1, 2]
    assert car.sentences[0].text == "red car" and car.sentences[0].kind == "attribute"
    assert (car.category_id, car.category_name) == (0, "car")
    assert (sky.category_id, sky.category_name) == (1, "sky")
    assert (man.category_id, man.category_name, man.sentences[0].kind) == (-1, None, None)
    assert dataset.categories == {0: "car", 1: "sky"}
    assert car.ann_id == 1


def test_phrasecut_target_is_the_union_of_instances(phrasecut_root):
    car, sky = PhraseCutDataset(phrasecut_root, "val")[0].referents
    assert int(car.mask.sum()) == 24
    assert car.mask[1:5, 1:6].all() and car.mask[0:2, 7:9].all()
    assert int(sky.mask.sum()) == 20 and sky.mask[6:8, :].all()
    man = PhraseCutDataset(phrasecut_root, "val")[1].referents[0]
    assert man.mask.shape == (6, 5) and int(man.mask.sum()) == 4


def test_phrasecut_missing_split_file(phrasecut_root):
    with pytest.raises(DatasetError, match=r"refer_test\.json.*Datasets"):
        PhraseCutDataset(phrasecut_root, "test")


def test_phrasecut_unknown_split_lists_present_ones(phrasecut_root):
    with pytest.raises(DatasetError, match="valid splits: val$"):
        PhraseCutDataset(phrasecut_root, "dev")


def test_phrasecut_unknown_image_size(phrasecut_root):
    (phrasecut_root / "images" / "8.jpg").unlink()
    dataset = PhraseCutDataset(phrasecut_root, "val")
    assert dataset[0].height == 8
    with pytest.raises(DatasetError, match="size of image 8 unknown"):
        dataset[1]


def test_open_dataset_reads_phrasecut(phrasecut_root):
    dataset = open_dataset(phrasecut_root, "phrasecut", "val")
    assert isinstance(dataset, PhraseCutDataset) and dataset.num_expressions == 3
