"""Each benchmark's own evaluation rules, pinned on tiny datasets built here.

- precision@X: PhraseCut's evaluator counts IoU > X, RefCOCO's (LAVT's) IoU >= X;
- PhraseCut split names joined with ``_`` (``val_miniv``) are the union of their files;
- the refer API puts refs of split ``testAB`` in both testA and testB.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from refseg.data import PhraseCutDataset, ReferDataset
from refseg.eval.metrics import PRECISION_THRESHOLDS, MetricsAccumulator, strict_precision
from refseg.eval.predictions import score_predictions
from refseg.masks import encode_rle

# IoU exactly at each threshold: target of `den` pixels, prediction = `num` of them.
EXACT = {0.5: (1, 2), 0.6: (3, 5), 0.7: (7, 10), 0.8: (4, 5), 0.9: (9, 10)}


def row_masks(num: int, den: int) -> tuple[np.ndarray, np.ndarray]:
    target = np.zeros((1, 16), dtype=bool)
    target[0, :den] = True
    pred = np.zeros_like(target)
    pred[0, :num] = True
    return pred, target


@pytest.mark.parametrize("threshold", PRECISION_THRESHOLDS)
def test_iou_exactly_at_threshold_is_a_miss_only_under_the_strict_rule(threshold):
    pred, target = row_masks(*EXACT[threshold])
    inclusive, strict = MetricsAccumulator(), MetricsAccumulator(strict=True)
    for accumulator in (inclusive, strict):
        accumulator.add(pred, target)
    assert inclusive.result().precision[threshold] == 100.0
    assert strict.result().precision[threshold] == 0.0
    # Just above the threshold both count it; the mIoU is the same under both rules.
    assert strict.result().miou == inclusive.result().miou == pytest.approx(100 * threshold)


def test_each_benchmark_uses_its_own_rule():
    assert strict_precision("phrasecut") and strict_precision("PhraseCut")
    for name in ("refcoco", "refcoco+", "refcocog", "shapesref", None):
        assert not strict_precision(name)


def test_merge_refuses_mixed_rules():
    with pytest.raises(ValueError, match="precision rules"):
        MetricsAccumulator().merge(MetricsAccumulator(strict=True))


# -- PhraseCut ------------------------------------------------------------------------


def phrasecut_task(task_id: str, image_id: int, x1: int) -> dict:
    """A 1-row rectangle from x=0 to x=x1 (PhraseCut fills the outline: x1 + 1 pixels)."""
    return {
        "task_id": task_id,
        "image_id": image_id,
        "ann_ids": [1],
        "phrase": "thing",
        "instance_boxes": [[0, 0, x1, 0]],
        "Polygons": [[[[0, 0], [x1, 0], [x1, 0], [0, 0]]]],
        "phrase_structure": None,
    }


@pytest.fixture
def phrasecut_root(tmp_path: Path) -> Path:
    root = tmp_path / "VGPhraseCut_v0"
    root.mkdir()
    (root / "refer_val.json").write_text(json.dumps([phrasecut_task("1__1", 1, 1)]))
    miniv = [phrasecut_task("2__1", 2, 3), phrasecut_task("3__1", 3, 7)]
    (root / "refer_miniv.json").write_text(json.dumps(miniv))
    info = [{"image_id": i, "width": 12, "height": 3, "split": "val"} for i in (1, 2, 3)]
    (root / "image_data_split.json").write_text(json.dumps(info))
    return root


def half_of_targets(dataset) -> dict[int, dict]:
    """A prediction covering exactly half of each target's pixels (IoU = 0.5)."""
    predictions = {}
    for image in dataset:
        for referent in image.referents:
            mask = referent.mask
            pred = np.zeros_like(mask)
            ys, xs = np.nonzero(mask)
            pred[ys[: len(ys) // 2], xs[: len(xs) // 2]] = True
            for expression in referent.sentences:
                predictions[expression.sent_id] = {"segmentation": encode_rle(pred)}
    return predictions


def test_phrasecut_scores_iou_at_threshold_as_a_miss(phrasecut_root):
    dataset = PhraseCutDataset(phrasecut_root, "val_miniv")
    report = score_predictions(dataset, half_of_targets(dataset))
    assert report.metrics.miou == pytest.approx(50.0)
    assert report.metrics.precision[0.5] == 0.0


def test_phrasecut_val_miniv_is_the_union_of_both_files(phrasecut_root):
    val = PhraseCutDataset(phrasecut_root, "val")
    miniv = PhraseCutDataset(phrasecut_root, "miniv")
    both = PhraseCutDataset(phrasecut_root, "val_miniv")
    assert (len(val), len(miniv), len(both)) == (1, 2, 3)
    assert both.num_expressions == val.num_expressions + miniv.num_expressions == 3
    tasks = [r.task_id for image in both for r in image.referents]
    assert tasks == ["1__1", "2__1", "3__1"]
    areas = [int(r.mask.sum()) for image in both for r in image.referents]
    assert areas == [2, 4, 8]


def test_phrasecut_joined_split_with_a_missing_part_is_refused(phrasecut_root):
    from refseg.errors import DatasetError

    with pytest.raises(DatasetError, match="val_test"):
        PhraseCutDataset(phrasecut_root, "val_test")


# -- refer layout ---------------------------------------------------------------------


def write_refer(root: Path) -> Path:
    """refcoco (unc) with one ref per split value, each on its own 2x4 image."""
    splits = ["val", "testA", "testB", "testAB"]
    folder = root / "refcoco"
    folder.mkdir(parents=True)
    images, annotations, refs = [], [], []
    for i, split in enumerate(splits, start=1):
        images.append({"id": i, "height": 2, "width": 4, "file_name": f"{i}.jpg"})
        polygon = [0.0, 0.0, float(i), 0.0, float(i), 1.0, 0.0, 1.0]
        annotations.append(
            {"id": 100 + i, "image_id": i, "category_id": 1, "segmentation": [polygon]}
        )
        sentence = {"sent_id": 10 * i, "raw": f"thing {i}", "sent": f"thing {i}", "tokens": []}
        refs.append(
            {
                "ref_id": i,
                "ann_id": 100 + i,
                "image_id": i,
                "split": split,
                "category_id": 1,
                "sentences": [sentence],
            }
        )
    instances = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return root


def ref_ids(dataset: ReferDataset) -> list[int]:
    return sorted(r.ref_id for image in dataset for r in image.referents)


def test_testab_refs_count_in_both_test_splits(tmp_path):
    root = write_refer(tmp_path)
    assert ref_ids(ReferDataset(root, "refcoco", "testA")) == [2, 4]
    assert ref_ids(ReferDataset(root, "refcoco", "testB")) == [3, 4]
    assert ref_ids(ReferDataset(root, "refcoco", "val")) == [1]


def test_refcoco_scores_iou_at_threshold_as_a_hit(tmp_path):
    dataset = ReferDataset(write_refer(tmp_path), "refcoco", "testA")
    report = score_predictions(dataset, half_of_targets(dataset))
    assert report.metrics.miou == pytest.approx(50.0)
    assert report.metrics.precision[0.5] == 100.0


def test_report_states_the_precision_rule_and_pixels_of_older_runs():
    from refseg.eval.metrics import MetricsResult
    from refseg.eval.report import run_report

    metrics = MetricsResult(25.0, 27.5, {0.5: 30.0}, n_expressions=10, n_missing=0)
    settings = {"dataset": "phrasecut", "split": "val_miniv", "clip": "ViT-B/32"}
    text = run_report({"settings": settings, "params": {"alpha": 0.95}}, metrics, images=4)
    assert "| precision@X counts | IoU > X (the benchmark's rule) |" in text
    assert "| pixels | clean (CLIP statistics" in text  # runs from before the presets
    settings = {**settings, "dataset": "refcoco"}
    text = run_report({"settings": settings, "params": {"pixels": "reference"}}, metrics, images=4)
    assert "| precision@X counts | IoU >= X |" in text and "| pixels | reference (" in text
