"""``report.html``: one self-contained page per run (or per set of runs side by side).

The page holds the settings, the metrics beside the paper's where known, the figures
(:mod:`refseg.eval.plots`), a gallery of the worst, best and random predictions
(:mod:`refseg.eval.gallery`) and, for several runs, the expressions on which they disagree
(:mod:`refseg.eval.compare`). Every image is embedded as a ``data:`` URI and there is no
script and no external resource, so the file opens from disk, offline, anywhere. The
figures are also written beside it as PNG files (``report-*.png``), for papers and READMEs.

    from refseg.eval.html_report import write_report
    write_report(["runs/a"])                        # runs/a/report.html
    write_report(["runs/a", "runs/b"], "runs/a-vs-b")
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refseg.errors import DatasetError, InputError
from refseg.eval.compare import Disagreement, check_same_split, disagreement
from refseg.eval.report import PAPER_SETTING, _fmt, paper_miou
from refseg.eval.run_data import (
    RIGHT_IOU,
    ExpressionResult,
    RunData,
    expression_items,
    fill_ious_from_dataset,
    load_run,
    open_run_dataset,
)
from refseg.fileio import write_atomic

REPORT_FILE = "report.html"
MATPLOTLIB_HINT = "pip install 'refseg[report]'"


def require_matplotlib() -> None:
    """Raise :class:`InputError` with the install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"the HTML report needs matplotlib: {MATPLOTLIB_HINT}") from None


