"""CPU cost of SAM-family automatic masks at real size: encoder, decoder calls, s/image.

Random weights at each model's real size (no checkpoint is downloaded), one thread, CPU
seconds of that thread (``time.process_time``), so a busy machine does not inflate them:

- ``sam-vit-base``: transformers' default ``SamConfig`` (SAM ViT-B);
- ``slimsam-77``: the same ``SamModel`` with SlimSAM-77's pruned image encoder, the
  ``vision_config`` of the Hub's ``Zigeng/SlimSAM-uniform-77`` config.json (identical to
  ``nielsr/slimsam-77-uniform``'s): hidden_size 168, mlp_dim 696, the rest ViT-B's defaults
  (9.7 M parameters, matching its 38.9 MB fp32 model.safetensors);
- ``sam2.1-hiera-tiny``: transformers' ``Sam2Model`` with the default ``Sam2Config``, which
  transformers documents as facebook/sam2.1-hiera-tiny's (Hiera-T: 96 channels, blocks
  1-2-7-2); image model only (SAM 2's video memory modules are not used for images);
- ``sam2.1-hiera-small``: the same with sam2's ``sam2.1_hiera_s.yaml`` trunk (blocks
  1-2-11-2, global attention in blocks 7, 10, 13); the decoder is tiny's.

Per model: the image encoder once per repetition on a 1024x1024 input; the prompt encoder
+ mask decoder per call with 1 point and with ``--batch`` points (alternated), the cheaper
per point is the per-call cost. Seconds per image for 16x16 and 32x32 grids are
``encoder + decoder calls x per-call cost``. With prompt reduction
(``skip_covered_points``) refseg's generator (``SamProposals``: SAM, SlimSAM and SAM 2 alike)
really runs the grid and its decoder calls are counted (``--count-grids``); random weights
accept no mask, so it skips nothing here: the saving, and the masks' quality, need real
weights and are not measured or assumed.

    python benchmarks/sam_cost.py [--models ...] [--repeats 3] [--count-grids 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from bench_utils import alternate, load_note, set_threads

GRIDS = (16, 32)
# SlimSAM-77's vision_config as published (Hub: Zigeng/SlimSAM-uniform-77/config.json).
SLIMSAM_77_VISION = {"hidden_size": 168, "mlp_dim": 696}
# SAM 2.1 Hiera-S's trunk (sam2 configs/sam2.1/sam2.1_hiera_s.yaml); the rest is Hiera-T's.
HIERA_SMALL = {
    "model_type": "sam2_hiera_det_model",
    "blocks_per_stage": [1, 2, 11, 2],
    "global_attention_blocks": [7, 10, 13],
}


def build(name: str) -> torch.nn.Module:
    """A random-weight model of ``name``'s real size (see the module docstring)."""
    from transformers import Sam2Config, Sam2Model, SamConfig, SamModel

    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "sam-vit-base": lambda: SamModel(SamConfig()),
        "slimsam-77": lambda: SamModel(SamConfig(vision_config=SLIMSAM_77_VISION)),
        "sam2.1-hiera-tiny": lambda: Sam2Model(Sam2Config()),
        "sam2.1-hiera-small": lambda: Sam2Model(
            Sam2Config(vision_config={"backbone_config": HIERA_SMALL})
        ),
    }
    torch.manual_seed(0)
    return builders[name]().eval()


@dataclass
class ModelCost:
    name: str
    parameters: float  # millions
    encoder: float  # CPU s per image
    per_point: dict[int, float]  # points per call -> CPU s per point
    reduced_calls: dict[int, int] = field(default_factory=dict)  # grid side -> calls counted
    generate_seconds: dict[int, float] = field(default_factory=dict)  # grid -> CPU s measured
    accepted: dict[int, int] = field(default_factory=dict)  # grid -> masks accepted

    @property
    def per_call(self) -> float:
        return min(self.per_point.values())

    @property
    def best_batch(self) -> int:
        return min(self.per_point, key=self.per_point.__getitem__)


