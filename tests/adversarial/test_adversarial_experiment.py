"""End to end through the CLI: a tiny eps sweep on the built-in digits, resume, predict, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detectlab.cli import main

TINY = ["--data", "builtin", "train.epochs=3", "adv_train.iterations=30", "adv_train.steps=3",
        "adv_train.step_size=0.12", "attack.eps=[0.05,0.3]", "attack.steps=10", "attack.step_size=0.05",
        "attack.n_test=200", "adaptive.eps=[0.3]", "hist_eps=[0.3]"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("adv") / "run"
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(out), *TINY]) == 0
    return out


def test_metrics_tables_figures(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert m["train_fpr"] == 0.0  # the threshold is the max over the training images
    assert m["threshold"] > 0
    for name in ("natural", "secret"):
        e = m["models"][name]
        for key in ("eps", "accuracy", "tpr", "flag_rate", "combined_accuracy", "benign_fpr"):
            assert key in e, (name, key)
        assert e["eps"] == [0.05, 0.3]
        assert set(e["attacks"]) == {"pgd", "fgsm", "adaptive"}
    nat = m["models"]["natural"]
    assert nat["clean_accuracy"] > 0.85  # it learned the digits
    assert nat["accuracy"][1] < nat["clean_accuracy"] - 0.3  # PGD at eps 0.3 breaks the natural model
    assert nat["flag_rate"][1] >= nat["flag_rate"][0]  # more perturbation, no fewer detections
    assert nat["flag_rate"][1] > 0.9
    # combined accuracy counts flagged or correct: never below either part
    for e in m["models"].values():
        for acc, flag, comb in zip(e["accuracy"], e["flag_rate"], e["combined_accuracy"]):
            assert comb >= max(acc, flag) - 1e-9
    for f in ("tables/table2_tpr.md", "tables/table2_tpr.csv", "tables/results.csv", "config.toml",
              "checkpoints/natural.safetensors", "checkpoints/secret.safetensors"):
        assert (tiny_run / f).exists(), f
    assert list((tiny_run / "figures").glob("*.png"))


def test_rerun_resumes_without_recomputing(tiny_run):
    units = sorted((tiny_run / "units").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in units}
    m1 = json.loads((tiny_run / "metrics.json").read_text())
    assert main(["adversarial", "run", "--preset", "smoke", "--out", str(tiny_run), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in units} == before
    assert json.loads((tiny_run / "metrics.json").read_text())["models"] == m1["models"]


def test_predict_flags_attacked_image(tiny_run, tmp_path, capsys):
    from detectlab.adversarial.attack import pgd
    from detectlab.adversarial.synthetic import builtin_digits
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
    assert "ADVERSARIAL" in capsys.readouterr().out


def test_predict_bad_image_exits_2(tiny_run, tmp_path, capsys):
    bad = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad)
    assert main(["adversarial", "predict", str(tiny_run), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong.png" in err[0]


def test_missing_data_path_exits_2(tmp_path, capsys):
    assert main(["adversarial", "run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
