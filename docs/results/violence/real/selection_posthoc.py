"""Post-hoc: what each client's held-out clip balanced accuracy would have been had its model been chosen by
the threshold-aware rule (select="best_val_bacc": validation clip balanced accuracy at 0.5, then validation
AUC, then loss) instead of the run's rule (select="best_val": validation AUC, then loss).

Reads only rounds/*.jsonl of a finished run (every round logs each client's validation figures and, with
fl.eval_test_every_round, its held-out clip balanced accuracy of that round's model); nothing is retrained, and
the choice uses validation figures only. Per client only (pooled figures need the chunk scores of each round,
which are not kept). Usage: python selection_posthoc.py RUN_FOLDER
"""
import json
import math
import sys
from pathlib import Path


def q(x):
    return round(float(x), 9) if x is not None and math.isfinite(float(x)) else -1.0


def main(run: Path) -> None:
    rows = []
    for f in sorted((run / "rounds").glob("*.jsonl")):
        if "chunksplit" in f.stem:
            continue
        exp, seed, strat = f.stem.split("-")
        rs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        for c in rs[0]["clients"]:
            per = [(r["round"], r["clients"][c]) for r in rs if c in r["clients"]]
            auc = max(per, key=lambda t: (q(t[1].get("val-auc")), -t[1]["val-loss"]))
            bac = max(per, key=lambda t: (q(t[1]["val-bacc"]), q(t[1].get("val-auc")), -t[1]["val-loss"]))
            rows.append((exp, strat, seed, int(c) + 1, auc[0], auc[1]["test-clip-bacc"], bac[0],
                         bac[1]["test-clip-bacc"]))
    print("| experiment | strategy | seed | client | round (AUC rule) | held-out clip bal. acc | "
          "round (bacc rule) | held-out clip bal. acc |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]} | {r[7]:.3f} |")
    print()
    print("| experiment | strategy | mean over clients and seeds, AUC rule | bacc rule | n |")
    print("|---|---|---|---|---|")
    keys = sorted({(r[0], r[1]) for r in rows})
    for k in keys:
        sel = [r for r in rows if (r[0], r[1]) == k]
        print(f"| {k[0]} | {k[1]} | {sum(r[5] for r in sel) / len(sel):.3f} | {sum(r[7] for r in sel) / len(sel):.3f} "
              f"| {len(sel)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
