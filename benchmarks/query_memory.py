"""Peak memory of one query at the pixel cap: a 2048x2048 image with 100 mask proposals.

Real-size CLIP (random weights), one image set and one expression asked. Reports the growth
of the process's peak resident memory (``ru_maxrss``) over what it held just before
``set_image``, so the model and the proposals themselves are not counted. Run it with
another checkout's sources first on ``PYTHONPATH`` to compare versions.

    python benchmarks/query_memory.py [--size 2048] [--proposals 100] [--model ViT-B/32]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np
import torch
from bench_utils import load_note, set_threads
from segmenter_stages import ARCHITECTURES, TEXTS, random_proposals, small_tokenizer

from refseg.clip import CLIP, LoadedClip, TextConfig
from refseg.segmenter import Segmenter


def rss_mb() -> float:
    """Current resident memory in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--model", default="ViT-B/32", choices=sorted(ARCHITECTURES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    warnings.simplefilter("ignore")
    tokenizer = small_tokenizer()
    config = ARCHITECTURES[args.model]
    config.text = TextConfig(vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    clip = LoadedClip(CLIP(config).eval(), tokenizer, args.model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    proposals = random_proposals(args.proposals, args.size, args.size, rng)
    segmenter = Segmenter(clip, None)
    before = rss_mb()
    start = time.perf_counter()
    segmenter.set_image(image, proposals=proposals)
    segmenter.query(TEXTS[:1])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(f"{args.model}, {args.size}x{args.size}, {args.proposals} proposals: peak "
          f"{peak:.0f} MB, {peak - before:.0f} MB above the {before:.0f} MB held before "
          f"set_image; {seconds:.1f} s; {load_note()}")


if __name__ == "__main__":
    main()
