"""Visual prompt engineering (darken, blur, crop) and text templates, checked by hand."""

from __future__ import annotations

import math
import random

import pytest
import torch

from refseg.clipseg.loaded import mix_conditionals
from refseg.clipseg.prompts import (
    TEMPLATES,
    VisualPromptConfig,
    apply_template,
    crop_box,
    engineer_visual_prompt,
    gaussian_blur,
    gaussian_kernel,
)
from refseg.errors import InputError

ONLY_DARKEN = VisualPromptConfig(darken=0.1, blur=False, crop=False)


def test_darken_scales_the_background_by_f_and_keeps_the_object():
    pixels = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
    mask = torch.tensor([[True, False], [False, False]])
    out = engineer_visual_prompt(pixels, mask, 2, ONLY_DARKEN)
    assert torch.equal(out, torch.tensor([[[1.0, 0.2], [0.3, -0.4]]]))
    # f = 1 leaves the image as it is; f = 0 blacks out the background (the mean colour).
    keep = engineer_visual_prompt(
        pixels, mask, 2, VisualPromptConfig(darken=1.0, blur=False, crop=False)
    )
    assert torch.equal(keep, pixels)
    black = engineer_visual_prompt(
        pixels, mask, 2, VisualPromptConfig(darken=0.0, blur=False, crop=False)
    )
    assert torch.equal(black, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))


def test_blur_is_a_gaussian_with_reflect_101_border():
    """3x3 kernel, sigma 1: weights (a, b, a). An impulse in the centre of a 3x3 image
    reflects onto both sides at the border (reflect-101: ``cba|abc|cba`` has no repeated
    edge), so edge pixels get 2a per axis; the centre keeps b per axis."""
    a = math.exp(-0.5) / (1 + 2 * math.exp(-0.5))
    b = 1 / (1 + 2 * math.exp(-0.5))
    pixels = torch.zeros(1, 3, 3, dtype=torch.float64)
    pixels[0, 1, 1] = 1.0
    row = torch.tensor([2 * a, b, 2 * a], dtype=torch.float64)
    assert torch.allclose(gaussian_blur(pixels, 3, 1.0)[0], torch.outer(row, row), atol=1e-12)
    # A corner impulse: (b, a, 0) along each axis.
    corner = torch.zeros(1, 3, 3, dtype=torch.float64)
    corner[0, 0, 0] = 1.0
    row = torch.tensor([b, a, 0.0], dtype=torch.float64)
    assert torch.allclose(gaussian_blur(corner, 3, 1.0)[0], torch.outer(row, row), atol=1e-12)


def test_blur_only_touches_the_background_and_darkening_applies_to_the_blurred_pixels():
    config = VisualPromptConfig(darken=0.5, blur=True, blur_kernel=3, blur_sigma=1.0, crop=False)
    pixels = torch.zeros(1, 3, 3, dtype=torch.float64)
    pixels[0, 1, 1] = 1.0
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1, 1] = True
    out = engineer_visual_prompt(pixels, mask, 3, config)
    expected = 0.5 * gaussian_blur(pixels, 3, 1.0)
    expected[0, 1, 1] = 1.0  # the object pixel is left sharp and bright
    assert torch.allclose(out, expected, atol=1e-12)


def test_default_kernel_is_15_taps_sigma_3():
    weights = gaussian_kernel(15, 3.0)
    raw = [math.exp(-((i - 7) ** 2) / 18) for i in range(15)]
    assert torch.allclose(weights, torch.tensor(raw, dtype=torch.float64) / sum(raw))
    config = VisualPromptConfig()
    assert (config.darken, config.blur_kernel, config.blur_sigma, config.context) == (
        0.1,
        15,
        3.0,
        0.1,
    )


def test_crop_grows_the_box_per_side_pads_to_a_centred_square_and_resizes_nearest():
    """Box rows 2..5, cols 1..2 of a 10x10 image; context 0.25 grows rows by 1 px each side
    and cols by 0.5 px (truncated: left 0, right 3). The 6x3 crop is padded 1 left, 2 right."""
    pixels = torch.arange(100, dtype=torch.float32).view(1, 10, 10) + 1
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:6, 1:3] = True
    assert crop_box(mask, 0.25) == (1, 7, 0, 3)
    config = VisualPromptConfig(darken=1.0, blur=False, crop=True, context=0.25)
    out = engineer_visual_prompt(pixels, mask, 6, config)
    expected = torch.zeros(1, 6, 6)
    expected[0, :, 1:4] = pixels[0, 1:7, 0:3]
    assert torch.equal(out, expected)
    doubled = engineer_visual_prompt(pixels, mask, 12, config)
    assert torch.equal(doubled, expected.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_crop_default_context_is_ten_percent_per_side_clipped_to_the_image():
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[10:30, 0:20] = True  # 20x20 box: 2 px per side, left side clipped at 0
    assert crop_box(mask, 0.1) == (8, 32, 0, 22)
    # A wide crop is padded top and bottom.
    pixels = torch.ones(1, 40, 40)
    wide = torch.zeros(40, 40, dtype=torch.bool)
    wide[19:21, 5:35] = True  # 2 x 30 box: rows grow by 0.2 -> int truncates to 19..21
    config = VisualPromptConfig(darken=1.0, blur=False, context=0.1)
    out = engineer_visual_prompt(pixels, wide, 36, config)
    assert crop_box(wide, 0.1) == (18, 21, 2, 38)  # 3 x 36 crop
    assert torch.equal(out[0, :, 0], torch.tensor([0.0] * 16 + [1.0] * 3 + [0.0] * 17))


def test_each_variant_changes_the_support_image():
    torch.manual_seed(0)
    pixels = torch.randn(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 4:20] = True
    plain = engineer_visual_prompt(
        pixels, mask, 32, VisualPromptConfig(darken=1.0, blur=False, crop=False)
    )
    assert torch.equal(plain, pixels)
    outputs = {
        "darken": VisualPromptConfig(blur=False, crop=False),
        "blur": VisualPromptConfig(darken=1.0, crop=False),
        "crop": VisualPromptConfig(darken=1.0, blur=False),
    }
    for name, config in outputs.items():
        out = engineer_visual_prompt(pixels, mask, 32, config)
        assert not torch.equal(out, plain), name
        if name != "crop":  # the object itself is never altered
            assert torch.equal(out[:, mask], pixels[:, mask]), name


def test_empty_or_mismatched_masks_are_user_errors():
    pixels = torch.zeros(3, 8, 8)
    with pytest.raises(InputError, match="empty"):
        engineer_visual_prompt(pixels, torch.zeros(8, 8, dtype=torch.bool), 8)
    with pytest.raises(InputError, match="differ"):
        engineer_visual_prompt(pixels, torch.ones(4, 8, dtype=torch.bool), 8)


def test_templates():
    assert len(TEMPLATES) == 9
    assert apply_template("red circle") == "red circle"
    assert apply_template("red circle", "fixed") == "a photo of a red circle."
    rng = random.Random(0)
    drawn = {apply_template("x", "random", rng) for _ in range(200)}
    assert drawn == {t.format("x") for t in TEMPLATES}
    with pytest.raises(InputError):
        apply_template("x", "sometimes")


def test_mixing_interpolates_conditionals():
    text, visual = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.equal(mix_conditionals(text, visual, 0.25), torch.tensor([[0.25, 1.5]]))
    weights = torch.tensor([[1.0], [0.0]])
    both = mix_conditionals(text.expand(2, -1), visual.expand(2, -1), weights)
    assert torch.equal(both, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    with pytest.raises(InputError):
        mix_conditionals(text, visual, 1.5)
