"""SzCORE event scoring (timescoring) and the onset latency of the seizure system (events.py)."""

import math

import numpy as np
import pytest

from detectlab.seizure.config import EventConfig
from detectlab.seizure.events import detect_intervals, onset_latencies, pool, score_events, score_probs

EV = EventConfig()


def test_always_on_detector_is_not_free():
    """Catches the old any-overlap count: a detector that says 'seizure' everywhere scored 'detected 1/1,
    false alarms 0, latency -200 s'. Under SzCORE rules it has 11 false positives (264 per 24 h) and its
    latency is clipped at -30 s."""
    r = score_probs([(1000.0, 1060.0)], np.ones(3600), 0.5, 1.0, EV)
    assert (r["ref"], r["tp"], r["fp"]) == (1, 1, 11)
    assert r["fp_per_24h"] == pytest.approx(264.0)
    assert r["precision"] == pytest.approx(1 / 12) and r["f1"] == pytest.approx(2 / 13)
    assert r["latencies_s"] == [-30.0]


def test_detection_plus_one_false_alarm():
    """Catches a false alarm far from the seizure not being counted (precision 1/2, 24 FP per 24 h)."""
    p = np.zeros(3600)
    p[1010:1050] = 0.9
    p[2000:2010] = 0.8
    r = score_probs([(1000.0, 1060.0)], p, 0.5, 1.0, EV)
    assert (r["tp"], r["fp"]) == (1, 1)
    assert r["sensitivity"] == 1.0 and r["precision"] == 0.5 and r["f1"] == pytest.approx(2 / 3)
    assert r["fp_per_24h"] == pytest.approx(24.0) and r["latencies_s"] == [10.0]


def test_tolerances_decide_detection_and_false_alarm():
    """Catches the tolerance window not applied: a detection 20 s before onset counts (30 s tolerance),
    one 40 s before onset and ending before it is a false positive and no detection; 50 s after the
    offset is within the 60 s end tolerance."""
    sz = [(1000.0, 1060.0)]
    r = score_events(sz, [(980.0, 990.0)], 3600.0, EV)
    assert (r["tp"], r["fp"], r["latencies_s"]) == (1, 0, [-20.0])
    r = score_events(sz, [(950.0, 960.0)], 3600.0, EV)
    assert (r["tp"], r["fp"], r["latencies_s"]) == (0, 1, [])
    r = score_events(sz, [(1110.0, 1115.0)], 3600.0, EV)
    assert (r["tp"], r["fp"], r["latencies_s"]) == (1, 0, [110.0])
    r = score_events(sz, [(1125.0, 1130.0)], 3600.0, EV)
    assert (r["tp"], r["fp"]) == (0, 1)


def test_early_detection_latency_clipped_at_tolerance():
    """Catches latency that can be any negative number: a detection that starts 500 s before onset and
    runs through the seizure gives latency -30 s, and its part beyond 300 s is a separate false positive."""
    r = score_events([(1000.0, 1060.0)], [(500.0, 1050.0)], 3600.0, EV)
    assert r["latencies_s"] == [-30.0]
    assert (r["tp"], r["fp"]) == (1, 1)  # 500-800 s split off: it touches no widened seizure


def test_custom_event_parameters_are_used():
    """Catches any configured SzCORE parameter being ignored in favour of the library default."""
    ev = EventConfig(tolerance_start=5.0, tolerance_end=5.0)
    r = score_events([(1000.0, 1060.0)], [(980.0, 990.0)], 3600.0, ev)
    assert (r["tp"], r["fp"]) == (0, 1)
    r = score_events([(1000.0, 1060.0)], [(500.0, 1050.0)], 3600.0, ev)
    assert r["latencies_s"] == [-5.0]
    r = score_events([(1000.0, 1060.0)], [(1080.0, 1085.0)], 3600.0, ev)  # 20 s after the offset
    assert (r["tp"], r["fp"]) == (0, 1)
    assert score_events([(1000.0, 1060.0)], [(1080.0, 1085.0)], 3600.0, EV)["tp"] == 1
    half = EventConfig(min_overlap=0.5)  # a 10-s detection covers less than half of the widened 150-s seizure
    assert score_events([(1000.0, 1060.0)], [(1010.0, 1020.0)], 3600.0, half)["tp"] == 0
    short = EventConfig(max_event_duration=20.0)
    assert score_events([(1000.0, 1060.0)], [], 3600.0, short)["ref"] == 3
    near = EventConfig(min_duration_between_events=10.0)
    assert score_events([(100.0, 150.0), (200.0, 250.0)], [], 3600.0, near)["ref"] == 2


