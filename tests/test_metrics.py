"""Metrics: oIoU, mIoU, precision@X, mc-acc, cc-oIoU, missing expressions, groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refseg.eval.metrics import MetricsAccumulator, MetricsResult

GOLDEN = Path(__file__).parent / "golden" / "metrics_small.json"
TARGET_CATEGORY, OTHER_CATEGORY = 7, 3


def masks_with_counts(
    target_area: int, pred_area: int | None, intersection: int, size: int = 32
) -> tuple[np.ndarray | None, np.ndarray]:
    """A row of ``size`` pixels: the target is the first ``target_area`` pixels; the
    prediction overlaps its last ``intersection`` pixels and extends to the right."""
    target = np.zeros((1, size), dtype=bool)
    target[0, :target_area] = True
    if pred_area is None:
        return None, target
    pred = np.zeros((1, size), dtype=bool)
    start = target_area - intersection
    pred[0, start : start + pred_area] = True
    return pred, target


def load_golden() -> dict:
    return json.loads(GOLDEN.read_text())


def assert_metrics_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if key == "groups":
            assert list(actual[key]) == list(value)
            for name in value:
                assert_metrics_equal(actual[key][name], value[name])
        else:
            assert actual[key] == pytest.approx(value, abs=1e-9), key


def test_golden_metrics():
    # Per case (I, U = |target| + |pred| - I, IoU):
    #   1: I=8, U=10, 0.8   2: I=3, U=6, 0.5   3: I=6, U=10, 0.6
    #   4: missing -> I=0, U=|target|=4, IoU 0   5: I=9, U=10, 0.9
    # oIoU = (8+3+6+0+9) / (10+6+10+4+10) = 26/40 = 65 %
    # mIoU = (0.8+0.5+0.6+0+0.9) / 5 = 2.8/5 = 56 %
    # IoU >= 0.5: cases 1,2,3,5 -> 80 %; >= 0.6: 1,3,5 -> 60 %; >= 0.7 and >= 0.8: 1,5 ->
    #   40 %; >= 0.9: 5 -> 20 % (cases 2, 3, 1, 5 sit exactly on 0.5, 0.6, 0.8, 0.9)
    # mc-acc: classes right in 1,3,5 -> 3/5 = 60 %; cc-oIoU = (8+6+9)/(10+10+10) = 76.67 %
    # spatial (1,2): oIoU 11/16 = 68.75, mIoU 0.65, prec 100/50/50/50/0, mc-acc 50, cc 8/10
    # attribute (3,4): oIoU 6/14 = 42.857, mIoU 0.3, prec 50/50/0/0/0, mc-acc 50, cc 6/10
    golden = load_golden()
    acc = MetricsAccumulator()
    for case in golden["cases"]:
        pred, target = masks_with_counts(
            case["target_area"], case["pred_area"], case["intersection"]
        )
        pred_category = TARGET_CATEGORY if case["category_correct"] else OTHER_CATEGORY
        acc.add(
            pred,
            target,
            pred_category=None if pred is None else pred_category,
            target_category=TARGET_CATEGORY,
            groups=() if case["kind"] is None else case["kind"],
        )
    assert_metrics_equal(acc.result().to_dict(), golden["expected"])


def test_add_counts_matches_add_on_masks():
    by_mask, by_count = MetricsAccumulator(), MetricsAccumulator()
    for case in load_golden()["cases"]:
        pred, target = masks_with_counts(
            case["target_area"], case["pred_area"], case["intersection"]
        )
        by_mask.add(pred, target)
        if pred is None:
            by_count.add_missing(case["target_area"])
        else:
            union = case["target_area"] + case["pred_area"] - case["intersection"]
            by_count.add_counts(case["intersection"], union)
    assert by_mask.result().to_dict() == by_count.result().to_dict()


def test_keys_without_categories_are_exactly_the_core_set():
    acc = MetricsAccumulator()
    acc.add(np.ones((2, 2), bool), np.ones((2, 2), bool))
    assert list(acc.result().to_dict()) == [
        "oIoU",
        "mIoU",
        "precision@0.5",
        "precision@0.6",
        "precision@0.7",
        "precision@0.8",
        "precision@0.9",
        "n_expressions",
        "n_missing",
    ]


def test_perfect_predictions_score_100():
    acc = MetricsAccumulator()
    rng = np.random.default_rng(0)
    for _ in range(3):
        target = rng.random((6, 7)) > 0.5
        acc.add(target.copy(), target)
    result = acc.result()
    assert result.oiou == result.miou == 100.0
    assert all(value == 100.0 for value in result.precision.values())


def test_missing_and_no_proposals_count_as_zero_with_target_union():
    acc = MetricsAccumulator()
    target = np.zeros((4, 4), bool)
    target[:2] = True  # 8 pixels
    acc.add(target, target)  # I = U = 8
    acc.add(None, target)  # missing: I = 0, U = 8
    acc.add_missing(target, no_proposals=True)  # no proposals: I = 0, U = 8
    result = acc.result()
    assert result.oiou == pytest.approx(100 * 8 / 24)
    assert result.miou == pytest.approx(100 / 3)
    assert (result.n_expressions, result.n_missing, result.n_no_proposals) == (3, 1, 1)
    assert result.to_dict()["n_no_proposals"] == 1


def test_missing_prediction_is_class_incorrect():
    acc = MetricsAccumulator()
    target = np.ones((2, 2), bool)
    acc.add(target, target, pred_category=1, target_category=1)
    acc.add(None, target, target_category=1)
    result = acc.result()
    assert result.mc_acc == 50.0
    assert result.cc_oiou == 100.0


def test_merge_equals_single_accumulator():
    cases = load_golden()["cases"]
    whole, first, second = MetricsAccumulator(), MetricsAccumulator(), MetricsAccumulator()
    for index, case in enumerate(cases):
        pred, target = masks_with_counts(
            case["target_area"], case["pred_area"], case["intersection"]
        )
        whole.add(pred, target, groups=case["kind"] or ())
        (first if index < 2 else second).add(pred, target, groups=case["kind"] or ())
    first.merge(second)
    assert first.result().to_dict() == whole.result().to_dict()


def test_result_round_trips_through_dict():
    golden = load_golden()["expected"]
    assert_metrics_equal(MetricsResult.from_dict(golden).to_dict(), golden)


def test_empty_accumulator_gives_zeros():
    result = MetricsAccumulator().result()
    assert (result.oiou, result.miou, result.n_expressions) == (0.0, 0.0, 0)
    assert result.mc_acc is None


def test_custom_thresholds_name_their_keys():
    acc = MetricsAccumulator(thresholds=(0.3, 0.75))
    acc.add_counts(3, 4)  # IoU 0.75
    assert {k: v for k, v in acc.result().to_dict().items() if "@" in k} == {
        "precision@0.3": 100.0,
        "precision@0.75": 100.0,
    }


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        MetricsAccumulator().add(np.ones((2, 3), bool), np.ones((3, 2), bool))


@pytest.mark.parametrize("counts", [(5, 4), (-1, 3)])
def test_impossible_counts_are_rejected(counts):
    with pytest.raises(ValueError, match="intersection <= union"):
        MetricsAccumulator().add_counts(*counts)


@pytest.mark.parametrize("thresholds", [(), (0.0,), (1.5,)])
def test_bad_thresholds_are_rejected(thresholds):
    with pytest.raises(ValueError, match="thresholds"):
        MetricsAccumulator(thresholds=thresholds)


def test_merge_refuses_other_thresholds():
    with pytest.raises(ValueError, match="thresholds"):
        MetricsAccumulator().merge(MetricsAccumulator(thresholds=(0.5,)))
