"""CPU latency of refseg's CLIP at real sizes (random weights: speed does not depend on them).

Models: RN50 and ViT-B/32 built from :class:`refseg.clip.CLIPConfig` (OpenAI's sizes, see
OpenAI ``clip/model.py`` ``build_model``). Timed under ``torch.inference_mode``, fp32:

- ``image``: one 224x224 image through the image tower;
- ``text``: one sentence through the text tower;
- ``N masks``: Global-Local's global-context features of N masks over one image
  (ViT: ``forward_masked`` with the last k=3 blocks masked; RN: attention pooling of the
  masked trunk map, trunk included).

Each figure is the median of ``--repeats`` runs after ``--warmup`` runs, in milliseconds.

Usage: ``python benchmarks/clip_forward.py [--threads 2] [--masks 16]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

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


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    cells = [[c if isinstance(c, str) else f"{c:.1f}" for c in row.values()] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--masks", type=int, default=16, help="masks per image (N)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        benchmark(name, config, args.masks, args.warmup, args.repeats)
        for name, config in MODELS.items()
    ]
    print(
        f"CPU fp32, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats} after {args.warmup} warm-ups, ms"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
