"""``refseg eval`` under torchrun: 2 ranks split the images and rank 0 writes the same
predictions and metrics as one process (ranks are forked, see support/ranks.py)."""

from __future__ import annotations

import json

import pytest

from refseg.cli import main
from refseg.eval.runner import Shard
from support.ranks import run_ranks
from test_eval_runner import write_refer_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _eval(rank: int, args: list[str]) -> None:
    assert main(["eval", "--no-progress", *args]) == 0


def test_two_ranks_write_what_one_process_writes(tmp_path, tiny_clip_dir, capsys):
    root = write_refer_dataset(tmp_path / "data", images=5)
    common = ["--dataset", str(root), "--name", "tinyref", "--split", "val",
              "--proposals", "gt", "--clip", str(tiny_clip_dir), "--sweep", "alpha=0.5,1.0"]
    _eval(0, [*common, "--out", str(tmp_path / "one")])
    run_ranks(_eval, 2, [*common, "--out", str(tmp_path / "two")])
    for name in ("predictions.json", "metrics.json", "sweep.json"):
        one = json.loads((tmp_path / "one" / name).read_text())
        two = json.loads((tmp_path / "two" / name).read_text())
        assert one == two, name
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    predictions = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert len(predictions) == metrics["n_expressions"] > 0 and metrics["n_missing"] == 0
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert [m["shard"] for m in config["merged_from"]] == ["0/2", "1/2"]
    # each rank did its own share of the 5 images
    def partial_lines() -> list[int]:
        return [len((tmp_path / "two" / "shards" / f"shard-{r}-of-2" / "partial" /
                     f"shard-{r}-of-2.jsonl").read_text().splitlines()) for r in (0, 1)]

    assert partial_lines() == [len(Shard(r, 2).indices(5)) for r in (0, 1)]
    assert 0 not in partial_lines()
    # the same command again resumes every shard (computes nothing) and merges again
    first = (tmp_path / "two" / "predictions.json").read_text()
    run_ranks(_eval, 2, [*common, "--out", str(tmp_path / "two")])
    assert (tmp_path / "two" / "predictions.json").read_text() == first
    assert partial_lines() == [len(Shard(r, 2).indices(5)) for r in (0, 1)]


def test_shard_option_is_refused_under_torchrun(tmp_path, tiny_clip_dir, monkeypatch, capsys):
    root = write_refer_dataset(tmp_path / "data", images=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["eval", "--dataset", str(root), "--name", "tinyref", "--split", "val",
                 "--clip", str(tiny_clip_dir), "--shard", "0/2", "--out", str(tmp_path)]) == 2
    assert "drop --shard" in capsys.readouterr().err
