"""`fluid evaluate` on data written in the real formats: MetaImage volumes with reference volumes, a Duke-style
labels CSV with PNG masks, Kermany class folders (train/ and test/)."""

import json

import numpy as np
import pytest

from detectlab.cli import main


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fluid_eval") / "train"
    ov = ["archs=['resnet18']", "batch_sizes=[8]", "crop=retina", "band_size=[32,48]", "band_rows=0.6",
          "train.optimizer=adam", "train.lr=1e-3", "train.max_epochs=3", "train.class_weights=true",
          "synthetic.volumes=4", "synthetic.slices=10", "synthetic.height=48", "synthetic.width=64"]
    assert main(["fluid", "train", "--data", "builtin", "--out", str(out), *ov]) == 0
    return out


def _predicted(model_run, inputs, tmp_path, capsys):
    assert main(["fluid", "predict", str(model_run), *[str(i) for i in inputs], "--out", str(tmp_path / "pred"),
                 "--no-saliency"]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / "pred" / "predictions.json").read_text())


def test_evaluate_metaimage_volumes(model_run, tmp_path, capsys):
    """Catches: evaluate scoring other inputs than predict does, no per-volume result for MetaImage data, a
    saliency count that is not the fluid B-scans, below_baseline flags against the numbers."""
    from detectlab.fluid.synthetic import generate
    from detectlab.fluid.train import heldout_metrics

    data = generate(tmp_path / "site2", volumes=2, slices=8, height=48, width=64, seed=7)
    out = tmp_path / "ev"
    assert main(["fluid", "evaluate", str(model_run), str(data), "--out", str(out), "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    e = m["models"]["model"]
    assert m["n_images"] == 16 and e["n"] == 16
    pred = _predicted(model_run, sorted(data.rglob("oct.mhd")), tmp_path, capsys)
    from detectlab.fluid.data import load_dataset

    ds = load_dataset(data)
    p = np.array([r["p_fluid"] for r in pred["predictions"]])
    assert pred["threshold"] == e["threshold"]  # both apply the checkpoint's threshold
    ref = heldout_metrics(ds.labels, p, e["threshold"])
    for k in ("accuracy", "auc", "balanced_accuracy"):
        assert e[k] == pytest.approx(ref[k], abs=1e-6), k
    vols = e["per_volume"]["volumes"]
    assert len(vols) == 2 and e["per_volume"]["n"] == 2
    for v in vols:
        idx = [i for i, w in enumerate(ds.volumes) if w == v["volume"]]
        assert v["reference_fluid"] == bool(ds.labels[idx].max()) and v["p_fluid_max"] == pytest.approx(p[idx].max())
    assert e["saliency"]["n"] == int(ds.labels.sum())
    best = max(b["balanced_accuracy"] for b in e["baselines"].values())
    assert e["below_baseline"] == (not e["balanced_accuracy"] > best)
    assert e["baselines"]["majority"]["balanced_accuracy"] == 0.5
    assert (out / "data.json").exists() and (out / "tables" / "evaluation.md").exists()
    # the same folder with other data is refused (data pinned)
    other = generate(tmp_path / "site3", volumes=2, slices=6, height=48, width=64, seed=8)
    assert main(["fluid", "evaluate", str(model_run), str(other), "--out", str(out)]) == 2


def test_evaluate_duke_style_csv_with_masks(model_run, tmp_path, write_png):
    """Catches: a labels CSV with masks not read by evaluate, labels not derived from the masks."""
    rng = np.random.default_rng(0)
    rows = ["image,mask,subject"]
    for i in range(8):
        img = (rng.random((48, 64)) * 60 + 40).astype(np.uint8)
        img[20:30] = 180  # a retina band
        mask = np.zeros((48, 64, 3), np.uint8)
        if i % 2 == 0:
            img[23:27, 20:30] = 10
            mask[23:27, 20:30] = 255
        write_png(tmp_path / "duke" / "img" / f"{i}.png", img)
        write_png(tmp_path / "duke" / "ann" / f"{i}.png", mask)
        rows.append(f"img/{i}.png,ann/{i}.png,S{i // 4}")
    (tmp_path / "duke" / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "ev"
    assert main(["fluid", "evaluate", str(model_run), str(tmp_path / "duke"), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    e = m["models"]["model"]
    assert m["counts"] == {"fluid": 4, "no_fluid": 4} and m["masks_known"] and e["n_fluid"] == 4
    assert "per_volume" not in e and e["saliency"]["n"] == 4


def test_evaluate_class_folders(model_run, tmp_path, write_png):
    """Catches: Kermany class folders (train/ and test/) not read by evaluate."""
    for split in ("train", "test"):
        for i in range(2):
            write_png(tmp_path / "k" / split / "CNV" / f"CNV-{10 + i}-{split == 'test'}.jpeg",
                      np.full((48, 64), 60, np.uint8))
            write_png(tmp_path / "k" / split / "NORMAL" / f"NORMAL-{20 + i}-{split == 'test'}.jpeg",
                      np.full((48, 64), 120, np.uint8))
    out = tmp_path / "ev"
    assert main(["fluid", "evaluate", str(model_run), str(tmp_path / "k"), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["counts"] == {"fluid": 4, "no_fluid": 4} and not m["masks_known"]
    assert m["models"]["model"]["n"] == 8 and "saliency" not in m["models"]["model"]


def test_evaluate_bad_data_is_one_line(model_run, tmp_path, capsys):
    """Catches: a folder without OCT data ending in a traceback."""
    (tmp_path / "empty").mkdir()
    assert main(["fluid", "evaluate", str(model_run), str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no OCT data found" in err


def test_evaluate_and_predict_apply_the_checkpoints_threshold(model_run, tmp_path, capsys):
    """Catches: evaluate or predict deciding at 0.5 whatever threshold the model was trained with (the one
    chosen on its validation data and stored in its checkpoint), the dark-pocket baseline not at its own stored
    threshold, --threshold not overriding both, or a threshold that is not a probability accepted."""
    import shutil

    from detectlab.core.checkpoints import load_checkpoint, save_checkpoint
    from detectlab.fluid.data import load_dataset
    from detectlab.fluid.synthetic import generate
    from detectlab.fluid.train import heldout_metrics

    data = generate(tmp_path / "site2", volumes=2, slices=8, height=48, width=64, seed=7)
    pred = _predicted(model_run, sorted(data.rglob("oct.mhd")), tmp_path, capsys)
    p = np.array([r["p_fluid"] for r in pred["predictions"]])
    y = load_dataset(data).labels
    # a copy of the run whose checkpoint stores thresholds that decide otherwise than 0.5 does
    run2 = tmp_path / "run2"
    shutil.copytree(model_run, run2)
    ck = run2 / "checkpoints" / "model.safetensors"
    state, header = load_checkpoint(ck)
    cands = [q for q in np.unique(p) if (p >= q).sum() != (p >= 0.5).sum()]  # scores that decide otherwise
    t = float(cands[len(cands) // 2])
    header = {k: v for k, v in header.items() if k not in ("system", "model_config", "version")}
    header |= {"threshold": t, "threshold_from": "set by the test"}
    header["baselines"] = dict(header["baselines"], dark_pockets_lr_threshold=0.9)
    save_checkpoint(ck, state, "fluid", load_checkpoint(model_run / "checkpoints" / "model.safetensors")[1]["model_config"],
                    **header)

    out = tmp_path / "ev"
    assert main(["fluid", "evaluate", str(run2), str(data), "--out", str(out)]) == 0
    e = json.loads((out / "metrics.json").read_text())["models"]["model"]
    assert e["threshold"] == t and e["threshold_from"] == "set by the test"
    assert e["balanced_accuracy"] == pytest.approx(heldout_metrics(y, p, t)["balanced_accuracy"], abs=1e-6)
    assert e["baselines"]["dark_pockets_lr"]["threshold"] == 0.9 and e["baselines"]["majority"]["threshold"] == 0.5
    pr = _predicted(run2, sorted(data.rglob("oct.mhd")), tmp_path / "p2", capsys)
    assert pr["threshold"] == t
    assert [r["label"] for r in pr["predictions"]] == ["fluid" if q >= t else "no_fluid" for q in p]

    out2 = tmp_path / "ev05"
    assert main(["fluid", "evaluate", str(run2), str(data), "--out", str(out2), "--threshold", "0.5"]) == 0
    e2 = json.loads((out2 / "metrics.json").read_text())["models"]["model"]
    assert e2["threshold"] == 0.5 and e2["baselines"]["dark_pockets_lr"]["threshold"] == 0.5
    assert e2["sensitivity"] == pytest.approx(heldout_metrics(y, p, 0.5)["sensitivity"], abs=1e-6)
    capsys.readouterr()
    assert main(["fluid", "evaluate", str(run2), str(data), "--out", str(tmp_path / "bad"), "--threshold", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threshold 1.5" in err
    assert main(["fluid", "predict", str(run2), str(next(data.rglob("oct.mhd"))), "--threshold", "-0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "detectlab: error: --threshold -0.1: is not a probability (expected a number from 0 to 1)"
