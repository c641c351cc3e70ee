#!/usr/bin/env bash
# make gpu-check: every system's smoke preset, evaluate and predict with --device cuda; fails on any error.
# Each system's steps are in scripts/gpu_check.d/<system>.sh (run with OUT=<its folder>, DL=<detectlab>).
set -uo pipefail
cd "$(dirname "$0")/.."
DL=${DL:-.venv/bin/detectlab}
ROOT=${GPU_CHECK_OUT:-runs/gpu-check}
mkdir -p "$ROOT"
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device visible to torch; nothing checked" >&2
  exit 2
fi
.venv/bin/python -c "import torch; print('gpu-check on', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
failed=()
for f in scripts/gpu_check.d/*.sh; do
  s=$(basename "$f" .sh)
  echo "=== $s"
  t0=$(date +%s)
  if OUT="$ROOT/$s" DL="$DL" bash "$f" > "$ROOT/$s.log" 2>&1; then
    echo "ok   $s ($(( $(date +%s) - t0 )) s)"
  else
    echo "FAIL $s ($(( $(date +%s) - t0 )) s); last lines of $ROOT/$s.log:"; tail -n 15 "$ROOT/$s.log"
    failed+=("$s")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then echo "gpu-check: FAILED: ${failed[*]}"; exit 1; fi
echo "gpu-check: all systems ok"
