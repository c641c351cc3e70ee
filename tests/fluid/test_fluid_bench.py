"""The benchmark runs at smoke size and reports positive numbers (never a time assertion)."""

import importlib.util
from pathlib import Path


def test_bench_smoke(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fluid.py"
    spec = importlib.util.spec_from_file_location("bench_fluid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--size", "smoke"])
    for k in ("ours_images_per_s", "bare_images_per_s", "throughput_ratio", "finder_seconds", "design_seconds",
              "finder_fraction"):
        assert out[k] > 0, k
    assert out["finder_max_batch"] in (8, 16, 32, 64)
    assert "ratio" in capsys.readouterr().out
