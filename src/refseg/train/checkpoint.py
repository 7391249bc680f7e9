"""Training checkpoints: atomic writes, safe reads, RNG states, option checks.

A checkpoint is one ``torch.save`` file of plain containers and tensors, read back with
``weights_only=True`` (a checkpoint is data: nothing in it is executed). RNG states are
converted to such types (:func:`rng_state`), so no pickle of arbitrary objects is needed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refseg.errors import CheckpointFormatError, CheckpointNotFoundError
from refseg.fileio import atomic_open

FORMAT = "refseg-train-checkpoint/1"


def save_atomic(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (:func:`refseg.fileio.atomic_open`): a
    reader (or a crash) never sees half a checkpoint, and the file's mode follows the umask."""
    with atomic_open(path) as f:
        torch.save(state, f)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic` (tensors and plain containers only)."""
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"--resume: no {path.name} in {path.parent}; run once without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types on bad files
        raise CheckpointFormatError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointFormatError(f"{path} is not a refseg training checkpoint ({FORMAT})")
    return state


def plain(data: Any) -> Any:
    """Tuples as lists, paths as strings: as after a JSON round trip, so saved and live
    options compare equal."""
    return json.loads(json.dumps(data, default=str))


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``task_record.config.lr``)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def check_same_options(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume with options other than the checkpoint's (they change the result)."""
    saved, current = _flat(plain(saved)), _flat(plain(current))
    if saved != current:
        diff = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        raise CheckpointFormatError(
            f"{path} was written with other options ({', '.join(diff)} differ); resume with "
            "the same options or start in a new --out directory"
        )


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA RNG states as tensors and lists."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
