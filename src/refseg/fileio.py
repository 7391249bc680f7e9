"""Atomic file writes that honour the user's umask.

Result files are written to a temporary name in the same folder and renamed into place, so a
reader never sees half a file and an interrupted run leaves the previous file intact.
``tempfile.mkstemp`` would create them ``0600`` whatever the umask; colleagues on a shared
server could not read the results. Here the temporary file is opened with mode ``0666`` and
the kernel applies the umask, exactly as for a plain ``open(path, "w")``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on a clean exit it is
    flushed to disk and renamed onto ``path``, on an error it is removed. Streams, so a large
    file (a checkpoint) is never held in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; return the path."""
    with atomic_open(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
