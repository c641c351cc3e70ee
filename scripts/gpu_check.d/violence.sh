#!/usr/bin/env bash
# violence on a GPU: the smoke preset (Flower simulation, clients on cuda), evaluate and predict with --device cuda.
set -euo pipefail
DL=${DL:-.venv/bin/detectlab}
OUT=${OUT:-runs/gpu-check/violence}
mkdir -p "$OUT"
"$DL" violence run --preset smoke --data builtin --device cuda --out "$OUT/run"
data="$OUT/run/data/builtin0"
"$DL" violence evaluate "$OUT/run" "$data" --client 0 --device cuda --out "$OUT/evaluate"
"$DL" violence evaluate "$OUT/run" "$data" --strategy fedavg --device cuda --out "$OUT/evaluate-global"
clip=$(find "$data" -name "*.mp4" | sort | head -n 1)
"$DL" violence predict "$OUT/run" "$clip" --client 1 --device cuda --out "$OUT/predict"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
m = json.loads((out / "run" / "metrics.json").read_text())
assert m["experiments"]["balanced2"]["splits"]["source"]["methods"]["fedper"]["summary"]["clip_accuracy"]["n"] == 1
e = json.loads((out / "evaluate" / "metrics.json").read_text())
print("violence gpu-check: evaluate clip accuracy", e["metrics"]["clip"]["accuracy"])
PY
