"""``report.html``: written by ``refseg eval``, and by ``refseg report`` for one or several runs.

A small ShapesRef (96-pixel scenes) is generated once; the shipped ``shapes-vit`` CLIP scores
its ground-truth proposals, so some expressions are right (IoU 1) and some wrong, and two
values of alpha disagree on some. Every expected number is recomputed here from the
prediction masks and the dataset's ground truth, not read from the report's own data.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from refseg.cli import main
from refseg.data import open_dataset
from refseg.data.shapes import ShapesConfig, write_shapesref
from refseg.eval.predictions import prediction_mask, read_predictions
from refseg.eval.report import _fmt
from refseg.eval.run_data import load_run
from refseg.eval.runner import EvalRunner
from refseg.proposals.ground_truth import GroundTruthProposals
from refseg.segmenter import Segmenter

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ HTML reading
class Node:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if child.tag == tag and (cls is None or cls in child.attrs.get("class", "").split()):
                found.append(child)
            found += child.find_all(tag, cls)
        return found


class Tree(HTMLParser):
    """A minimal DOM: nodes with attributes, children and their whole text."""

    VOID = {"img", "meta", "br", "link", "input", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.root = Node("document", {})
        self.stack = [self.root]
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag not in self.VOID:
            while self.stack[-1].tag != tag:
                self.stack.pop()
            self.stack.pop()

    def handle_data(self, data):
        for node in self.stack:
            node.parts.append(data)


def read_html(path: Path) -> tuple[str, Node]:
    text = path.read_text(encoding="utf-8")
    return text, Tree(text).root


# ------------------------------------------------------------------------------ runs
def eval_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--no-progress", "--dataset", str(root), "--name", "shapesref", "--split",
            "train", "--proposals", "gt", "--clip", "shapes-vit", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapesref(root, seed=0, images=12, config=ShapesConfig(image_size=96))
    return root


@pytest.fixture(scope="module")
def run_a(shapes_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "a"
    args = eval_args(shapes_root, out, "--limit", "4", "--alpha", "0.5", "--sweep",
                     "alpha=0.5,1.0", "beta=0.3,0.7")
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def run_b(shapes_root, tmp_path_factory) -> Path:
    """Like ``run_a`` with alpha 1, through the library (which writes no HTML: faster)."""
    out = tmp_path_factory.mktemp("runs") / "b"
    dataset = open_dataset(shapes_root, "shapesref", "train")
    proposals = GroundTruthProposals(shapes_root / "shapesref" / "instances.json")
    segmenter = Segmenter.from_pretrained(clip="shapes-vit", proposals=proposals, device="cpu")
    settings = {"dataset_root": str(shapes_root), "clip": "shapes-vit", "proposals": "gt"}
    EvalRunner(segmenter, dataset, out, settings=settings, params={"alpha": 1.0}, limit=4,
               progress=False).run()
    return out


def true_ious(run_dir: Path, root: Path) -> dict[int, float]:
    """IoU per expression from the predicted masks and the dataset's ground truth."""
    predictions = read_predictions(run_dir / "predictions.json")
    ious = {}
    for item in open_dataset(root, "shapesref", "train").expressions():
        record = predictions.get(item.expression.sent_id)
        if record is not None:
            mask, target = prediction_mask(record), item.referent.mask
            ious[item.expression.sent_id] = (mask & target).sum() / (mask | target).sum()
    return ious


def gallery_items(page: Node) -> dict[str, list[Node]]:
    return {section.attrs["data-section"]: section.find_all("figure", "gallery-item")
            for section in page.find_all("div", "gallery")}


def check_gallery_labels(page: Node, ious: dict[int, float], n: int) -> None:
    sections = gallery_items(page)
    total = len(ious)
    assert [len(sections[s]) for s in ("worst", "best", "random")] == [
        min(n, total), min(n, max(0, total - n)), min(n, max(0, total - 2 * n))]
    for items in sections.values():
        for item in items:
            iou = ious[int(item.attrs["data-sent-id"])]
            assert float(item.attrs["data-iou"]) == pytest.approx(iou, abs=1e-6)
            assert item.find_all("p", "iou")[0].text == f"IoU {iou:.2f}"
    ordered = sorted(ious.values())
    assert sorted(ious[int(i.attrs["data-sent-id"])] for i in sections["worst"]) == ordered[:n]
    assert sorted(ious[int(i.attrs["data-sent-id"])] for i in sections["best"]) == ordered[-n:]


