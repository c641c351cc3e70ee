"""The benchmark runs at smoke size, interleaved; its reported numbers are those of its own timings."""

import statistics

import pytest


def test_bench_smoke_reports_its_own_timings(capsys, load_bench):
    """Catches (replacing a test that checked positivity only): throughput ratios that are not
    time(peer)/time(ours) of the same repetition, a median that is not the median, images/s not derived from
    the median time, and a repetition count other than asked."""
    out = load_bench("fluid").main(["--size", "smoke", "--reps", "3"])
    t = out["times"]
    assert len(t["ours"]) == len(t["peer"]) == 3 == out["reps"]
    per = [p / o for o, p in zip(t["ours"], t["peer"])]
    assert out["per_rep"] == pytest.approx(per)
    assert out["ratio_median"] == pytest.approx(statistics.median(per))
    assert out["ratio_min"] == pytest.approx(min(per)) and out["ratio_max"] == pytest.approx(max(per))
    assert out["ours_images_per_s"] == pytest.approx(out["images_per_rep"] / statistics.median(t["ours"]))
    assert out["images_per_rep"] == 32
    text = capsys.readouterr().out
    assert f"median {out['ratio_median']:.3f}" in text