def test_close_seizures_merged_and_long_ones_split():
    """Catches the SzCORE merge (< 90 s apart) and split (> 300 s) rules not applied to the reference."""
    r = score_events([(100.0, 150.0), (200.0, 250.0)], [(110.0, 120.0)], 3600.0, EV)
    assert r["ref"] == 1 and r["tp"] == 1
    r = score_events([(100.0, 800.0)], [(110.0, 120.0)], 3600.0, EV)
    assert r["ref"] == 3 and r["tp"] == 1  # split in 300-s pieces: two undetected
    assert r["latencies_s"] == [10.0]  # one onset, not one per piece


def test_no_seizure_no_detection():
    """Catches undefined scores reported as numbers on a seizure-free recording without detections."""
    r = score_events([], [], 600.0, EV)
    assert (r["ref"], r["tp"], r["fp"]) == (0, 0, 0)
    assert math.isnan(r["sensitivity"]) and math.isnan(r["precision"]) and math.isnan(r["f1"])
    assert r["fp_per_24h"] == 0.0


def test_events_at_time_zero_are_kept():
    """Catches events clipped to start later than 0 s (a seizure or detection in the first second lost)."""
    r = score_events([(0.0, 20.0)], [(0.0, 0.5)], 600.0, EV)
    assert (r["ref"], r["tp"], r["fp"]) == (1, 1, 0)
    r = score_events([(0.0, 0.5)], [], 600.0, EV)
    assert r["ref"] == 1


def test_window_length_is_used():
    """Catches 2-s windows scored as 1-s windows (times halved) or the duration divided by the window."""
    p = np.zeros(300)
    p[100:110] = 0.9  # 200-220 s with 2-s windows
    r = score_probs([(200.0, 230.0)], p, 0.5, 2.0, EV)
    assert (r["tp"], r["fp"], r["latencies_s"]) == (1, 0, [0.0])
    assert r["duration_s"] == 600.0


def test_detections_beyond_recording_end_are_clipped():
    """Catches detections past the end of the recording counted as extra time or events."""
    r = score_events([(10.0, 20.0)], [(15.0, 900.0)], 600.0, EV)
    assert (r["tp"], r["fp"]) == (1, 1)  # 15-315 s matched, 315-600 s a false positive


def test_onset_latency_merges_like_the_library():
    """Catches latency measured per split piece or per unmerged seizure."""
    ev = EventConfig()
    lat = onset_latencies([(100.0, 150.0), (200.0, 250.0)], [(210.0, 220.0)], 3600.0, ev)
    assert lat == [110.0]  # merged seizure starts at 100 s
    assert onset_latencies([(100.0, 150.0)], [(400.0, 410.0)], 3600.0, ev) == []


def test_pool_sums_counts_and_hours():
    """Catches pooling that averages per-recording rates instead of summing counts and durations."""
    a = score_probs([(100.0, 160.0)], np.r_[np.zeros(100), np.ones(30), np.zeros(3470)], 0.5, 1.0, EV)
    b = score_probs([], np.r_[np.zeros(1000), np.ones(10), np.zeros(6190)], 0.5, 1.0, EV)
    p = pool([a, b])
    assert (p["ref"], p["tp"], p["fp"], p["recordings"]) == (1, 1, 1, 2)
    assert p["hours"] == pytest.approx(3.0)
    assert p["fp_per_24h"] == pytest.approx(8.0)  # 1 FP in 3 h, not the mean of 0 and 12
    assert p["sensitivity"] == 1.0 and p["precision"] == 0.5 and p["f1"] == pytest.approx(2 / 3)
    assert p["latency_s"] == {"mean": 0.0, "median": 0.0, "sd": 0.0, "n": 1}
    e = pool([])
    assert math.isnan(e["sensitivity"]) and math.isnan(e["fp_per_24h"]) and e["latency_s"]["n"] == 0
    assert math.isnan(e["precision"]) and math.isnan(e["f1"]) and math.isnan(e["latency_s"]["sd"])
    assert math.isnan(e["latency_s"]["mean"]) and math.isnan(e["latency_s"]["median"])


