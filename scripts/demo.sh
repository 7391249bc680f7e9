#!/usr/bin/env bash
# README command 1: install (idempotent), then segment the bundled example scene with the
# bundled offline model. Writes out/mask_*.png and out/overlay_*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p out
# --alpha 0.5: the value with the best val mIoU for shapes-vit (benchmarks/shapesref.md);
# the paper's 0.95 was tuned for real CLIP on RefCOCO. --pixels clean: the pixels shapes-vit
# was trained on (the default, reference, is the Global-Local authors' preparation for OpenAI CLIP).
.venv/bin/refseg segment examples/shapes_scene.png \
  "the white triangle" "the yellow disk on the left" "the rightmost circle" \
  --clip shapes-vit --proposals superpixel --alpha 0.5 --pixels clean \
  --out out/mask.png --overlay out/overlay.png
