"""Every `refseg COMMAND --help` page: defaults shown, names listed, examples given."""

from __future__ import annotations

import argparse

import pytest

from refseg.cli import COMMANDS, build_parser
from refseg.commands.options import METHOD_NAMES, SYSTEM_NAMES
from refseg.methods import available_methods
from refseg.systems import available_systems

# Options that say in words what happens without them need no "(default: ...)".
WITHOUT_DEFAULT = {"-h", "--help"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _pages() -> dict[str, argparse.ArgumentParser]:
    """Every command page (``data shapes``, ``train clip``: the leaf pages) by its words."""
    pages: dict[str, argparse.ArgumentParser] = {}
    for name, parser in _subparsers(build_parser()).items():
        leaves = _subparsers(parser)
        pages.update({f"{name} {leaf}": sub for leaf, sub in leaves.items()} or {name: parser})
    return pages


PAGES = _pages()


def test_every_command_has_a_page() -> None:
    assert {words.split()[0] for words in PAGES} == set(COMMANDS)


@pytest.mark.parametrize("words", sorted(PAGES))
def test_every_option_says_its_default_and_the_page_has_examples(words: str) -> None:
    parser = PAGES[words]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or set(action.option_strings) & WITHOUT_DEFAULT:
            continue
        if action.help == argparse.SUPPRESS:  # hidden (a deprecated alias): not on the page
            continue
        if isinstance(action, argparse._StoreTrueAction) or action.required:
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert "default" in text.lower(), f"refseg {words} {action.option_strings[0]}: {text!r}"
    page = parser.format_help()
    assert "examples:" in page and f"refseg {words}" in page.split("examples:")[1]
    assert "%(default)" not in page and "(default: None)" not in page


def test_help_lists_the_system_and_method_names() -> None:
    assert sorted(SYSTEM_NAMES) == sorted(available_systems())
    assert sorted(METHOD_NAMES) == sorted(available_methods())
    page = PAGES["segment"].format_help().replace("\n", " ")
    page = " ".join(page.split())
    for name in (*SYSTEM_NAMES, *METHOD_NAMES):
        assert name in page


def test_help_lists_every_sam_proposal_name() -> None:
    from refseg.commands.options import SAM_NAMES
    from refseg.proposals.sam import SAM_CHECKPOINTS

    assert sorted(SAM_NAMES) == sorted(SAM_CHECKPOINTS)
    for words in ("segment", "eval", "serve"):
        page = "".join(PAGES[words].format_help().split())  # argparse wraps at hyphens
        missing = [name for name in SAM_NAMES if name not in page]
        assert not missing, (words, missing)


def test_shard_is_documented_zero_based() -> None:
    page = " ".join(PAGES["eval"].format_help().split())
    assert "0-based" in page and "0/4 .. 3/4" in page


def test_a_default_value_is_printed() -> None:
    page = " ".join(PAGES["serve"].format_help().split())
    assert "(default: 127.0.0.1)" in page and "(default: 8000)" in page


def test_a_wrong_dataset_name_points_to_a_readme_section_covering_shapesref(tmp_path, capsys):
    from pathlib import Path

    from refseg.cli import main
    from refseg.data.shapes import ShapesConfig, write_shapesref

    write_shapesref(tmp_path, seed=0, images=3, config=ShapesConfig(image_size=64))
    args = ["eval", "--dataset", str(tmp_path), "--name", "refcoco", "--split", "val",
            "--clip", "shapes-vit", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert '"Datasets" section' in err and "refseg data shapes" in err
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Datasets\n")[1].split("\n## ")[0]
    assert "refseg data shapes ROOT" in section and "--name shapesref" in section
