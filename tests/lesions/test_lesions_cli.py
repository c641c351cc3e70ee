import json

import numpy as np
from PIL import Image

from detectlab.cli import main


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detectlab: error:") and needle in err[0], err
    return err[0]


def test_train_then_predict_png_and_nifti(trained_run, tmp_path, capsys):
    import nibabel as nib

    m = json.loads((trained_run / "metrics.json").read_text())
    seg = m["segmentation"]["resnet18_t1"]
    assert set(seg) == {"ap50", "ap75", "ap", "params", "train_minutes"} and seg["params"] == 6051810
    cls = m["classification"]["resnet18_t1"]
    assert set(cls["sensitivity"]) == {"normal", "pneumonia", "covid"} and 0 <= cls["accuracy"] <= 1
    assert cls["trainable_params"] == 32 * 5 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3  # S with B=32, s=64
    src = sorted((trained_run / "data" / "classification" / "images").glob("1_*.png"))[0]
    img = np.asarray(Image.open(src))
    big = np.asarray(Image.fromarray(img).resize((200, 180)))  # predict maps back to the input's size
    Image.fromarray(big).save(tmp_path / "slice.png")
    vol = np.stack([img.T.astype(np.float32) * 5 - 1000] * 2, axis=-1)  # (x, y, z) HU-like
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "vol.nii.gz"))
    out = tmp_path / "pred"
    capsys.readouterr()
    rc = main(["lesions", "predict", str(trained_run), str(tmp_path / "slice.png"), str(tmp_path / "vol.nii.gz"),
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "slice" in printed and "vol_z0001" in printed
    for name, shape in (("slice", (180, 200)), ("vol_z0000", img.shape), ("vol_z0001", img.shape)):
        res = json.loads((out / f"{name}.json").read_text())
        assert res["class"] in (0, 1, 2) and abs(sum(res["class_scores"].values()) - 1) < 1e-5
        with Image.open(out / f"{name}_instances.png") as lm:
            arr = np.asarray(lm)
        assert arr.shape == shape and arr.max() <= len(res["instances"])
        assert (out / f"{name}_overlay.png").stat().st_size > 1000
        for inst in res["instances"]:
            assert (arr == inst["id"]).sum() <= inst["area"]


def test_train_resume_reads_units_back(trained_run, tiny_overrides, capsys):
    before = (trained_run / "metrics.json").read_text()
    rc = main(["lesions", "train", "--data", "builtin", "--out", str(trained_run), "--device", "cpu", *tiny_overrides])
    assert rc == 0
    assert "already finished" in (trained_run / "log.txt").read_text()
    assert json.loads((trained_run / "metrics.json").read_text()) == json.loads(before)


def test_bad_inputs_exit_2_with_one_line(trained_run, tmp_path, tiny_overrides, capsys):
    # mask / image size mismatch
    d = tmp_path / "seg" / "images"
    d.mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(d / "a.png")
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(tmp_path / "seg" / "masks" / "a.png")
    rc = main(["lesions", "run", "--data", str(tmp_path / "seg"), "--out", str(tmp_path / "r1"), *tiny_overrides])
    assert rc == 2
    _one_line_error(capsys, "masks/a.png: mask is 32x30 but its image a.png is 32x32")
    # empty folder
    (tmp_path / "empty").mkdir()
    rc = main(["lesions", "run", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2"), *tiny_overrides])
    assert rc == 2
    _one_line_error(capsys, "no CT slices found")
    # unknown class in the classifier's data
    c = tmp_path / "cls"
    c.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(c / "4_1_1_1.png")
    rc = main(["lesions", "train", "--data", "builtin", "--out", str(trained_run), "--device", "cpu",
               *[o for o in tiny_overrides], f"cls.data={str(c)!r}"])
    assert rc == 2  # different config -> cannot resume this folder
    capsys.readouterr()
    rc = main(["lesions", "run", "--data", "builtin", "--out", str(tmp_path / "r3"), *tiny_overrides,
               f"cls.data={str(c)!r}", "seg.iterations=1"])
    assert rc == 2
    _one_line_error(capsys, "4_1_1_1.png: unknown class '4'")
    # predict: not an image, missing file, unknown backbone
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "bad.png")]) == 2
    _one_line_error(capsys, "bad.png: not a readable image")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "nope.png")]) == 2
    _one_line_error(capsys, "nope.png: input file does not exist")
    assert main(["lesions", "predict", str(trained_run), str(tmp_path / "bad.png"), "--backbone", "resnet34_t2"]) == 2
    _one_line_error(capsys, "no segmentation checkpoint for this backbone")
    assert main(["lesions", "run", "--out", str(tmp_path / "r4"), "backbones=['resnet50']"]) == 2
    _one_line_error(capsys, "unknown backbone 'resnet50'")
