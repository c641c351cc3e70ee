"""End to end through the CLI: a tiny protocol on the built-in volumes with baselines, skipped batch sizes,
subject-disjoint splits, resume, `fluid train`, predict on folders/volumes with saliency, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from detectlab.cli import main
from detectlab.core.metrics import roc_auc

OV = ["archs=['resnet18']", "designs=['train90','train10']", "batch_sizes=[8,16]", "folds=3", "selection=inner",
      "inner_val=0.34", "crop=retina", "band_rows=0.6", "band_cols=0.9", "band_size=[32,48]", "variants=['mask']",
      "train.optimizer=adam", "train.lr=1e-3", "train.max_epochs=2", "train.patience=20", "train.class_weights=true",
      "synthetic.volumes=6", "synthetic.slices=10", "synthetic.height=48", "synthetic.width=64"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fluid_run") / "run"
    assert main(["fluid", "run", "--data", "builtin", "--out", str(out), "--device", "cpu", *OV]) == 0
    return out


def _units(out):
    return {p.stem: json.loads(p.read_text())["result"] for p in (out / "units").glob("*.json")}


def test_protocol_metrics_tables_and_baselines(tiny_run):
    """Catches (replacing a test that checked ranges only): pooled metrics that are not those of the held-out
    predictions, a majority baseline that is not constant, below_baseline flags that contradict the numbers,
    rows for batch sizes that never ran, and a saliency count that is not the held-out fluid B-scans."""
    out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    units = _units(out)
    assert m["n_images"] == 60 and m["grouped_by_subject"] and m["folds"] == 3 and m["selection"] == "inner"
    for design in ("train90", "train10"):
        for variant, tgt in (("", m), ("mask", m["variants"]["mask"])):
            e = tgt["designs"][design]["resnet18"]["8"]
            rows = [u for u in units.values() if u.get("design") == design and u.get("arch") == "resnet18"
                    and u.get("batch") == 8 and u.get("variant") == variant]
            assert len(rows) == 3 and e["folds"] == 3 and e["batch_ran"] == [8]
            y = np.concatenate([r["test_y"] for r in rows])
            p = np.concatenate([r["test_prob"] for r in rows])
            assert e["pooled"]["auc"] == pytest.approx(roc_auc(y, p))
            assert e["accuracy"]["mean"] == pytest.approx(np.mean([r["accuracy"] for r in rows]))
            bl = m["baselines"][design]["retina-32x48"]
            best = max(b["balanced_accuracy"]["mean"] for b in bl.values())
            assert e["below_baseline"] == (not e["balanced_accuracy"]["mean"] > best)
            assert e["best_baseline"].split(" (")[0] in bl
        maj = m["baselines"][design]["retina-32x48"]["majority"]
        assert maj["balanced_accuracy"]["mean"] == 0.5 and maj["balanced_accuracy"]["sd"] == 0.0
        assert maj["auc"]["mean"] == 0.5
    # train90 fits on ~30 images, train10 on ~10: batch 16 ran for train90 and was skipped for train10
    assert m["designs"]["train90"]["resnet18"]["16"]["batch_ran"] == [16]
    assert "16" not in m["designs"]["train10"]["resnet18"]
    skipped = {(s["design"], s["batch"]) for s in m["skipped"]}
    assert skipped == {("train10", 16)}
    t3 = (out / "tables" / "table3_train10.md").read_text()
    assert "Skipped (batch larger than the training part): train10 resnet18 batch 16" in t3
    lines = [ln for ln in t3.splitlines() if ln.startswith("| ")][1:]
    assert [ln.split("|")[1].strip() for ln in lines[:2]] == ["baseline", "baseline"]
    assert all("| 16 |" not in ln for ln in lines)
    # saliency: every held-out fluid B-scan of train90 is counted once
    sal = m["saliency"]["plain"]["train90"]["resnet18-bs=8"]
    n_fluid = sum(sum(r["test_y"]) for k, r in units.items() if k.startswith("train90-resnet18-bs=8-fold="))
    assert sal["n"] == n_fluid and 0 < sal["chance"] < 1
    assert (out / "tables" / "saliency_in_mask.md").exists() and (out / "figures" / "saliency_in_mask.png").exists()
    for f in ("fig2_train90", "fig4_train10", "roc_train90", "roc_train10", "fig2_train90_mask"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000
    assert (out / "checkpoints" / "mask-train90-resnet18-bs=8.safetensors").exists()


def test_protocol_checkpoints_store_the_folds_thresholds(tiny_run):
    """Catches: a protocol checkpoint without the decision threshold its fold chose on the inner validation
    split (evaluate and predict would then decide at 0.5), or a stored dark-pocket baseline fitted and
    thresholded otherwise than the protocol's own baseline row of that fold, or a dark-pocket LR fitted on more
    than the fitting part (the inner validation split that picks its threshold must stay out of its fit)."""
    import tomllib

    from detectlab.core.checkpoints import read_header
    from detectlab.core.config import from_dict
    from detectlab.fluid import baseline as B
    from detectlab.fluid.config import Config
    from detectlab.fluid.data import prep_for, prepared, read_data
    from detectlab.fluid.experiment import fold_split

    units = _units(tiny_run)
    cfg = from_dict(Config, tomllib.loads((tiny_run / "config.toml").read_text()))
    ds = read_data(tiny_run / "data" / "synthetic", cfg.max_images, cfg.seed)
    sp = fold_split(cfg, ds, "train90", 0)
    allp = prepared(ds, prep_for(cfg, "resnet18", False))
    f, y = B.features_of(allp), allp.y.numpy()
    lr = read_header(tiny_run / "checkpoints" / "train90-resnet18-bs=8.safetensors")["baselines"]["dark_pockets_lr"]
    assert lr == B.fit_pocket_lr(f[sp["fit"]], y[sp["fit"]], cfg.seed)
    assert lr != B.fit_pocket_lr(f[sp["train"]], y[sp["train"]], cfg.seed)
    for name in ("train90-resnet18-bs=8", "mask-train90-resnet18-bs=8", "train10-resnet18-bs=8"):
        h = read_header(tiny_run / "checkpoints" / f"{name}.safetensors")
        u = units[f"{name}-fold=0"]
        assert h["threshold"] == u["threshold"] and h["threshold_from"].startswith("Youden")
        base = units[f"baseline-{u['design']}-retina-32x48-fold=0"]["dark_pockets_lr"]
        assert h["baselines"]["dark_pockets_lr_threshold"] == pytest.approx(base["threshold"], abs=1e-12)


def test_fold_units_keep_subjects_apart(tiny_run):
    """Catches: a fold whose fitting, inner-validation and test parts share subjects, and a train10 that does
    not train on fewer images than it is tested on."""
    for u in _units(tiny_run).values():
        if "subjects" not in u:
            continue
        s = u["subjects"]
        assert not set(s["fit"]) & set(s["val"]) and not set(s["fit"]) & set(s["test"])
        assert not set(s["val"]) & set(s["test"]) and u["inner_grouped"]
        if u["design"] == "train10":
            assert u["n_train"] < u["n_test"] and u["n_train"] == 20 and u["n_test"] == 40
        else:
            assert u["n_train"] == 40 and u["n_test"] == 20


def test_resume_reads_units_back(tiny_run, capsys):
    """Catches: a rerun with the same --out recomputing finished units."""
    out = tiny_run
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 6 + 24  # baselines per design x fold, and every model unit (skipped ones too)
    stamps = [u.stat().st_mtime_ns for u in units]
    assert main(["fluid", "run", "--data", "builtin", "--out", str(out), "--device", "cpu", *OV]) == 0
    assert [u.stat().st_mtime_ns for u in units] == stamps
    assert "30 of 30 already finished" in capsys.readouterr().err.replace("\n", " ")


def test_predict_folder_volume_and_png_with_saliency(tiny_run, tmp_path, capsys):
    """Catches: no per-volume answer for MetaImage input, folders not searched, saliency maps not written,
    and the same B-scan scored differently from a volume and from a PNG."""
    from PIL import Image

    from detectlab.fluid.data import read_mhd

    out = tiny_run
    case = next((out / "data" / "synthetic").glob("SYN*"))
    inp = tmp_path / "in"
    (inp / "vol").mkdir(parents=True)
    for f in ("oct.mhd", "oct.raw"):
        (inp / "vol" / f).write_bytes((case / f).read_bytes())
    Image.fromarray(read_mhd(case / "oct.mhd")[3]).save(inp / "scan.png")
    rc = main(["fluid", "predict", str(out), str(inp), "--out", str(tmp_path / "pred"),
               "--checkpoint", "train90-resnet18-bs=8"])
    assert rc == 0
    text = capsys.readouterr().out
    pred = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    rows = pred["predictions"]
    assert len(rows) == 11 and len(list((tmp_path / "pred" / "saliency").glob("*.png"))) == 11
    (vol,) = pred["volumes"]
    assert vol["bscans"] == 10 and vol["fluid"] == bool(vol["fluid_bscans"])
    assert vol["fluid_bscans"] == [r["slice"] for r in rows if r["volume"] and r["p_fluid"] >= pred["threshold"]]
    assert f"# volume {inp / 'vol' / 'oct.mhd'}: " in text
    p_png = next(r["p_fluid"] for r in rows if r["bscan"].endswith("scan.png"))
    p_vol = next(r["p_fluid"] for r in rows if r["slice"] == 3)
    assert p_png == pytest.approx(p_vol, abs=1e-5)
    assert all(len(r["saliency_peak_native"]) == 2 for r in rows)
    png_row = next(r for r in rows if r["bscan"].endswith("scan.png"))
    assert Path(png_row["saliency_png"]).name.endswith("_scan.png")  # not scan.png.png


def test_predict_refuses_tiny_images_and_bad_inputs(tiny_run, tmp_path, capsys):
    """Catches: a 1x1 PNG scored 'fluid 1.0', unknown file types, missing checkpoints."""
    from PIL import Image

    out = tiny_run
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny)
    assert main(["fluid", "predict", str(out), str(tiny)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tiny) in err and "much smaller than the network input" in err
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    assert main(["fluid", "predict", str(out), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert main(["fluid", "predict", str(tmp_path), str(bad)]) == 2
    assert main(["fluid", "predict", str(out), str(tiny), "--checkpoint", "nope"]) == 2


def test_train_command_groups_by_subject_then_predict(tmp_path, capsys, monkeypatch):
    """Fault 1: `fluid train` grouped only with >= 10 subjects, so with 4 subjects its validation B-scans came
    from training subjects too; now the split is by subject whenever subjects are known. Also catches: the
    decision thresholds stored in the checkpoint (model and dark-pocket LR) not chosen on the validation split
    (on the training part, or left at 0.5), or stored ones that differ from those chosen."""
    from detectlab.core.checkpoints import read_header
    from detectlab.fluid import train as T

    calls = []

    def spy(y, prob):
        calls.append((np.asarray(y).copy(), T.youden_threshold.__wrapped__(y, prob)))
        return calls[-1][1]

    spy.__wrapped__ = T.youden_threshold
    monkeypatch.setattr(T, "youden_threshold", spy)
    out = tmp_path / "train"
    ov = ["archs=['squeezenet']", "batch_sizes=[8]", "crop=retina", "band_size=[32,48]", "train.max_epochs=1",
          "synthetic.volumes=4", "synthetic.slices=10", "synthetic.height=48", "synthetic.width=64"]
    assert main(["fluid", "train", "--data", "builtin", "--out", str(out), *ov]) == 0
    m = json.loads((out / "metrics.json").read_text())
    h = read_header(out / "checkpoints" / "model.safetensors")
    assert len(calls) == 2 and all(len(y) == m["n_val"] for y, _ in calls)  # model, then the LR: on validation
    assert h["threshold"] == calls[0][1] == m["threshold"]
    assert h["baselines"]["dark_pockets_lr_threshold"] == calls[1][1] == m["dark_pockets_lr_threshold"]
    assert m["grouped_by_subject"] and m["n_train"] + m["n_val"] == 40
    assert m["train_subjects"] and m["val_subjects"] and not set(m["train_subjects"]) & set(m["val_subjects"])
    assert m["n_val"] == 10 * len(m["val_subjects"])
    vol = next((out / "data" / "synthetic").rglob("oct.mhd"))
    capsys.readouterr()
    assert main(["fluid", "predict", str(out), str(vol)]) == 0
    assert "model.safetensors" in capsys.readouterr().out


def test_weights_checked_before_the_first_unit(tmp_path, monkeypatch, capsys):
    """Fault 5: a missing weights file for the second architecture was found only when its first unit ran;
    every architecture's weights are checked before any unit starts."""
    import torch.hub
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    ck = tmp_path / "torch" / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), ck / "squeezenet1_1-b8a52dc0.pth")
    out = tmp_path / "run"
    rc = main(["fluid", "run", "--data", "builtin", "--out", str(out), "archs=['squeezenet','resnet18']",
               "train.weights=imagenet", "synthetic.volumes=2", "synthetic.slices=6", "synthetic.height=48",
               "synthetic.width=64", "folds=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "resnet18-f37072fd.pth" in err
    assert not list((out / "units").glob("*.json"))


def test_nan_auc_folds_are_counted_apart():
    """Fault 9 (second half): folds with one class have no AUC; they were dropped from the mean while the folds
    column still counted them. auc_folds says how many folds the AUC mean is over."""
    from detectlab.fluid.experiment import summarise_rows

    rows = [{"fold": 0, "accuracy": 1.0, "auc": 0.75, "balanced_accuracy": 0.8, "test_y": [0, 1, 1], "test_prob": [0.2, 0.9, 0.4]},
            {"fold": 1, "accuracy": 0.5, "auc": float("nan"), "balanced_accuracy": 0.5, "test_y": [1, 1], "test_prob": [0.9, 0.3]}]
    s = summarise_rows(rows, 2)
    assert s["auc_folds"] == 1 and s["folds"] == 2 and s["auc"]["mean"] == 0.75
    assert s["accuracy"]["mean"] == 0.75 and s["pooled"]["n"] == 5
    assert s["pooled"]["auc"] == pytest.approx(roc_auc([0, 1, 1, 1, 1], [0.2, 0.9, 0.4, 0.9, 0.3]))


def test_unknown_arch_is_bad_input(tmp_path, capsys):
    """Catches: an unknown architecture name ending in a traceback."""
    assert main(["fluid", "run", "--data", "builtin", "--out", str(tmp_path / "r"), "archs=['lenet']"]) == 2
    assert "lenet" in capsys.readouterr().err


def test_below_baseline_compares_balanced_accuracy_on_the_same_input():
    """Catches: below_baseline computed on another metric than balanced accuracy (a cell with a high
    accuracy but chance balanced accuracy beats nothing), or against baselines of another input."""
    from detectlab.fluid.experiment import mark_baselines

    def cell(acc, bal, prep="retina-32x48"):
        return {"accuracy": {"mean": acc}, "balanced_accuracy": {"mean": bal}, "prep": prep}

    out = {"baselines": {"train90": {"retina-32x48": {"majority": cell(0.7, 0.5), "dark_pockets_lr": cell(0.8, 0.75)}}},
           "designs": {"train90": {"a": {"8": cell(0.9, 0.6)}, "b": {"8": cell(0.6, 0.76)},
                                   "c": {"8": cell(0.9, 0.9, "centre-224x224")}}}}
    mark_baselines(out)
    d = out["designs"]["train90"]
    assert d["a"]["8"]["below_baseline"] is True and d["b"]["8"]["below_baseline"] is False
    assert d["b"]["8"]["best_baseline"].startswith("dark_pockets_lr")
    assert d["c"]["8"]["below_baseline"] is None  # no baseline on that input


def test_youden_threshold():
    """Catches: a threshold that does not maximise sensitivity + specificity, or one exactly on a score."""
    from detectlab.fluid.train import youden_threshold

    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.90, 0.91, 0.92, 0.95, 0.97, 0.99])  # all above 0.5, perfectly ranked
    t = youden_threshold(y, p)
    assert 0.92 < t < 0.95 and t == pytest.approx(0.935)
    assert youden_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5
