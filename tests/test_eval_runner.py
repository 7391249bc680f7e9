"""``refseg eval`` / ``refseg merge`` and the runner: files, resume, shards, sweeps, reports.

Everything runs on a tiny refer-layout dataset written in ``tmp_path`` (random images,
rectangles as instances) and a tiny random ViT CLIP (``tests/conftest.py``).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refseg import runtime
from refseg.cli import main
from refseg.clip import LoadedClip
from refseg.data import open_dataset
from refseg.errors import InputError
from refseg.eval.metrics import MetricsResult
from refseg.eval.predictions import read_predictions
from refseg.eval.report import collect_table, find_runs, paper_miou, run_report
from refseg.eval.runner import EvalRunner, PartialLog, Shard, merge_runs
from refseg.masks import decode_rle, encode_rle
from refseg.proposals.ground_truth import GroundTruthProposals
from refseg.segmenter import Segmenter

HEIGHT, WIDTH = 36, 48
SENTENCES = [
    "the cat lying on the scooter seat",
    "a man in a red shirt",
    "left zebra next to the tree",
    "person on the left wearing glasses",
    "the second bowl of soup",
    "they're standing by 2 white cars",
]


def write_refer_dataset(root: Path, name: str = "tinyref", images: int = 6, seed: int = 0) -> Path:
    """A refer-layout split "val": per image 3 rectangles (classes 1-3), the first two
    referred to by 1-2 sentences of kinds "attribute"/"spatial". Returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / name
    (folder / "images").mkdir(parents=True)
    records, annotations, refs = [], [], []
    ann_id = sent_id = 0
    for i in range(images):
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"img{i}.png")
        records.append(
            {"id": 100 + i, "file_name": f"img{i}.png", "height": HEIGHT, "width": WIDTH}
        )
        for j in range(3):
            mask = np.zeros((HEIGHT, WIDTH), bool)
            y, x = rng.integers(0, HEIGHT - 12), rng.integers(0, WIDTH - 14)
            mask[y : y + 8 + 2 * j, x : x + 10 + j] = True
            ann_id += 1
            annotations.append(
                {"id": ann_id, "image_id": 100 + i, "category_id": 1 + j,
                 "segmentation": encode_rle(mask), "area": int(mask.sum()), "iscrowd": 0}
            )
            if j == 2:
                continue
            sentences = []
            for s in range(1 + (i + j) % 2):
                sent_id += 1
                text = SENTENCES[sent_id % len(SENTENCES)]
                sentences.append({"sent_id": sent_id, "raw": text, "sent": text,
                                  "kind": ("attribute", "spatial")[s]})
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": 100 + i, "split": "val",
                         "category_id": 1 + j, "sentences": sentences})
    split_by = "umd" if name == "refcocog" else "unc"
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs))
    instances = {"images": records, "annotations": annotations,
                 "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]}
    (folder / "instances.json").write_text(json.dumps(instances))
    return root


def write_proposal_file(root: Path, name: str = "tinyref", skip: tuple[int, ...] = ()) -> Path:
    """COCO results: every instance of each image (no classes) plus one full-image mask;
    images with an index in ``skip`` get none."""
    instances = json.loads((root / name / "instances.json").read_text())
    results = []
    for ann in instances["annotations"]:
        if ann["image_id"] - 100 not in skip:
            results.append({"image_id": ann["image_id"], "segmentation": ann["segmentation"],
                            "score": 0.9})
    for image in instances["images"]:
        if image["id"] - 100 not in skip:
            full = encode_rle(np.ones((HEIGHT, WIDTH), bool))
            results.append({"image_id": image["id"], "segmentation": full, "score": 0.5})
    path = root / "proposals.json"
    path.write_text(json.dumps(results))
    return path


class WholeSentence:
    """Phrase extractor stand-in (NP(T) = the lowercased sentence): no spaCy to load."""

    pipeline_name = None

    def normalise(self, text: str) -> str:
        return " ".join(text.lower().split())

    def batch(self, texts: list[str]) -> list[str]:
        return [self.normalise(t) for t in texts]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return write_refer_dataset(tmp_path / "data")


@pytest.fixture
def make_segmenter(tiny_clip, tiny_tokenizer):
    def make(proposals=None) -> Segmenter:
        clip = LoadedClip(tiny_clip, tiny_tokenizer, "tiny-vit")
        return Segmenter(clip, proposals, phrases=WholeSentence())

    return make


def gt(root: Path, name: str = "tinyref") -> GroundTruthProposals:
    return GroundTruthProposals(root / name / "instances.json")


def count_set_image(segmenter: Segmenter) -> list[int]:
    """Wrap ``segmenter.set_image``; the returned one-item list counts the calls."""
    calls = [0]
    original = segmenter.set_image

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    segmenter.set_image = counting  # type: ignore[method-assign]
    return calls


@pytest.fixture(autouse=True)
def one_crop_batch(monkeypatch):
    """All of an image's crops in one batch: the counts below tell the whole image (batch 1)
    from the crops (batch > 1); refseg.runtime would otherwise measure chunk sizes."""
    monkeypatch.setattr(runtime, "_settings", runtime.RuntimeSettings(chunk=64))


def count_image_encoder(segmenter: Segmenter) -> list[int]:
    """Count forwards of the ViT's patch embedding (conv1) over the whole image (batch 1)
    and over local crops (batch > 1): ``[whole_image, crop_batches]``."""
    calls = [0, 0]

    def hook(module, inputs, output):
        calls[0 if inputs[0].shape[0] == 1 else 1] += 1

    segmenter.clip.model.visual.conv1.register_forward_hook(hook)
    return calls


def load_run(run_dir: Path) -> tuple[dict, dict]:
    predictions = json.loads((run_dir / "predictions.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {p["sent_id"]: p for p in predictions}, metrics


def run_cli(*args: str) -> int:
    return main(["eval", "--no-progress", *args])


# ------------------------------------------------------------------------------ CLI
def test_run_writes_four_files_and_metrics_equal_refseg_score(tmp_path, tiny_clip_dir):
    root = write_refer_dataset(tmp_path / "data", name="refcocog")
    out = tmp_path / "run"
    common = ["--dataset", str(root), "--name", "refcocog", "--split", "val"]
    model = ["--proposals", "gt", "--clip", str(tiny_clip_dir)]
    assert run_cli(*common, *model, "--out", str(out)) == 0
    for name in ("predictions.json", "metrics.json", "config.json", "report.md"):
        assert (out / name).is_file(), name
    assert main(["score", *common, "--predictions", str(out / "predictions.json"),
                 "--out", str(tmp_path / "scored.json")]) == 0
    ours = json.loads((out / "metrics.json").read_text())
    assert ours == json.loads((tmp_path / "scored.json").read_text())
    assert ours["n_expressions"] == 18 and set(ours["groups"]) == {"attribute", "spatial"}
    assert "mc-acc" in ours  # gt proposals carry classes
    config = json.loads((out / "config.json").read_text())
    assert config["params"]["alpha"] == 0.85  # RefCOCOg's alpha (paper Sec. 4.1)
    assert config["settings"]["split_by"] == "umd" and config["shard"] == "0/1"
    assert {"refseg", "torch", "python", "git_commit"} <= set(config["environment"])
    record = json.loads((out / "predictions.json").read_text())[0]
    assert {"sent_id", "segmentation", "score", "ref_id", "proposal", "category_id"} <= set(record)
    assert isinstance(record["segmentation"]["counts"], str)


def test_limit_then_full_run_resumes_without_recomputing(tmp_path, data_root, tiny_clip_dir,
                                                         monkeypatch):
    calls = [0]
    original = Segmenter.set_image

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "set_image", counting)
    common = ["--dataset", str(data_root), "--name", "tinyref", "--split", "val",
              "--proposals", "gt", "--clip", str(tiny_clip_dir)]
    assert run_cli(*common, "--out", str(tmp_path / "a"), "--limit", "2") == 0
    assert calls[0] == 2
    assert len(read_predictions(tmp_path / "a" / "predictions.json")) == 6  # 2 images' worth
    assert run_cli(*common, "--out", str(tmp_path / "a")) == 0
    assert calls[0] == 6  # only the 4 missing images
    assert run_cli(*common, "--out", str(tmp_path / "b")) == 0
    assert load_run(tmp_path / "a") == load_run(tmp_path / "b")


def test_resume_into_other_configuration_is_refused(tmp_path, data_root, tiny_clip_dir, capsys):
    common = ["--dataset", str(data_root), "--name", "tinyref", "--split", "val",
              "--proposals", "gt", "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "r"),
              "--limit", "1"]
    assert run_cli(*common, "--alpha", "0.5") == 0
    assert run_cli(*common, "--alpha", "0.6") == 2
    error = capsys.readouterr().err
    assert "another configuration" in error and "params.alpha: 0.5 there, 0.6 now" in error


def test_resume_with_another_precision_is_refused(tmp_path, data_root, tiny_clip_dir, capsys):
    common = ["--dataset", str(data_root), "--name", "tinyref", "--split", "val",
              "--proposals", "gt", "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "r"),
              "--limit", "1"]
    with runtime.overridden():  # the CLI changes process-wide settings; restore them after
        assert run_cli(*common) == 0
        assert run_cli(*common, "--precision", "bf16") == 2
    error = capsys.readouterr().err
    assert "another configuration" in error and "precision: 'fp32' there, 'bf16' now" in error
    settings = json.loads((tmp_path / "r" / "config.json").read_text())["settings"]
    # auto (the default) chose torch for both towers: ONNX Runtime counts as not installed here
    assert (settings["precision"], settings["backend"]) == ("fp32", "auto: torch")


# -------------------------------------------------------------------- resume (library)
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, data_root, make_segmenter):
    dataset = open_dataset(data_root, "tinyref", "val")
    segmenter = make_segmenter(gt(data_root))
    calls = count_set_image(segmenter)
    seen = []

    def stop_after_two(outcome):
        seen.append(outcome.index)
        if len(seen) == 2:
            raise KeyboardInterrupt

    runner = EvalRunner(segmenter, dataset, tmp_path / "r", progress=False)
    with pytest.raises(KeyboardInterrupt):
        runner.run(on_image=stop_after_two)
    assert calls[0] == 2 and not (tmp_path / "r" / "predictions.json").exists()
    log = tmp_path / "r" / "partial" / "shard-0-of-1.jsonl"
    with log.open("ab") as f:  # an interruption in the middle of writing image 2
        f.write(b'{"index": 2, "image_id": 10')
    summary = runner.run()
    assert calls[0] == 6 and summary.images_computed == 4 and summary.images == 6
    assert len(log.read_text().splitlines()) == 6  # torn line cut off, 4 appended

    fresh = EvalRunner(make_segmenter(gt(data_root)), dataset, tmp_path / "u", progress=False)
    fresh.run()
    assert load_run(tmp_path / "r") == load_run(tmp_path / "u")


def test_corrupt_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "shard-0-of-1.jsonl"
    path.write_bytes(b'{"index": 0, "garbage\n{"index": 1}\n')
    with pytest.raises(InputError, match="line 1 is corrupt"):
        PartialLog(path).load()


def test_second_writer_on_one_run_is_refused(tmp_path):
    log = PartialLog(tmp_path / "partial" / "shard-0-of-1.jsonl")
    with log.open(), pytest.raises(InputError, match="another refseg eval"):
        with PartialLog(log.path).open():
            pass


# ----------------------------------------------------------------------------- shards
def test_two_shards_merged_equal_one_run(tmp_path, data_root, make_segmenter, capsys):
    dataset = open_dataset(data_root, "tinyref", "val")
    segmenter = make_segmenter(gt(data_root))
    EvalRunner(segmenter, dataset, tmp_path / "single", progress=False).run()
    for i in (0, 1):
        summary = EvalRunner(segmenter, dataset, tmp_path / f"s{i}", shard=Shard(i, 2),
                             progress=False).run()
        assert summary.images == 3
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s0"),
                 "--out", str(tmp_path / "merged")]) == 0
    assert load_run(tmp_path / "merged") == load_run(tmp_path / "single")
    assert (tmp_path / "merged" / "report.md").is_file()
    if importlib.util.find_spec("matplotlib"):  # the HTML report (no dataset recorded here)
        page = (tmp_path / "merged" / "report.html").read_text()
        assert "Gallery not shown: config.json does not record the dataset" in page

    with pytest.raises(InputError, match="shards missing: 1/2"):
        merge_runs([tmp_path / "s0"], tmp_path / "m2")
    with pytest.raises(InputError, match="given twice"):
        merge_runs([tmp_path / "s0", tmp_path / "s0"], tmp_path / "m3")
    with pytest.raises(InputError, match="is one of the shards"):
        merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "s0")


