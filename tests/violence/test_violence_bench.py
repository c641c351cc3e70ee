"""benchmarks/bench_violence.py at smoke size: the numbers exist and are positive; bytes ratio is exact."""

from __future__ import annotations


def test_bench_smoke(load_bench):
    res = load_bench("violence").main(["--size", "smoke"])
    b = res["bytes"]
    assert b["ratio"] == b["param_ratio"]  # FedPer sends exactly the base: data bytes follow the parameters
    assert 0 < b["payload_ratio"] < 1
    for k in ("ours_round_s", "plain_round_s"):
        assert res["round"][k] > 0
    d = res["decode"]
    assert d["chunks_ours"] == d["chunks_opencv"] > 0 and d["ours_chunks_per_s"] > 0 and d["opencv_chunks_per_s"] > 0
    assert all(v > 0 for v in res["ratios"].values())
