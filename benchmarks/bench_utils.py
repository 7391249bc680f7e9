"""What every benchmark here shares: one thread by default, the machine's load printed
beside the figures, and options compared alternately within one run.

On a shared machine, timings drift with the load; alternating the options being compared
(A B B A A B ...) lets a load change hit both, and the ratio of each pair is reported.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def set_threads(threads: int) -> int:
    """Use ``threads`` intra-op threads (benchmarks default to 1: more collapse under load)."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def load_note() -> str:
    """``"load 10.1 / 10.9 / 10.8 (1/5/15 min) on 2 CPUs"``."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {os.cpu_count()} CPUs"


def alternate(
    options: dict[str, Callable[[], object]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], list[object]]:
    """Time each option ``repeats`` times, alternating their order every round.

    ``clock=time.process_time`` measures CPU seconds: with one thread, what the work costs
    whatever else the machine runs.

    Returns ``(seconds per option, the last output of each round per option)``.
    """
    names = list(options)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: list[object] = []
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        round_outputs = {}
        for name in order:
            start = clock()
            round_outputs[name] = options[name]()
            seconds[name].append(clock() - start)
        outputs.append(round_outputs)
    return seconds, outputs


def median(values: list[float]) -> float:
    return statistics.median(values)


def splice_section(path: Path, name: str, text: str) -> None:
    """Write ``text`` into ``path`` between ``<!-- name:start -->`` and ``<!-- name:end -->``,
    replacing what was there (appended with the markers when absent), so scripts that own
    different sections of one results file do not overwrite each other."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.is_file() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + ("\n\n" if old.strip() else "") + block + "\n"
    path.write_text(new)
