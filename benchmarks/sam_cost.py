"""CPU cost of SAM automatic masks, per decoder call and per image, at real size.

SAM ViT-B's sizes (transformers' default ``SamConfig``) with random weights: the image
encoder once on a 1024x1024 input, then the prompt encoder + mask decoder per point prompt,
timed in batches of 1 and 64 points (alternated). Seconds per image are extrapolated as
``encoder + points x per-point decoder cost`` for 16x16 and 32x32 grids; with prompt
reduction the decoder runs only for the points no accepted mask covers, a count that
depends on real masks (random weights accept none), so that column takes the remaining
share as a parameter (``--kept``) and says so. Times are CPU seconds of the one thread
(``time.process_time``), so a busy machine does not inflate them.

    python benchmarks/sam_cost.py [--repeats 3] [--no-encoder] [--kept 0.3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_utils import alternate, load_note, set_threads


def main() -> None:
    from transformers import SamConfig, SamModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-encoder", action="store_true", help="skip timing the encoder")
    parser.add_argument("--kept", type=float, default=0.3,
                        help="share of grid points still decoded with prompt reduction")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"start: {load_note()}", flush=True)
    torch.manual_seed(0)
    model = SamModel(SamConfig()).eval()
    size = model.config.vision_config.image_size
    with torch.inference_mode():
        encoder = float("nan")
        if not args.no_encoder:
            start = time.process_time()
            embeddings = model.get_image_embeddings(torch.randn(1, 3, size, size))
            encoder = time.process_time() - start
        else:
            side = size // model.config.vision_config.patch_size
            embeddings = torch.randn(1, model.config.mask_decoder_config.hidden_size, side, side)

        def decode(count: int):
            points = torch.rand(1, count, 1, 2) * size
            labels = torch.ones(1, count, 1, dtype=torch.long)
            return lambda: model(image_embeddings=embeddings, input_points=points,
                                 input_labels=labels, multimask_output=True)

        options = {"batch 1": decode(1), "batch 64": decode(64)}
        for fn in options.values():
            fn()
        seconds, _ = alternate(options, args.repeats, clock=time.process_time)
    per_point = {"batch 1": statistics.median(seconds["batch 1"]),
                 "batch 64": statistics.median(seconds["batch 64"]) / 64}
    print(f"SAM ViT-B random weights, 1 thread, CPU seconds: encoder {encoder:.1f} s; "
          f"decoder per point "
          f"{1000 * per_point['batch 1']:.0f} ms (batch 1), {1000 * per_point['batch 64']:.0f} "
          f"ms (batch 64); median of {args.repeats}")
    best = min(per_point.values())
    if args.no_encoder:
        encoder = 0.0  # the s/image columns then count the decoder only
    print(f"\n| grid | decoder calls | s/image | decoder calls, reduction ({args.kept:.0%} kept,"
          " assumed) | s/image, reduction |")
    print("|---|---:|---:|---:|---:|")
    for side in (16, 32):
        calls = side * side
        kept = round(calls * args.kept)
        print(f"| {side}x{side} | {calls} | {encoder + calls * best:.0f} | {kept} | "
              f"{encoder + kept * best:.0f} |")
    print(f"end: {load_note()}")


if __name__ == "__main__":
    main()
