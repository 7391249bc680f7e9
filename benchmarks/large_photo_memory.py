"""Peak memory (RSS) and time of one large photo through global-local, offline.

    python benchmarks/large_photo_memory.py [--width 4000 --height 2667] [--max-pixels N]

A 4000x2667 synthetic "photo" (smooth gradients, noise and a few discs; seeded) goes
through ``shapes-vit`` with superpixel proposals: ``set_image`` then one query. Prints the
working size, the proposal count, seconds per stage and the process's peak RSS (Linux
``ru_maxrss``), before and after the image's work, as one JSON line. Run it in a fresh
process per setting: the peak is the process's.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

import numpy as np
import torch
from PIL import Image


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Built 64 rows at a time, so that making it does not raise the peak being measured."""
    rng = np.random.default_rng(seed)
    discs = [
        (rng.uniform(0, width), rng.uniform(0, height), rng.uniform(150, 600),
         rng.uniform(0, 255, 3))
        for _ in range(6)
    ]
    out = np.empty((height, width, 3), dtype=np.uint8)
    x = np.arange(width, dtype=np.float32)[None, :]
    for top in range(0, height, 64):
        y = np.arange(top, min(top + 64, height), dtype=np.float32)[:, None]
        rows = np.stack(
            np.broadcast_arrays(x / width, y / height, 0.5 + 0.5 * np.sin(x / 300.0 + 0 * y)),
            axis=-1,
        ) * 200
        for cx, cy, r, colour in discs:
            rows[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = colour
        rows += rng.normal(0, 6, rows.shape).astype(np.float32)
        out[top : top + len(y)] = np.clip(rows, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=2667)
    parser.add_argument("--max-pixels", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from refseg.image_io import DEFAULT_MAX_PIXELS
    from refseg.segmenter import Segmenter

    image = photo(args.width, args.height)
    segmenter = Segmenter.from_pretrained(
        clip="shapes-vit",
        proposals="superpixel",
        device="cpu",
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
    )
    before = peak_mb()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = segmenter.set_image(image)
    set_image_s = time.perf_counter() - start
    start = time.perf_counter()
    result = segmenter.query("the red disc")
    query_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "image": f"{args.width}x{args.height}",
                "working": f"{context.image.width}x{context.image.height}",
                "proposals": len(context.proposals),
                "warnings": [str(w.message) for w in caught],
                "set_image_s": round(set_image_s, 2),
                "query_s": round(query_s, 2),
                "stages_s": {k: round(v, 2) for k, v in context.timings.items()},
                "peak_rss_mb_model_loaded": round(before, 1),
                "peak_rss_mb": round(peak_mb(), 1),
                "mask": list(result.mask.shape),
            }
        )
    )


if __name__ == "__main__":
    main()
