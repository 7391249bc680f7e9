"""soft_resize equals torch's bilinear interpolation while reading only the rows it needs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refseg.masks import soft_resize


def _reference(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    values = masks.to(torch.float32)[:, None]
    return F.interpolate(values, size=size, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((7, 7), (7, 7)),
        ((480, 640), (7, 7)),
        ((481, 643), (14, 14)),
        ((2048, 2048), (7, 7)),
        ((13, 9), (7, 7)),
        ((1000, 1), (7, 1)),
        ((5, 5), (1, 1)),
        ((3, 4), (7, 7)),  # growing: the plain interpolation path
    ],
)
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32])
def test_equals_bilinear_interpolation(source, target, dtype) -> None:
    generator = torch.Generator().manual_seed(sum(source) + sum(target))
    masks = torch.rand(3, *source, generator=generator)
    masks = masks if dtype is torch.float32 else (masks > 0.5).to(dtype)
    out = soft_resize(masks, target)
    assert out.dtype == torch.float32 and out.shape == (3, *target)
    assert (out - _reference(masks, target)).abs().max().item() < 1e-6


def test_empty_batch() -> None:
    assert soft_resize(torch.zeros(0, 50, 60, dtype=torch.bool), (7, 7)).shape == (0, 7, 7)


def test_shrinking_reads_only_the_rows_under_each_output_row() -> None:
    masks = torch.zeros(1, 2048, 2048, dtype=torch.bool)
    masks[0, 1023:1025, :] = True  # the two rows under the middle output row of 7
    out = soft_resize(masks, (7, 7))
    assert out[0, 3].min().item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, [0, 1, 2, 4, 5, 6]].abs().max().item() == 0.0
