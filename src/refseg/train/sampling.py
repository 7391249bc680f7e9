"""Which dataset rows each rank trains on at each optimiser step.

The global batch of step ``s`` is a pure function of ``(seed, s)``; it is cut into
``grad_accum`` micro-batches, and each micro-batch into ``world_size`` contiguous shares, rank
``r`` taking share ``r``. So ``N`` ranks see exactly the rows one rank would see with the same
global batch, in the same order when their shares are concatenated, and a run resumes at step
``s`` by asking for step ``s`` again: the sampler's position is the step number.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

from refseg.errors import InputError

Sampling = Literal["epoch", "step"]
SAMPLINGS: tuple[str, ...] = ("epoch", "step")
# Generator seed of step s ("step") or epoch e ("epoch"): seed * SEED_STRIDE + s (or e).
SEED_STRIDE = 1_000_003


def global_batch_indices(
    step: int, *, seed: int, batch_size: int, dataset_size: int, sampling: Sampling = "epoch"
) -> torch.Tensor:
    """Dataset rows of optimiser step ``step`` (all ranks, all micro-batches), in order.

    ``"epoch"``: a fresh permutation of the dataset per epoch (seeded by ``(seed, epoch)``),
    cut into ``dataset_size // batch_size`` batches (the remainder is skipped), so every row
    is seen once per epoch. ``"step"``: ``batch_size`` distinct rows drawn anew at each step
    (seeded by ``(seed, step)``), as refseg's contrastive trainer always did.
    """
    if dataset_size < batch_size:
        raise InputError(
            f"the training set has {dataset_size} samples, fewer than one batch ({batch_size})"
        )
    if sampling == "step":
        generator = torch.Generator().manual_seed(seed * SEED_STRIDE + step)
        return torch.randperm(dataset_size, generator=generator)[:batch_size]
    if sampling != "epoch":
        raise InputError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    per_epoch = dataset_size // batch_size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    order = torch.randperm(dataset_size, generator=generator)
    return order[position * batch_size : (position + 1) * batch_size]


def rank_micro_batches(
    rows: torch.Tensor, *, rank: int, world_size: int, grad_accum: int
) -> list[list[int]]:
    """This rank's ``grad_accum`` micro-batches of one global batch ``rows``."""
    micro = len(rows) // grad_accum
    share = micro // world_size
    return [
        rows[m * micro + rank * share : m * micro + (rank + 1) * share].tolist()
        for m in range(grad_accum)
    ]


def check_batch_size(batch_size: int, world_size: int, grad_accum: int) -> int:
    """The per-rank micro-batch size; refuses a global batch that does not split evenly."""
    if batch_size < 1 or grad_accum < 1 or batch_size % (world_size * grad_accum):
        raise InputError(
            f"--batch-size {batch_size} must be a positive multiple of processes x "
            f"--grad-accum = {world_size} x {grad_accum}"
        )
    return batch_size // (world_size * grad_accum)


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's micro-batches for steps ``start_step .. steps - 1``, in order
    (``grad_accum`` of them per step)."""

    def __init__(
        self,
        *,
        start_step: int,
        steps: int,
        seed: int,
        batch_size: int,
        dataset_size: int,
        sampling: Sampling,
        rank: int,
        world_size: int,
        grad_accum: int,
    ) -> None:
        self.start_step, self.steps = start_step, steps
        self.seed, self.batch_size, self.dataset_size = seed, batch_size, dataset_size
        self.sampling = sampling
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        check_batch_size(batch_size, world_size, grad_accum)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            rows = global_batch_indices(
                step,
                seed=self.seed,
                batch_size=self.batch_size,
                dataset_size=self.dataset_size,
                sampling=self.sampling,
            )
            yield from rank_micro_batches(
                rows, rank=self.rank, world_size=self.world_size, grad_accum=self.grad_accum
            )
