"""NegCLIP loss against a hand computation on 2-D features."""

from __future__ import annotations

import math

import pytest
import torch

from refseg.train.negatives_loss import (
    hard_negative_accuracy,
    negclip_logits,
    negclip_loss,
    own_negatives_loss,
)


def _ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one row, written out; -inf entries drop out of the sum."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits if v != -math.inf))


# Unit vectors at known angles, so every cosine is a number we can write down.
def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


IMAGES = torch.tensor([_unit(0), _unit(90)])
TEXTS = 3.0 * torch.tensor([_unit(0), _unit(60)])  # not unit length: the loss normalises
NEGATIVES = torch.tensor([_unit(30), _unit(120), _unit(180)])
SCALE = torch.tensor(math.log(2.0))  # logits = 2 * cosine


def test_loss_matches_a_hand_computation():
    cos = math.cos
    r = math.radians
    # image 0 (0 deg) against texts 0, 60 and negatives 30, 120, 180
    row0 = [2 * cos(r(a)) for a in (0, 60, 30, 120, 180)]
    # image 1 (90 deg)
    row1 = [2 * cos(r(a)) for a in (90, 30, 60, 30, 90)]
    image_to_text = (_ce(row0, 0) + _ce(row1, 1)) / 2
    # text -> image over the two images only
    col0 = [2 * cos(r(0)), 2 * cos(r(90))]
    col1 = [2 * cos(r(60)), 2 * cos(r(30))]
    text_to_image = (_ce(col0, 0) + _ce(col1, 1)) / 2
    expected = (image_to_text + text_to_image) / 2
    loss = negclip_loss(IMAGES, TEXTS, NEGATIVES, SCALE)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_without_negatives_it_is_symmetric_infonce():
    r = math.radians
    rows = [[2 * math.cos(r(a)) for a in (0, 60)], [2 * math.cos(r(a)) for a in (90, 30)]]
    cols = [[rows[0][0], rows[1][0]], [rows[0][1], rows[1][1]]]
    expected = (
        (_ce(rows[0], 0) + _ce(rows[1], 1)) / 2 + (_ce(cols[0], 0) + _ce(cols[1], 1)) / 2
    ) / 2
    loss = negclip_loss(IMAGES, TEXTS, NEGATIVES[:0], SCALE)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_negatives_raise_the_loss_only_on_the_image_side():
    base_i2t, base_t2i = negclip_logits(IMAGES, TEXTS, NEGATIVES[:0], SCALE)
    i2t, t2i = negclip_logits(IMAGES, TEXTS, NEGATIVES, SCALE)
    assert i2t.shape == (2, 5) and t2i.shape == (2, 2)
    assert torch.equal(t2i, base_t2i) and torch.equal(i2t[:, :2], base_i2t)
    assert negclip_loss(IMAGES, TEXTS, NEGATIVES, SCALE) > negclip_loss(
        IMAGES, TEXTS, NEGATIVES[:0], SCALE
    )


def test_masking_by_caption_id():
    # Both pairs mean the same (id 7); negative 1 also says it: all masked off the targets.
    ids = torch.tensor([7, 7])
    negative_ids = torch.tensor([1, 7, 2])
    i2t, t2i = negclip_logits(IMAGES, TEXTS, NEGATIVES, SCALE, ids, negative_ids)
    inf = -math.inf
    assert i2t[0, 1] == inf and i2t[1, 0] == inf and i2t[0, 3] == inf and i2t[1, 3] == inf
    assert t2i[0, 1] == inf and t2i[1, 0] == inf
    assert torch.isfinite(i2t.diagonal()).all() and torch.isfinite(i2t[:, [2, 4]]).all()
    r = math.radians
    row0 = [2 * math.cos(r(a)) for a in (0, 30, 180)]  # texts 0, negatives 0 and 2
    row1 = [2 * math.cos(r(a)) for a in (30, 60, 90)]  # text 1, negatives 0 and 2
    expected = ((_ce(row0, 0) + _ce(row1, 0)) / 2 + 0.0) / 2  # t2i: one finite entry per row
    loss = negclip_loss(IMAGES, TEXTS, NEGATIVES, SCALE, ids, negative_ids)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradients_flow_to_negatives_and_temperature():
    negatives = NEGATIVES.clone().requires_grad_(True)
    scale = SCALE.clone().requires_grad_(True)
    negclip_loss(IMAGES, TEXTS, negatives, scale).backward()
    assert negatives.grad.abs().sum() > 0 and scale.grad.abs() > 0


def test_hard_negative_accuracy():
    # image 0 (0 deg, its text at 0) owns negatives at 30 and 180 deg: both further away;
    # image 1 (90 deg, its text at 60) owns a negative at 100 deg: closer, a loss
    negatives = torch.tensor([_unit(30), _unit(100), _unit(180)])
    owner = torch.tensor([0, 1, 0])
    assert hard_negative_accuracy(IMAGES, TEXTS, negatives, owner) == pytest.approx(2 / 3)
    assert math.isnan(hard_negative_accuracy(IMAGES, TEXTS, negatives[:0], owner[:0]))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        negclip_loss(IMAGES, TEXTS[:1], NEGATIVES, SCALE)
    with pytest.raises(ValueError, match="negative features"):
        negclip_loss(IMAGES, TEXTS, torch.zeros(2, 3), SCALE)


def test_own_negatives_loss_matches_a_hand_computation():
    # K = 2 per image, row-major; image 1's second negative is padding
    negatives = torch.tensor([_unit(30), _unit(120), _unit(180), _unit(0)])
    valid = torch.tensor([True, True, True, False])
    cos, r = math.cos, math.radians
    row0 = [2 * cos(r(a)) for a in (0, 30, 120)]  # image 0: caption 0 deg, negatives 30, 120
    row1 = [2 * cos(r(a)) for a in (30, 90)]  # image 1 (90): caption 60, negative 180
    expected = (_ce(row0, 0) + _ce(row1, 0)) / 2
    loss = own_negatives_loss(IMAGES, TEXTS, negatives, valid, SCALE)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_own_negatives_loss_skips_images_without_negatives_and_keeps_gradients_finite():
    scale = SCALE.clone().requires_grad_()
    negatives = torch.tensor([_unit(30), _unit(120), _unit(180), _unit(0)], requires_grad=True)
    only_first = torch.tensor([True, True, False, False])
    loss = own_negatives_loss(IMAGES, TEXTS, negatives, only_first, scale)
    cos, r = math.cos, math.radians
    assert loss.item() == pytest.approx(_ce([2 * cos(r(a)) for a in (0, 30, 120)], 0), rel=1e-6)
    loss.backward()
    # padding must not reach the temperature as -inf x 0 = NaN
    assert torch.isfinite(scale.grad) and torch.isfinite(negatives.grad).all()
    assert negatives.grad[2:].abs().sum() == 0
    none = own_negatives_loss(IMAGES, TEXTS, negatives, torch.zeros(4, dtype=torch.bool), SCALE)
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="B \\* K"):
        own_negatives_loss(IMAGES, TEXTS, negatives[:3], only_first[:3], SCALE)
