"""The protocol through the CLI (tables, baselines, resume), predict, train, evaluate and the aggregation."""

import csv
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from detectlab.cli import main
from detectlab.core.metrics import binary_metrics, roc_auc

TINY_RUN = ["seeds=1", "synthetic.n_patients=3", "synthetic.duration_s=70.0", "synthetic.duration_sd=2.0",
            "synthetic.seizure_min_s=20.0", "synthetic.seizure_max_s=25.0", "synthetic.fs=128.0",
            "preprocess.fs=128.0", "stage1.epochs=3", "stage2.epochs=2", "stage2.seq_len=30"]


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seizure_run") / "run"
    assert main(["seizure", "run", "--data", "builtin", "--out", str(out), *TINY_RUN]) == 0
    return out


def test_cli_run_tables_baselines_and_resume(tiny_run):
    """Catches a Table I without baseline rows, a below_baseline flag that disagrees with the numbers,
    missing SzCORE event or probe results, and a resume that recomputes finished units."""
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert m["protocol"] == "lopo" and set(m["variants"]) == {"cnn", "cnn_at", "cnn_bilstm", "cnn_bilstm_at"}
    best_name, best = max(((b, m["baselines"][b]["mcc"]["mean"]) for b in ("logrms_lr", "majority")), key=lambda x: x[1])
    for v, t in m["variants"].items():
        assert t["below_baseline"] is (not t["mcc"]["mean"] > best), v
        assert t["best_baseline"].startswith(f"{best_name} (mcc {best:.4g}")
    rows = _rows(tiny_run / "tables" / "table1.csv")
    assert [r["kind"] for r in rows] == ["learned"] * 4 + ["baseline"] * 2
    assert rows[-1]["method"] == "majority class" and rows[-1]["mcc"].startswith("0.000")
    assert set(m["per_patient"]["cnn_at"]) == {"P01", "P02", "P03"}
    ev = m["events"]["cnn_bilstm_at"]
    assert ev["seizures"] == 3 and set(ev) >= {"sensitivity", "precision", "f1", "fp_per_24h", "latency_s"}
    assert ev["hours"] == pytest.approx(sum(e["duration"] for e in _meta(tiny_run)["entries"]) / 3600, rel=1e-6)
    assert set(m["probe"]) == {"cnn", "cnn_at"} and m["probe"]["cnn"]["chance_balanced"]["mean"] == 0.5
    for f in ("table1", "per_patient_mcc", "events", "identity_probe"):
        assert (tiny_run / "tables" / f"{f}.md").exists()
    units = sorted((tiny_run / "units").glob("*.json"))
    assert len(units) == 9  # 3 folds x {AT, no AT} + 3 baseline units
    stamps = [u.stat().st_mtime_ns for u in units]
    assert main(["seizure", "run", "--data", "builtin", "--out", str(tiny_run), *TINY_RUN]) == 0
    assert [u.stat().st_mtime_ns for u in units] == stamps
    assert json.loads((tiny_run / "metrics.json").read_text())["variants"] == m["variants"]


def _meta(run: Path) -> dict:
    return json.loads((run / "data" / "windows" / "meta.json").read_text())


def test_predict_held_out_patient_reproduces_the_protocol(tiny_run, tmp_path, capsys):
    """Catches predict preprocessing or streaming a recording differently from the protocol: the fold
    model that never saw P02 must give, through `predict`, the probabilities its unit recorded for P02,
    and the detections follow the threshold."""
    unit = json.loads((tiny_run / "units" / "P02-seed=0-at.json").read_text())["result"]
    ref = np.asarray(unit["cnn_bilstm_at"]["probs"]["1"])
    thr = unit["cnn_bilstm_at"]["threshold"]
    capsys.readouterr()
    assert main(["seizure", "predict", str(tiny_run), str(tiny_run / "data" / "edf" / "P02.edf"), "--out",
                 str(tmp_path), "--model", "P02-seed0-cnn_bilstm_at"]) == 0
    assert "P02.edf" in capsys.readouterr().out
    rows = _rows(tmp_path / "P02_probabilities.csv")
    p = np.array([float(r["probability"]) for r in rows])
    assert p.shape == ref.shape
    np.testing.assert_allclose(p, ref, atol=2e-4)
    assert [int(r["seizure"]) for r in rows] == (p >= thr).astype(int).tolist()
    sz = _rows(tmp_path / "P02_seizures.csv")
    from detectlab.seizure.events import detect_intervals

    assert [(float(r["onset_s"]), float(r["offset_s"])) for r in sz] == [(a, b) for a, b, _ in detect_intervals(p, thr)]


