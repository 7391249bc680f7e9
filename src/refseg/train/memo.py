"""Outputs of a frozen model memoised by key within a memory budget.

A task that trains only a head over a frozen model (CLIPSeg's decoder over CLIP, RISCLIP's
stage-2 decoder over the stage-1 model) sees the same inputs every epoch; the frozen part's
outputs are pure functions of them, so they are computed once and kept while they fit in the
budget. A memo changes no number, only the time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch


class FrozenMemo:
    """Tuples of tensors by key, within ``budget_mb`` megabytes (0: keep nothing)."""

    def __init__(self, budget_mb: int) -> None:
        self.budget = budget_mb * 2**20
        self.cache: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.cache)

    def stacked(
        self,
        keys: Sequence[Hashable],
        compute: Callable[[list[Hashable]], Sequence[Sequence[torch.Tensor]]],
    ) -> list[torch.Tensor]:
        """For each part of the memoised tuples, the batch ``[len(keys), ...]`` in key order.

        ``compute(missing)`` returns one tuple of tensors per missing key (each key once, in
        first-seen order); what fits in the budget is kept (cloned, so no batch is pinned).
        """
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        fresh = dict(zip(missing, compute(missing), strict=True)) if missing else {}
        for key, tensors in fresh.items():
            size = sum(t.numel() * t.element_size() for t in tensors)
            if self.bytes + size <= self.budget:
                self.cache[key] = tuple(t.clone() for t in tensors)
                self.bytes += size
        table = {**self.cache, **fresh}
        parts = len(table[keys[0]])
        return [torch.stack([table[k][d] for k in keys]) for d in range(parts)]
