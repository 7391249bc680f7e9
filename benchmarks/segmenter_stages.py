"""Per-image CPU time of Global-Local CLIP, split into trunk / global / local / text.

Real-size RN50 and ViT-B/32 with random weights (architecture is what costs time, not the
values), 8 / 32 / 100 proposals, a 640x480 image and 3 expressions per image. Prints the
median of ``--repeats`` runs per cell, in milliseconds.

    python benchmarks/segmenter_stages.py [--repeats 5] [--threads 1]

One thread by default: on a shared machine two threads ran 0.14-0.52x of one (issue #17).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from bench_utils import load_note, set_threads

from refseg.clip import CLIP, CLIPConfig, ClipTokenizer, LoadedClip, TextConfig, VisionConfig
from refseg.proposals import MaskProposals
from refseg.segmenter import Segmenter
from refseg.train.tokenizer import train_clip_tokenizer

ARCHITECTURES = {
    "RN50": CLIPConfig(
        embed_dim=1024, vision=VisionConfig(image_size=224, layers=(3, 4, 6, 3), width=64, heads=32)
    ),
    "ViT-B/32": CLIPConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, layers=12, width=768, heads=12, patch_size=32),
    ),
}
TEXTS = ["the man in the red shirt left of the car", "a dog", "second bowl from the top"]


def small_tokenizer() -> ClipTokenizer:
    """A BPE learnt on a few sentences (the text tower's cost does not depend on the vocab)."""
    return train_clip_tokenizer(TEXTS * 5, vocab_size=600, context_length=77)


def random_proposals(n: int, height: int, width: int, rng: np.random.Generator) -> MaskProposals:
    masks = np.zeros((n, height, width), dtype=bool)
    for mask in masks:
        h, w = rng.integers(height // 8, height // 2), rng.integers(width // 8, width // 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        mask[y : y + h, x : x + w] = True
    return MaskProposals(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--proposals", type=int, nargs="+", default=[8, 32, 100])
    args = parser.parse_args()
    set_threads(args.threads)
    warnings.simplefilter("ignore")
    tokenizer = small_tokenizer()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} (ms); "
          f"{load_note()}")
    print("| model | proposals | trunk | global | local | text | total |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, config in ARCHITECTURES.items():
        config.text = TextConfig(vocab_size=tokenizer.vocab_size)
        torch.manual_seed(0)
        clip = LoadedClip(CLIP(config).eval(), tokenizer, name)
        for n in args.proposals:
            proposals = random_proposals(n, 480, 640, rng)
            stages: dict[str, list[float]] = {s: [] for s in ("trunk", "global", "local", "text")}
            totals = []
            for _ in range(args.repeats + 1):  # the first run warms up
                segmenter = Segmenter(clip, None)
                start = time.perf_counter()
                context = segmenter.set_image(image, proposals=proposals)
                segmenter.query(TEXTS)
                totals.append(time.perf_counter() - start)
                for stage in stages:
                    stages[stage].append(context.timings.get(stage, 0.0))
            cells = [statistics.median(v[1:]) * 1000 for v in stages.values()]
            total = statistics.median(totals[1:]) * 1000
            row = " | ".join(f"{c:.0f}" for c in [*cells, total])
            print(f"| {name} | {n} | {row} |")
    print(f"end: {load_note()}")


if __name__ == "__main__":
    main()
