"""The ``refseg`` command line: one parser, one sub-command module per command.

Each module in :mod:`refseg.commands` exposes ``add_parser(subparsers)`` which registers a
sub-parser and sets ``func=run``; ``run(args) -> int`` does the work. User errors
(:class:`refseg.errors.RefsegError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from refseg import __version__
from refseg.errors import RefsegError

# OpenMP reads this when torch loads: sleeping instead of spinning while waiting keeps
# multi-threaded ops from collapsing on a busy machine (refseg.runtime.set_thread_defaults).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Sub-command modules under refseg.commands, in the order `refseg --help` lists them, with
# their one-line help (each module's add_parser says the same; a test keeps them equal). The
# table lets `refseg --help` list every command without importing its module: some pull in
# torch, which costs seconds.
COMMANDS: dict[str, str] = {
    "segment": "segment the object each expression describes",
    "data": "generate or prepare datasets",
    "train": "train models",
    "score": "score a predictions file (oIoU, mIoU, precision@X)",
    "eval": "evaluate a method on a dataset split (resumable, shardable, sweeps)",
    "probe": "does a CLIP read relations, attribute binding and positions? (ShapesRef)",
    "merge": "combine the shards of a refseg eval run",
    "report": "HTML report (plots, gallery) of eval runs; several runs side by side",
    "serve": "run the web service and browser page",
}
COMMAND_MODULES = tuple(COMMANDS)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, and text with line breaks (the examples in an
    epilog) kept as written; other text is wrapped as usual.

    An option whose help already says its default (``default`` in the text), a flag and an
    option without a value (``None``) are left alone; such options say in words what
    happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help
        if (
            help_text
            and action.option_strings
            and "default" not in help_text
            and not _no_default(action.default)
        ):
            help_text += " (default: %(default)s)"
        return help_text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _no_default(value: object) -> bool:
    """True for "no value" defaults (by identity: ``0 == False``, yet 0 is a default)."""
    return value is None or value is False or value is argparse.SUPPRESS or value == []


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: :class:`HelpFormatter` unless the command picks another."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``refseg`` parser.

    Given the command line, only the command it names is built in full; the others are
    listed by their one-line help, so ``refseg --help`` starts without importing torch.
    Without ``argv`` every command is built (for tests and documentation).
    """
    parser = argparse.ArgumentParser(
        prog="refseg",
        description="Referring image segmentation: segment what you describe.",
        epilog="Run `refseg COMMAND --help` for a command's options, defaults and examples.",
    )
    parser.add_argument("--version", action="version", version=f"refseg {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=CommandParser
    )
    wanted = None if argv is None else _named_command(argv)
    for name, help_text in COMMANDS.items():
        if argv is not None and name != wanted:
            subparsers.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(f"refseg.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"refseg.commands.{name}":
                continue  # command not available in this build
            raise
        module.add_parser(subparsers)
    return parser


def _named_command(argv: Sequence[str]) -> str | None:
    """The sub-command a command line names: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that a command may let a list positional (``nargs="*"``)
    take words that follow its options (``set_defaults(trailing_positional="texts")``):
    ``refseg segment IMG --out m.png "the dog"``. argparse alone gives such a list nothing
    once an option comes first, and reports the words as unrecognised."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "trailing_positional", None)
    if dest is not None:
        words = [word for word in extra if not word.startswith("-")]
        setattr(args, dest, [*getattr(args, dest), *words])
        extra = [word for word in extra if word.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"refseg: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RefsegError as exc:
        if args.debug:
            raise
        print(f"refseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: still one line, with a hint to get the traceback
        if args.debug:
            raise
        print(
            f"refseg: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
