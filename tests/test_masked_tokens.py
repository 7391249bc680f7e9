"""Compact token sets of the masked ViT blocks: groups, layout and the folded zero token."""

import math

import torch

from refseg.clip.masked_tokens import compact_tokens, mask_groups


def test_groups_cover_every_mask_once_sorted_by_non_zero_count():
    weights = torch.zeros(40, 9)
    for i in range(40):
        weights[i, : (i * 7) % 10] = 1.0
    groups = mask_groups(weights, size=16)
    assert [len(g) for g in groups] == [16, 16, 8]
    order = torch.cat(groups)
    assert sorted(order.tolist()) == list(range(40))
    counts = (weights[order] != 0).sum(dim=1)
    assert torch.all(counts[1:] >= counts[:-1])


def test_compact_tokens_keep_non_zero_patches_and_fold_the_rest():
    tokens = torch.arange(1 * 7 * 2, dtype=torch.float32).reshape(1, 7, 2)  # CLS + 6 patches
    weights = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.0, 0.0],
                            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    x, scale, key_bias = compact_tokens(tokens, weights)
    assert x.shape == (2, 4, 2)  # CLS, 2 kept slots, the folded zero token
    assert torch.equal(x[0, 1:3], tokens[0, [2, 4]])  # patches 1 and 3, in order
    assert torch.equal(scale[0, :, 0], torch.tensor([1.0, 0.5, 0.25, 0.0]))
    # The second mask keeps patch 0 and pads with a zero-weight patch (itself a zero token).
    assert torch.equal(x[1, 1], tokens[0, 1]) and scale[1, 2, 0] == 0.0
    assert torch.equal(x[:, 3], torch.zeros(2, 2))
    assert torch.allclose(key_bias, torch.tensor([0.0, 0.0, 0.0, math.log(4)]))


def test_full_masks_leave_no_zero_token_to_attend():
    tokens = torch.randn(1, 5, 3)
    x, scale, key_bias = compact_tokens(tokens, torch.ones(2, 4))
    assert x.shape == (2, 6, 3)
    assert key_bias[-1] == float("-inf") and torch.all(key_bias[:-1] == 0)
