"""Run a function on N forked CPU processes joined in a gloo process group, as torchrun would.

Forking (not spawning) reuses the test process's imports, so a 2-rank run costs about a
second instead of the seconds each fresh interpreter needs to import torch.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    from accelerate.state import AcceleratorState, GradientState

    # The parent's single-process accelerate state is inherited by the fork: forget it.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        fn(rank, *args)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 300) -> None:
    """Call ``fn(rank, *args)`` on ``world`` forked processes with torchrun's environment;
    raise if any fails or hangs."""
    context = multiprocessing.get_context("fork")
    port = free_port()
    processes = [
        context.Process(target=_entry, args=(fn, rank, world, port, args)) for rank in range(world)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
    if codes != [0] * world:
        raise AssertionError(f"rank exit codes {codes} (None: hung); see stderr above")
