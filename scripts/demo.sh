#!/usr/bin/env bash
# README command 1: install (idempotent), then segment the bundled example scene with the
# bundled offline model. Writes out/mask_*.png and out/overlay_*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p out
# shapes-vit carries its own defaults (src/refseg/weights/shapes-vit/recommended.json): alpha 0.5,
# the value with the best val mIoU for it (benchmarks/shapesref.md; the paper's 0.95 was tuned
# for real CLIP on RefCOCO), and pixels clean, the pixels it was trained on.
.venv/bin/refseg segment examples/shapes_scene.png \
  "the white triangle" "the yellow disk on the left" "the rightmost circle" \
  --clip shapes-vit --proposals superpixel \
  --out out/mask.png --overlay out/overlay.png
