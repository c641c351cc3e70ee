def test_bench_smoke_reports_positive_numbers(capsys, load_bench):
    res = load_bench("lesions").main(["--size", "smoke"])
    for k in ("ours_latency_s", "peer_latency_s", "latency_ratio", "ours_params", "peer_params", "param_ratio"):
        assert res[k] > 0, k
    assert res["ours_params"] == 6051810 and res["peer_params"] == 43975515
    assert "ratio ours / torchvision" in capsys.readouterr().out
