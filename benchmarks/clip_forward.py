"""CPU latency of refseg's CLIP at real sizes (random weights: speed does not depend on them).

Models: RN50 and ViT-B/32 built from :class:`refseg.clip.CLIPConfig` (OpenAI's sizes, see
OpenAI ``clip/model.py`` ``build_model``). Timed under ``torch.inference_mode``, fp32:

- ``image``: one 224x224 image through the image tower;
- ``text``: one sentence through the text tower;
- ``N masks``: Global-Local's global-context features of N masks over one image
  (ViT: ``forward_masked`` with the last k=3 blocks masked; RN: attention pooling of the
  masked trunk map, trunk included).

Each figure is the median of ``--repeats`` runs after ``--warmup`` runs, in milliseconds.

Then the local-crop batch (``--crops`` crops through the image tower, the local branch's
work) in batches of ``--chunk`` and of 64 (the former constant): GFLOP/s (multiply and add
counted apart, as torch's FlopCounterMode does) and the fraction of this machine's fp32
ceiling, measured as the GFLOP/s of one large square fp32 matmul, alternated with the crop
runs; CPU seconds of the one thread (``time.process_time``), so the machine's load does not
inflate them.

Usage: ``python benchmarks/clip_forward.py [--threads 1] [--masks 16] [--crops 16]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench_utils import alternate, load_note, set_threads
from torch.utils.flop_counter import FlopCounterMode

from refseg import runtime
from refseg.clip import CLIP, CLIPConfig, TextConfig, VisionConfig

# OpenAI's published architectures (clip/model.py build_model; open_clip model_configs).
MODELS: dict[str, CLIPConfig] = {
    "RN50": CLIPConfig(
        embed_dim=1024,
        vision=VisionConfig(image_size=224, layers=(3, 4, 6, 3), width=64, heads=32),
        text=TextConfig(width=512, heads=8, layers=12),
    ),
    "ViT-B/32": CLIPConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, layers=12, width=768, heads=12, patch_size=32),
        text=TextConfig(width=512, heads=8, layers=12),
    ),
}
MASKED_BLOCKS = 3  # Global-Local CLIP masks the last 3 blocks of ViT-B/32 (paper, Sec. 3)


def median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def masked_global(model: CLIP, pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Global-context features ``[N, D]`` of masks ``[N, h, w]`` over one image ``[1, 3, S, S]``."""
    visual = model.visual
    if model.config.vision.is_vit:
        return visual.forward_masked(pixels, weights, MASKED_BLOCKS)
    return visual.attnpool(visual.trunk(pixels) * weights[:, None])


def benchmark(name: str, config: CLIPConfig, masks: int, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = CLIP(config).eval()
    size = config.vision.image_size
    grid = size // (config.vision.patch_size if config.vision.is_vit else 32)
    pixels = torch.randn(1, 3, size, size)
    weights = torch.rand(masks, grid, grid)
    tokens = torch.randint(0, config.text.vocab_size - 1, (1, config.text.context_length))
    tokens[0, 12] = config.text.vocab_size - 1  # end-of-text after 11 word tokens
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with torch.inference_mode():
        return {
            "model": name,
            "params (M)": f"{params:.1f}",
            "image": median_ms(lambda: model.encode_image(pixels), warmup, repeats),
            "text": median_ms(lambda: model.encode_text(tokens), warmup, repeats),
            f"{masks} masks": median_ms(
                lambda: masked_global(model, pixels, weights), warmup, repeats
            ),
        }


def flops_of(fn: Callable[[], object]) -> int:
    """Floating-point operations of one ``fn()`` call (multiply and add counted apart)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def crop_throughput(name: str, config: CLIPConfig, crops: int, chunk: int, repeats: int) -> dict:
    """GFLOP/s of ``crops`` local crops through the image tower, batches of ``chunk`` and 64,
    next to the fp32 ceiling (a 1536^3 matmul), all alternated in one loop."""
    torch.manual_seed(0)
    model = CLIP(config).eval()
    size = config.vision.image_size
    pixels = torch.randn(crops, 3, size, size)
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)

    def encode(batch: int) -> Callable[[], object]:
        def run() -> object:
            with runtime.local_branch():
                return [model.encode_image(pixels[i : i + batch]) for i in range(0, crops, batch)]
        return run

    with torch.inference_mode():
        work = flops_of(encode(chunk))
        options = {
            f"chunk {chunk}": encode(chunk), "chunk 64": encode(64), "ceiling": lambda: a @ b
        }
        for fn in options.values():
            fn()  # warm-up
        seconds, _ = alternate(options, repeats, clock=time.process_time)
    ceiling = 2 * 1536**3 / statistics.median(seconds["ceiling"]) / 1e9
    row: dict = {"model": name, "GFLOP/crop": f"{work / crops / 1e9:.2f}"}
    for label in (f"chunk {chunk}", "chunk 64"):
        rate = work / statistics.median(seconds[label]) / 1e9
        row[f"{label} GFLOP/s"] = rate
        row[f"{label} of ceiling"] = f"{100 * rate / ceiling:.0f}%"
    row["fp32 ceiling GFLOP/s"] = ceiling
    return row


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    cells = [[c if isinstance(c, str) else f"{c:.1f}" for c in row.values()] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--crops", type=int, default=16, help="local crops in the batch")
    parser.add_argument("--chunk", type=int, default=8, help="crops per forward pass")
    parser.add_argument("--masks", type=int, default=16, help="masks per image (N)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(f"start: {load_note()}", flush=True)
    rows = [
        benchmark(name, config, args.masks, args.warmup, args.repeats)
        for name, config in MODELS.items()
    ]
    print(
        f"CPU fp32, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats} after {args.warmup} warm-ups, ms"
    )
    print_table(rows)
    print(f"\nlocal crops: {args.crops} crops, median of {args.repeats} (alternated); fp32 "
          f"matmul path {runtime.chosen_matmul_path()}")
    print_table([
        crop_throughput(name, config, args.crops, args.chunk, args.repeats)
        for name, config in MODELS.items()
    ])
    print(f"end: {load_note()}")


if __name__ == "__main__":
    main()
