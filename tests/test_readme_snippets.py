"""Every ```python block of README.md runs, so the manual's examples cannot rot.

The snippets name things this offline test cannot have, so each block is run with these
substitutions, and only these (each is asserted to leave no network name behind):

- ``"photo.jpg"``, ``"scene.png"`` -> the bundled ``examples/shapes_scene.png``;
- any real CLIP name (``clip="ViT-B/32"``, ``clip="ViT-B/16"``, ...) -> ``clip="shapes-vit"``,
  the tiny CLIP shipped in the package;
- ``proposals="sam"`` (needs downloaded SAM weights) -> ``proposals="superpixel"``;
- ``checkpoint="runs/...", `` (a model the reader trained) is dropped: the system's packaged
  model loads instead.

Blocks run in a temporary directory (they write mask files) with a fresh namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE_IMAGE = ROOT / "examples" / "shapes_scene.png"

SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (r'"(?:photo\.jpg|scene\.png)"', repr(str(EXAMPLE_IMAGE))),
    (r'clip="(?:ViT|RN)[^"]*"', 'clip="shapes-vit"'),
    (r'proposals="sam"', 'proposals="superpixel"'),
    (r'checkpoint="runs/[^"]*", ', ""),
)
# What must not survive the substitutions (a name needing the network or a missing file).
OFFLINE_FORBIDDEN = re.compile(r'"photo\.jpg"|"scene\.png"|"(?:ViT|RN)[-/]|proposals="sam|"runs/')


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ```python block."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


def offline(code: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        code = re.sub(pattern, replacement, code)
    return code


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 2
    assert EXAMPLE_IMAGE.is_file()


def test_substitutions_cover_the_network_names() -> None:
    code = (
        'Image.open("photo.jpg"); load(clip="ViT-B/16", proposals="sam"); load(clip="RN50"); '
        'segment("scene.png"); load("risclip", checkpoint="runs/x", threshold=0.5)'
    )
    assert OFFLINE_FORBIDDEN.search(code)
    out = offline(code)
    assert not OFFLINE_FORBIDDEN.search(out)
    assert out.count('clip="shapes-vit"') == 2 and 'proposals="superpixel"' in out
    assert 'load("risclip", threshold=0.5)' in out


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_snippet_runs(
    line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = offline(code)
    assert not OFFLINE_FORBIDDEN.search(code), f"README.md:{line} needs a new substitution"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"README_md_{line}"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 (our README)
    if "save_" in code:  # the snippets that save masks wrote them
        files = list(tmp_path.iterdir())
        assert files and all(p.stat().st_size > 0 for p in files)