def measure(name: str, repeats: int, batch: int) -> tuple[ModelCost, torch.nn.Module]:
    model = build(name)
    pixels = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        encoder_seconds, outputs = alternate(
            {"encoder": lambda: model.get_image_embeddings(pixels)}, repeats,
            clock=time.process_time,
        )
        embeddings = outputs[-1]["encoder"]

        def decode(count: int) -> Callable[[], object]:
            points = torch.rand(1, count, 1, 2) * 1024
            labels = torch.ones(1, count, 1, dtype=torch.long)
            return lambda: model(image_embeddings=embeddings, input_points=points,
                                 input_labels=labels, multimask_output=True)

        calls = {1: decode(1), batch: decode(batch)}
        for fn in calls.values():
            fn()  # warm-up
        seconds, _ = alternate({str(k): fn for k, fn in calls.items()}, repeats,
                               clock=time.process_time)
    cost = ModelCost(
        name,
        sum(p.numel() for p in model.parameters()) / 1e6,
        statistics.median(encoder_seconds["encoder"]),
        {k: statistics.median(seconds[str(k)]) / k for k in calls},
    )
    return cost, model


def count_reduced_calls(cost: ModelCost, model: torch.nn.Module, grid: int) -> None:
    """Run refseg's generator with prompt reduction on a synthetic photo-sized image."""
    from PIL import Image

    from refseg.proposals.sam import SamProposals

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    generator = SamProposals(model, device="cpu", points_per_side=grid,
                             points_per_batch=cost.best_batch, skip_covered_points=True)
    start = time.process_time()
    _, stats = generator.generate(image)
    cost.generate_seconds[grid] = time.process_time() - start
    cost.reduced_calls[grid] = stats.decoded
    cost.accepted[grid] = stats.pre_nms
    assert stats.decoded + stats.skipped == stats.points == grid * grid


def table(costs: list[ModelCost]) -> str:
    lines = [
        "| model | params | encoder s | decoder s/call | grid | decoder calls | s/image | "
        "calls with reduction | s/image with reduction | generate() s, measured |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cost in costs:
        for grid in GRIDS:
            calls = grid * grid
            reduced = cost.reduced_calls.get(grid)
            if reduced is None:
                reduced_text, seconds_text, measured = "not run", "-", "-"
            else:
                reduced_text = f"{reduced} (measured)"
                seconds_text = f"{cost.encoder + reduced * cost.per_call:.0f}"
                measured = f"{cost.generate_seconds[grid]:.0f}"
            lines.append(
                f"| {cost.name} | {cost.parameters:.1f} M | {cost.encoder:.1f} | "
                f"{cost.per_call:.3f} (batch {cost.best_batch}) | {grid}x{grid} | {calls} | "
                f"{cost.encoder + calls * cost.per_call:.0f} | {reduced_text} | {seconds_text} "
                f"| {measured} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["sam-vit-base", "slimsam-77", "sam2.1-hiera-tiny",
                                 "sam2.1-hiera-small"])
    parser.add_argument("--repeats", type=int, default=3, help="median of this many")
    parser.add_argument("--batch", type=int, default=8,
                        help="points per decoder call timed beside 1 point per call")
    parser.add_argument("--count-grids", type=int, nargs="*", default=[16],
                        help="grid sides run through refseg's generator with prompt reduction "
                        "to count decoder calls (32 costs ~4x 16)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"start: {load_note()}", flush=True)
    costs = []
    for name in args.models:
        cost, model = measure(name, args.repeats, args.batch)
        per_point = ", ".join(f"{k} per call {1000 * s:.0f} ms/point"
                              for k, s in cost.per_point.items())
        print(f"{name}: {cost.parameters:.1f} M params; encoder {cost.encoder:.2f} s; "
              f"decoder {per_point} (median of {args.repeats}); {load_note()}", flush=True)
        for grid in args.count_grids:
            count_reduced_calls(cost, model, grid)
            print(f"  {grid}x{grid} with reduction: {cost.reduced_calls[grid]} decoder "
                  f"calls, {cost.accepted[grid]} masks accepted, generate() took "
                  f"{cost.generate_seconds[grid]:.1f} CPU s; {load_note()}", flush=True)
        costs.append(cost)
    print(f"\n{args.threads} thread(s), CPU seconds, random weights\n")
    print(table(costs))
    print(f"\nend: {load_note()}")


if __name__ == "__main__":
    main()
