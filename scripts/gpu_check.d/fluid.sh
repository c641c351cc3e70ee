#!/usr/bin/env bash
# fluid on CUDA: the smoke preset (train, baselines, Grad-CAM), evaluate and predict, then the CUDA
# largest-batch search with a mask-supervised, augmented fold (generators and masks on the device).
set -euo pipefail
OUT=${OUT:-runs/gpu-check/fluid}
DL=${DL:-.venv/bin/detectlab}
mkdir -p "$OUT"
$DL fluid run --preset smoke --data builtin --device cuda --out "$OUT/run"
$DL fluid evaluate "$OUT/run" "$OUT/run/data/synthetic" --device cuda --out "$OUT/evaluate"
$DL fluid predict "$OUT/run" "$OUT/run/data/synthetic" --device cuda --out "$OUT/predict"
$DL fluid run --preset smoke --data builtin --device cuda --out "$OUT/finder" "archs=['resnet18']" \
  "designs=['train90']" "variants=['mask','augment']" "batch_sizes=[]" max_batch=32
grep -q '"max_batch": 32' "$OUT/finder/metrics.json"
echo "fluid gpu-check ok"
