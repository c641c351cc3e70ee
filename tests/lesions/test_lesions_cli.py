import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from detectlab.cli import main


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detectlab: error:") and needle in err[0], err
    return err[0]


def _ct_slice(trained_run):
    src = sorted((trained_run / "data" / "classification" / "images").glob("2_*.png"))[0]
    return np.asarray(Image.open(src))


def test_train_metrics_and_tables_agree_with_the_units(trained_run):
    """Catches metrics.json, the unit results and the tables drifting apart: the accuracy must be the one
    of the stored test probabilities, the trainable count that of S alone (cached RoIs), Dice and AP the
    unit's, and a learned row marked against its baselines."""
    m = json.loads((trained_run / "metrics.json").read_text())
    unit = json.loads((trained_run / "units" / "cls-resnet18_t2.json").read_text())["result"]
    probs, labels = np.asarray(unit["test_probs"]), np.asarray(unit["test_labels"])
    cls = m["classification"]["resnet18_t2"]
    assert cls["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    for c, name in enumerate(("normal", "pneumonia", "covid")):
        assert cls["sensitivity"][name] == pytest.approx(float((probs.argmax(1)[labels == c] == c).mean()))
    assert cls["trainable_params"] == 16 * 5 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3  # S with B=16, s=32
    assert cls["below_baseline"] == (not cls["accuracy"] > cls["majority_accuracy"])
    seg = m["segmentation"]["resnet18_t2"]
    su = json.loads((trained_run / "units" / "seg-resnet18_t2.json").read_text())["result"]
    assert seg["ap50"] == su["ap50"] and seg["dice"]["pooled"] == su["dice"]["pooled"]
    assert seg["params"] == 3885920
    best = max(seg["baseline_lung_threshold"]["dice"], seg["baseline_empty"]["dice"])
    assert seg["below_baseline"] == (not seg["dice"]["pooled"] > best)
    assert [p["iteration"] for p in su["history"]["curve"]] == [2, 4]  # eval_every=2


def test_predict_png_runs_the_backbone_once_and_maps_back(trained_run, tmp_path, capsys):
    """Catches predict running the backbone twice per slice (segmentation and classifier share it when
    the classifier's backbone is the segmentation model's), outputs at the model's size instead of the
    input's, and a class that is not the argmax of the class scores."""
    from detectlab.lesions import predict

    img = _ct_slice(trained_run)
    big = np.asarray(Image.fromarray(img).resize((100, 90)))
    Image.fromarray(big).save(tmp_path / "slice.png")
    calls = []
    orig = predict.Predictor.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        self.seg.backbone.register_forward_hook(lambda *_: calls.append("seg"))
        if self.net is not None:
            self.net.seg.backbone.register_forward_hook(lambda *_: calls.append("cls"))

    predict.Predictor.__init__ = init
    try:
        rc = main(["lesions", "predict", str(trained_run), str(tmp_path / "slice.png"), "--out", str(tmp_path / "p")])
    finally:
        predict.Predictor.__init__ = orig
    assert rc == 0 and calls == ["seg"]
    res = json.loads((tmp_path / "p" / "slice.json").read_text())
    scores = list(res["class_scores"].values())
    assert res["class"] == int(np.argmax(scores)) and abs(sum(scores) - 1) < 1e-5
    with Image.open(tmp_path / "p" / "slice_instances.png") as lm:
        arr = np.asarray(lm)
    assert arr.shape == (90, 100) and arr.max() <= len(res["instances"])
    for inst in res["instances"]:
        assert (arr == inst["id"]).sum() <= inst["area"]
    assert "slice" in capsys.readouterr().out


def test_predict_nifti_writes_label_volume_ml_and_lung_share(trained_run, tmp_path, capsys):
    """Catches a label volume not on the input's grid or without its affine, lesion mL not computed from
    the voxel spacing, and a lung percentage not computed against the given lung mask."""
    import nibabel as nib

    img = _ct_slice(trained_run)
    hu = img.astype(np.float32) / 255 * 1400 - 1000
    vol = np.stack([hu.T[::-1, ::-1]] * 3, axis=-1)  # (x, y, z) in RAS so that the display is the slice
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    aff[:3, 3] = [-40, 10, 100]
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "vol.nii.gz"))
    lungs = np.zeros(vol.shape, np.uint8)
    lungs[:, :, :] = 1
    nib.save(nib.Nifti1Image(lungs, aff), str(tmp_path / "lungs.nii.gz"))
    out = tmp_path / "pv"
    rc = main(["lesions", "predict", str(trained_run), str(tmp_path / "vol.nii.gz"), "--out", str(out),
               "--lung-mask", str(tmp_path / "lungs.nii.gz"), "--score-thresh", "0.0"])
    assert rc == 0
    res = json.loads((out / "vol.json").read_text())
    lab = nib.load(str(out / "vol_lesions.nii.gz"))
    np.testing.assert_allclose(lab.affine, aff)
    arr = np.asarray(lab.dataobj)
    assert arr.shape == vol.shape and set(np.unique(arr).tolist()) <= {0, 1}
    assert res["lesion_voxels"] == int(arr.sum())
    assert res["lesion_ml"] == pytest.approx(arr.sum() * 0.8 * 0.8 * 2.5 / 1000)
    assert res["lung_ml"] == pytest.approx(vol.size * 0.8 * 0.8 * 2.5 / 1000)
    assert res["lung_involved_percent"] == pytest.approx(100 * arr.sum() / vol.size)
    assert res["spacing_zyx_mm"] == pytest.approx([2.5, 0.8, 0.8])
    assert "mL lesion" in capsys.readouterr().out