@pytest.fixture(scope="module")
def train_run(tiny_edf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("seizure_train") / "train"
    assert main(["seizure", "train", "--data", str(tiny_edf_dir), "--out", str(out), "preprocess.fs=128.0",
                 "patients=['P01','P02','P03']", "stage1.epochs=8", "stage2.epochs=6", "stage2.lr=0.003",
                 "stage2.seq_len=50"]) == 0
    return out


def test_cli_train_then_predict_held_out_patient(train_run, tiny_edf_dir, tmp_path):
    """Catches `train` + `predict` not finding a patient it never saw: P04's seizure gets the highest
    probabilities (AUC > 0.8) and one detected interval overlaps the annotation; the threshold used is
    the checkpoint's (= the training metrics')."""
    m = json.loads((train_run / "metrics.json").read_text())
    assert m["patients"] == ["P01", "P02", "P03"]
    assert (train_run / "checkpoints" / "baselines.json").exists()
    assert main(["seizure", "predict", str(train_run), str(tiny_edf_dir / "P04.edf"), "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "P04_probabilities.csv")
    from detectlab.seizure.data import open_edf

    (rec,) = open_edf(tiny_edf_dir / "P04.edf")
    (on, off), = rec.seizures
    t = np.array([float(r["start_s"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    y = ((t + 0.5 >= on) & (t + 0.5 < off)).astype(int)
    assert roc_auc(y, p) > 0.8
    thr = m["threshold_cnn_bilstm"]
    assert [int(r["seizure"]) for r in rows] == (p >= thr).astype(int).tolist()
    iv = [(float(r["onset_s"]), float(r["offset_s"])) for r in _rows(tmp_path / "P04_seizures.csv")]
    assert any(a < off and b > on for a, b in iv)


def test_evaluate_on_another_data_set_in_real_formats(train_run, tiny_edf_dir, tmp_path):
    """Catches `evaluate` computing metrics differently from the protocol, or without baseline rows:
    on a TUH-named copy of P04 (csv_bi labels) the pooled metrics equal binary_metrics of the model's
    own predictions, and the baselines and SzCORE events are there."""
    from detectlab.seizure import evaluate
    from detectlab.seizure.data import open_edf

    data = tmp_path / "site"
    data.mkdir()
    (data / "aaaaaaab_s001_t000.edf").write_bytes((tiny_edf_dir / "P04.edf").read_bytes())
    (rec,) = open_edf(tiny_edf_dir / "P04.edf")
    (on, off), = rec.seizures
    (data / "aaaaaaab_s001_t000.csv_bi").write_text(
        f"# version = csv_v1.0.0\nchannel,start_time,stop_time,label,confidence\nTERM,0,{on},bckg,1\n"
        f"TERM,{on},{off},gnsz,1\nTERM,{off},{rec.duration},bckg,1\n")
    (data / "aaaaaaab_s001_t000.edf").with_suffix(".tmp")  # no other files
    out = tmp_path / "eval"
    assert evaluate.run(train_run, data, out, Namespace(model=None, expert=None, device="cpu")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["models"]) == {"cnn_at", "cnn_bilstm_at"} and set(m["baselines"]) == {"logrms_lr", "majority"}
    assert m["data"]["patients"] == ["aaaaaaab"]
    # the same numbers from predict's output
    pred = tmp_path / "pred"
    assert main(["seizure", "predict", str(train_run), str(data / "aaaaaaab_s001_t000.edf"), "--out", str(pred)]) == 0
    rows = _rows(pred / "aaaaaaab_s001_t000_probabilities.csv")
    p = np.array([float(r["probability"]) for r in rows])
    y = np.load(out / "data" / "windows" / "y00000.npy")
    ref = binary_metrics(y, p, m["models"]["cnn_bilstm_at"]["threshold"])
    for k in ("sensitivity", "specificity", "mcc", "auc_roc"):
        assert m["models"]["cnn_bilstm_at"]["pooled"][k] == pytest.approx(ref[k], abs=1e-3), k
    assert m["models"]["cnn_bilstm_at"]["events"]["ref"] == 1
    best = max(m["baselines"][b]["pooled"]["mcc"] for b in m["baselines"])
    for k, v in m["models"].items():
        assert v["below_baseline"] is (not v["pooled"]["mcc"] > best)
    assert [r["kind"] for r in _rows(out / "tables" / "evaluation.csv")] == ["learned", "learned", "baseline", "baseline"]


def _fake_chbmit(folder: Path, patients=("chb01", "chb02", "chb03"), records=2) -> Path:
    """CHB-MIT windows in the real layout: chbNN/{ictal,preictal_10s}/*.npy, (23, 2561) at 256 Hz in uV."""
    rng = np.random.default_rng(0)
    for k, p in enumerate(patients):
        for sub in ("ictal", "preictal_10s"):
            (folder / p / sub).mkdir(parents=True, exist_ok=True)
        for r in range(records):
            pre = rng.normal(0, 20 * (k + 1), (23, 2561))
            ict = rng.normal(0, 60 * (k + 1), (23, 2561))
            np.save(folder / p / "ictal" / f"{p}_{r + 1:02d}_ictal.npy", ict)
            np.save(folder / p / "preictal_10s" / f"{p}_{r + 1:02d}_preictal10s.npy", pre)
    return folder


def test_chbmit_windows_refuse_stage2_and_run_cnn_with_fold_norm(tmp_path, capsys):
    """Catches the CNN-BiLSTM trained on CHB-MIT pieces (labels follow position) and per-patient
    standardisation of windowed data."""
    data = _fake_chbmit(tmp_path / "chbmit_windows")
    rc = main(["seizure", "run", "--data", str(data), "--out", str(tmp_path / "r1"), "seeds=1", "stage1.epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "need continuous recordings" in err and "Traceback" not in err
    out = tmp_path / "r2"
    assert main(["seizure", "run", "--preset", "chbmit", "--data", str(data), "--out", str(out), "seeds=1",
                 "stage1.epochs=1", "save_checkpoints=false"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["standardise"] == "training-fold robust" and m["events"] == {}
    assert set(m["variants"]) == {"cnn", "cnn_at"}
    # the amplitude baseline separates these synthetic pieces (ictal 3x louder) in every patient
    assert m["baselines"]["logrms_lr"]["auc_roc"]["mean"] == 1.0


def _store_for_aggregate(tmp_path: Path, ys: dict[str, list[int]], kind: str = "recordings"):
    from detectlab.seizure.config import PreprocessConfig
    from detectlab.seizure.data import PatientWindows, WindowStore, write_store

    pats = [PatientWindows(p, np.zeros((len(y), 18, 4), np.float32), np.asarray(y, np.int8), np.arange(len(y)), 4.0,
                           [], float(len(y))) for p, y in ys.items()]
    write_store(tmp_path, pats, kind, "x", PreprocessConfig(fs=4.0))
    return WindowStore(tmp_path)


def test_aggregate_lopo_means_over_seeds_then_patients(tmp_path):
    """Catches Table I averaged the wrong way: per patient the mean over seeds first, then mean and SD
    (ddof=1) across patients; the baseline rows enter once."""
    from detectlab.core.config import from_dict
    from detectlab.seizure.config import Config
    from detectlab.seizure.experiment import aggregate

    ys = {"A": [0, 0, 1, 1], "B": [0, 1, 1, 1]}
    st = _store_for_aggregate(tmp_path / "s", ys)
    cfg = from_dict(Config, {"variants": ["cnn"], "events": {}})
    probs = {("A", 0): [0.1, 0.2, 0.8, 0.9], ("A", 1): [0.1, 0.7, 0.8, 0.2], ("B", 0): [0.9, 0.8, 0.7, 0.6],
             ("B", 1): [0.1, 0.9, 0.9, 0.9]}
    res = {}
    for (p, s), pr in probs.items():
        i = 0 if p == "A" else 1
        res[f"{p}-{s}"] = {"fold": p, "seed": s, "adversarial": False, "history": {}, "probe": None,
                           "cnn": {"threshold": 0.5, "probs": {str(i): pr}}}
    for p, i in (("A", 0), ("B", 1)):
        res[f"{p}-b"] = {"fold": p, "seed": None, "logrms_lr": {"threshold": 0.5, "probs": {str(i): [0.6] * 4}},
                         "majority": {"threshold": 0.5, "probs": {str(i): [0.5] * 4}}}
    m = aggregate(cfg, st, res, [("A", ["A"]), ("B", ["B"])], "lopo")
    mcc = {k: binary_metrics(ys[k[0]], v, 0.5)["mcc"] for k, v in probs.items()}
    per_pat = [np.mean([mcc[("A", 0)], mcc[("A", 1)]]), np.mean([mcc[("B", 0)], mcc[("B", 1)]])]
    assert m["per_patient"]["cnn"]["A"]["mcc"] == pytest.approx(per_pat[0])
    assert m["variants"]["cnn"]["mcc"]["mean"] == pytest.approx(np.mean(per_pat))
    assert m["variants"]["cnn"]["mcc"]["sd"] == pytest.approx(np.std(per_pat, ddof=1))
    sens = [binary_metrics(ys[k[0]], v, 0.5)["sensitivity"] for k, v in probs.items()]
    assert m["variants"]["cnn"]["sensitivity"]["mean"] == pytest.approx(np.mean([np.mean(sens[:2]), np.mean(sens[2:])]))
    assert m["baselines"]["majority"]["mcc"]["mean"] == 0.0 and m["baselines"]["logrms_lr"]["mcc"]["sd"] == 0.0
    assert m["variants"]["cnn"]["below_baseline"] is False


def test_aggregate_group_kfold_pools_windows_per_seed(tmp_path):
    """Catches per-patient metrics on single-class patients (undefined) or folds pooled at one threshold:
    each seed pools all test windows, each fold at its own threshold; then mean and SD across seeds."""
    from detectlab.core.config import from_dict
    from detectlab.seizure.config import Config
    from detectlab.seizure.experiment import aggregate

    ys = {"a": [1, 1], "b": [0, 0], "c": [1, 1], "d": [0, 0]}
    st = _store_for_aggregate(tmp_path / "s", ys, "windows")
    cfg = from_dict(Config, {"variants": ["cnn"]})
    folds = [("fold1", ["a", "b"]), ("fold2", ["c", "d"])]
    res = {}
    thr = {("fold1", 0): 0.5, ("fold2", 0): 0.9, ("fold1", 1): 0.5, ("fold2", 1): 0.5}
    pr = {0: {"0": [0.6, 0.4], "1": [0.2, 0.7], "2": [0.95, 0.8], "3": [0.85, 0.1]},
          1: {"0": [0.6, 0.6], "1": [0.2, 0.2], "2": [0.6, 0.6], "3": [0.2, 0.2]}}
    for s in (0, 1):
        for f, test in folds:
            ids = [str(list(ys).index(p)) for p in test]
            res[f"{f}-{s}"] = {"fold": f, "seed": s, "adversarial": False, "history": {}, "probe": None,
                               "cnn": {"threshold": thr[(f, s)], "probs": {i: pr[s][i] for i in ids}}}
    m = aggregate(cfg, st, res, folds, "group_kfold")
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    pred0 = np.array([0.6 >= .5, 0.4 >= .5, 0.2 >= .5, 0.7 >= .5, 0.95 >= .9, 0.8 >= .9, 0.85 >= .9, 0.1 >= .9])
    m0 = binary_metrics(y, pred0.astype(float), 0.5)["mcc"]
    assert m["variants"]["cnn"]["mcc"]["mean"] == pytest.approx(np.mean([m0, 1.0]))
    assert m["variants"]["cnn"]["mcc"]["sd"] == pytest.approx(np.std([m0, 1.0], ddof=1))
    assert m["per_patient"]["cnn"] == {} and set(m["per_fold"]["cnn"]) == {"fold1", "fold2"}


def test_group_folds_hold_both_classes(tmp_path):
    """Catches a grouped split whose test fold lacks a class (its MCC would be meaningless)."""
    from detectlab.core.config import from_dict
    from detectlab.core.errors import InputError
    from detectlab.seizure.config import Config
    from detectlab.seizure.experiment import make_folds

    ys = {f"s{i}": [1] for i in range(7)} | {f"n{i}": [0, 0] for i in range(3)}
    st = _store_for_aggregate(tmp_path / "s", ys, "windows")
    kind, folds = make_folds(st, from_dict(Config, {"split": {"k": 3}}))
    assert kind == "group_kfold" and len(folds) == 3
    assert sorted(p for _, t in folds for p in t) == sorted(ys)
    for _, t in folds:
        assert {ys[p][0] for p in t} == {0, 1}
    with pytest.raises(InputError, match="without both classes"):
        make_folds(st, from_dict(Config, {"split": {"k": 4}}))
    with pytest.raises(InputError, match="per-patient sensitivity, specificity and MCC are undefined"):
        make_folds(st, from_dict(Config, {"split": {"kind": "lopo"}}))


def test_cli_bad_data_path_and_config(tmp_path, capsys):
    """Catches a missing data folder, an empty folder or an unknown variant ending in a traceback."""
    assert main(["seizure", "run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "data path does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["seizure", "run", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "no .edf or .bdf recordings" in capsys.readouterr().err
    assert main(["seizure", "run", "--data", "builtin", "--out", str(tmp_path / "r3"), "variants=['xx']"]) == 2
    assert "xx" in capsys.readouterr().err


def test_benchmark_smoke_checks_agreement(load_bench):
    """Catches the benchmark timing a pipeline that computes something else than the reference: the
    FFT band-pass must equal MNE's FIR, our windows the peer's, and both loops train the same model;
    the interleaved ratios come from paired repetitions."""
    res = load_bench("seizure").main(["--size", "smoke"])
    inf = res["inference"]
    assert inf["filter_max_rel_diff_vs_mne"] < 1e-5 and inf["windows"] == 60
    assert inf["prob_max_diff_vs_peer"] < 0.05
    st = res["stage1_step"]
    assert len(st["times"]["ours"]) == len(st["times"]["peer"]) == len(st["ratio"]["per_rep"]) >= 5
    assert st["same_losses"] is True


@pytest.mark.parametrize("override,key", [("stage1.epochs=0", "stage1.epochs"), ("stage1.lr=-0.1", "stage1.lr"),
                                          ("variants=[]", "variants"), ("split.kind='loso'", "split.kind"),
                                          ("preprocess.h_freq=6.0", "preprocess.h_freq"),
                                          ("preprocess.standardise='minmax'", "preprocess.standardise"),
                                          ("stage2.seq_len=-5", "stage2.seq_len"), ("events.min_overlap=1.5", "events.min_overlap"),
                                          ("synthetic.seizure_max_s=5.0", "synthetic.seizure_max_s")])
def test_bad_config_values_exit_2_before_any_work(tmp_path, capsys, override, key):
    """Catches a bad setting that runs anyway (epochs 0, negative lr, an empty variant list, a band with
    h_freq below l_freq) or ends in a traceback: exit 2, one line naming the key, before data are made."""
    out = tmp_path / "r"
    rc = main(["seizure", "run", "--data", "builtin", "--out", str(out), override])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("detectlab: error:")]
    assert rc == 2 and len(lines) == 1 and f"'{key}'" in lines[0] and "Traceback" not in err
    assert not (out / "data").exists()


def test_evaluate_through_the_cli(train_run, tiny_edf_dir, tmp_path, capsys):
    """Catches the `evaluate` sub-command not reaching the seizure evaluator or refusing a one-patient set."""
    data = tmp_path / "one"
    data.mkdir()
    (data / "P04.edf").write_bytes((tiny_edf_dir / "P04.edf").read_bytes())
    out = tmp_path / "ev"
    assert main(["seizure", "evaluate", str(train_run), str(data), "--out", str(out), "--device", "cpu",
                 "--model", "cnn_at"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["models"]) == ["cnn_at"] and m["data"]["patients"] == ["P04"]
    assert m["data"]["seizure_windows"] == int(np.load(out / "data" / "windows" / "y00000.npy").sum()) >= 20
    assert (out / "data.json").exists()
    rc = main(["seizure", "evaluate", str(train_run), str(data), "--out", str(out), "--device", "cpu"])
    assert rc == 2 and "cannot be resumed" in capsys.readouterr().err  # a reused folder with other settings


def test_units_request_gpus_only_for_training(tmp_path):
    """Catches the baseline units asking Ray for a GPU (they never use one) or training units pinned to
    the CPU on a GPU cluster (num_gpus 0 would hide the GPUs from them)."""
    from detectlab.core.config import from_dict
    from detectlab.seizure.config import Config
    from detectlab.seizure.experiment import make_units

    cfg = from_dict(Config, {"seeds": 2, "variants": ["cnn", "cnn_at"]})
    units = make_units(cfg, tmp_path, [("A", ["A"]), ("B", ["B"])], tmp_path)
    train = [u for u in units if not u.key.endswith("baselines")]
    assert len(train) == 8 and all(u.num_gpus is None for u in train)
    assert [u.num_gpus for u in units if u.key.endswith("baselines")] == [0, 0]
    assert len({u.key for u in units}) == len(units)
