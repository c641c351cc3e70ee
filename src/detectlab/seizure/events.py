"""Event scoring the way the SzCORE framework does it, through the `timescoring` library (esl-epfl).

A detection is a run of consecutive windows whose probability is at or above the threshold. Reference
and detections are scored by ``timescoring.scoring.EventScoring`` with its any-overlap rules: events
closer than ``min_duration_between_events`` are merged, events longer than ``max_event_duration`` are
split, a reference event counts as detected when a detection overlaps it widened by ``tolerance_start``
before and ``tolerance_end`` after, and every detection that overlaps no detected (widened) reference
event is a false positive. Sensitivity = TP / reference events, precision = TP / (TP + FP), F1, and
false positives per 24 h of recording are the library's.

Onset latency is not part of the library. It is measured per annotated seizure (after the library's
merging, before its splitting, so a split-off piece of a long seizure has no "onset"): the start of the
first (processed) detection that overlaps the widened seizure, minus the onset, **clipped below at
-tolerance_start**. A detection that started earlier than that is, by the library's rule, a false
positive for the part outside the tolerance, so it cannot make a detector look early: a detector that
says "seizure" everywhere has latency -tolerance_start and a false positive every max_event_duration.

Each recording is scored on its own (a sequence never runs across a file gap); :func:`pool` sums
counts and durations over recordings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FS = 10  # the library's internal time resolution (Hz)
NAN = float("nan")


def detect_intervals(probs: np.ndarray, threshold: float, window_s: float = 1.0, merge_gap_s: float = 0.0
                     ) -> list[tuple[float, float, float]]:
    """(onset s, offset s, peak probability) of each run of windows with prob >= threshold; runs
    separated by at most `merge_gap_s` seconds are joined."""
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


def _params(ev: Any):
    from timescoring.scoring import EventScoring

    return EventScoring.Parameters(toleranceStart=ev.tolerance_start, toleranceEnd=ev.tolerance_end,
                                   minOverlap=ev.min_overlap, maxEventDuration=ev.max_event_duration,
                                   minDurationBetweenEvents=ev.min_duration_between_events)


def score_events(seizures: list[tuple[float, float]], detections: list[tuple[float, ...]], duration_s: float,
                 ev: Any) -> dict[str, Any]:
    """Score one recording: reference seizures and detections (onset, offset[, ...]) in seconds."""
    from timescoring.annotations import Annotation
    from timescoring.scoring import EventScoring

    n = int(round(duration_s * FS))
    clip = [(max(0.0, float(a)), min(float(duration_s), float(b))) for a, b, *_ in detections]
    ref_ev = [(max(0.0, float(a)), min(float(duration_s), float(b))) for a, b in seizures]
    ref = Annotation([e for e in ref_ev if e[1] > e[0]], FS, n)
    hyp = Annotation([e for e in clip if e[1] > e[0]], FS, n)
    res = EventScoring(ref, hyp, _params(ev))
    lat = onset_latencies(ref.events, res.hyp.events, duration_s, ev)
    return {"ref": int(res.refTrue), "tp": int(res.tp), "fp": int(res.fp), "duration_s": float(duration_s),
            "sensitivity": float(res.sensitivity), "precision": float(res.precision), "f1": float(res.f1),
            "fp_per_24h": float(res.fpRate), "latencies_s": lat}


def onset_latencies(seizures: list[tuple[float, float]], hyp_events: list[tuple[float, float]], duration_s: float,
                    ev: Any) -> list[float]:
    """Latency of each detected seizure (see the module docstring); undetected seizures are left out."""
    merged: list[list[float]] = []
    for a, b in sorted(seizures):
        if merged and a - merged[-1][1] < ev.min_duration_between_events:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out = []
    for a, b in merged:
        lo, hi = max(0.0, a - ev.tolerance_start), min(duration_s, b + ev.tolerance_end)
        starts = [s for s, e in hyp_events if s < hi and e > lo]
        if starts:
            out.append(float(max(min(starts), a - ev.tolerance_start) - a))
    return out


def score_probs(seizures: list[tuple[float, float]], probs: np.ndarray, threshold: float, window_s: float,
                ev: Any) -> dict[str, Any]:
    """Score one recording's per-window probabilities against its seizures."""
    det = detect_intervals(probs, threshold, window_s)
    return score_events(seizures, det, len(probs) * window_s, ev)


def pool(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool recordings: sums of TP, FP, reference events and hours; sensitivity, precision, F1 and FP/24 h
    of the sums; latency mean, median and SD over all detected seizures."""
    ref = sum(p["ref"] for p in parts)
    tp = sum(p["tp"] for p in parts)
    fp = sum(p["fp"] for p in parts)
    dur = sum(p["duration_s"] for p in parts)
    lat = np.asarray([x for p in parts for x in p["latencies_s"]], dtype=float)
    latency = {"mean": NAN, "median": NAN, "sd": NAN, "n": int(lat.size)}
    if lat.size:
        latency.update(mean=float(lat.mean()), median=float(np.median(lat)),
                       sd=float(lat.std(ddof=1)) if lat.size > 1 else 0.0)
    return {"recordings": len(parts), "ref": ref, "tp": tp, "fp": fp, "hours": dur / 3600.0,
            "sensitivity": tp / ref if ref else NAN,
            "precision": tp / (tp + fp) if tp + fp else NAN,
            "f1": 2 * tp / (2 * tp + fp + (ref - tp)) if ref + fp else NAN,
            "fp_per_24h": fp / (dur / 86400.0) if dur > 0 else NAN,
            "latency_s": latency}
