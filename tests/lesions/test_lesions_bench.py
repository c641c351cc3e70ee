import importlib.util
from pathlib import Path


def test_bench_smoke_reports_positive_numbers(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lesions.py"
    spec = importlib.util.spec_from_file_location("bench_lesions", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--size", "smoke"])
    for k in ("ours_latency_s", "peer_latency_s", "latency_ratio", "ours_params", "peer_params", "param_ratio"):
        assert res[k] > 0, k
    assert res["ours_params"] == 6051810 and res["peer_params"] == 43975515
    assert "ratio ours / torchvision" in capsys.readouterr().out
