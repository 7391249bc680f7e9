"""`refseg --help` must start fast: it lists the commands without importing heavy libraries."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from refseg.cli import COMMANDS, build_parser

HEAVY = ("torch", "numpy", "PIL", "pycocotools", "skimage", "transformers", "spacy", "fastapi")


def _imported_after(code: str) -> list[str]:
    report = f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    script = f"import json, sys\n{code}\n{report}"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_top_level_help_imports_no_heavy_library() -> None:
    code = "from refseg.cli import build_parser\nbuild_parser(['--help']).format_help()"
    assert _imported_after(code) == []


def test_a_light_command_builds_without_torch() -> None:
    code = "from refseg.cli import build_parser\nbuild_parser(['merge', '--help']).format_help()"
    assert _imported_after(code) == []


def _command_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help for choice in action._choices_actions}


def test_the_listing_says_what_each_command_module_says() -> None:
    assert _command_helps(build_parser(["--help"])) == COMMANDS
    assert _command_helps(build_parser()) == COMMANDS


def test_the_named_command_is_built_in_full() -> None:
    args = build_parser(["--debug", "merge", "a", "b"]).parse_args(["--debug", "merge", "a", "b"])
    assert args.command == "merge" and args.run_dirs == ["a", "b"] and callable(args.func)
