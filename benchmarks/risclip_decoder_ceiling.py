"""How far can RISCLIP's stage-2 decoder go on a stage-1 checkpoint's taps? (issue #12)

The frozen stage-1 outputs (grounding logits and the decoder taps v_1..v_4) of a RISCLIP
checkpoint are computed once for training and val expressions; a fresh residual decoder is
then trained on them with the preset's loss, lr and schedule, with ``map_patch`` =

- the checkpoint's own stage-1 grounding logits (what the shipped model does), and
- the ground-truth mask area-pooled to the patch grid, as logits: a *perfect* stage 1.

The gap between the two says whether the decoder or the grounding limits the model. Val
mIoU (%) at the best threshold, of the upsampled map alone and with the decoder.

    refseg data shapes DATA --seed 0
    python benchmarks/risclip_decoder_ceiling.py DATA [--checkpoint risclip-shapes] [--steps 2304]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from refseg.data import open_dataset
from refseg.risclip.data import ExpressionSamples, collate
from refseg.risclip.decoder import LavtDecoder
from refseg.risclip.evaluate import THRESHOLDS
from refseg.risclip.io import load_risclip
from refseg.risclip.losses import risclip_loss

Features = tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]  # map, taps, masks


def frozen_features(model, clip, root: Path, split: str, limit: int) -> Features:  # noqa: ANN001
    """Stage-1 logits, decoder taps and target masks of the first ``limit`` expressions."""
    dataset = open_dataset(root, "shapesref", split)
    size = model.config.image_size
    data = ExpressionSamples(dataset, clip.tokenizer, clip.config.preprocess, size, limit=limit)
    maps, taps, masks = [], [], []
    for start in range(0, len(data), 32):
        batch = collate([data[i] for i in range(start, min(start + 32, len(data)))])
        with torch.no_grad():
            logits, tapped = model.forward_patches(batch["pixels"], batch["tokens"])
        maps.append(logits)
        taps.append(tapped)
        masks.append(batch["mask"])
    joined = [torch.cat([t[k] for t in taps]) for k in range(len(taps[0]))]
    return torch.cat(maps), joined, torch.cat(masks)


def perfect_map(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The target area-pooled to the grid, as logits (a stage 1 that is always right)."""
    pooled = F.adaptive_avg_pool2d(masks[:, None], grid)[:, 0].clamp(1e-3, 1 - 1e-3)
    return torch.log(pooled / (1 - pooled))


def miou(pred: torch.Tensor, masks: torch.Tensor) -> float:
    target = masks > 0.5
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return 100.0 * float((inter / union.clamp(min=1)).mean())


def best_miou(probs: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    return max((miou(probs > t, masks), t) for t in THRESHOLDS)


def train_decoder(config, train: Features, grid_map: torch.Tensor, steps: int) -> LavtDecoder:  # noqa: ANN001
    """A fresh residual decoder trained on memoised taps with the preset's loss and schedule."""
    torch.manual_seed(0)
    _, taps, masks = train
    decoder = LavtDecoder(taps[0].shape[1], config.decoder_widths, residual=True)
    optimizer = torch.optim.AdamW(
        decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(0.0, 1 - s / steps) ** config.poly_power
    )
    size = tuple(masks.shape[-2:])
    for _ in range(steps):
        rows = torch.randint(0, masks.shape[0], (config.batch_size,))
        logits = decoder([t[rows] for t in taps], grid_map[rows], size)
        loss, _ = risclip_loss(
            logits,
            masks[rows],
            alpha=config.focal_alpha,
            gamma=config.focal_gamma,
            focal_weight=config.focal_weight,
            smooth=config.dice_smooth,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return decoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder holding shapesref/ (the training seed)")
    parser.add_argument("--checkpoint", default="risclip-shapes")
    parser.add_argument("--steps", type=int, default=2304)
    parser.add_argument("--train-expressions", type=int, default=4096)
    parser.add_argument("--val-expressions", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = args.checkpoint
    if source == "risclip-shapes":
        source = Path(__file__).parents[1] / "src" / "refseg" / "weights" / "risclip-shapes"
    model, clip = load_risclip(source)
    start = time.perf_counter()
    train = frozen_features(model, clip, args.data, "train", args.train_expressions)
    val = frozen_features(model, clip, args.data, "val", args.val_expressions)
    print(f"features of {train[2].shape[0]} + {val[2].shape[0]} expressions: "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    grid = tuple(train[0].shape[-2:])
    size = tuple(val[2].shape[-2:])
    cases = {
        "stage-1 map": (train[0], val[0]),
        "perfect map (GT area-pooled)": (perfect_map(train[2], grid), perfect_map(val[2], grid)),
    }
    print("| map_patch | upsampled map alone | + decoder |\n|---|---:|---:|")
    for name, (train_map, val_map) in cases.items():
        alone = torch.sigmoid(F.interpolate(val_map[:, None], size=size, mode="bilinear")[:, 0])
        decoder = train_decoder(model.config, train, train_map, args.steps)
        with torch.no_grad():
            probs = torch.sigmoid(decoder(val[1], val_map, size))
        base, decoded = best_miou(alone, val[2]), best_miou(probs, val[2])
        print(f"| {name} | {base[0]:.1f} (p > {base[1]:g}) | {decoded[0]:.1f} "
              f"(p > {decoded[1]:g}) |", flush=True)


if __name__ == "__main__":
    main()
