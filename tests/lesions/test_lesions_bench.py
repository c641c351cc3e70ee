import statistics


def test_bench_smoke_is_interleaved_and_consistent(capsys, load_bench):
    """Catches timings taken back to back instead of interleaved (one list per model, equal lengths, the
    ratio per repetition pair), a ratio that is not the median of those pairs, and wrong model sizes."""
    res = load_bench("lesions").main(["--size", "smoke"])
    t = res["times"]
    assert len(t["ours"]) == len(t["peer"]) == res["reps"] == 5
    per = [a / b for a, b in zip(t["ours"], t["peer"])]
    assert res["per_rep_ratio"] == per
    assert res["latency_ratio"] == statistics.median(per)
    assert res["ratio_spread"] == [min(per), max(per)]
    assert res["ours_latency_s"] == statistics.median(t["ours"])
    assert res["ours_params"] == 6051810 and res["peer_params"] == 43975515
    assert res["ours_detections"] == res["peer_detections"] == 10  # the same cap, fully used (threshold 0)
    assert "interleaved" in capsys.readouterr().out
