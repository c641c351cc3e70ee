"""Readers (MetaImage, labels CSV, class folders), labels from the region the network sees, the retina-band
crop, augmentation, splits and bad input."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectlab.cli import main
from detectlab.core.errors import InputError
from detectlab.fluid import data as D


def test_mhd_roundtrip_and_slice_labels(tmp_path, write_mhd):
    """Catches: a wrong axis for B-scans, labels from the wrong slices, label values other than 1 ignored."""
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (5, 20, 30), dtype=np.uint8)
    mask = np.zeros_like(vol)
    mask[1, 3, 4] = 1  # one fluid voxel is enough
    mask[3, 10:15, 10:20] = 2  # any label > 0 is fluid
    write_mhd(tmp_path / "case1" / "oct.mhd", vol)
    write_mhd(tmp_path / "case1" / "reference.mhd", mask)
    v, m = D.load_volume_pair(tmp_path / "case1" / "oct.mhd", tmp_path / "case1" / "reference.mhd")
    assert np.array_equal(v, vol) and np.array_equal(m, mask)
    assert D.slice_labels(m).tolist() == [0, 1, 0, 1, 0]
    ds = D.load_dataset(tmp_path)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 1, 0, 1, 0]
    assert set(ds.subjects) == {"case1"} and ds.images[1].shape == (20, 30)
    # masks are kept for the fluid slices only, at native resolution
    assert ds.masks[0] is None and ds.masks[1].sum() == 1 and ds.masks[3].sum() == 50
    assert ds.volumes[3].endswith("case1") and ds.slices == [0, 1, 2, 3, 4]


def test_mhd_int16_scaled_to_uint8(tmp_path, write_mhd):
    """Catches: signed/16-bit volumes wrapped or clipped instead of min-max scaled."""
    vol = np.arange(2 * 4 * 4, dtype=np.int16).reshape(2, 4, 4) * 100 - 500
    p = write_mhd(tmp_path / "v.mhd", vol)
    out = D.to_uint8(D.read_mhd(p))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert out[0, 0, 0] == 0 and out[1, 3, 3] == 255 and out[0, 0, 1] == round(100 / 3100 * 255)


def test_mhd_raw_size_mismatch(tmp_path, write_mhd):
    """Catches: a truncated .raw read silently (SimpleITK's message names the wrong cause)."""
    p = write_mhd(tmp_path / "v.mhd", np.zeros((4, 8, 8), np.uint8))
    raw = tmp_path / "v.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(InputError, match="does not match the header"):
        D.read_mhd(p)


def test_mhd_unsupported_pixel_type(tmp_path, write_mhd):
    """Catches: an element type we cannot scale read as garbage."""
    p = write_mhd(tmp_path / "v.mhd", np.zeros((2, 4, 4), np.uint8))
    p.write_text(p.read_text().replace("MET_UCHAR", "MET_ULONG_LONG"))
    with pytest.raises(InputError, match="unsupported pixel type MET_ULONG_LONG"):
        D.read_mhd(p)


def test_mask_shape_mismatch(tmp_path, write_mhd):
    """Catches: a reference volume of another size paired with the scan."""
    write_mhd(tmp_path / "c" / "oct.mhd", np.zeros((3, 8, 8), np.uint8))
    write_mhd(tmp_path / "c" / "reference.mhd", np.zeros((3, 8, 9), np.uint8))
    with pytest.raises(InputError, match="mask shape"):
        D.load_dataset(tmp_path)


def _csv_dataset(root: Path, write_png, n=6, with_label=True, shape=(20, 24), box=(5, 8, 5, 9)):
    rows = ["image,mask,subject" + (",label" if with_label else "")]
    for i in range(n):
        img = np.full(shape, 100, np.uint8)
        mask = np.zeros(shape + (3,), np.uint8)  # RGB masks as in the Duke set
        fluid = i % 2 == 0
        if fluid:
            mask[box[0]:box[1], box[2]:box[3]] = 253
        write_png(root / "img" / f"{i}.png", img)
        write_png(root / "ann" / f"{i}.png", mask)
        rows.append(f"img/{i}.png,ann/{i}.png,S{i // 2}" + ((",fluid" if fluid else ",no_fluid") if with_label else ""))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_labels_csv_with_labels_and_derived_from_masks(tmp_path, write_png):
    """Catches: labels not derived from the masks (> 127) when the label column is absent, subjects lost."""
    a = D.load_dataset(_csv_dataset(tmp_path / "a", write_png))
    b = D.load_dataset(_csv_dataset(tmp_path / "b", write_png, with_label=False))
    assert a.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert b.labels.tolist() == a.labels.tolist()
    assert a.subjects.tolist() == ["S0", "S0", "S1", "S1", "S2", "S2"] and a.groups_known
    assert a.masks[0].sum() == 12 and a.masks[1] is None


def test_labels_csv_label_contradicting_mask(tmp_path, write_png):
    """Catches: a label column that disagrees with its mask accepted silently."""
    root = _csv_dataset(tmp_path, write_png)
    text = (root / "labels.csv").read_text().replace("img/0.png,ann/0.png,S0,fluid", "img/0.png,ann/0.png,S0,no_fluid")
    (root / "labels.csv").write_text(text)
    with pytest.raises(InputError, match="contradicts its mask"):
        D.load_dataset(root)


def test_labels_csv_mask_shape_mismatch(tmp_path, write_png):
    """Catches: a mask of another size than its B-scan."""
    root = _csv_dataset(tmp_path, write_png)
    write_png(root / "ann" / "3.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="mask shape"):
        D.load_dataset(root)


def test_label_from_the_region_the_network_sees(tmp_path, write_png):
    """Fault 7: fluid outside the centre crop labelled 'fluid' although the network never sees it."""
    # 40x40 B-scans, fluid in the top-left corner; the centre 20x20 crop (rows/cols 10-29) misses it
    ds = D.load_dataset(_csv_dataset(tmp_path / "out", write_png, shape=(40, 40), box=(1, 4, 1, 4)))
    assert ds.labels.tolist() == [1, 0, 1, 0, 1, 0]
    p = D.prepare(ds, D.Prep("centre", (20, 20)))
    assert p.y.tolist() == [0] * 6 and p.relabelled == 3 and int(p.m.sum()) == 0
    assert D.region_labels(ds, D.Prep("centre", (20, 20))).tolist() == [0] * 6
    # fluid inside the crop keeps its label, and the mask follows the crop (rows 15-18 -> 5-8)
    ds2 = D.load_dataset(_csv_dataset(tmp_path / "in", write_png, shape=(40, 40), box=(15, 18, 15, 18)))
    p2 = D.prepare(ds2, D.Prep("centre", (20, 20)))
    assert p2.y.tolist() == [1, 0, 1, 0, 1, 0] and p2.relabelled == 0
    assert torch.nonzero(p2.m[0, 0]).min(0).values.tolist() == [5, 5]


def test_class_folders_train_and_test_read_lazily(tmp_path, write_png):
    """Kermany OCT2017: train/ and test/ both read; images stay on disk until a batch asks for them
    (the old reader held the whole set, and its float32 copy, in memory)."""
    for split, base in (("train", 100), ("test", 200)):
        for i in range(3):
            write_png(tmp_path / split / "DME" / f"DME-{base + i}-1.jpeg", np.full((40, 48), 50 + i, np.uint8))
            write_png(tmp_path / split / "NORMAL" / f"NORMAL-{base + 50 + i}-1.jpeg", np.full((40, 48), 90, np.uint8))
    ds = D.load_dataset(tmp_path)
    assert ds.counts() == {"fluid": 6, "no_fluid": 6} and ds.groups_known and ds.lazy
    assert sorted({n.split("/")[0] for n in ds.names}) == ["test", "train"]
    assert "100" in ds.subjects and "252" in ds.subjects
    p = D.prepare(ds, D.Prep("centre", (32, 32)))
    assert p.x is None and p.lazy is not None  # nothing decoded yet
    x, y, m = p.batch(torch.tensor([0, 3]), torch.device("cpu"))
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32 and m is None
    assert y.tolist() == [int(ds.labels[0]), int(ds.labels[3])]
    assert float(x[0].max()) == pytest.approx(50 / 255)


def test_class_folders_empty_class(tmp_path, write_png):
    """Catches: an empty class folder taken as a one-class data set."""
    for i in range(3):
        write_png(tmp_path / "DME" / f"DME-{100 + i}-1.jpeg", np.full((16, 16), 50 + i, np.uint8))
    (tmp_path / "NORMAL").mkdir()
    with pytest.raises(InputError, match="empty class folder"):
        D.load_dataset(tmp_path)


def test_one_class_only_is_an_empty_class(tmp_path, write_mhd):
    """Catches: a data set without fluid B-scans accepted (AUC undefined everywhere)."""
    write_mhd(tmp_path / "c" / "oct.mhd", np.zeros((3, 8, 8), np.uint8))
    write_mhd(tmp_path / "c" / "reference.mhd", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="class 'fluid' is empty"):
        D.load_dataset(tmp_path)


def test_centre_crop_and_resize():
    """Catches: an off-centre crop, wrong scaling, padding that is not background."""
    img = np.zeros((6, 8), np.uint8)
    img[1:5, 2:6] = 255  # the centre 4x4 block
    x, m, lab = D.preprocess(img, None, D.Prep("centre", (4, 4), ), "a")
    assert (x == 255).all() and m is None and lab is None
    x, _, _ = D.preprocess(np.full((8, 8), 9, np.uint8), None, D.Prep("centre", (12, 12)), "b")  # padded with 0
    assert x.shape == (12, 12) and x[0, 0] == 0 and x[6, 6] == 9
    x, _, _ = D.preprocess(np.full((10, 20), 200, np.uint8), None, D.Prep("centre", (5, 5), resize=5), "c")
    assert x.shape == (5, 5) and (x == 200).all()


def test_retina_band_follows_the_retina_and_removes_the_wedge():
    """The retina crop centres on the bright band wherever it lies and sets the white registration wedge
    (saturated pixels touching the border) to background; catches a fixed-row crop and a kept wedge."""
    for centre in (30, 70):
        img = np.full((100, 120), 20, np.uint8)
        img[centre - 8:centre + 8] = 140  # the retina
        img[:12, :30] = 255  # a white wedge in the top-left corner
        clean = D.remove_wedge(img)
        assert clean[:12, :30].max() < 100 and clean[centre].min() == 140
        assert abs(D.retina_centre_row(clean) - (centre - 0.5)) < 2
        top, left, rows, cols = D.crop_box(clean, D.Prep("retina", (20, 40), band_rows=0.4, band_cols=0.5))
        assert rows == 40 and cols == 60 and left == 30 and top <= centre - 8 and top + rows >= centre + 8
    bright = np.full((40, 40), 20, np.uint8)
    bright[18:22, 18:22] = 255  # saturated speckle inside the image is not a wedge
    assert np.array_equal(D.remove_wedge(bright), bright)


def test_duke_retina_band_keeps_the_fluid(real_data):
    """On the real Duke B-scans the retina band (52% x 84%) keeps the fluid of every fluid B-scan in view
    (the issue: at 224/227 px the centre crop lost all of it in 7 of 62)."""
    if not (real_data / "oct" / "duke_dme_chiu2015").exists():
        pytest.skip("duke_dme_chiu2015 not in the real data folder")
    ds = D.load_dataset(real_data / "oct")
    band = D.region_labels(ds, D.Prep("retina", (96, 240)))
    assert band.tolist() == ds.labels.tolist()
    centre = D.region_labels(ds, D.Prep("centre", (224, 224)))
    assert int((centre != ds.labels).sum()) >= 5  # what the centre crop loses


def test_tiny_image_refused():
    """Catches: a 1x1 PNG blown up to the input size and scored (it read 'fluid 1.0')."""
    with pytest.raises(InputError, match="much smaller than the network input"):
        D.preprocess(np.zeros((1, 1), np.uint8), None, D.Prep("centre", (224, 224)), "tiny.png")
    with pytest.raises(InputError, match="1x1 px"):
        D.preprocess(np.zeros((1, 1), np.uint8), None, D.Prep("retina", (96, 240)), "tiny.png")
    x, _, _ = D.preprocess(np.zeros((60, 130), np.uint8), None, D.Prep("retina", (96, 240)), "ok.png")
    assert x.shape == (96, 240)


def test_median3_matches_scipy():
    """Catches: a wrong denoising window or edge handling."""
    from scipy.ndimage import median_filter

    x = torch.rand(2, 1, 9, 11)
    ref = median_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest")
    assert np.allclose(D.median3(x).numpy(), ref)


def test_augment_has_no_wrap_around():
    """Catches: torch.roll's wrap-around (the bottom rows reappearing at the top), masks not moved with
    their images, and a generator on another device than the data."""
    g = torch.Generator().manual_seed(0)
    n, h, w = 64, 20, 8
    x = torch.zeros(n, 1, h, w)
    x[:, :, -1] = 1.0  # a bright bottom row
    m = x.clone()
    y, ym = D.augment(x, m, g, shift=0.2, speckle=0.0, gamma=(1.0, 1.0))
    # the bright row only moves down/up by at most 4 rows; rows at the top stay dark (no wrap-around)
    assert float(y[:, :, :h - 5].max()) == 0.0
    moved = (y[:, 0, :, 0] > 0.5).float().argmax(1)
    assert int((moved < h - 1).sum()) > 10  # shifted up in many images
    assert torch.equal(y > 0.5, ym > 0.5)  # the mask moved with its image
    flips = torch.zeros(n, 1, h, w)
    flips[..., 0] = 1.0
    yf, _ = D.augment(flips, None, g, shift=0.0, speckle=0.0, gamma=(1.0, 1.0))
    assert 10 < int((yf[:, 0, 0, -1] > 0.5).sum()) < 54  # about half the images flipped
    with pytest.raises(ValueError, match="generator on"):
        D.check_generator(SimpleNamespace(device=torch.device("cuda")), torch.empty(1))  # a CUDA generator, CPU data


def test_holdout_is_grouped_and_falls_back_inside_one_subject():
    """Catches: an inner validation split that shares subjects with the fitting part."""
    y = np.array([0, 1] * 14)
    subj = np.repeat([f"S{i}" for i in range(7)], 4)
    fit, val, grouped = D.holdout(np.arange(28), y, subj, 0.2, 0)
    assert grouped and not set(subj[fit]) & set(subj[val]) and len(fit) + len(val) == 28
    fit, val, grouped = D.holdout(np.arange(8), y[:8], np.array(["S0"] * 8), 0.25, 0)
    assert not grouped and len(val) == 2 and set(y[val]) == {0, 1}


@pytest.mark.parametrize("case", ["raw", "type", "empty"])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, write_mhd, capsys, case):
    """Catches: bad files ending in a traceback instead of one line naming the file (exit 2)."""
    c = tmp_path / "data" / "c1"
    write_mhd(c / "oct.mhd", np.zeros((4, 8, 8), np.uint8))
    m = np.zeros((4, 8, 8), np.uint8)
    m[0, 1, 1] = 1
    write_mhd(c / "reference.mhd", m)
    if case == "raw":
        (c / "oct.raw").write_bytes(b"\0" * 10)
        bad = c / "oct.raw"
    elif case == "type":
        (c / "oct.mhd").write_text((c / "oct.mhd").read_text().replace("MET_UCHAR", "MET_STRING"))
        bad = c / "oct.mhd"
    else:
        write_mhd(c / "reference.mhd", np.zeros((4, 8, 8), np.uint8))
        bad = tmp_path / "data"
    rc = main(["fluid", "run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and str(bad) in err


def test_real_duke_labels_match_masks(real_data):
    """Catches: labels.csv drifting from its masks, or the subject grouping lost."""
    root = real_data / "oct" / "duke_dme_chiu2015"
    if not root.exists():
        pytest.skip("duke_dme_chiu2015 not in the real data folder")
    ds = D.load_dataset(real_data / "oct")
    assert len(ds) == 88 and ds.counts() == {"fluid": 62, "no_fluid": 26}
    assert np.unique(ds.subjects).size == 8 and ds.images[0].shape == (496, 768)
    import csv

    rows = list(csv.DictReader(open(root / "labels.csv")))
    derived = [int(D.mask_has_fluid(D.read_image(root / r["mask"]))) for r in rows]
    assert derived == ds.labels.tolist()
    assert sum(m is not None for m in ds.masks) == 62
