"""``refseg score`` and prediction files, on a tiny refer dataset built from the golden cases."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from refseg.cli import main
from refseg.errors import InputError
from refseg.eval.predictions import (
    prediction_mask,
    prediction_record,
    read_predictions,
    write_predictions,
)
from refseg.masks import encode_rle

GOLDEN = json.loads((Path(__file__).parent / "golden" / "metrics_small.json").read_text())
HEIGHT, WIDTH = 4, 10
TARGET_CATEGORY, OTHER_CATEGORY = 5, 9


def target_mask(area: int, offset: int) -> np.ndarray:
    """``area`` pixels in raster order starting at pixel ``offset`` of a HEIGHT x WIDTH image."""
    flat = np.zeros(HEIGHT * WIDTH, bool)
    flat[offset : offset + area] = True
    return flat.reshape(HEIGHT, WIDTH)


def prediction_for(target: np.ndarray, pred_area: int, intersection: int) -> np.ndarray:
    """``intersection`` pixels of the target plus ``pred_area - intersection`` outside it."""
    flat_target = target.ravel()
    pred = np.zeros_like(flat_target)
    pred[np.flatnonzero(flat_target)[:intersection]] = True
    pred[np.flatnonzero(~flat_target)[: pred_area - intersection]] = True
    return pred.reshape(target.shape)


def build_golden_dataset(root: Path) -> list[tuple[int, np.ndarray, dict]]:
    """One referent per golden case (three on image 1, two on image 2), all RLE masks.

    Returns ``(sent_id, target mask, case)`` per case.
    """
    refs, annotations, out = [], [], []
    for index, case in enumerate(GOLDEN["cases"]):
        image_id = 1 if index < 3 else 2
        target = target_mask(case["target_area"], offset=10 * (index % 3))
        sent = {"sent_id": 100 + index, "raw": f"thing {index}", "sent": f"thing {index}"}
        if case["kind"] is not None:
            sent["kind"] = case["kind"]
        refs.append(
            {
                "ref_id": index,
                "ann_id": 500 + index,
                "image_id": image_id,
                "split": "val",
                "category_id": TARGET_CATEGORY,
                "sentences": [sent],
            }
        )
        annotations.append(
            {
                "id": 500 + index,
                "image_id": image_id,
                "category_id": TARGET_CATEGORY,
                "segmentation": encode_rle(target),
            }
        )
        out.append((100 + index, target, case))
    images = [
        {"id": i, "height": HEIGHT, "width": WIDTH, "file_name": f"{i}.jpg"} for i in (1, 2)
    ]
    folder = root / "refcoco"
    folder.mkdir(parents=True)
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs))
    instances = {"images": images, "annotations": annotations, "categories": []}
    (folder / "instances.json").write_text(json.dumps(instances))
    return out


@pytest.fixture
def golden_dataset(tmp_path: Path) -> tuple[Path, list[tuple[int, np.ndarray, dict]]]:
    root = tmp_path / "data"
    return root, build_golden_dataset(root)


def score(root: Path, predictions: Path, *extra: str) -> int:
    argv = ["score", "--dataset", str(root), "--name", "refcoco", "--split", "val"]
    return main([*argv, "--predictions", str(predictions), *extra])


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def assert_metrics_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if key == "groups":
            for name in value:
                assert_metrics_equal(actual[key][name], value[name])
        else:
            assert actual[key] == pytest.approx(value, abs=1e-9), key


def test_golden_predictions_give_golden_metrics(golden_dataset, tmp_path, capsys):
    root, cases = golden_dataset
    records = []
    for sent_id, target, case in cases:
        if case["pred_area"] is None:
            continue  # the missing expression
        pred = prediction_for(target, case["pred_area"], case["intersection"])
        category = TARGET_CATEGORY if case["category_correct"] else OTHER_CATEGORY
        records.append(prediction_record(sent_id, pred, category_id=category, score=0.5))
    out = tmp_path / "metrics" / "val.json"
    assert score(root, write_json(tmp_path / "pred.json", records), "--out", str(out)) == 0
    assert_metrics_equal(json.loads(out.read_text()), GOLDEN["expected"])
    printed = capsys.readouterr().out
    assert "refcoco val (unc): 5 expressions, 1 without prediction" in printed
    lines = printed.splitlines()
    assert lines[1].split() == ["metric", "all", "attribute", "spatial"]
    assert lines[2].split() == ["oIoU", "65.00", "42.86", "68.75"]
    assert len({len(line) for line in lines[1:8]}) == 1  # aligned columns


def test_targets_as_predictions_score_100(golden_dataset, tmp_path):
    root, cases = golden_dataset
    records = [prediction_record(sent_id, target) for sent_id, target, _ in cases]
    out = tmp_path / "m.json"
    assert score(root, write_json(tmp_path / "p.json", records), "--out", str(out)) == 0
    metrics = json.loads(out.read_text())
    assert metrics["oIoU"] == metrics["mIoU"] == 100.0
    assert metrics["precision@0.9"] == 100.0
    assert (metrics["n_expressions"], metrics["n_missing"]) == (5, 0)
    assert "mc-acc" not in metrics  # no category_id in the predictions


def test_missing_sent_ids_count_as_zero(golden_dataset, tmp_path, capsys):
    root, cases = golden_dataset
    # perfect predictions for the first two only (target areas 10 and 4 of 10+4+10+4+10)
    records = [prediction_record(sent_id, target) for sent_id, target, _ in cases[:2]]
    out = tmp_path / "m.json"
    assert score(root, write_json(tmp_path / "p.json", records), "--out", str(out)) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_missing"] == 3
    assert metrics["oIoU"] == pytest.approx(100 * 14 / 38)
    assert metrics["mIoU"] == pytest.approx(40.0)
    assert "3 without prediction" in capsys.readouterr().out


def test_unknown_sent_ids_are_ignored_with_a_warning(golden_dataset, tmp_path, capsys):
    root, cases = golden_dataset
    records = [prediction_record(sent_id, target) for sent_id, target, _ in cases]
    records.append(prediction_record(999, cases[0][1]))
    assert score(root, write_json(tmp_path / "p.json", records)) == 0
    assert "1 predictions have sent_ids not in refcoco val (e.g. 999)" in capsys.readouterr().err


def test_predictions_of_another_split_are_refused(golden_dataset, tmp_path, capsys):
    root, cases = golden_dataset
    records = [prediction_record(sent_id, target) for sent_id, target, _ in cases[:1]]
    records += [prediction_record(900 + i, cases[0][1]) for i in range(2)]
    out = tmp_path / "m.json"
    assert score(root, write_json(tmp_path / "p.json", records), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "2 of 3 predictions have sent_ids that are not in refcoco val" in err
    assert "another split" in err and not out.exists()


def test_mask_size_mismatch_is_a_clear_error(golden_dataset, tmp_path, capsys):
    root, cases = golden_dataset
    records = [prediction_record(cases[0][0], np.ones((3, 3), bool))]
    assert score(root, write_json(tmp_path / "p.json", records)) == 2
    err = capsys.readouterr().err
    assert "sent_id 100 is 3x3 but image 1" in err and "original resolution" in err


def test_duplicate_sent_ids_are_refused(golden_dataset, tmp_path, capsys):
    root, cases = golden_dataset
    record = prediction_record(cases[0][0], cases[0][1])
    assert score(root, write_json(tmp_path / "p.json", [record, record])) == 2
    assert "sent_id 100 appears twice (records 0 and 1)" in capsys.readouterr().err


def test_bad_json_is_an_input_error(golden_dataset, tmp_path, capsys):
    root, _ = golden_dataset
    path = tmp_path / "p.json"
    path.write_text('[{"sent_id": 1,')
    assert score(root, path) == 2
    assert "not valid JSON (line 1" in capsys.readouterr().err


def test_bad_split_lists_valid_splits(golden_dataset, tmp_path, capsys):
    root, _ = golden_dataset
    argv = ["score", "--dataset", str(root), "--name", "refcoco", "--split", "test"]
    assert main([*argv, "--predictions", str(write_json(tmp_path / "p.json", []))]) == 2
    assert "valid splits: train, val, testA, testB" in capsys.readouterr().err


def test_empty_split_is_an_error(golden_dataset, tmp_path, capsys):
    root, _ = golden_dataset
    argv = ["score", "--dataset", str(root), "--name", "refcoco", "--split", "train"]
    assert main([*argv, "--predictions", str(write_json(tmp_path / "p.json", []))]) == 2
    assert "refcoco train has no expressions" in capsys.readouterr().err


def test_metrics_file_is_replaced_atomically(golden_dataset, tmp_path):
    root, cases = golden_dataset
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "metrics.json"
    out.write_text("old")
    records = [prediction_record(sent_id, target) for sent_id, target, _ in cases]
    assert score(root, write_json(tmp_path / "p.json", records), "--out", str(out)) == 0
    assert json.loads(out.read_text())["oIoU"] == 100.0
    assert [p.name for p in out_dir.iterdir()] == ["metrics.json"]  # no temp file left


# -- prediction files ------------------------------------------------------------------


def test_prediction_files_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    masks = {7: rng.random((5, 6)) > 0.5, 3: np.zeros((5, 6), bool)}
    path = tmp_path / "p.json"
    write_predictions(path, [prediction_record(i, m, score=0.25) for i, m in masks.items()])
    records = read_predictions(path)
    assert list(records) == [7, 3]
    assert records[7]["score"] == 0.25
    for sent_id, mask in masks.items():
        np.testing.assert_array_equal(prediction_mask(records[sent_id]), mask)


def test_writing_duplicate_sent_ids_is_refused(tmp_path):
    record = prediction_record(1, np.ones((2, 2), bool))
    with pytest.raises(InputError, match="appears twice"):
        write_predictions(tmp_path / "p.json", [record, record])
    assert not (tmp_path / "p.json").exists()


GOOD_RLE = {"size": [2, 2], "counts": "04"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"sent_id": 1}, "JSON list"),
        ([[1, 2]], "must be an object"),
        ([{"sent_id": "1", "segmentation": GOOD_RLE}], 'integer "sent_id"'),
        ([{"sent_id": True, "segmentation": GOOD_RLE}], 'integer "sent_id"'),
        ([{"sent_id": 1}], '"segmentation" COCO RLE'),
        ([{"sent_id": 1, "segmentation": {"size": [2], "counts": "04"}}], "size must be"),
        ([{"sent_id": 1, "segmentation": {"size": [2, 2], "counts": 4}}], "counts must be"),
        ([{"sent_id": 1, "segmentation": GOOD_RLE, "category_id": "cat"}], "category_id"),
    ],
)
def test_malformed_prediction_files(tmp_path, content, message):
    with pytest.raises(InputError, match=message):
        read_predictions(write_json(tmp_path / "p.json", content))


def test_missing_predictions_file(tmp_path):
    with pytest.raises(InputError, match="predictions file not found"):
        read_predictions(tmp_path / "nope.json")


def test_good_rle_used_above_is_valid(tmp_path):
    path = write_json(tmp_path / "p.json", [{"sent_id": 1, "segmentation": GOOD_RLE}])
    records = read_predictions(path)
    assert prediction_mask(records[1]).all()
