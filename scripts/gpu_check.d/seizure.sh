#!/usr/bin/env bash
# seizure on the GPU: the smoke preset (stage 1 + stage 2, baselines, probe), `train`, `evaluate` and
# `predict` with --device cuda on the built-in cohort; then the windowed path (fold statistics) on a
# small CHB-MIT-format set. Exits non-zero on any error or a non-finite metric. About 1-2 min on a GPU.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
DL=${DETECTLAB:-detectlab}
PY=${PYTHON:-python}
echo "seizure gpu-check in $OUT"
$DL seizure run --preset smoke --data builtin --device cuda --out "$OUT/seizure-run"
$DL seizure train --preset smoke --data builtin --device cuda --out "$OUT/seizure-train" "patients=['P01','P02','P03']"
$DL seizure evaluate "$OUT/seizure-train" "$OUT/seizure-run/data/edf" --out "$OUT/seizure-eval" --device cuda
$DL seizure predict "$OUT/seizure-train" "$OUT/seizure-run/data/edf/P04.edf" --out "$OUT/seizure-pred" --device cuda
# windowed data (training-fold statistics in the checkpoint) through the same commands
$PY - "$OUT/chbmit_windows" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
root = Path(sys.argv[1]); rng = np.random.default_rng(0)
for k, p in enumerate(("chb01", "chb02", "chb03")):
    for sub in ("ictal", "preictal_10s"):
        (root / p / sub).mkdir(parents=True, exist_ok=True)
    for r in range(2):
        np.save(root / p / "ictal" / f"{p}_{r + 1:02d}_ictal.npy", rng.normal(0, 60 * (k + 1), (23, 2561)))
        np.save(root / p / "preictal_10s" / f"{p}_{r + 1:02d}_preictal10s.npy", rng.normal(0, 20 * (k + 1), (23, 2561)))
PYEOF
$DL seizure run --preset chbmit --data "$OUT/chbmit_windows" --device cuda --out "$OUT/seizure-chb" seeds=1 stage1.epochs=2
$DL seizure train --preset chbmit --data "$OUT/chbmit_windows" --device cuda --out "$OUT/seizure-chb-train" stage1.epochs=2
$DL seizure evaluate "$OUT/seizure-chb-train" "$OUT/chbmit_windows" --out "$OUT/seizure-chb-eval" --device cuda
$PY - "$OUT" <<'PYEOF'
import json, math, sys
from pathlib import Path
out = Path(sys.argv[1])
m = json.loads((out / "seizure-run" / "metrics.json").read_text())
for v, t in m["variants"].items():
    assert math.isfinite(t["mcc"]["mean"]), (v, t)
e = json.loads((out / "seizure-eval" / "metrics.json").read_text())
assert set(e["models"]) == {"cnn_at", "cnn_bilstm_at"}, e["models"].keys()
assert (out / "seizure-pred" / "P04_probabilities.csv").stat().st_size > 100
c = json.loads((out / "seizure-chb-eval" / "metrics.json").read_text())
assert "cnn_at" in c["models"] and math.isfinite(c["models"]["cnn_at"]["pooled"]["auc_roc"])
print("seizure gpu-check: ok")
PYEOF
