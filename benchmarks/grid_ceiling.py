"""How well can a patch-grid map segment ShapesRef at all? The resolution ceiling of the dense
systems built on a ViT's patch grid (issues #11, #12).

For every referent of a split, the ground-truth mask is area-pooled to the patch grid (what
a *perfect* patch-level prediction would be), upsampled bilinearly to the image and
thresholded; its mIoU against the mask is the best any method can reach that predicts on the
grid and upsamples. A learnt decoder (CLIPSeg's, RISCLIP's) can do better from features
that encode shape within a patch, but the gap tells how much the grid costs.

    refseg data shapes DATA --seed 1 --images 500
    python benchmarks/grid_ceiling.py DATA [--split test] [--grids 112:7 224:14]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refseg.data import open_dataset
from refseg.risclip.data import resize_mask_for_clip

THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


def ceiling(masks: list[np.ndarray], size: int, grid: int) -> dict[float, float]:
    """mIoU (%) of the perfect ``grid x grid`` map at each threshold."""
    ious: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    for mask in masks:
        squashed = torch.from_numpy(resize_mask_for_clip(mask, size)).float()[None, None]
        pooled = F.adaptive_avg_pool2d(squashed, grid)
        up = F.interpolate(pooled, size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
        for t in THRESHOLDS:
            pred = up.numpy() > t
            union = (pred | mask).sum()
            ious[t].append((pred & mask).sum() / union if union else 1.0)
    return {t: 100.0 * float(np.mean(v)) for t, v in ious.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder holding shapesref/")
    parser.add_argument("--split", default="test")
    parser.add_argument("--grids", nargs="+", default=["112:7", "224:14"], metavar="SIZE:GRID")
    args = parser.parse_args()
    dataset = open_dataset(args.data, "shapesref", args.split)
    masks = [referent.mask for image in dataset for referent in image.referents]
    area = 100 * float(np.mean([m.mean() for m in masks]))
    print(f"{len(masks)} referents of shapesref {args.split}; mean area {area:.1f}% of the image")
    print("| input | grid | " + " | ".join(f"mIoU @ {t}" for t in THRESHOLDS) + " |")
    print("|---|---|" + "---:|" * len(THRESHOLDS))
    for spec in args.grids:
        size, grid = (int(v) for v in spec.split(":"))
        row = ceiling(masks, size, grid)
        cells = " | ".join(f"{row[t]:.1f}" for t in THRESHOLDS)
        print(f"| {size} px | {grid}x{grid} | {cells} |")


if __name__ == "__main__":
    main()
