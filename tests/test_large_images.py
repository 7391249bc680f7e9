"""Large images: the downscale is announced, and mask resizing keeps a bounded buffer
(benchmarks/large_photo_memory.py measures the peak RSS of a 4000x2667 photo)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from refseg import masks as masks_module
from refseg.cli import main
from refseg.image_io import cap_pixels
from refseg.masks import resize_masks


def test_a_downscale_is_announced_with_both_sizes():
    image = Image.new("RGB", (400, 300))
    with pytest.warns(UserWarning, match=r"400x300 image is processed at 200x150"):
        working, scale = cap_pixels(image, 200 * 150)
    assert working.size == (200, 150) and scale == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the cap: silent
        assert cap_pixels(image, 400 * 300)[0] is image


def test_segment_prints_the_downscale_as_one_warning_line(tmp_path, tiny_clip_dir, capsys):
    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)).save(path)
    args = ["segment", str(path), "a red square", "--clip", str(tiny_clip_dir), "--json",
            "--max-pixels", "4800"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "refseg: warning: the 160x120 image is processed at 80x60" in err


def test_resize_masks_in_bounded_chunks_gives_the_same_masks(monkeypatch):
    rng = np.random.default_rng(1)
    small = rng.random((7, 9, 13)) > 0.5
    whole = resize_masks(small, (40, 50))
    batches = []
    interpolate = F.interpolate

    def recorded(values, **kwargs):
        batches.append(values.shape[0])
        return interpolate(values, **kwargs)

    monkeypatch.setattr(masks_module, "RESIZE_CHUNK_PIXELS", 2 * 40 * 50)
    monkeypatch.setattr(masks_module.F, "interpolate", recorded)
    chunked = resize_masks(small, (40, 50))
    assert batches == [2, 2, 2, 1]  # never more than 2 masks' floats at a time
    np.testing.assert_array_equal(chunked, whole)
    assert whole.shape == (7, 40, 50) and whole.dtype == bool
    assert resize_masks(small[0], (40, 50)).shape == (40, 50)
    assert resize_masks(small[:0], (40, 50)).shape == (0, 40, 50)