def test_non_ct_inputs_are_refused_with_one_line(trained_run, tmp_path, capsys):
    """Catches a brain MRI (nibabel's anatomical.nii) or a 1x1 PNG being scored as CT; the override flag
    must let them through."""
    from nibabel.testing import data_path

    mri = os.path.join(data_path, "anatomical.nii")
    assert main(["lesions", "predict", str(trained_run), mri, "--out", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "anatomical.nii: intensities do not look like CT in Hounsfield units")
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(tmp_path / "dot.png")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "dot.png"), "--out", str(tmp_path / "d")]) == 2
    _one_line_error(capsys, "dot.png: image is 1x1 pixels")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "flat.png")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "flat.png")]) == 2
    _one_line_error(capsys, "flat.png: image has almost no contrast")
    rc = main(["lesions", "predict", str(trained_run), mri, str(tmp_path / "dot.png"), "--out", str(tmp_path / "o"),
               "--allow-non-ct"])
    assert rc == 0 and (tmp_path / "o" / "anatomical.json").exists() and (tmp_path / "o" / "dot.json").exists()
    capsys.readouterr()


def test_evaluate_on_slices_and_volumes_in_the_real_formats(trained_run, tmp_path):
    """Catches an evaluator that cannot read the real layouts (MedSeg palette PNGs; NIfTI images with mask
    and lung volumes), a Dice per volume that mixes volumes, and baselines missing from the table."""
    import nibabel as nib

    from detectlab.lesions import evaluate

    img = _ct_slice(trained_run)
    d = tmp_path / "medseg" / "MultiClassInfection-Test"
    (d / "Imgs").mkdir(parents=True)
    (d / "GT").mkdir()
    m = np.zeros(img.shape, np.uint8)
    m[20:40, 10:25] = 1
    Image.fromarray(img).save(d / "Imgs" / "1.jpg", quality=95)
    pm = Image.fromarray(m, "P")
    pm.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pm.save(d / "GT" / "1.png")
    args = argparse.Namespace(backbone="", allow_non_ct=False)
    assert evaluate.run(trained_run, tmp_path / "medseg", tmp_path / "e1", args) == 0
    r = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert r["n_slices"] == 1 and r["segmentation"]["n_instances"] == 1
    assert set(r["baselines"]) == {"empty"}  # no lungs in MedSeg: no lung-threshold row
    v = tmp_path / "vols"
    for sub in ("images", "masks", "lungs"):
        (v / sub).mkdir(parents=True)
    hu = (img.astype(np.float32) / 255 * 1400 - 1000).T[::-1, ::-1]
    les = np.zeros((*hu.shape, 2), np.uint8)
    les[10:30, 10:30, 1] = 1
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(np.stack([hu, hu], -1), np.eye(4)), str(v / "images" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(les, np.eye(4)), str(v / "masks" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(np.ones_like(les), np.eye(4)), str(v / "lungs" / f"{name}.nii.gz"))
    assert evaluate.run(trained_run, v, tmp_path / "e2", args) == 0
    r = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert r["n_slices"] == 4 and r["segmentation"]["n_instances"] == 2
    assert set(r["segmentation"]["dice"]["per_volume"]) == {"folder:vols/a", "folder:vols/b"}
    assert "lung_threshold" in r["baselines"] and r["baselines"]["lung_threshold"]["n_slices"] == 4
    table = (tmp_path / "e2" / "tables" / "evaluation.md").read_text()
    assert "no lesion (empty prediction)" in table and "lung threshold" in table and "below_baseline" in table
    from detectlab.core.errors import InputError

    with pytest.raises(InputError, match="no CT slices found"):
        evaluate.run(trained_run, tmp_path / "e1" / "tables", tmp_path / "e3", args)


def test_train_resume_reads_units_back(trained_run, tiny_overrides, capsys):
    """Catches a rerun that recomputes finished units or rewrites different metrics."""
    before = (trained_run / "metrics.json").read_text()
    rc = main(["lesions", "train", "--data", "builtin", "--out", str(trained_run), "--device", "cpu", *tiny_overrides])
    assert rc == 0
    assert "already finished" in (trained_run / "log.txt").read_text()
    assert json.loads((trained_run / "metrics.json").read_text()) == json.loads(before)


def test_bad_inputs_exit_2_with_one_line(trained_run, tmp_path, tiny_overrides, capsys):
    """Catches tracebacks instead of one line naming the file for: a mask/image size mismatch, an empty
    folder, an unknown class, an unreadable or missing image, an unknown backbone or config value."""
    d = tmp_path / "seg" / "images"
    d.mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(d / "a.png")
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(tmp_path / "seg" / "masks" / "a.png")
    rc = main(["lesions", "run", "--data", str(tmp_path / "seg"), "--out", str(tmp_path / "r1"), *tiny_overrides])
    assert rc == 2
    _one_line_error(capsys, "masks/a.png: mask is 32x30 but its image a.png is 32x32")
    (tmp_path / "empty").mkdir()
    rc = main(["lesions", "run", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2"), *tiny_overrides])
    assert rc == 2
    _one_line_error(capsys, "no CT slices found")
    c = tmp_path / "cls"
    c.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(c / "4_1_1_1.png")
    rc = main(["lesions", "run", "--data", "builtin", "--out", str(tmp_path / "r3"), *tiny_overrides,
               f"cls.data={str(c)!r}", "seg.iterations=1"])
    assert rc == 2
    _one_line_error(capsys, "4_1_1_1.png: unknown class '4'")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "bad.png")]) == 2
    _one_line_error(capsys, "bad.png: not a readable image")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "nope.png")]) == 2
    _one_line_error(capsys, "nope.png: input file does not exist")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "bad.png"), "--backbone", "resnet34_t2"]) == 2
    _one_line_error(capsys, "no segmentation checkpoint for this backbone")
    assert main(["lesions", "run", "--out", str(tmp_path / "r4"), "backbones=['resnet50']"]) == 2
    _one_line_error(capsys, "resnet50")
    assert main(["lesions", "run", "--out", str(tmp_path / "r5"), "model.norm=layer"]) == 2
    _one_line_error(capsys, "model.norm")
