"""Interleaved benchmark timing: ours and the peer alternate, so a busy machine moves both alike.

    res = interleaved({"ours": f, "peer": g}, reps=5, warmup=1, ratio=("ours", "peer"))
    print(format_interleaved(res, "ours / peer time"))

Each repetition runs every case once, in the given order (ours, peer, ours, peer, ...); the ratio of a
repetition is time(first) / time(second) of that same repetition, and the report is the median ratio
with its spread (min, quartiles, max) over the repetitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def interleaved(cases: Mapping[str, Callable[[], Any]], reps: int = 5, warmup: int = 1,
                ratio: Sequence[str] | None = None, timer: Callable[[], float] = time.perf_counter
                ) -> dict[str, Any]:
    """Time each case `reps` times, interleaved, after `warmup` untimed rounds of each.

    Returns {"times": {name: [s, ...]}, "median": {name: s}, "reps": reps, and with `ratio=(a, b)`:
    "ratio": {"median", "min", "q1", "q3", "max", "per_rep"}} where per_rep[i] = times[a][i] / times[b][i].
    """
    if reps < 1:
        raise ValueError("reps must be >= 1")
    names = list(cases)
    for _ in range(max(0, warmup)):
        for n in names:
            cases[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(reps):
        for n in names:
            t0 = timer()
            cases[n]()
            times[n].append(timer() - t0)
    out: dict[str, Any] = {"times": times, "median": {n: float(np.median(v)) for n, v in times.items()},
                           "reps": reps}
    if ratio is not None:
        a, b = ratio
        per = [ta / tb if tb > 0 else float("inf") for ta, tb in zip(times[a], times[b])]
        q = np.percentile(per, [0, 25, 50, 75, 100])
        out["ratio"] = {"of": f"{a}/{b}", "median": float(q[2]), "min": float(q[0]), "q1": float(q[1]),
                        "q3": float(q[3]), "max": float(q[4]), "per_rep": per}
    return out


def format_interleaved(res: Mapping[str, Any], label: str = "") -> str:
    """One line: medians per case and the median ratio with its range."""
    meds = ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in res["median"].items())
    line = f"{label + ': ' if label else ''}{meds} (median of {res['reps']}, interleaved)"
    r = res.get("ratio")
    if r:
        line += f"; time ratio {r['of']} {r['median']:.3f} (range {r['min']:.3f}-{r['max']:.3f}, IQR {r['q1']:.3f}-{r['q3']:.3f})"
    return line
