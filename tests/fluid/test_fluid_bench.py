"""The benchmark runs at smoke size and reports positive numbers (never a time assertion)."""


def test_bench_smoke(capsys, load_bench):
    out = load_bench("fluid").main(["--size", "smoke"])
    for k in ("ours_images_per_s", "bare_images_per_s", "throughput_ratio", "finder_seconds", "design_seconds",
              "finder_fraction"):
        assert out[k] > 0, k
    assert out["finder_max_batch"] in (8, 16, 32, 64)
    assert "ratio" in capsys.readouterr().out
