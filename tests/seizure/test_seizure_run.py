import csv
import json

import numpy as np
import pytest

from detectlab.cli import main
from detectlab.core.metrics import roc_auc
from detectlab.seizure.train import Stage1Config, Stage2Config, stage1_probs, stage2_probs, train_stage1, train_stage2

TINY_RUN = ["seeds=1", "synthetic.n_patients=3", "synthetic.duration_s=70.0", "synthetic.duration_sd=2.0",
            "synthetic.seizure_min_s=20.0", "synthetic.seizure_max_s=25.0", "synthetic.fs=128.0",
            "preprocess.fs=128.0", "stage1.epochs=3", "stage2.epochs=2"]


def test_tiny_end_to_end_learns_on_held_out_patient(tiny_windows):
    """Stage 1 (with AT) on 3 synthetic patients, then stage 2: the held-out patient's seizure is found."""
    train, test = tiny_windows[:3], tiny_windows[3]
    X = np.concatenate([p.X for p in train])
    y = np.concatenate([p.y for p in train])
    d = np.concatenate([np.full(len(p.y), i) for i, p in enumerate(train)])
    m1, h = train_stage1(X, y, d, 3, Stage1Config(epochs=8), True, seed=0)
    assert h["label_loss"][-1] < 0.7 * h["label_loss"][0]
    assert h["lambda"][-1] == pytest.approx(2 / (1 + np.exp(-10)) - 1, rel=1e-3)
    assert roc_auc(test.y, stage1_probs(m1, test.X)) > 0.85
    m2, h2 = train_stage2([p.X for p in train], [p.y for p in train], m1, Stage2Config(epochs=6, lr=0.003), seed=0)
    assert h2["loss"][-1] < h2["loss"][0]
    p2 = stage2_probs(m2, [test.X])[0]
    assert p2.shape == test.y.shape and roc_auc(test.y, p2) > 0.85


def test_cli_run_metrics_resume_and_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["seizure", "run", "--data", "builtin", "--out", str(out), *TINY_RUN]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["variants"]) == {"cnn", "cnn_at", "cnn_bilstm", "cnn_bilstm_at"}
    for v in m["variants"].values():
        assert set(v) == {"sensitivity", "specificity", "mcc", "auc_roc", "auc_pr"}
        assert all(set(x) == {"mean", "sd"} for x in v.values())
    assert set(m["per_patient"]["cnn_at"]) == {"P01", "P02", "P03"}
    assert m["events"]["cnn_bilstm_at"]["seizures"] == 3
    for f in ("table1", "per_patient_mcc", "events"):
        assert (out / "tables" / f"{f}.md").exists() and (out / "tables" / f"{f}.csv").exists()
    for f in ("fig2_stage1_losses", "fig3_probability_traces", "fig4_per_patient_mcc"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 6  # 3 folds x 1 seed x {AT, no AT}
    stamps = [u.stat().st_mtime_ns for u in units]
    # resume: nothing is recomputed, the same metrics come back
    assert main(["seizure", "run", "--data", "builtin", "--out", str(out), *TINY_RUN]) == 0
    assert [u.stat().st_mtime_ns for u in units] == stamps
    assert json.loads((out / "metrics.json").read_text())["variants"] == m["variants"]
    # predict with the run folder on one synthetic recording
    edf = out / "data" / "edf" / "P02.edf"
    pred = tmp_path / "pred"
    capsys.readouterr()
    assert main(["seizure", "predict", str(out), str(edf), "--out", str(pred)]) == 0
    assert "P02.edf" in capsys.readouterr().out
    rows = list(csv.DictReader(open(pred / "P02_probabilities.csv")))
    assert len(rows) >= 60 and all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert list(csv.DictReader(open(pred / "P02_seizures.csv"))) is not None
    assert (pred / "P02.png").stat().st_size > 1000


def test_cli_train_then_predict(tmp_path, tiny_edf_dir, capsys):
    out = tmp_path / "train"
    assert main(["seizure", "train", "--data", str(tiny_edf_dir), "--out", str(out), "preprocess.fs=128.0",
                 "stage1.epochs=4", "stage2.epochs=3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["patients"] == ["P01", "P02", "P03", "P04"] and 0 < m["threshold_cnn_bilstm"] < 1
    assert (out / "checkpoints" / "cnn_bilstm_at.safetensors").exists()
    rc = main(["seizure", "predict", str(out), str(tiny_edf_dir / "P01.edf"), "--out", str(tmp_path / "p"),
               "--model", "cnn_at"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "p" / "P01_probabilities.csv")))
    assert len(rows) >= 90


def test_cli_bad_data_path_and_config(tmp_path, capsys):
    assert main(["seizure", "run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "data path does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["seizure", "run", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "no .edf or .bdf recordings" in capsys.readouterr().err
    assert main(["seizure", "run", "--data", "builtin", "--out", str(tmp_path / "r3"), "variants=['xx']"]) == 2
    assert "unknown variants" in capsys.readouterr().err


def test_benchmark_smoke_numbers_exist(load_bench):
    res = load_bench("seizure").main(["--size", "smoke"])
    assert res["inference"]["total_s"] > 0 and res["inference"]["windows"] == 60
    assert res["stage1_step_ms"]["detectlab"] > 0 and res["stage1_step_ms"]["bare_pytorch"] > 0
    assert res["stage1_step_ms"]["ratio"] > 0 and res["fold"]["total_s"] > 0
