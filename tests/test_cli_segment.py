"""`refseg segment` end to end on a tiny saved CLIP: files written, JSON lines, and every
bad input answered with one line on stderr and a non-zero status."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refseg.cli import main
from refseg.masks import decode_rle


@pytest.fixture
def scene(tmp_path):
    image = np.full((60, 80, 3), 30, dtype=np.uint8)
    image[10:30, 10:30] = (220, 30, 30)
    image[35:55, 45:75] = (30, 30, 220)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    return path


def _run(args, capsys):
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_segment_writes_mask_overlay_and_json(scene, tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "mask.png"
    status, stdout, err = _run(
        [
            "segment",
            scene,
            "the red square",
            "--clip",
            tiny_clip_dir,
            "--out",
            out,
            "--overlay",
            tmp_path / "overlay.png",
            "--json",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert status == 0, err
    record = json.loads(stdout.strip().splitlines()[-1])
    assert record["text"] == "the red square" and record["mask_path"] == str(out)
    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == (60, 80) and int(mask.sum()) == record["area"]
    assert Image.open(tmp_path / "overlay.png").size == (80, 60)
    assert set(record) >= {"phrase", "score", "bbox", "area", "proposals"}
    assert record["proposal_generator"] in ("auto", "superpixel", "sam")


def test_several_expressions_get_numbered_files(scene, tiny_clip_dir, tmp_path, capsys):
    status, stdout, _ = _run(
        ["segment", scene, "red", "blue", "--clip", tiny_clip_dir, "--out", tmp_path / "m.png"],
        capsys,
    )
    assert status == 0
    assert (tmp_path / "m_1.png").is_file() and (tmp_path / "m_2.png").is_file()
    assert len(stdout.strip().splitlines()) == 2


def test_proposals_from_a_json_file(scene, tiny_clip_dir, tmp_path, capsys):
    from refseg.masks import encode_rle

    mask = np.zeros((60, 80), dtype=bool)
    mask[35:55, 45:75] = True
    results = [
        {"image_id": 1, "file_name": "scene.png", "segmentation": encode_rle(mask), "score": 0.9}
    ]
    proposals = tmp_path / "props.json"
    proposals.write_text(json.dumps(results))
    status, _, err = _run(
        [
            "segment",
            scene,
            "the blue one",
            "--clip",
            tiny_clip_dir,
            "--proposals",
            proposals,
            "--out",
            tmp_path / "m.png",
        ],
        capsys,
    )
    assert status == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")) > 0, mask)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "image not found"),
        ("corrupt", "not a valid image"),
        ("empty-text", "empty"),
        ("bad-clip", "no CLIP checkpoint"),
        ("bad-method", "unknown method"),
        ("bad-proposals", "unknown proposal generator"),
        ("bad-alpha", "alpha"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(case, message, scene, tiny_clip_dir, tmp_path, capsys):
    image, text, extra = scene, "the red square", []
    if case == "missing":
        image = tmp_path / "nope.png"
    elif case == "corrupt":
        image = tmp_path / "corrupt.png"
        image.write_bytes(scene.read_bytes()[:50])
    elif case == "empty-text":
        text = "  "
    elif case == "bad-clip":
        extra = ["--clip", tmp_path / "no-such-model"]
    elif case == "bad-method":
        extra = ["--method", "magic"]
    elif case == "bad-proposals":
        extra = ["--proposals", "magic"]
    elif case == "bad-alpha":
        extra = ["--alpha", "3"]
    args = ["segment", image, text, "--out", tmp_path / "m.png"]
    if "--clip" not in extra:
        args += ["--clip", tiny_clip_dir]
    status, _, err = _run(args + extra, capsys)
    assert status == 2
    lines = [line for line in err.strip().splitlines() if not line.startswith("refseg: warning")]
    assert len(lines) == 1 and lines[0].startswith("refseg: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "m.png").exists()


def test_cuda_request_without_cuda_is_a_clear_error(scene, tiny_clip_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, _, err = _run(
        [
            "segment",
            scene,
            "x",
            "--clip",
            tiny_clip_dir,
            "--out",
            tmp_path / "m.png",
            "--device",
            "cuda",
        ],
        capsys,
    )
    assert status == 2 and "CUDA" in err


def test_console_script_reports_errors_without_traceback(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "refseg.cli",
            "segment",
            str(tmp_path / "nope.png"),
            "x",
            "--out",
            str(tmp_path / "m.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().startswith("refseg: error: image not found")
    assert "Traceback" not in completed.stderr


def test_json_without_out_prints_the_mask_and_writes_no_file(
    scene, tiny_clip_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    status, stdout, err = _run(
        ["segment", scene, "the red square", "--clip", tiny_clip_dir, "--json"], capsys
    )
    assert status == 0, err
    assert sorted(tmp_path.iterdir()) == before  # nothing written
    record = json.loads(stdout.strip().splitlines()[-1])
    assert record["mask_path"] is None
    mask = decode_rle(record["segmentation"])
    assert mask.shape == (60, 80) and int(mask.sum()) == record["area"]


def test_without_out_or_json_is_a_user_error(scene, tiny_clip_dir, capsys):
    status, _, err = _run(["segment", scene, "red", "--clip", tiny_clip_dir], capsys)
    assert status == 2 and "give --out" in err
