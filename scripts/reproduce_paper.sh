#!/usr/bin/env bash
# Reproduce the main table of Yu, Seo, Son, "Zero-shot Referring Image Segmentation with
# Global-Local Context Features" (CVPR 2023): Global-Local CLIP with CLIP RN50 and ViT-B/32 on
#   RefCOCO  (unc)  val / testA / testB   alpha 0.95
#   RefCOCO+ (unc)  val / testA / testB   alpha 0.95
#   RefCOCOg (umd)  val / test            alpha 0.85
#   RefCOCOg (google) val                 alpha 0.85
# with beta 0.5 and k 3 (ViT), then prints one table beside the paper's mIoU.
# Pixels: the "reference" preset, the authors' own image preparation (shorter side 800 with
# ImageNet statistics, no-antialias resizes, FreeSOLO's crop box); every run's config.json,
# report.md and the table's pixels column record it. PIXELS=clean for refseg's clean pipeline.
#
# Needs: the refer annotations under DATA (DATA/refcoco, DATA/refcoco+, DATA/refcocog, each
# with refs(<split_by>).p and instances.json), the COCO train2014 images (IMAGES, or a folder
# refseg finds under DATA, see the README), and preferably a GPU: ~10k expressions per split.
#
# Proposals. The paper used FreeSOLO masks (R101, short side 800, score > 0.1, at most 100 per
# image). If you have them, set PROPOSALS to a COCO-results JSON over the train2014 images:
#   1. install FreeSOLO (github.com/NVlabs/FreeSOLO, on detectron2/AdelaiDet) and download
#      its R101 checkpoint;
#   2. register the train2014 images the refer splits use as a COCO dataset (an instances
#      file listing them is enough) and run FreeSOLO's evaluation on it (`train_net.py
#      --eval-only`, INPUT.MIN_SIZE_TEST 800); it writes inference/coco_instances_results.json
#      ([{image_id, segmentation (RLE), score, category_id}, ...]);
#   3. PROPOSALS=/path/to/coco_instances_results.json. Image ids are COCO's, the same as the
#      refer files'; refseg keeps masks with score > 0.1, at most 100 per image (the paper's).
# Without it, SAM's automatic masks are used: a different (stronger) proposal set, so the
# numbers will not match the paper's.
#
# Usage:
#   DATA=/data/refer IMAGES=/data/coco/train2014 OUT=runs/paper bash scripts/reproduce_paper.sh
#   PROPOSALS=freesolo_train2014.json CLIPS="ViT-B/32" bash scripts/reproduce_paper.sh
# Every run resumes if interrupted: rerun the script.
set -euo pipefail

DATA=${DATA:?set DATA to the refer data root (holding refcoco/, refcoco+/, refcocog/)}
IMAGES=${IMAGES:-}
OUT=${OUT:-runs/paper}
PROPOSALS=${PROPOSALS:-sam}
CLIPS=${CLIPS:-"RN50 ViT-B/32"}
PIXELS=${PIXELS:-reference}
DEVICE=${DEVICE:-}
# The project's venv (made by scripts/install.sh) when present, else whatever is on PATH.
VENV_BIN="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
if [[ -x "$VENV_BIN/refseg" ]]; then
  REFSEG=${REFSEG:-$VENV_BIN/refseg}
  PYTHON=${PYTHON:-$VENV_BIN/python}
else
  REFSEG=${REFSEG:-refseg}
  PYTHON=${PYTHON:-python}
fi
command -v "$REFSEG" >/dev/null || {
  echo "reproduce_paper.sh: '$REFSEG' not found: run 'bash scripts/install.sh' first" >&2
  exit 2
}

# name split_by split alpha (alpha per dataset: paper Sec. 4.1)
RUNS=(
  "refcoco unc val 0.95"
  "refcoco unc testA 0.95"
  "refcoco unc testB 0.95"
  "refcoco+ unc val 0.95"
  "refcoco+ unc testA 0.95"
  "refcoco+ unc testB 0.95"
  "refcocog umd val 0.85"
  "refcocog umd test 0.85"
  "refcocog google val 0.85"
)

for clip in $CLIPS; do
  for run in "${RUNS[@]}"; do
    read -r name split_by split alpha <<<"$run"
    out="$OUT/${clip//\//-}/$name-$split_by-$split"
    args=(
      --dataset "$DATA" --name "$name" --split-by "$split_by" --split "$split"
      --method global-local --clip "$clip" --proposals "$PROPOSALS"
      --alpha "$alpha" --beta 0.5 --k 3 --normalization reference --pixels "$PIXELS"
      --out "$out"
    )
    if [[ -n "$IMAGES" ]]; then args+=(--images "$IMAGES"); fi
    if [[ -n "$DEVICE" ]]; then args+=(--device "$DEVICE"); fi
    echo "== $clip $name ($split_by) $split -> $out"
    "$REFSEG" eval "${args[@]}"
  done
done

echo
"$PYTHON" -m refseg.eval.report "$OUT" --out "$OUT/table.md"
echo "table written to $OUT/table.md"
