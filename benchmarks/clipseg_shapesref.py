"""CLIPSeg on a ShapesRef split: text prompts and one-shot visual prompts.

Usage::

    refseg data shapes DATA --seed 7          # a seed the model never saw
    python benchmarks/clipseg_shapesref.py DATA --model clipseg-shapes --split test \
        --out clipseg-test.json

Text: every expression of the split, prompt as written. Visual (one-shot): for every
referent, the support is the first other image of the split with a referent described by
the same expression (visual prompt engineering of the paper); referents whose expressions
occur on no other image are left out (their count is reported). Control: every target
scored against the expression of another object of its image. Metrics: mIoU, oIoU,
P@0.5..0.9 and per expression kind (``refseg.eval.metrics``), at the model's threshold,
masks compared at the image's size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from refseg.clipseg import load_clipseg
from refseg.data import open_dataset
from refseg.eval.metrics import MetricsAccumulator


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def evaluate(model, dataset, *, visual: bool, control: bool = False) -> dict:  # noqa: ANN001
    """Metrics of text (or ``visual``) prompts; ``control`` scores each target against the
    expression of *another* referent of the same image (images with one referent are
    skipped): a model that reads the text scores far lower there."""
    metrics = MetricsAccumulator()
    images = list(dataset)
    occurrences: dict[str, list[tuple[int, object]]] = {}
    for index, image in enumerate(images):
        for referent, expression in image.expressions():
            occurrences.setdefault(_key(expression.text), []).append((index, referent))
    skipped = 0
    threshold = model.config.threshold
    for index, image in enumerate(images):
        pairs = list(image.expressions())
        if visual:
            chosen = []
            for referent, expression in pairs:
                others = [o for o in occurrences[_key(expression.text)] if o[0] != index]
                if others:
                    chosen.append((referent, expression, others[0]))
                else:
                    skipped += 1
            if not chosen:
                continue
            cond = model.visual_conditionals(
                [images[i].load_image() for _, _, (i, _) in chosen],
                [support.mask for _, _, (_, support) in chosen],
            )
            pairs = [(r, e) for r, e, _ in chosen]
        elif control:
            texts = [e.text for r, e in pairs]
            owners = [r.ref_id for r, _ in pairs]
            shifted = []
            for j, owner in enumerate(owners):
                others = [t for t, o in zip(texts, owners, strict=True) if o != owner]
                shifted.append(others[j % len(others)] if others else None)
            pairs = [p for p, t in zip(pairs, shifted, strict=True) if t is not None]
            if not pairs:
                continue
            cond = model.text_conditionals([t for t in shifted if t is not None])
        else:
            cond = model.text_conditionals([e.text for _, e in pairs])
        probs = model.probabilities(model.encode_query(image.load_image()), cond)
        for (referent, expression), prob in zip(pairs, probs, strict=True):
            groups = [expression.kind] if expression.kind else []
            metrics.add((prob > threshold).numpy(), referent.mask, groups=groups)
    out = metrics.result().to_dict()
    out["skipped_no_support"] = skipped
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder holding shapesref/")
    parser.add_argument("--model", default="clipseg-shapes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_clipseg(args.model, threshold=args.threshold, device="cpu")
    dataset = open_dataset(args.data, "shapesref", args.split)
    report = {"model": args.model, "split": args.split, "threshold": model.config.threshold}
    modes = {
        "text": {"visual": False},
        "visual": {"visual": True},
        "text_of_another_object": {"visual": False, "control": True},
    }
    for name, options in modes.items():
        start = time.perf_counter()
        report[name] = evaluate(model, dataset, **options)
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps({k: v for k, v in report[name].items() if k != "groups"}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
