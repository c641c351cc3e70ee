"""benchmarks/bench_violence.py at smoke size: decoding compared frame by frame and interleaved, bytes counted
from the messages."""

from __future__ import annotations

import pytest


def test_bench_smoke(load_bench):
    """Fault caught: a fast decoder that returns other images than OpenCV's (colour order, size, scaling), or
    drops frames; fewer than 5 repetitions, or ratios inverted or not paired repetition by repetition (the
    interleaved order itself is pinned by tests/core test_interleaved_alternates_and_pairs_the_ratios); FedPer's
    train replies carrying more than the base (the byte ratio is read from the round's messages, so it is not
    equal to base/total by construction)."""
    res = load_bench("violence").main(["--size", "smoke"])
    d = res["decode"]
    assert d["chunks_ours"] == d["chunks_opencv"] == 16  # 8 clips of 32 frames
    assert d["mean_abs_pixel_difference"] < 4  # out of 255: the same frames, scaled alike
    assert len(d["times"]["ours"]) == len(d["times"]["peer"]) == d["reps"] == 5 == len(d["speedup"]["per_rep"])
    # the speed-up is OpenCV's time over ours, repetition by repetition (an inverted ratio, or one made of
    # unpaired medians, would read a slower reader as a faster one)
    speed = sorted(p / o for o, p in zip(d["times"]["ours"], d["times"]["peer"]))
    assert d["speedup"]["per_rep"] == pytest.approx(speed) and d["speedup"]["median"] == pytest.approx(speed[2])
    b = res["bytes"]
    assert abs(b["ratio"] - b["param_ratio"]) < 1e-9 and b["fedper_bytes"] < b["fedavg_bytes"]
    r = res["round"]["ratio"]
    t = res["round"]["times"]
    per = [o / p for o, p in zip(t["ours"], t["peer"])]  # round time: ours over the plain app's, paired
    assert len(per) == 5 and r["per_rep"] == pytest.approx(per) and r["median"] == pytest.approx(sorted(per)[2])
