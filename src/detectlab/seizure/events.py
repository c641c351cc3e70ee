"""Event-level scoring that clinicians use: seizures detected, onset latency, false alarms per hour.

Detections are runs of consecutive windows at or above the threshold (runs separated by at most
``merge_gap_s`` seconds are joined). A seizure is detected when a detection overlaps it; its latency is
the start of the first overlapping detection minus the annotated onset (negative: flagged early).
A detection overlapping no seizure is a false alarm; the rate is per hour of recording.
"""

from __future__ import annotations

import numpy as np


def detect_intervals(probs: np.ndarray, threshold: float, window_s: float = 1.0, merge_gap_s: float = 0.0
                     ) -> list[tuple[float, float, float]]:
    """(onset s, offset s, peak probability) of each run of windows with prob >= threshold."""
    p = np.asarray(probs, dtype=float).reshape(-1)
    on = np.concatenate([[0], (p >= threshold).astype(np.int8), [0]])
    d = np.diff(on)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)  # window index [start, end)
    if len(starts) > 1 and merge_gap_s > 0:
        gap = (starts[1:] - ends[:-1]) * window_s
        keep = np.concatenate([[True], gap > merge_gap_s])
        starts, ends = starts[keep], np.concatenate([ends[:-1][keep[1:]], ends[-1:]])
    peaks = [float(p[s:e].max()) for s, e in zip(starts, ends)]
    return [(float(s * window_s), float(e * window_s), pk) for s, e, pk in zip(starts, ends, peaks)]


def event_metrics(intervals: list[tuple[float, float, float]], seizures: list[tuple[float, float]],
                  duration_s: float) -> dict[str, float]:
    """Seizures detected, mean latency of the detected ones, false alarms and false alarms per hour."""
    iv = np.asarray([(a, b) for a, b, *_ in intervals], dtype=float).reshape(-1, 2)
    sz = np.asarray(seizures, dtype=float).reshape(-1, 2)
    # overlap matrix (detections x seizures)
    ov = (iv[:, None, 0] < sz[None, :, 1]) & (iv[:, None, 1] > sz[None, :, 0])
    detected = ov.any(axis=0)
    lat = [float(iv[ov[:, j], 0].min() - sz[j, 0]) for j in np.flatnonzero(detected)]
    fa = int((~ov.any(axis=1)).sum()) if len(iv) else 0
    return {
        "seizures": int(len(sz)), "detected": int(detected.sum()),
        "latency_s": float(np.mean(lat)) if lat else float("nan"),
        "false_alarms": fa, "fa_per_hour": fa / (duration_s / 3600.0) if duration_s > 0 else float("nan"),
    }
