"""Runs side by side: same split or nothing, and the expressions on which two runs disagree.

An expression is *right* when its IoU is at least :data:`~refseg.eval.run_data.RIGHT_IOU`
(0.5, the P@0.5 criterion) and *wrong* otherwise. Two runs disagree on an expression when
one is right and the other wrong; expressions only one run scored are counted, not compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from refseg.errors import InputError
from refseg.eval.run_data import RunData


def check_same_split(runs: Sequence[RunData]) -> None:
    """Refuse to put runs of different dataset splits side by side.

    Raises:
        InputError: two runs name different (dataset, split_by, split).
    """
    first = runs[0]
    for run in runs[1:]:
        if run.split_key != first.split_key:
            raise InputError(
                f"{run.run_dir} is on {_describe(run)} but {first.run_dir} on {_describe(first)}; "
                "compare runs of one split"
            )


def _describe(run: RunData) -> str:
    name, split_by, split = run.split_key
    return f"{name} {split}" + (f" ({split_by})" if split_by else "")


@dataclass
class Disagreement:
    """How runs ``a`` and ``b`` differ, expression by expression.

    Attributes:
        a_only_right: sent_ids where ``a`` is right and ``b`` wrong (largest IoU gap first).
        b_only_right: the other way round.
        both_right / both_wrong: how many expressions the runs agree on.
        not_shared: expressions with an IoU in one run only (not compared).
    """

    a: RunData
    b: RunData
    a_only_right: list[int] = field(default_factory=list)
    b_only_right: list[int] = field(default_factory=list)
    both_right: int = 0
    both_wrong: int = 0
    not_shared: int = 0


def disagreement(a: RunData, b: RunData) -> Disagreement:
    """Where ``a`` is right and ``b`` wrong, and the reverse (see the module docstring)."""
    known_a = {s for s, r in a.results.items() if r.iou is not None}
    known_b = {s for s, r in b.results.items() if r.iou is not None}
    shared = [s for s in a.results if s in known_a and s in known_b]
    out = Disagreement(a, b, not_shared=len(known_a ^ known_b))
    for sent_id in shared:
        right_a, right_b = a.results[sent_id].right, b.results[sent_id].right
        if right_a and not right_b:
            out.a_only_right.append(sent_id)
        elif right_b and not right_a:
            out.b_only_right.append(sent_id)
        elif right_a:
            out.both_right += 1
        else:
            out.both_wrong += 1

    def gap(sent_id: int) -> tuple[float, int]:
        return (-abs(a.results[sent_id].iou - b.results[sent_id].iou), sent_id)  # type: ignore[operator]

    out.a_only_right.sort(key=gap)
    out.b_only_right.sort(key=gap)
    return out


__all__ = ["Disagreement", "check_same_split", "disagreement"]
