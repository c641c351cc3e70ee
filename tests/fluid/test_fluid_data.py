"""Readers (MetaImage, labels CSV, class folders), label derivation, preprocessing and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from detectlab.cli import main
from detectlab.core.errors import InputError
from detectlab.fluid import data as D


def test_mhd_roundtrip_and_slice_labels(tmp_path, write_mhd):
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


def test_mhd_int16_scaled_to_uint8(tmp_path, write_mhd):
    vol = np.arange(2 * 4 * 4, dtype=np.int16).reshape(2, 4, 4) * 100 - 500
    p = write_mhd(tmp_path / "v.mhd", vol)
    out = D.to_uint8(D.read_mhd(p))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert out[0, 0, 0] == 0 and out[1, 3, 3] == 255


def test_mhd_raw_size_mismatch(tmp_path, write_mhd):
    p = write_mhd(tmp_path / "v.mhd", np.zeros((4, 8, 8), np.uint8))
    raw = tmp_path / "v.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(InputError, match="does not match the header"):
        D.read_mhd(p)


def test_mhd_unsupported_pixel_type(tmp_path, write_mhd):
    p = write_mhd(tmp_path / "v.mhd", np.zeros((2, 4, 4), np.uint8))
    p.write_text(p.read_text().replace("MET_UCHAR", "MET_ULONG_LONG"))
    with pytest.raises(InputError, match="unsupported pixel type MET_ULONG_LONG"):
        D.read_mhd(p)


def test_mask_shape_mismatch(tmp_path, write_mhd):
    write_mhd(tmp_path / "c" / "oct.mhd", np.zeros((3, 8, 8), np.uint8))
    write_mhd(tmp_path / "c" / "reference.mhd", np.zeros((3, 8, 9), np.uint8))
    with pytest.raises(InputError, match="mask shape"):
        D.load_dataset(tmp_path)


def _csv_dataset(root: Path, write_png, n=6, with_label=True):
    rows = ["image,mask,subject" + (",label" if with_label else "")]
    for i in range(n):
        img = np.full((20, 24), 100, np.uint8)
        mask = np.zeros((20, 24, 3), np.uint8)  # RGB masks as in the Duke set
        fluid = i % 2 == 0
        if fluid:
            mask[5:8, 5:9] = 253
        write_png(root / "img" / f"{i}.png", img)
        write_png(root / "ann" / f"{i}.png", mask)
        rows.append(f"img/{i}.png,ann/{i}.png,S{i // 2}" + ((",fluid" if fluid else ",no_fluid") if with_label else ""))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_labels_csv_with_labels_and_derived_from_masks(tmp_path, write_png):
    a = D.load_dataset(_csv_dataset(tmp_path / "a", write_png))
    b = D.load_dataset(_csv_dataset(tmp_path / "b", write_png, with_label=False))
    assert a.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert b.labels.tolist() == a.labels.tolist()  # derived from the masks (> 127)
    assert a.subjects.tolist() == ["S0", "S0", "S1", "S1", "S2", "S2"] and a.groups_known


def test_labels_csv_mask_shape_mismatch(tmp_path, write_png):
    root = _csv_dataset(tmp_path, write_png)
    write_png(root / "ann" / "3.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="mask shape"):
        D.load_dataset(root)


def test_class_folders_and_empty_class(tmp_path, write_png):
    for i in range(3):
        write_png(tmp_path / "DME" / f"DME-{100 + i}-1.jpeg", np.full((16, 16), 50 + i, np.uint8))
        write_png(tmp_path / "NORMAL" / f"NORMAL-{200 + i}-1.jpeg", np.full((16, 16), 90, np.uint8))
    ds = D.load_dataset(tmp_path)
    assert ds.counts() == {"fluid": 3, "no_fluid": 3} and ds.groups_known
    assert sorted(set(ds.subjects)) == ["100", "101", "102", "200", "201", "202"]
    for f in (tmp_path / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(InputError, match="empty class folder"):
        D.load_dataset(tmp_path)


def test_one_class_only_is_an_empty_class(tmp_path, write_mhd):
    write_mhd(tmp_path / "c" / "oct.mhd", np.zeros((3, 8, 8), np.uint8))
    write_mhd(tmp_path / "c" / "reference.mhd", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="class 'fluid' is empty"):
        D.load_dataset(tmp_path)


def test_to_tensor_centre_crop_and_scale():
    img = np.zeros((6, 8), np.uint8)
    img[1:5, 2:6] = 255  # the centre 4x4 block
    x = D.to_tensor([img], 4)
    assert x.shape == (1, 1, 4, 4)
    assert torch.equal(x, torch.ones(1, 1, 4, 4))  # 255 -> +1, exactly the centre block
    x = D.to_tensor([np.zeros((2, 2), np.uint8)], 4)  # smaller than the crop: padded
    assert x[0, 0, 1:3, 1:3].eq(-1).all() and x.shape == (1, 1, 4, 4)
    # mixed sizes and resize of the shorter side
    y = D.to_tensor([np.full((10, 20), 255, np.uint8), np.full((8, 8), 0, np.uint8)], 5, resize=5)
    assert torch.allclose(y[0], torch.ones(1, 5, 5)) and torch.allclose(y[1], -torch.ones(1, 5, 5))


def test_median3_matches_scipy():
    from scipy.ndimage import median_filter

    x = torch.rand(2, 1, 9, 11)
    ref = median_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest")
    assert np.allclose(D.median3(x).numpy(), ref)


def test_augment_keeps_range_and_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    y = D.augment(x, g)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)


@pytest.mark.parametrize("case", ["raw", "type", "empty"])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, write_mhd, capsys, case):
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
    root = real_data / "oct" / "duke_dme_chiu2015"
    if not root.exists():
        pytest.skip("duke_dme_chiu2015 not in the real data folder")
    ds = D.load_dataset(real_data / "oct")
    assert len(ds) == 88 and ds.counts() == {"fluid": 62, "no_fluid": 26}
    assert np.unique(ds.subjects).size == 8 and ds.images[0].shape == (496, 768)
    # the label of every B-scan equals the one derived from its mask (any pixel > 127)
    import csv

    rows = list(csv.DictReader(open(root / "labels.csv")))
    derived = [int(D.mask_has_fluid(D.read_image(root / r["mask"]))) for r in rows]
    assert derived == ds.labels.tolist()