# ----------------------------------------------------------------------------- tests
def test_eval_writes_a_self_contained_report(run_a, shapes_root):
    html, page = read_html(run_a / "report.html")
    sources = [img.attrs["src"] for img in page.find_all("img")]
    assert sources and all(src.startswith("data:image/") for src in sources)
    assert "<script" not in html and "<link" not in html and "http://" not in html
    assert "https://" not in html and "url(" not in html
    figures = sorted(p.name for p in run_a.glob("report-*.png"))
    assert figures == ["report-iou-histogram.png", "report-kinds.png", "report-precision.png",
                       "report-sweep.png"]
    for name in figures:
        data = (run_a / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in sources, name

    metrics = json.loads((run_a / "metrics.json").read_text())
    rows = {row.attrs["data-metric"]: row for row in page.find_all("tr")
            if "data-metric" in row.attrs}
    assert set(rows) == set(metrics) - {"groups"}
    for key, value in metrics.items():
        if key != "groups":
            assert rows[key].find_all("td")[0].text == _fmt(value), key
    settings = {row.attrs["data-setting"]: row.find_all("td")[0].text
                for row in page.find_all("tr") if "data-setting" in row.attrs}
    assert settings["CLIP"] == "shapes-vit" and settings["alpha"] == "0.50"
    assert settings["split"] == "train" and settings["limit"] == "4"

    ious = true_ious(run_a, shapes_root)
    assert len(ious) == metrics["n_expressions"] > 2 * 8
    predictions = read_predictions(run_a / "predictions.json")
    for sent_id, iou in ious.items():  # the runner's recorded IoU is the true one
        assert predictions[sent_id]["iou"] == pytest.approx(iou, abs=1e-6)
    check_gallery_labels(page, ious, 8)  # refseg eval's default gallery
    for item in gallery_items(page)["worst"]:  # GT proposals: the top 3 with scores, best first
        record = predictions[int(item.attrs["data-sent-id"])]
        entries = item.find_all("li")
        assert 1 <= len(entries) <= 3 and f"proposal {record['proposal']}:" in entries[0].text
        assert "chosen" in entries[0].attrs.get("class", "")
        assert f"score {record['score']:.3f}" in entries[0].text
        assert item.find_all("p", "phrase")[0].text == f"phrase: {record['phrase']}"


def test_two_runs_list_exactly_the_expressions_they_disagree_on(run_a, run_b, shapes_root,
                                                                 tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["report", str(run_a), str(run_b), "--out", str(out)]) == 0
    ious_a, ious_b = true_ious(run_a, shapes_root), true_ious(run_b, shapes_root)
    a_only = {s for s in ious_a if ious_a[s] >= 0.5 and ious_b[s] < 0.5}
    b_only = {s for s in ious_a if ious_b[s] >= 0.5 and ious_a[s] < 0.5}
    assert a_only or b_only, "the two alphas should disagree somewhere"
    html, page = read_html(out / "report.html")
    tables = {(t.attrs["data-right"][0], t.attrs["data-wrong"][0]): t
              for t in page.find_all("table", "disagreements")}
    listed = {key: {int(row.attrs["data-sent-id"]) for row in table.find_all("tr")
                    if "data-sent-id" in row.attrs} for key, table in tables.items()}
    assert listed.get(("A", "B"), set()) == a_only
    assert listed.get(("B", "A"), set()) == b_only
    assert f"A: a right, B: b wrong: {len(a_only)}" in html
    assert "IoU is at least 0.5" in html
    for pair in page.find_all("figure", "pair-item"):  # pictures only of disagreements
        assert int(pair.attrs["data-sent-id"]) in a_only | b_only
    differing = [row.attrs["data-setting"] for row in page.find_all("tr", "differs")]
    assert "alpha" in differing and "CLIP" not in differing
    assert f"a right, b wrong: {len(a_only)}" in capsys.readouterr().out
    assert all(img.attrs["src"].startswith("data:") for img in page.find_all("img"))


def test_report_without_the_dataset_renders_and_says_why(run_a, tmp_path):
    run = shutil.copytree(run_a, tmp_path / "moved", ignore=shutil.ignore_patterns("report*"))
    config = json.loads((run / "config.json").read_text())
    config["settings"]["dataset_root"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(config))
    assert main(["report", str(run)]) == 0
    html, page = read_html(run / "report.html")
    assert not page.find_all("figure", "gallery-item")
    assert "Gallery not shown: the dataset recorded in config.json cannot be opened" in html
    assert page.find_all("tr", None) and (run / "report-precision.png").is_file()


def test_older_run_without_the_new_keys_still_reports(run_a, shapes_root, tmp_path):
    run = shutil.copytree(run_a, tmp_path / "old", ignore=shutil.ignore_patterns("report*"))
    records = json.loads((run / "predictions.json").read_text())
    for record in records:
        for key in ("iou", "phrase", "top"):
            del record[key]
    (run / "predictions.json").write_text(json.dumps(records))
    config = json.loads((run / "config.json").read_text())
    for key in ("environment", "params", "command", "started", "num_images"):
        config.pop(key)
    settings = config["settings"]
    config["settings"] = {k: settings[k] for k in ("dataset", "split", "split_by",
                                                   "dataset_root")}
    (run / "config.json").write_text(json.dumps(config))
    ious = true_ious(run_a, shapes_root)
    old = load_run(run)  # IoUs from the partial log
    assert old.iou_source == "partial logs"
    assert {s: r.iou for s, r in old.results.items()} == pytest.approx(ious, abs=1e-9)
    shutil.rmtree(run / "partial")  # IoUs from the dataset
    assert main(["report", str(run), "--gallery", "3"]) == 0
    html, page = read_html(run / "report.html")
    assert "IoUs from ground truth of the dataset" in html
    assert "do not record the top proposals" in html
    check_gallery_labels(page, ious, 3)


def test_runs_of_different_splits_are_refused(run_a, tmp_path, capsys):
    run = shutil.copytree(run_a, tmp_path / "val")
    config = json.loads((run / "config.json").read_text())
    config["settings"]["split"] = "val"
    (run / "config.json").write_text(json.dumps(config))
    assert main(["report", str(run_a), str(run)]) == 2
    assert "compare runs of one split" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_eval_without_matplotlib_skips_only_the_html_report(shapes_root, tmp_path,
                                                            monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "run"
    assert main(eval_args(shapes_root, out, "--limit", "1")) == 0
    printed = capsys.readouterr().out
    assert "HTML report skipped: the HTML report needs matplotlib" in printed
    assert "refseg[report]" in printed
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
    assert not (out / "report.html").exists()
    assert main(["report", str(out)]) == 2
    assert "needs matplotlib: pip install 'refseg[report]'" in capsys.readouterr().err


# --------------------------------------------------------------------------- browser
@pytest.mark.browser
def test_report_opens_offline_in_chromium_without_errors(run_a):
    """report.html from disk in headless Chromium with every network request refused: no
    failed request, no console error, every image decoded. Screenshot:
    ``test-artifacts/report_page.png``."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install -y chromium")
    failed, errors, remote = [], [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_offline(True)

            def refuse(route):
                remote.append(route.request.url)
                route.abort()

            context.route("http*://**", refuse)
            page = context.new_page()
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto((run_a / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                ".length"
            )
            count = page.evaluate("document.images.length")
            artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "report_page.png"), full_page=True)
        finally:
            browser.close()
    assert failed == [] and errors == [] and remote == []
    assert broken == 0 and count == 4 + 3 * 8  # figures + gallery


# ----------------------------------------------------------------------------- plots
def test_sweep_figure_has_lines_for_one_key_and_maps_for_two_or_three():
    from refseg.eval.plots import kind_bars, sweep_plot

    def rows(**grid):
        keys = list(grid)
        points = [dict(zip(keys, values, strict=True))
                  for values in np.array(np.meshgrid(*grid.values())).reshape(len(keys), -1).T]
        return [{**p, "mIoU": 10 * sum(p.values()), "oIoU": 5.0} for p in points]

    one = sweep_plot(rows(k=[1, 2, 3]), ["k"])
    assert len(one.axes) == 1 and len(one.axes[0].lines) == 2  # mIoU and oIoU over k
    two = sweep_plot(rows(alpha=[0.5, 1.0], beta=[0.3, 0.5, 0.7]), ["alpha", "beta"])
    maps = [a for a in two.axes if a.images]
    assert len(maps) == 2 and maps[0].images[0].get_array().shape == (3, 2)  # beta x alpha
    three = sweep_plot(rows(alpha=[0.5, 1.0], beta=[0.3, 0.5], k=[1, 2]), ["alpha", "beta", "k"])
    assert len([a for a in three.axes if a.images]) == 4  # one row of two maps per k
    assert sweep_plot([{"alpha": "x", "mIoU": 1.0}], ["alpha"]) is None
    assert kind_bars([("a", {"mIoU": 1.0})]) is None  # no expression kinds
