"""One dataset vocabulary (--dataset ROOT --name NAME) for eval, score and the trainers, with
the trainers' old --data spelling still accepted."""

from __future__ import annotations

import pytest

from refseg.cli import build_parser
from refseg.commands.dataset_options import resolve_dataset_arguments
from refseg.errors import InputError

CLIPSEG = ["train", "clipseg", "--out", "o"]
RISCLIP = ["train", "risclip", "--stage", "1", "--out", "o"]


def parsed(argv: list[str]):
    args = build_parser().parse_args(argv)
    resolve_dataset_arguments(args)
    return args


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--split", "val"],
        ["score", "--split", "val", "--predictions", "p.json"],
        CLIPSEG,
        RISCLIP,
    ],
)
def test_every_command_takes_the_same_spelling(argv):
    args = parsed([*argv, "--dataset", "root", "--name", "refcoco", "--split-by", "unc",
                   "--images", "imgs"])  # fmt: skip
    assert (args.dataset, args.name, args.split_by, args.images) == (
        "root", "refcoco", "unc", "imgs")  # fmt: skip


def test_old_trainer_spellings_still_run(capsys):
    old_clipseg = parsed([*CLIPSEG, "--data", "root", "--dataset", "phrasecut"])
    assert (old_clipseg.dataset, old_clipseg.name) == ("root", "phrasecut")
    assert "deprecated" in capsys.readouterr().err
    default_name = parsed([*CLIPSEG, "--data", "root"])
    assert (default_name.dataset, default_name.name) == ("root", "shapesref")
    old_risclip = parsed([*RISCLIP, "--data", "root", "--name", "shapesref"])
    assert (old_risclip.dataset, old_risclip.name) == ("root", "shapesref")
    assert parsed([*CLIPSEG, "--dataset", "root"]).name == "shapesref"  # the trainer's default


def test_missing_or_mixed_spellings_are_clear_errors():
    with pytest.raises(InputError, match="--dataset ROOT"):
        parsed(CLIPSEG)
    with pytest.raises(InputError, match="--name"):
        parsed([*RISCLIP, "--dataset", "root"])
    with pytest.raises(InputError, match="old spelling"):
        parsed([*RISCLIP, "--data", "root", "--dataset", "r2", "--name", "refcoco"])
    with pytest.raises(SystemExit):  # eval and score require both at parse time
        build_parser().parse_args(["eval", "--split", "val", "--name", "refcoco"])