def test_pool_rates_with_partial_detection():
    """Catches wrong sensitivity / F1 formulas that agree only when every seizure is detected."""
    parts = [{"ref": 4, "tp": 1, "fp": 2, "duration_s": 1.0, "latencies_s": [3.0, 5.0]}]
    p = pool(parts)
    assert p["sensitivity"] == 0.25 and p["precision"] == pytest.approx(1 / 3)
    assert p["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 3))
    assert p["fp_per_24h"] == pytest.approx(2 * 86400.0)
    assert p["latency_s"]["sd"] == pytest.approx(np.std([3.0, 5.0], ddof=1))


def test_pool_latency_statistics():
    """Catches the pooled latency mean/median/SD computed over recordings rather than seizures."""
    parts = [{"ref": 2, "tp": 2, "fp": 0, "duration_s": 3600.0, "latencies_s": [2.0, 4.0]},
             {"ref": 1, "tp": 1, "fp": 0, "duration_s": 3600.0, "latencies_s": [12.0]}]
    lat = pool(parts)["latency_s"]
    assert lat["mean"] == pytest.approx(6.0) and lat["median"] == 4.0
    assert lat["sd"] == pytest.approx(np.std([2.0, 4.0, 12.0], ddof=1)) and lat["n"] == 3


def test_sequence_boundaries_recordings_scored_separately():
    """Catches two recordings scored as one timeline: a detection at the end of one file and another at
    the start of the next are two false positives, not one merged event across the file gap."""
    end = np.r_[np.zeros(590), np.ones(10)]
    start = np.r_[np.ones(10), np.zeros(590)]
    sep = pool([score_probs([], end, 0.5, 1.0, EV), score_probs([], start, 0.5, 1.0, EV)])
    joined = score_probs([], np.r_[end, start], 0.5, 1.0, EV)
    assert sep["fp"] == 2 and joined["fp"] == 1


def test_detect_intervals_and_merge_gap():
    """Catches off-by-one window runs, wrong peaks, or a merge gap applied with the wrong inequality."""
    p = np.array([0.1, 0.9, 0.8, 0.2, 0.1, 0.7, 0.1, 0.1, 0.95, 0.1])
    iv = detect_intervals(p, 0.5)
    assert iv == [(1.0, 3.0, 0.9), (5.0, 6.0, 0.7), (8.0, 9.0, 0.95)]
    assert detect_intervals(p, 0.5, merge_gap_s=1.0) == iv
    assert detect_intervals(p, 0.5, merge_gap_s=2.0) == [(1.0, 9.0, 0.95)]
    q = np.array([0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9])
    assert detect_intervals(q, 0.5, merge_gap_s=1.0) == [(0.0, 3.0, 0.9), (6.0, 7.0, 0.9)]
    assert detect_intervals(np.array([0.5, 0.49]), 0.5) == [(0.0, 1.0, 0.5)]  # >= threshold
    assert detect_intervals(np.array([0.2, 0.9]), 0.5, window_s=2.0) == [(2.0, 4.0, 0.9)]
    assert detect_intervals(np.zeros(5), 0.5) == []
    assert detect_intervals(np.zeros(5), 0.5, merge_gap_s=2.0) == []
    assert detect_intervals(np.array([[0.9], [0.1], [0.9]]), 0.5) == [(0.0, 1.0, 0.9), (2.0, 3.0, 0.9)]  # default: no merge
    two = np.array([0.9, 0.1, 0.1, 0.9])
    assert detect_intervals(two, 0.5, merge_gap_s=2.0) == [(0.0, 4.0, 0.9)]
    assert detect_intervals(two, 0.5, window_s=2.0, merge_gap_s=3.0) == [(0.0, 2.0, 0.9), (6.0, 8.0, 0.9)]


def test_boundaries_of_clipping_merging_and_latency_windows():
    """Catches off-by-one boundaries: events wholly past the end (zero length once clipped) counted, seizures
    exactly min_duration_between_events apart merged, and detections that only touch the widened seizure
    at its edges (or lie in the first second) given a latency."""
    r = score_events([(600.0, 650.0)], [(600.0, 800.0)], 600.0, EV)  # both start at the end: zero length
    assert (r["ref"], r["tp"], r["fp"]) == (0, 0, 0)
    r = score_events([(100.0, 150.0), (240.0, 290.0)], [(100.0, 105.0), (240.0, 245.0)], 3600.0, EV)
    assert r["ref"] == 2 and r["latencies_s"] == [0.0, 0.0]  # 90 s apart: not merged (strict <)
    assert score_events([(100.0, 110.0)], [(170.0, 180.0)], 3600.0, EV)["latencies_s"] == []  # starts at offset+60
    assert score_events([(100.0, 110.0)], [(60.0, 70.0)], 3600.0, EV)["latencies_s"] == []  # ends at onset-30
    assert score_events([(0.5, 10.0)], [(0.0, 0.8)], 3600.0, EV)["latencies_s"] == [-0.5]
