"""Result files honour the umask and are replaced atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from refseg.eval.predictions import write_json_atomic
from refseg.eval.report import write_text_atomic
from refseg.fileio import write_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_get_the_mode_plain_open_would(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.bin", b"x")
        write_json_atomic(tmp_path / "b.json", {"a": 1})
        write_text_atomic(tmp_path / "c.md", "text")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.bin", "b.json", "c.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, umask_022) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert target.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_text_is_utf8_and_parents_are_created(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "new" / "dir" / "r.md", "Ünïcode ✓")
    assert path.read_bytes() == "Ünïcode ✓".encode()