@dataclass(frozen=True)
class ReportOptions:
    """What goes in the page.

    Attributes:
        gallery: predictions shown per gallery section (worst, best, random).
        pairs: side-by-side pictures per direction of a comparison (all are listed).
        seed: seed of the gallery's random sample.
    """

    gallery: int = 8
    pairs: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.gallery < 0 or self.pairs < 0:
            raise InputError(
                f"--gallery and --pairs must be >= 0; got {self.gallery} and {self.pairs}"
            )


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote."""

    path: Path
    figures: list[Path]
    gallery_items: int
    gallery_note: str | None
    disagreements: list[Disagreement] = field(default_factory=list)


@dataclass
class _Figure:
    file_name: str
    caption: str
    png: bytes


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    options: ReportOptions = ReportOptions(),
    dataset: Any = None,
) -> ReportSummary:
    """Write ``report.html`` and its figures for one run, or for several side by side.

    Args:
        run_dirs: finished run directories (several: the same dataset split).
        out_dir: where to write (default: the run directory; for several, ``compare/``
            beside the first).
        options: gallery and comparison sizes.
        dataset: the evaluated split, if the caller has it open (default: opened from the
            first run's config.json; without it the page has no gallery and says why).

    Raises:
        InputError: matplotlib is missing, a directory is not a finished run, or the runs
            are on different splits.
    """
    require_matplotlib()
    if not run_dirs:
        raise InputError("name at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    check_same_split(runs)
    out = Path(out_dir) if out_dir else (
        runs[0].run_dir if len(runs) == 1 else runs[0].run_dir.resolve().parent / "compare"
    )
    labels = _labels(runs)
    items, dataset_note = _expression_items(runs, dataset)
    figures = _figures(runs, labels)
    body = [f"<div class='columns'>{_settings_section(runs, labels)}"
            f"{_metrics_section(runs, labels)}</div>", _figures_section(figures)]
    gallery_items, gallery_note = 0, dataset_note
    found: list[Disagreement] = []
    if len(runs) == 1:
        section, gallery_items, gallery_note = _gallery_section(runs[0], items, dataset_note,
                                                               options)
        body.append(section)
    else:
        found = [disagreement(runs[0], other) for other in runs[1:]]
        body.append(_compare_section(found, labels, items, dataset_note, options))
    notes = [f"{labels[i]}: IoUs from {run.iou_source}" for i, run in enumerate(runs)
             if run.iou_source and run.iou_source != "predictions.json"]
    title = _title(runs)
    page = _page(title, labels, runs, body, notes)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for figure in figures:
        write_atomic(out / figure.file_name, figure.png)
        paths.append(out / figure.file_name)
    write_atomic(out / REPORT_FILE, page.encode("utf-8"))
    return ReportSummary(out / REPORT_FILE, paths, gallery_items, gallery_note, found)


# --------------------------------------------------------------------------- helpers
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _labels(runs: Sequence[RunData]) -> list[str]:
    if len(runs) == 1:
        return [runs[0].name]
    return [f"{chr(ord('A') + i)}: {run.name}" if i < 26 else f"{i}: {run.name}"
            for i, run in enumerate(runs)]


def _short(label: str) -> str:
    return label.split(":", 1)[0]


def _title(runs: Sequence[RunData]) -> str:
    name, split_by, split = runs[0].split_key
    where = f"{runs[0].settings.get('dataset') or name} {split}" + (
        f" ({split_by})" if split_by else "")
    return f"refseg report: {where}" + (f", {len(runs)} runs" if len(runs) > 1 else "")


def _expression_items(runs: Sequence[RunData], dataset: Any) -> tuple[dict[int, Any], str | None]:
    """sent_id -> ExpressionItem of the evaluated split, and why not when it is unavailable.
    Fills IoUs the run files lack from the ground truth."""
    note = None
    if dataset is None:
        for run in runs:
            dataset, note = open_run_dataset(run.config)
            if dataset is not None:
                note = None
                break
    if dataset is None:
        return {}, note
    wanted = {s for run in runs for s in run.results}
    items = expression_items(dataset, wanted)
    for run in runs:
        fill_ious_from_dataset(run, items)
    return items, None


# -------------------------------------------------------------------------- settings
def settings_rows(run: RunData) -> list[tuple[str, Any]]:
    """``(label, value)`` rows describing a run; keys missing from older runs are skipped,
    keys this code does not know are listed after the known ones."""
    config, settings = run.config, run.settings
    params = config.get("params") or {}
    environment = config.get("environment") or {}
    rows: list[tuple[str, Any]] = []
    used: set[str] = set()

    def add(label: str, value: Any, *keys: str) -> None:
        used.update(keys)
        if value is not None and value != "":
            rows.append((label, value))

    add("system", settings.get("system") or settings.get("method"), "system", "method")
    if settings.get("system") and settings.get("method"):
        add("method", settings.get("method"), "method")
    add("CLIP", settings.get("clip"), "clip")
    add("proposals", settings.get("proposals"), "proposals")
    add("preset", settings.get("preset"), "preset")
    add("pixels", settings.get("pixels"), "pixels")
    add("max pixels", settings.get("max_pixels"), "max_pixels")
    for key in ("alpha", "beta", "k", "normalization"):
        add(key, params.get(key))
    add("dataset", settings.get("dataset"), "dataset")
    add("split by", settings.get("split_by"), "split_by")
    add("split", settings.get("split"), "split")
    add("limit", config.get("limit") if config.get("limit") else "all images")
    add("images", config.get("num_images"))
    add("expressions", run.metrics.get("n_expressions"))
    merged = config.get("merged_from")
    add("shard", f"merged from {len(merged)} shards" if merged else config.get("shard"))
    add("sweep", f"{len(run.sweep)} points" if run.sweep else None)
    add("noun phrases", settings.get("phrases") or "whole sentence (no spaCy)", "phrases")
    add("commit", environment.get("git_commit"))
    add("refseg", environment.get("refseg"))
    add("torch", environment.get("torch"))
    add("device", config.get("device"))
    add("started", config.get("started"))
    command = config.get("command")
    add("command", " ".join(map(str, command)) if isinstance(command, list) else command)
    for key, value in settings.items():
        if key not in used and value is not None and not isinstance(value, dict | list):
            add(key.replace("_", " "), value, key)
    return rows


def _settings_section(runs: Sequence[RunData], labels: Sequence[str]) -> str:
    per_run = [dict(settings_rows(run)) for run in runs]
    keys = list(dict.fromkeys(k for rows in per_run for k in rows))
    head = "".join(f"<th>{_esc(label)}</th>" for label in labels)
    lines = [f"<table class='settings'><thead><tr><th>setting</th>{head}</tr></thead><tbody>"]
    for key in keys:
        values = [rows.get(key) for rows in per_run]
        differs = len(runs) > 1 and len({str(v) for v in values}) > 1
        cells = "".join(f"<td>{_esc(_fmt(v))}</td>" for v in values)
        cls = " class='differs'" if differs else ""
        lines.append(f"<tr{cls} data-setting='{_esc(key)}'><th>{_esc(key)}</th>{cells}</tr>")
    lines.append("</tbody></table>")
    note = "<p class='note'>Rows that differ between the runs are highlighted.</p>" if len(
        runs) > 1 else ""
    return f"<section id='settings'><h2>Settings</h2>{''.join(lines)}{note}</section>"


# --------------------------------------------------------------------------- metrics
def _metrics_section(runs: Sequence[RunData], labels: Sequence[str]) -> str:
    keys = list(dict.fromkeys(k for run in runs for k in run.metrics if k != "groups"))
    name, split_by, split = runs[0].split_key
    papers = [paper_miou(name, split_by, split, run.settings.get("clip")) for run in runs]
    paper = next((p for p in papers if p is not None), None)
    head = "".join(f"<th>{_esc(label)}</th>" for label in labels)
    paper_head = "<th>paper</th>" if paper is not None else ""
    lines = [f"<table class='metrics'><thead><tr><th>metric</th>{head}{paper_head}</tr>"
             "</thead><tbody>"]
    for key in keys:
        cells = "".join(
            f"<td data-value='{_esc(run.metrics.get(key))}'>{_esc(_fmt(run.metrics.get(key)))}"
            "</td>" for run in runs
        )
        if paper is not None:
            cells += f"<td>{_esc(_fmt(paper)) if key == 'mIoU' else ''}</td>"
        lines.append(f"<tr data-metric='{_esc(key)}'><th>{_esc(key)}</th>{cells}</tr>")
    lines.append("</tbody></table>")
    text = ("<p class='note'>Percentages; precision@X is the share of expressions with "
            "IoU &ge; X; n_* are counts.")
    if paper is not None:
        text += f" Paper: {_esc(PAPER_SETTING)}."
    text += "</p>"
    return f"<section id='metrics'><h2>Metrics</h2>{''.join(lines)}{text}" \
           f"{_kinds_table(runs, labels)}</section>"


def _kinds_table(runs: Sequence[RunData], labels: Sequence[str]) -> str:
    kinds = list(dict.fromkeys(k for run in runs for k in (run.metrics.get("groups") or {})))
    if not kinds:
        return ""
    prefixes = [f"{_short(label)} " if len(runs) > 1 else "" for label in labels]
    head = "".join(f"<th>{_esc(prefix)}{m}</th>" for prefix in prefixes
                   for m in ("n", "oIoU", "mIoU", "P@0.5"))
    lines = ["<h3>Per expression kind</h3>",
             f"<table class='kinds'><thead><tr><th>kind</th>{head}</tr></thead><tbody>"]
    for kind in kinds:
        cells = ""
        for run in runs:
            group = (run.metrics.get("groups") or {}).get(kind) or {}
            for key in ("n_expressions", "oIoU", "mIoU", "precision@0.5"):
                cells += f"<td>{_esc(_fmt(group.get(key)))}</td>"
        lines.append(f"<tr data-kind='{_esc(kind)}'><th>{_esc(kind)}</th>{cells}</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


# --------------------------------------------------------------------------- figures
def _figures(runs: Sequence[RunData], labels: Sequence[str]) -> list[_Figure]:
    from refseg.eval import plots

    figures = []
    series = [(label, run.ious()) for label, run in zip(labels, runs, strict=True)
              if run.ious().size]
    if series:
        figures.append(_Figure("report-precision.png", "Precision@X: share of expressions "
                               "with IoU ≥ X (dots: the table's thresholds).",
                               plots.png_bytes(plots.precision_curve(series))))
        figures.append(_Figure("report-iou-histogram.png", "IoU per expression (dashed: "
                               f"{RIGHT_IOU}).", plots.png_bytes(plots.iou_histogram(series))))
    kinds = plots.kind_bars([(label, run.metrics) for label, run in zip(labels, runs,
                                                                        strict=True)])
    if kinds is not None:
        figures.append(_Figure("report-kinds.png", "mIoU and precision@0.5 per expression "
                               "kind.", plots.png_bytes(kinds)))
    for i, run in enumerate(runs):
        keys = list(dict.fromkeys(k for point in run.config.get("sweep") or [] for k in point))
        sweep = plots.sweep_plot(run.sweep, keys)
        if sweep is not None:
            suffix = "" if len(runs) == 1 else f"-{_short(labels[i]).lower()}"
            figures.append(_Figure(f"report-sweep{suffix}.png",
                                   f"Sweep of {', '.join(keys)}: {len(run.sweep)} points"
                                   + ("" if len(runs) == 1 else f" ({labels[i]})")
                                   + "; best value in bold.", plots.png_bytes(sweep)))
    return figures


def _figures_section(figures: Sequence[_Figure]) -> str:
    if not figures:
        return ("<section id='plots'><h2>Plots</h2><p class='note'>No per-expression IoUs: "
                "nothing to plot.</p></section>")
    parts = [
        f"<figure class='plot{' wide' if _png_width(f.png) > 700 else ''}'>"
        f"<img src='{_data_uri('image/png', f.png)}' "
        f"alt='{_esc(f.caption)}'><figcaption>{_esc(f.caption)} "
        f"<span class='file'>({_esc(f.file_name)})</span></figcaption></figure>"
        for f in figures
    ]
    return f"<section id='plots'><h2>Plots</h2><div class='plots'>{''.join(parts)}</div></section>"


def _png_width(png: bytes) -> int:
    """Pixel width from the PNG header (IHDR), to let wide figures span the page."""
    return int.from_bytes(png[16:20], "big") if png[12:16] == b"IHDR" else 0


# --------------------------------------------------------------------------- gallery
def _legend() -> str:
    from refseg.eval.gallery import GROUND_TRUTH_COLOR, PREDICTION_COLOR

    def swatch(color: tuple[int, int, int], text: str) -> str:
        return (f"<span class='swatch' style='background: rgb{color}'></span>{text}")

    return (f"<p class='legend'>{swatch(GROUND_TRUTH_COLOR, 'ground truth (outline)')} "
            f"{swatch(PREDICTION_COLOR, 'prediction (tinted)')}</p>")


def _gallery_section(run: RunData, items: Mapping[int, Any], note: str | None,
                     options: ReportOptions) -> tuple[str, int, str | None]:
    from refseg.eval import gallery

    head = "<section id='gallery'><h2>Gallery</h2>"
    if note is not None:
        return f"{head}<p class='note'>Gallery not shown: {_esc(note)}</p></section>", 0, note
    chosen = gallery.select(list(run.results.values()), options.gallery, options.seed)
    parts = [head, _legend()]
    shown = 0
    if run.has_proposals and not any(r.top for r in run.results.values()):
        parts.append("<p class='note'>This run's predictions do not record the top proposals "
                     "(made before refseg kept them).</p>")
    titles = {"worst": "Worst (lowest IoU)", "best": "Best (highest IoU)",
              "random": f"Random sample (seed {options.seed})"}
    for section in gallery.SECTIONS:
        cells = []
        for result in chosen[section]:
            item = items.get(result.sent_id)
            if item is None:
                continue
            try:
                picture = gallery.render(item, result)
            except DatasetError as exc:
                message = f"the images cannot be read: {exc}"
                return f"{head}<p class='note'>Gallery not shown: {_esc(message)}</p></section>", \
                    0, message
            cells.append(_gallery_item(result, item, picture, run.has_proposals))
        shown += len(cells)
        parts.append(f"<h3>{_esc(titles[section])}</h3><div class='gallery' "
                     f"data-section='{section}'>{''.join(cells)}</div>")
    parts.append("</section>")
    return "".join(parts), shown, None


def _gallery_item(result: ExpressionResult, item: Any, picture: Any, proposals: bool) -> str:
    from refseg.eval.gallery import jpeg_bytes

    iou = result.iou if result.iou is not None else 0.0
    verdict = "right" if result.right else "wrong"
    top = ""
    if proposals and result.top:
        chosen = result.record.get("proposal")
        entries = "".join(
            f"<li{' class=chosen' if t.get('proposal') == chosen else ''}>proposal "
            f"{_esc(t.get('proposal'))}: score {_num(t.get('score'), 3)}, IoU "
            f"{_num(t.get('iou'), 2)}</li>" for t in result.top
        )
        top = f"<ol class='top' title='top proposals'>{entries}</ol>"
    phrase = f"<p class='phrase'>phrase: <q>{_esc(result.phrase)}</q></p>" if result.phrase else ""
    return (
        f"<figure class='gallery-item {verdict}' data-sent-id='{result.sent_id}' "
        f"data-iou='{iou:.6f}'><img src='{_data_uri('image/jpeg', jpeg_bytes(picture))}' "
        f"width='{picture.width}' height='{picture.height}' "
        f"alt='prediction for expression {result.sent_id}'><figcaption>"
        f"<p class='expression'>“{_esc(item.expression.text)}”</p>{phrase}"
        f"<p class='iou'>IoU {iou:.2f}</p>{top}"
        f"<p class='meta'>sent_id {result.sent_id} · image {_esc(item.image.image_id)}</p>"
        "</figcaption></figure>"
    )


def _num(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"


# --------------------------------------------------------------------------- compare
def _compare_section(found: Sequence[Disagreement], labels: Sequence[str],
                     items: Mapping[int, Any], note: str | None, options: ReportOptions) -> str:
    parts = ["<section id='compare'><h2>Where the runs disagree</h2>",
             f"<p>An expression is <b>right</b> when its IoU is at least {RIGHT_IOU} (the "
             "precision@0.5 criterion) and wrong otherwise; each run is compared with "
             f"{_esc(labels[0])}.</p>"]
    if note is not None:
        parts.append(f"<p class='note'>Pictures not shown: {_esc(note)}</p>")
    else:
        parts.append(_legend())
    for j, pair in enumerate(found, start=1):
        a, b = labels[0], labels[j]
        parts.append(
            f"<h3>{_esc(a)} vs {_esc(b)}</h3><p class='counts'>both right {pair.both_right}, "
            f"both wrong {pair.both_wrong}, {_esc(_short(a))} only {len(pair.a_only_right)}, "
            f"{_esc(_short(b))} only {len(pair.b_only_right)}"
            + (f"; {pair.not_shared} expressions scored in one run only (not compared)"
               if pair.not_shared else "") + ".</p>"
        )
        runs = (pair.a, pair.b)
        for right, wrong, ids in ((a, b, pair.a_only_right), (b, a, pair.b_only_right)):
            parts.append(f"<h4>{_esc(right)} right, {_esc(wrong)} wrong: {len(ids)}</h4>")
            if note is None and ids and options.pairs:
                parts.append(_pair_pictures(ids[: options.pairs], runs, (a, b), items))
            parts.append(_disagreement_table(ids, runs, (a, b), items, right, wrong))
    parts.append("</section>")
    return "".join(parts)


def _disagreement_table(ids: Sequence[int], runs: tuple[RunData, RunData],
                        labels: tuple[str, str], items: Mapping[int, Any], right: str,
                        wrong: str) -> str:
    if not ids:
        return "<p class='note'>None.</p>"
    a, b = runs
    head = (f"<tr><th>sent_id</th><th>expression</th><th>phrase</th>"
            f"<th>IoU {_esc(_short(labels[0]))}</th><th>IoU {_esc(_short(labels[1]))}</th></tr>")
    rows = []
    for sent_id in ids:
        item = items.get(sent_id)
        text = item.expression.text if item is not None else "—"
        phrase = a.results[sent_id].phrase or b.results[sent_id].phrase or "—"
        rows.append(
            f"<tr data-sent-id='{sent_id}'><td>{sent_id}</td><td>{_esc(text)}</td>"
            f"<td>{_esc(phrase)}</td><td>{_num(a.results[sent_id].iou, 2)}</td>"
            f"<td>{_num(b.results[sent_id].iou, 2)}</td></tr>"
        )
    return (f"<table class='disagreements' data-right='{_esc(right)}' data-wrong='{_esc(wrong)}'>"
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")


def _pair_pictures(ids: Sequence[int], runs: tuple[RunData, RunData],
                   labels: tuple[str, str], items: Mapping[int, Any]) -> str:
    from refseg.eval import gallery

    cells = []
    for sent_id in ids:
        item = items.get(sent_id)
        if item is None:
            continue
        pictures = []
        for run, label in zip(runs, labels, strict=True):
            result = run.results[sent_id]
            try:
                picture = gallery.render(item, result, side=240)
            except DatasetError:
                return "<p class='note'>Pictures not shown: the images cannot be read.</p>"
            pictures.append(
                f"<div><img src='{_data_uri('image/jpeg', gallery.jpeg_bytes(picture))}' "
                f"width='{picture.width}' height='{picture.height}' alt='{_esc(label)}'>"
                f"<p class='iou'>{_esc(_short(label))}: IoU {_num(result.iou, 2)}</p></div>"
            )
        cells.append(
            f"<figure class='pair-item' data-sent-id='{sent_id}'><div class='pair'>"
            f"{''.join(pictures)}</div><figcaption><p class='expression'>"
            f"“{_esc(item.expression.text)}”</p><p class='meta'>sent_id {sent_id}</p>"
            "</figcaption></figure>"
        )
    return f"<div class='gallery'>{''.join(cells)}</div>"


# ------------------------------------------------------------------------------ page
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1280px;padding:16px 24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;
padding-bottom:4px;margin-top:28px}h3{font-size:15px;margin:18px 0 8px}h4{font-size:14px}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 10px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}td{font-variant-numeric:tabular-nums}
table.metrics td,table.kinds td{text-align:right}tr.differs{background:#fff4d6}
table.settings td{overflow-wrap:anywhere}
.note,.meta,.file{color:#666}.columns{display:flex;flex-wrap:wrap;gap:0 48px}
.columns>section{flex:1 1 420px;min-width:0}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:16px}
figure{margin:0}figure.plot img{width:100%;height:auto;border:1px solid #eee}
figure.plot.wide{grid-column:1/-1;max-width:960px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}
.gallery-item,.pair-item{border:1px solid #ddd;border-radius:6px;padding:8px;background:#fafafa}
.gallery-item img,.pair-item img{max-width:100%;height:auto;display:block;margin:auto}
.pair{display:flex;gap:6px}.pair>div{flex:1}figcaption p{margin:4px 0}
.expression{font-weight:600}.iou{font-variant-numeric:tabular-nums}
.gallery-item.right .iou{color:#17663a}.gallery-item.wrong .iou{color:#b3261e}
ol.top{margin:4px 0;padding-left:20px;font-size:12px}ol.top li.chosen{font-weight:600}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px 0 10px;
vertical-align:middle}
"""


def _page(title: str, labels: Sequence[str], runs: Sequence[RunData], body: Sequence[str],
          notes: Sequence[str]) -> str:
    where = "".join(f"<li>{_esc(label)}: <code>{_esc(run.run_dir)}</code></li>"
                    for label, run in zip(labels, runs, strict=True))
    extra = "".join(f"<p class='note'>{_esc(n)}</p>" for n in notes)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_esc(title)}</h1><ul class='runs'>{where}</ul>{extra}{''.join(body)}"
        "<p class='note'>Written by refseg report; self-contained (no network needed).</p>"
        "</body></html>\n"
    )


__all__ = ["REPORT_FILE", "ReportOptions", "ReportSummary", "require_matplotlib",
           "settings_rows", "write_report"]
