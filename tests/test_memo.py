"""FrozenMemo: frozen outputs computed once per key, kept within the budget."""

from __future__ import annotations

import torch

from refseg.train.memo import FrozenMemo


def test_each_key_is_computed_once_and_batches_keep_key_order():
    calls: list[list[str]] = []

    def compute(missing):
        calls.append(list(missing))
        return [(torch.full((2,), float(ord(k[0]))), torch.tensor([len(k)])) for k in missing]

    memo = FrozenMemo(1)
    first, second = memo.stacked(["a", "bb", "a"], compute)
    assert calls == [["a", "bb"]]  # a repeated key is computed once
    assert first[:, 0].tolist() == [97.0, 98.0, 97.0] and second[:, 0].tolist() == [1, 2, 1]
    again = memo.stacked(["bb", "a"], compute)
    assert calls == [["a", "bb"]] and again[0][:, 0].tolist() == [98.0, 97.0]


def test_nothing_is_kept_beyond_the_budget():
    big = lambda missing: [(torch.zeros(2**20),) for _ in missing]  # noqa: E731  4 MB each
    memo = FrozenMemo(6)
    memo.stacked(["x", "y"], big)
    assert len(memo) == 1 and memo.bytes == 4 * 2**20
    empty = FrozenMemo(0)
    assert empty.stacked(["x"], big)[0].shape == (1, 2**20) and len(empty) == 0
