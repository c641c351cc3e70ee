"""End to end through the CLI: a tiny protocol on the built-in volumes learns, resumes, and predict reads it."""

import json
import math

import numpy as np
import pytest

from detectlab.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fluid_run") / "run"
    ov = ["archs=['resnet18']", "designs=['train90','train10']", "batch_sizes=[8]", "folds=2", "input_size=32",
          "resize=32", "train.lr=1e-3", "train.max_epochs=2", "train.patience=20", "variants=['denoise']",
          "synthetic.volumes=4", "synthetic.slices=12", "synthetic.height=64", "synthetic.width=64"]
    assert main(["fluid", "run", "--data", "builtin", "--out", str(out), "--device", "cpu", *ov]) == 0
    return out, ov


def test_metrics_tables_figures(tiny_run):
    out, _ = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    for design in ("train90", "train10"):
        e = m["designs"][design]["resnet18"]["8"]
        for k in ("accuracy", "auc"):
            assert 0 <= e[k]["mean"] <= 1 and e[k]["sd"] >= 0
        assert e["iterations_to_best"] >= 1 and e["folds"] == 2
        assert m["variants"]["denoise"]["designs"][design]["resnet18"]["8"]["accuracy"]["mean"] >= 0
    assert m["n_images"] == 48 and m["grouped_by_subject"] and m["folds"] == 2
    for name in ("table2_train90", "table3_train10", "table2_train90_denoise"):
        assert (out / "tables" / f"{name}.md").exists() and (out / "tables" / f"{name}.csv").exists()
    for f in ("fig2_train90", "fig3_train10", "fig4_train90", "fig2_train90_denoise"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000
    assert (out / "checkpoints" / "train90-resnet18-bs=8.safetensors").exists()
    # the synthetic data went through the MetaImage reader
    assert len(list((out / "data" / "synthetic").rglob("oct.mhd"))) == 4


def test_resume_reads_units_back(tiny_run, capsys):
    out, ov = tiny_run
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 8
    stamps = [u.stat().st_mtime_ns for u in units]
    assert main(["fluid", "run", "--data", "builtin", "--out", str(out), "--device", "cpu", *ov]) == 0
    assert [u.stat().st_mtime_ns for u in units] == stamps
    assert "8 of 8 already finished" in capsys.readouterr().err.replace("\n", " ")


def test_predict_volume_and_png(tiny_run, tmp_path, capsys):
    from PIL import Image

    out, _ = tiny_run
    case = next((out / "data" / "synthetic").glob("SYN*"))
    from detectlab.fluid.data import read_mhd

    png = tmp_path / "scan.png"
    Image.fromarray(read_mhd(case / "oct.mhd")[3]).save(png)
    rc = main(["fluid", "predict", str(out), str(case / "oct.mhd"), str(png), "--out", str(tmp_path / "pred")])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(str(case)) or ln.startswith(str(png))]
    assert len(lines) == 12 + 1
    pred = json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"]
    p = np.array([r["p_fluid"] for r in pred])
    assert p.shape == (13,) and ((0 <= p) & (p <= 1)).all()
    assert math.isclose(p[3], p[12], abs_tol=1e-5)  # the same B-scan from the volume and from the PNG


def test_predict_bad_inputs(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    assert main(["fluid", "predict", str(out), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert main(["fluid", "predict", str(tmp_path), str(bad)]) == 2
    assert main(["fluid", "predict", str(out), str(bad), "--checkpoint", "nope"]) == 2


def test_train_command_then_predict(tmp_path, capsys):
    out = tmp_path / "train"
    ov = ["archs=['squeezenet']", "batch_sizes=[8]", "input_size=32", "resize=32", "train.max_epochs=1",
          "synthetic.volumes=2", "synthetic.slices=10", "synthetic.height=48", "synthetic.width=48"]
    assert main(["fluid", "train", "--data", "builtin", "--out", str(out), *ov]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["arch"] == "squeezenet" and m["n_train"] + m["n_val"] == 20 and m["input_size"] == 32
    vol = next((out / "data" / "synthetic").rglob("oct.mhd"))
    capsys.readouterr()
    assert main(["fluid", "predict", str(out), str(vol)]) == 0
    assert "model.safetensors" in capsys.readouterr().out


def test_unknown_arch_is_bad_input(tmp_path, capsys):
    assert main(["fluid", "run", "--data", "builtin", "--out", str(tmp_path / "r"), "archs=['lenet']"]) == 2
    assert "lenet" in capsys.readouterr().err
