"""``refseg eval`` under ``torchrun``: the ranks split the images, rank 0 merges.

Each rank runs the ordinary :class:`~refseg.eval.runner.EvalRunner` on shard
``RANK/WORLD_SIZE`` into ``OUT/shards/shard-R-of-N`` (resumable as any shard), waits for the
others, and rank 0 combines the shards into ``OUT`` with
:func:`~refseg.eval.runner.merge_runs` -- the same files a single process writes. The
process group (gloo, used only for barriers) comes from torchrun's environment, so
multi-node rendezvous works as for training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

SHARDS_DIR = "shards"
# Ranks wait for the slowest shard at the final barrier; evaluation of a large split can take
# hours, so the barrier's timeout is long.
BARRIER_TIMEOUT = timedelta(hours=48)


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_launch() -> Launch | None:
    """The launch from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or
    ``None`` for a plain single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    return Launch(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def shard_dir(out: Path, stem: str) -> Path:
    """Where rank ``R`` of ``N`` writes its shard run."""
    return out / SHARDS_DIR / stem


@contextmanager
def process_group(launch: Launch) -> Iterator[None]:
    """A gloo process group for barriers (created unless one exists; destroyed if created)."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank)  # each rank its own GPU
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def sum_over_ranks(counts: list[int]) -> list[int]:
    """Every rank's ``counts`` summed (a collective: also waits for every rank)."""
    import torch
    import torch.distributed as dist

    total = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(total)
    return [int(x) for x in total]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
