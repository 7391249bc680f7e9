"""Read the tensors of a TorchScript archive without running any of its code.

``torch.jit.load`` executes the archive's compiled code (a scripted ``__setstate__`` can
write files), so refseg never calls it. A TorchScript ``.pt`` is a zip whose ``data.pkl``
pickles the module tree: each module is a ``__torch__.*`` object whose state is a dict of
attributes (parameters, buffers, submodules, plain values), and each tensor is a
``torch._utils._rebuild_tensor_v2`` call on a storage kept in ``data/<key>``. This module
unpickles that with an allow-list: ``__torch__`` classes become inert records, tensors are
rebuilt here from validated bytes, and any other global is refused. A module whose state is
not a dict (a custom ``__setstate__``) contributes no weights: its code is never run.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from refseg.errors import CheckpointFormatError

# Legacy storage class names the TorchScript pickler writes -> dtype of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Largest pickle we unpickle (the tensors live outside it, in data/<key>).
MAX_PICKLE_BYTES = 64 * 1024 * 1024


class ScriptObject:
    """Inert stand-in for every ``__torch__.*`` object: keeps its state, runs nothing."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD calls this, not the archive
        self.state = state


class _StorageType:
    """Marker for a legacy storage class: only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _first(value: Any, *_: Any) -> Any:
    """``torch.jit._pickle`` helpers (``build_intlist``, ``restore_type_tag``...): the value."""
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and (
            name.startswith("build_") and name.endswith("list") or name == "restore_type_tag"
        ):
            return _first
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError("malformed storage record")
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage {name} is missing") from None
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if numel < 0 or info.file_size != numel * itemsize:
                raise pickle.UnpicklingError(
                    f"storage {name} holds {info.file_size} bytes, not {numel} x {itemsize}"
                )
            raw = bytearray(self._archive.read(name))
            flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0)
            self._storages[key] = flat.to(storage_type.dtype)
        return self._storages[key]

    @staticmethod
    def _rebuild_tensor(
        storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any
    ) -> torch.Tensor:
        if not isinstance(storage, torch.Tensor):
            raise pickle.UnpicklingError("tensor without a storage")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or not all(
            isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)
        ):
            raise pickle.UnpicklingError("malformed tensor record")
        if any(s == 0 for s in size):
            return storage.new_empty(size)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.numel():
            raise pickle.UnpicklingError("tensor reaches past the end of its storage")
        return storage.as_strided(size, stride, offset).clone()


def _module_tensors(root: Any) -> dict[str, torch.Tensor]:
    """``name -> tensor`` for every tensor attribute in the module tree (``state_dict`` keys)."""
    tensors: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, Any]] = [("", root)]
    seen: set[int] = set()
    while stack:
        prefix, node = stack.pop()
        if id(node) in seen or not isinstance(node, ScriptObject):
            continue
        seen.add(id(node))
        if not isinstance(node.state, dict):
            continue  # custom __getstate__ (a tuple...): not module attributes
        for key, value in node.state.items():
            if not isinstance(key, str):
                continue
            if isinstance(value, torch.Tensor):
                tensors[prefix + key] = value
            elif isinstance(value, ScriptObject):
                stack.append((f"{prefix}{key}.", value))
    return tensors


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a zip holding ``constants.pkl`` (what torch treats as TorchScript)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, by ``state_dict`` name.

    Raises:
        CheckpointFormatError: not a readable archive, or it holds anything but modules and
            tensors (with how to convert it to a plain state dict).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            top = [n for n in names if n.count("/") <= 1]
            if not top:
                raise pickle.UnpicklingError("no data.pkl")
            name = top[0]
            if archive.getinfo(name).file_size > MAX_PICKLE_BYTES:
                raise pickle.UnpicklingError(f"{name} is larger than {MAX_PICKLE_BYTES} bytes")
            prefix = name[: -len("data.pkl")]
            root = _ArchiveUnpickler(archive.read(name), archive, prefix, path).load()
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        RuntimeError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise CheckpointFormatError(
            f"cannot read the weights of TorchScript archive {path} without running its code "
            f"({type(exc).__name__}: {str(exc)[:200]}). refseg never executes a checkpoint; "
            "if you trust the file, convert it in Python: torch.save(torch.jit.load(PATH)"
            ".state_dict(), 'weights.pt')"
        ) from None
    return _module_tensors(root)
