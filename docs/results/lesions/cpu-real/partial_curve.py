"""The learning-curve points and loss log of an unfinished cpu-real segmentation unit, read from its
in-unit checkpoint's metadata (units/seg-<backbone>.partial, safetensors header; no tensors loaded)."""
import csv
import json
import sys

from safetensors import safe_open

part, out = sys.argv[1], sys.argv[2]
with safe_open(part, framework="pt") as f:
    meta = json.loads(f.metadata()["state"])
h = meta["history"]
res = {"checkpoint_step": meta["step"], "cpu_seconds": h["cpu_seconds"], "seconds": h["seconds"],
       "resumed_at": h["resumed_at"], "curve": h["curve"],
       "loss": [{"iteration": s, "loss": l} for s, l in zip(h["step"], h["loss"])]}
json.dump(res, open(out + "/partial_history.json", "w"), indent=1)
with open(out + "/learning_curve_partial.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["iteration", "CPU-min", "AP@0.5", "AP@[.5:.95]", "box AP@0.5", "per-image AP@0.5", "Dice",
                "Dice/volume", "detections"])
    for p in h["curve"]:
        w.writerow([p["iteration"], round(p["cpu_seconds"] / 60, 2), p["ap50"], p["ap"], p["box_ap50"],
                    p["paper_ap50"], p["dice"], p["dice_volume"], p["n_detections"]])
print(json.dumps({k: res[k] for k in ("checkpoint_step", "cpu_seconds", "seconds", "curve")}, indent=1))