def test_merge_refuses_shards_of_different_configurations(tmp_path, data_root, make_segmenter):
    dataset = open_dataset(data_root, "tinyref", "val")
    segmenter = make_segmenter(gt(data_root))
    EvalRunner(segmenter, dataset, tmp_path / "s0", shard=Shard(0, 2), progress=False).run()
    EvalRunner(segmenter, dataset, tmp_path / "s1", shard=Shard(1, 2), params={"alpha": 0.5},
               progress=False).run()
    with pytest.raises(InputError, match="params.alpha"):
        merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")


def test_merge_never_replaces_another_configurations_merge(tmp_path, data_root, make_segmenter):
    dataset = open_dataset(data_root, "tinyref", "val")
    segmenter = make_segmenter(gt(data_root))
    for tag, params in (("a", {}), ("b", {"alpha": 0.5})):
        for i in (0, 1):
            EvalRunner(segmenter, dataset, tmp_path / f"{tag}{i}", shard=Shard(i, 2),
                       params=params, progress=False).run()
    merge_runs([tmp_path / "a0", tmp_path / "a1"], tmp_path / "merged")
    before = (tmp_path / "merged" / "metrics.json").read_bytes()
    merge_runs([tmp_path / "a0", tmp_path / "a1"], tmp_path / "merged")  # same config: fine
    with pytest.raises(InputError, match="another configuration.*params.alpha"):
        merge_runs([tmp_path / "b0", tmp_path / "b1"], tmp_path / "merged")
    assert (tmp_path / "merged" / "metrics.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds files but no merged run"):
        merge_runs([tmp_path / "a0", tmp_path / "a1"], tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_shard_slices_cover_every_image_once():
    total = 11
    slices = [list(Shard(i, 4).indices(total)) for i in range(4)]
    assert sorted(i for s in slices for i in s) == list(range(total))
    assert [len(s) for s in slices] == [2, 3, 3, 3]
    for bad in ("3/2", "a/b", "1", "-1/2"):
        with pytest.raises(InputError, match="bad shard"):
            Shard.parse(bad)


# --------------------------------------------------------------- proposals and metrics
def test_gt_proposals_give_mc_acc_as_counted_from_predictions(tmp_path, data_root,
                                                               make_segmenter):
    dataset = open_dataset(data_root, "tinyref", "val")
    summary = EvalRunner(make_segmenter(gt(data_root)), dataset, tmp_path / "r",
                         progress=False).run()
    targets = {e.sent_id: r.category_id for image in dataset for r, e in image.expressions()}
    predictions, metrics = load_run(tmp_path / "r")
    correct = sum(p["category_id"] == targets[s] for s, p in predictions.items())
    assert metrics["mc-acc"] == pytest.approx(100 * correct / len(targets))
    assert summary.metrics.mc_acc == metrics["mc-acc"] and metrics["cc-oIoU"] is not None


def test_image_without_proposals_scores_iou_zero_and_is_counted(tmp_path, data_root,
                                                                 make_segmenter):
    from refseg.proposals.from_file import FileProposals

    dataset = open_dataset(data_root, "tinyref", "val")
    proposals = FileProposals(write_proposal_file(data_root, skip=(1,)))
    summary = EvalRunner(make_segmenter(proposals), dataset, tmp_path / "r", progress=False).run()
    skipped = [e.sent_id for _, e in dataset[1].expressions()]
    predictions, metrics = load_run(tmp_path / "r")
    assert summary.no_proposal_images == 1
    assert metrics["n_no_proposals"] == len(skipped) == 3 and metrics["n_missing"] == 0
    assert "mc-acc" not in metrics  # file proposals carry no classes
    ious = []
    for image in dataset:
        for referent, expression in image.expressions():
            mask = decode_rle(predictions[expression.sent_id]["segmentation"])
            inter = np.logical_and(mask, referent.mask).sum()
            ious.append(inter / np.logical_or(mask, referent.mask).sum())
            if expression.sent_id in skipped:
                assert predictions[expression.sent_id]["proposal"] is None and not mask.any()
    assert metrics["mIoU"] == pytest.approx(100 * np.mean(ious))


def test_reference_structure_chooses_the_same_masks_with_more_set_image(tmp_path, data_root,
                                                                          make_segmenter):
    dataset = open_dataset(data_root, "tinyref", "val")
    segmenter = make_segmenter(gt(data_root))
    calls = count_set_image(segmenter)
    encoder = count_image_encoder(segmenter)
    EvalRunner(segmenter, dataset, tmp_path / "cached", progress=False).run()
    assert calls[0] == len(dataset) == 6 and encoder == [6, 6]
    EvalRunner(segmenter, dataset, tmp_path / "ref", structure="reference", progress=False).run()
    # every referent recomputes the whole image's features and its crops
    assert calls[0] - 6 == sum(len(image.referents) for image in dataset) == 12
    assert encoder == [6 + 12, 6 + 12]
    (cached, cached_metrics), (ref, ref_metrics) = load_run(tmp_path / "cached"), load_run(
        tmp_path / "ref"
    )
    assert cached_metrics == ref_metrics and cached.keys() == ref.keys()
    for sent_id, record in cached.items():  # scores differ in float rounding only (batching)
        assert ref[sent_id]["score"] == pytest.approx(record["score"], abs=1e-5)
        for theirs, ours in zip(ref[sent_id]["top"], record["top"], strict=True):
            assert theirs["score"] == pytest.approx(ours["score"], abs=1e-5)
            assert {**theirs, "score": 0} == {**ours, "score": 0}
        assert {**ref[sent_id], "score": 0, "top": 0} == {**record, "score": 0, "top": 0}
    with pytest.raises(InputError, match="unknown structure"):
        EvalRunner(segmenter, dataset, tmp_path / "x", structure="fast")


# ----------------------------------------------------------------------------- sweeps
def test_alpha_beta_sweep_one_row_per_point_one_image_encoding(tmp_path, data_root,
                                                                make_segmenter):
    dataset = open_dataset(data_root, "tinyref", "val")
    single = make_segmenter(gt(data_root))
    calls = count_image_encoder(single)
    EvalRunner(single, dataset, tmp_path / "one", params={"alpha": 0.85, "beta": 0.3},
               progress=False).run()
    single_calls = list(calls)

    swept = make_segmenter(gt(data_root))
    points = [{"alpha": a, "beta": b} for a in (0.5, 0.85, 1.0) for b in (0.3, 0.5)]
    summary = EvalRunner(swept, dataset, tmp_path / "sweep", sweep=points, progress=False).run()
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [(r["alpha"], r["beta"]) for r in rows] == [(p["alpha"], p["beta"]) for p in points]
    assert rows == summary.sweep
    # every point costs scoring only: one trunk and one crop batch per image, as one run
    sweep_calls = [calls[0] - single_calls[0], calls[1] - single_calls[1]]
    assert sweep_calls == single_calls == [6, 6]
    _, one = load_run(tmp_path / "one")
    assert {k: v for k, v in rows[2].items() if k not in ("alpha", "beta")} == one
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert table.count("\n| ") == 1 + len(points)  # header + one line per point


def test_k_sweep_embeds_each_image_once(tmp_path, data_root, make_segmenter):
    dataset = open_dataset(data_root, "tinyref", "val")
    segmenter = make_segmenter(gt(data_root))
    calls = count_image_encoder(segmenter)
    points = [{"alpha": a, "k": k} for a in (0.5, 1.0) for k in (1, 2, 3)]
    summary = EvalRunner(segmenter, dataset, tmp_path / "k", sweep=points, progress=False).run()
    # ViT token states are cached per depth: one embedding per image for all k
    assert len(summary.sweep) == 6 and calls == [6, 6]


# ---------------------------------------------------------------------------- reports
def test_report_puts_the_paper_number_beside_ours(tmp_path):
    assert paper_miou("refcoco", "unc", "val", "ViT-B/32") == 26.20
    assert paper_miou("RefCOCOg", "google", "val", "vit-b-32") == 33.61
    assert paper_miou("refcoco", "unc", "val", "RN50") is None
    assert paper_miou("refcocog", "google", "test", "ViT-B/32") is None
    metrics = MetricsResult(25.0, 27.5, {0.5: 30.0}, n_expressions=10, n_missing=0)
    config = {"settings": {"dataset": "refcoco", "split": "val", "split_by": "unc",
                           "clip": "ViT-B/32", "proposals": "sam", "method": "global-local"},
              "params": {"alpha": 0.95}, "shard": "0/1"}
    text = run_report(config, metrics, images=4)
    assert "| mIoU | 27.50 | 26.20 |" in text and "FreeSOLO" in text
    for i, clip in enumerate(("ViT-B/32", "RN50")):
        run = tmp_path / "out" / f"run{i}"
        run.mkdir(parents=True)
        settings = {**config["settings"], "clip": clip}
        (run / "config.json").write_text(json.dumps({**config, "settings": settings}))
        (run / "metrics.json").write_text(json.dumps(metrics.to_dict()))
    shard = tmp_path / "out" / "shard"
    shard.mkdir()
    (shard / "config.json").write_text(json.dumps({**config, "shard": "0/2"}))
    (shard / "metrics.json").write_text(json.dumps(metrics.to_dict()))
    runs = find_runs([tmp_path / "out"])
    assert [r.name for r in runs] == ["run0", "run1"]  # the unmerged shard is left out
    table = collect_table(runs)
    assert "| 27.50 | 26.20 | +1.30 |" in table and "| 27.50 | — | — |" in table


def test_cli_sweep_writes_one_row_per_grid_point(tmp_path, data_root, tiny_clip_dir):
    out = tmp_path / "s"
    assert run_cli("--dataset", str(data_root), "--name", "tinyref", "--split", "val",
                   "--proposals", "gt", "--clip", str(tiny_clip_dir), "--out", str(out),
                   "--limit", "2", "--sweep", "alpha=0.5,1", "beta=0.3,0.5,0.7") == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["alpha"], r["beta"]) for r in rows] == [
        (a, b) for a in (0.5, 1.0) for b in (0.3, 0.5, 0.7)
    ]
    assert all(r["n_expressions"] == 6 for r in rows)
    assert "| alpha | beta | oIoU |" in (out / "sweep.md").read_text()
