"""End to end through the CLI: a tiny eps sweep on the built-in digits, resume, grid additions, reuse of
trained models, evaluate on idx and PNG data, predict, bad input and bad config values."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from detectlab.adversarial.experiment import eps_markers, rates
from detectlab.cli import main

TINY = ["--data", "builtin", "train.epochs=3", "adv_train.iterations=30", "adv_train.steps=3",
        "adv_train.step_size=0.12", "attack.eps=[0.05,0.3]", "attack.steps=10", "attack.step_size=0.05",
        "attack.n_test=100", "attack.apgd_eps=[0.3]", "attack.apgd_steps=5", "attack.cw_steps=10",
        "adaptive.eps=[0.3]", "adaptive.steps=10", "adaptive.variants=['penalty','maxnorm']",
        "squeeze.n_fit=500", "hist_eps=[0.3]"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("adv") / "run"
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(out), *TINY]) == 0
    return out


def _unit(run, name):
    d = json.loads((run / "units" / f"{name}.json").read_text())
    return d.get("result", d)


def test_rates_and_eps_markers_by_hand():
    """The protocol's definitions on a hand case (faults: combined accuracy as flagged AND correct, TPR
    over flagged images only, the 50 %-TPR eps not interpolated, perfect separation ending early)."""
    y = np.array([0, 1, 2, 3, 4])
    pred = np.array([0, 9, 9, 3, 9])  # images 1, 2, 4 misclassified
    flag = np.array([False, True, False, True, False])
    assert rates(y, pred, flag) == {"accuracy": 0.4, "tpr": 0.2, "flag_rate": 0.4, "combined_accuracy": 0.6,
                                    "undetected_success": 0.4}
    m = eps_markers([0.1, 0.2, 0.3, 0.4, 0.5], [0.0, 0.4, 0.8, 1.0, 1.0], [0.9, 1.0, 0.99, 1.0, 1.0])
    assert m["eps_tpr50"] == pytest.approx(0.225)
    assert m["eps_perfect_separation"] == 0.4
    assert eps_markers([0.1, 0.2], [0.1, 0.2], [0.5, 0.9]) == {"eps_tpr50": None, "eps_perfect_separation": None}


def test_metrics_tables_figures(tiny_run):
    """Faults caught: aggregation that misaligns per-image results (recomputed here from a unit's images),
    a threshold that is not the training maximum (recomputed with the autograd statistic), missing
    baseline rows or below_baseline marks, PGD that does not break the natural model."""
    from detectlab.adversarial.data import builtin_digits
    from detectlab.adversarial.detector import statistic

    m = json.loads((tiny_run / "metrics.json").read_text())
    train, test = builtin_digits(seed=0)
    assert m["threshold"] == pytest.approx(float(statistic(train.x.double()).max()), rel=1e-5)
    assert m["detector"] == {"divisor": 3, "constant": 5.0, "quantize": "round"}
    nat = m["models"]["natural"]
    assert set(nat["attacks"]) == {"pgd", "fgsm", "apgd", "cw", "adaptive"}
    assert nat["eps"] == [0.05, 0.3] and nat["clean_accuracy"] > 0.85
    assert nat["accuracy"][1] < nat["clean_accuracy"] - 0.3
    assert nat["flag_rate"][1] > 0.9 and nat["auc"][1] > 0.95
    u = _unit(tiny_run, "natural-pgd-eps=0.300")
    sub = test.subset(100, 0)
    flagged = np.asarray(u["stat"]) > m["threshold"]
    assert nat["attacks"]["pgd"]["flag_rate"][1] == pytest.approx(flagged.mean())
    assert nat["tpr"][1] == pytest.approx((flagged & (np.asarray(u["pred"]) != sub.y.numpy())).mean())
    assert u["linf"] <= 0.3 + 1e-6  # delivered 8-bit images stay inside the ball
    fs = nat["attacks"]["pgd"]["feature_squeezing"]
    assert len(fs["auc"]) == 2 and nat["feature_squeezing"]["fit_fpr"] == 0.05
    assert nat["attacks"]["cw"]["eps"] == [None]
    rows = [r for r in _csv(tiny_run / "tables" / "detectors.csv")]
    kinds = {(r["attack"], r["eps"], r["detector"], r["kind"]) for r in rows if r["model"] == "natural"}
    for det, kind in (("steganalysis", "detector"), ("feature_squeezing", "baseline"), ("flags_nothing", "baseline")):
        assert ("pgd", "0.3", det, kind) in kinds
    steg = [r for r in rows if r["detector"] == "steganalysis"]
    assert all(r["below_baseline"] in ("True", "False") for r in steg)
    assert nat["attacks"]["pgd"]["below_baseline"] == [float(r["auc"]) <= max(
        float(b["auc"]) for b in rows if b["kind"] == "baseline" and b["model"] == "natural" and b["attack"] == "pgd"
        and b["eps"] == r["eps"]) for r in steg if r["model"] == "natural" and r["attack"] == "pgd"]
    for f in ("table2_tpr", "detectors", "detectors_summary", "thresholds", "adaptive", "results"):
        assert (tiny_run / "tables" / f"{f}.md").exists() or f == "results", f
    assert {p.stem for p in (tiny_run / "figures").glob("*.png")} >= {"fig2_tpr", "fig3_accuracy", "fig4_combined",
                                                                      "roc", "auc", "statistic_hist"}
    th = m["threshold_fpr"]
    assert th["max"]["train"] == 0.0 and th["q0.999"]["train"] <= 0.001 + 1e-12
    assert m["thresholds"]["q0.999"] < m["thresholds"]["max"]


def _csv(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_rerun_resumes_and_grid_additions_compute_only_new_units(tiny_run):
    """Faults: a resume that recomputes finished units, or refuses a config that only adds eps values."""
    units = sorted((tiny_run / "units").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in units}
    m1 = json.loads((tiny_run / "metrics.json").read_text())
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(tiny_run), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in units} == before
    assert json.loads((tiny_run / "metrics.json").read_text())["models"]["natural"]["tpr"] == m1["models"]["natural"]["tpr"]
    more = [a if not a.startswith("attack.eps=") else "attack.eps=[0.05,0.3,0.2]" for a in TINY]
    more = [a if not a.startswith("attack.attacks") else a for a in more] + ["attack.attacks=['pgd','fgsm']"]
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(tiny_run), *more]) == 0
    new = set((tiny_run / "units").glob("*.json")) - set(units)
    assert {p.stem for p in new} == {"natural-pgd-eps=0.200", "natural-fgsm-eps=0.200", "secret-pgd-eps=0.200",
                                     "secret-fgsm-eps=0.200"}
    assert {p: p.stat().st_mtime_ns for p in units} == before


def test_models_from_reuses_checkpoints_without_training(tiny_run, tmp_path):
    """Faults: models_from ignored (training again), the copied models not the source's, or a rerun that
    only drops a model refused."""
    out = tmp_path / "reuse"
    args = [a for a in TINY if not a.startswith(("attack.eps", "adaptive"))]
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(out), *args, "attack.attacks=['fgsm']",
                 "attack.eps=[0.3]", f"models_from={tiny_run}"]) == 0
    assert not list((out / "units").glob("train-*.json"))
    a, b = json.loads((out / "metrics.json").read_text()), json.loads((tiny_run / "metrics.json").read_text())
    assert a["models"]["natural"]["clean_accuracy"] == b["models"]["natural"]["clean_accuracy"]
    assert _unit(out, "natural-fgsm-eps=0.300")["stat"] == _unit(tiny_run, "natural-fgsm-eps=0.300")["stat"]
    assert "models_from" in json.loads((out / "data.json").read_text())
    # `models` is a grid field: a rerun on the same models_from run that drops a model is accepted and
    # reads the finished unit back (fault: the checkpoint pin covering only cfg.models, so it is refused)
    unit = out / "units" / "natural-fgsm-eps=0.300.json"
    before = unit.stat().st_mtime_ns
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(out), *args, "attack.attacks=['fgsm']",
                 "attack.eps=[0.3]", f"models_from={tiny_run}", "models=['natural']"]) == 0
    assert unit.stat().st_mtime_ns == before
    assert list(json.loads((out / "metrics.json").read_text())["models"]) == ["natural"]


def test_resume_on_other_data_exits_2(tiny_run, tmp_path, capsys):
    """Issue 11 §3: the tiny run was made on the built-in digits; resuming it on an MNIST-format folder
    must stop before anything is read back or trained (fault: checkpoints of one data set relabelled
    with another's metrics)."""
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(mnist / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(mnist / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
    before = (tiny_run / "metrics.json").read_bytes()
    args = [a if a != "builtin" else str(mnist) for a in TINY]
    capsys.readouterr()
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data" in err[0] and "cannot be resumed" in err[0]
    assert (tiny_run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("override,key", [("attack.steps=-1", "attack.steps"), ("attack.batch_size=0", "attack.batch_size"),
                                          ('models=["foo"]', "models"), ("models=[]", "models"),
                                          ("detector.divisor=5", "detector.divisor"),
                                          ("models_from=/nonexistent/run", "models_from")])
def test_bad_config_values_exit_2_with_one_line(tmp_path, capsys, override, key):
    """Issue 11 §4: each bad value ends the command at load time (exit 2, one line naming the key), not after
    training or in a traceback (faults: an unvalidated field, or validation only inside a unit)."""
    assert main(["adversarial", "run", "--preset", "smoke", "--data", "builtin", "--out", str(tmp_path / "r"),
                 override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{key}'" in err[0], err
    assert not (tmp_path / "r" / "checkpoints").exists()


def _write_idx(path, arr, magic):
    arr = np.asarray(arr, dtype=np.uint8)
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


def test_evaluate_on_idx_and_png_data(tiny_run, tmp_path, capsys):
    """evaluate reads real formats (an MNIST idx pair, a PNG class-folder tree); faults: labels misaligned
    with images (accuracy collapses), the clean FPR not measured with the run's threshold, the two formats
    giving different numbers for the same images."""
    from detectlab.adversarial.data import builtin_digits
    from detectlab.adversarial.detector import statistic_fast, to_uint8

    _, test = builtin_digits(seed=0)
    x8, y = to_uint8(test.x[:60])[:, 0].numpy(), test.y[:60].numpy()
    idx = tmp_path / "idx"
    idx.mkdir()
    _write_idx(idx / "t10k-images-idx3-ubyte.gz", x8, 2051)
    _write_idx(idx / "t10k-labels-idx1-ubyte.gz", y, 2049)
    png = tmp_path / "png"
    for i, (im, lab) in enumerate(zip(x8, y)):
        (png / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(png / str(lab) / f"{i:03d}.png")
    res = {}
    for name, data in (("idx", idx), ("png", png)):
        out = tmp_path / f"ev-{name}"
        assert main(["adversarial", "evaluate", str(tiny_run), str(data), "--out", str(out), "--eps", "0.3",
                     "--model", "natural", "--device", "cpu"]) == 0
        res[name] = json.loads((out / "metrics.json").read_text())
        assert (out / "tables" / "evaluation.md").exists() and (out / "data.json").exists()
    thr = json.loads((tiny_run / "metrics.json").read_text())["threshold"]
    expect_fpr = float((statistic_fast(torch.from_numpy(x8)) > thr).float().mean())
    for r in res.values():
        e = r["models"]["natural"]
        assert r["benign_fpr"] == pytest.approx(expect_fpr) and r["n_clean"] == 60
        assert e["clean_accuracy"] > 0.85
        assert e["flag_rate"][0] > 0.8 and e["accuracy"][0] < 0.3
    assert res["idx"]["models"]["natural"]["clean_accuracy"] == res["png"]["models"]["natural"]["clean_accuracy"]
    capsys.readouterr()
    assert main(["adversarial", "evaluate", str(tiny_run), str(tmp_path / "empty-dir-that-is-missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["adversarial", "evaluate", str(tiny_run), str(tmp_path / "empty"), "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "empty" in err[1]


def test_predict_flags_attacked_image(tiny_run, tmp_path, capsys):
    """Faults: predict reading another threshold than the run's, or mis-scaling PNG pixels."""
    from detectlab.adversarial.attack import pgd
    from detectlab.adversarial.data import builtin_digits
    from detectlab.adversarial.train import load_model

    _, test = builtin_digits(seed=0)
    model = load_model(tiny_run / "checkpoints" / "natural.safetensors")
    x, y = test.x[:4], test.y[:4]
    adv = pgd(model, x, y, 0.3, 0.05, 10)
    paths = []
    for i, img in enumerate(torch.cat([x[:1], adv[:1]])):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(p)
        paths.append(str(p))
    capsys.readouterr()
    assert main(["adversarial", "predict", str(tiny_run), *paths, "--model", "natural", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "predictions.json").read_text())
    assert [r["adversarial"] for r in rows] == [False, True]
    assert rows[0]["class"] == int(y[0])
    assert rows[0]["threshold"] == json.loads((tiny_run / "metrics.json").read_text())["threshold"]
    assert "ADVERSARIAL" in capsys.readouterr().out


def test_predict_bad_image_exits_2(tiny_run, tmp_path, capsys):
    """Fault: a wrongly sized image reaching the model (traceback) instead of one line naming the file."""
    bad = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad)
    assert main(["adversarial", "predict", str(tiny_run), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong.png" in err[0]


def test_missing_data_path_exits_2(tmp_path, capsys):
    """Fault: a missing MNIST folder silently replaced by the built-in digits."""
    assert main(["adversarial", "run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_evaluate_reads_run_configs_of_older_versions(tmp_path):
    """A model run written before the config moved (retired keys fgsm, threshold_images, adaptive.enabled)
    still loads for evaluate (fault: evaluate refusing every run trained with an earlier version), and its
    models_from is dropped (the checkpoints are the run's own)."""
    from detectlab.adversarial.evaluate import run_config

    (tmp_path / "config.toml").write_text(
        'preset = "paper"\nseed = 3\nfgsm = true\nthreshold_images = 0\nmodels_from = "/gone"\n'
        '[attack]\nsteps = 7\neps = [0.1, 0.2]\n[adaptive]\nenabled = true\nweight = 4.0\n')
    cfg = run_config(tmp_path)
    assert (cfg.seed, cfg.attack.steps, cfg.attack.eps, cfg.adaptive.weight, cfg.models_from) == (3, 7, [0.1, 0.2], 4.0, "")
