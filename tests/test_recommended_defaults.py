"""A model carries its own recommended defaults (recommended.json), used when the user gives
none and recorded, value by value, with where it came from; the eval report's wording."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from refseg.cli import main
from refseg.clip.recommended import RECOMMENDED_FILE, recommended_defaults
from refseg.errors import CheckpointFormatError
from refseg.eval.report import collect_table
from refseg.segmenter import Segmenter
from test_eval_runner import write_refer_dataset


@pytest.mark.parametrize("model", ["shapes-vit", "shapes-rn"])
def test_the_shipped_shapes_models_recommend_alpha_and_pixels(model):
    assert recommended_defaults(model, "global-local") == {"alpha": 0.5, "pixels": "clean"}
    assert recommended_defaults(model, "maskclip") == {}
    assert recommended_defaults("ViT-B/32", "global-local") == {}  # a Hub name: none


@pytest.fixture
def recommending_clip(tiny_clip_dir, tmp_path) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, directory)
    (directory / RECOMMENDED_FILE).write_text(json.dumps({"global-local": {"alpha": 0.3}}))
    return directory


def test_the_model_value_applies_unless_the_user_gives_one(recommending_clip):
    segmenter = Segmenter.from_pretrained(clip=str(recommending_clip), proposals=None)
    assert segmenter.config.alpha == 0.3
    sources = segmenter.describe()["value_sources"]
    assert sources["alpha"] == "model" and sources["beta"] == "default"
    given = Segmenter.from_pretrained(clip=str(recommending_clip), proposals=None, alpha=0.7)
    assert given.config.alpha == 0.7 and given.describe()["value_sources"]["alpha"] == "user"


@pytest.mark.parametrize(
    "content", ["{not json", json.dumps({"global-local": {"alphabet": 1}}), "[1, 2]"]
)
def test_a_bad_recommendation_is_a_clear_error(recommending_clip, content):
    (recommending_clip / RECOMMENDED_FILE).write_text(content)
    with pytest.raises(CheckpointFormatError, match="recommended.json|alphabet"):
        Segmenter.from_pretrained(clip=str(recommending_clip), proposals=None)


def _eval(root: Path, out: Path, clip: Path, *extra: str) -> dict:
    args = ["eval", "--no-progress", "--dataset", str(root), "--name", "refcocog", "--split",
            "val", "--proposals", "gt", "--clip", str(clip), "--out", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "config.json").read_text())


def test_eval_prefers_the_model_value_to_the_paper_alpha_and_records_sources(
    tmp_path, tiny_clip_dir, recommending_clip
):
    root = write_refer_dataset(tmp_path / "data", name="refcocog", images=2)
    config = _eval(root, tmp_path / "by-model", recommending_clip, "--limit", "1")
    assert config["params"]["alpha"] == 0.3
    assert config["settings"]["value_sources"]["alpha"] == "model"
    assert config["limit"] == 1
    plain = _eval(root, tmp_path / "plain", tiny_clip_dir, "--method", "local-only")
    assert plain["params"]["alpha"] == 0.0  # local-only pins it
    paper = _eval(root, tmp_path / "paper", tiny_clip_dir)
    assert paper["params"]["alpha"] == 0.85  # RefCOCOg's alpha in the paper, for real CLIPs
    assert paper["settings"]["value_sources"]["alpha"] == "dataset"
    assert paper["limit"] is None

    report = (tmp_path / "paper" / "report.md").read_text()
    assert "| metric | this run |" in report and "ours" not in report
    table = collect_table([tmp_path / "paper", tmp_path / "plain"])
    header, _, *rows = table.splitlines()[:4]
    assert header.startswith("| run | method |")
    assert {row.split("|")[1].strip() for row in rows} == {"paper", "plain"}
    assert {row.split("|")[2].strip() for row in rows} == {"global-local", "local-only"}

