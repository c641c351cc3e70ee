import numpy as np
import pytest
from PIL import Image

from detectlab.core.errors import InputError
from detectlab.lesions.data import (CTSlice, assign_volumes, class_from_name, global_mean_std, group_holdout,
                                    instance_map, load_classification_folder, load_pairs, load_segmentation_data,
                                    mask_to_instances, merge_lesions, read_covidx_split, read_name_list,
                                    read_volume_geom, resize_slice, to_target, volume_starts, volume_to_uint8,
                                    write_label_volume)


def test_merge_conventions():
    m = np.array([[0, 1, 2, 3]])
    assert merge_lesions(m[:, :3], "medseg").tolist() == [[False, True, True]]
    assert merge_lesions(m, "cncb").tolist() == [[False, False, True, True]]  # 1 = lung field, not lesion
    assert merge_lesions(np.array([[0, 255]]), "binary").tolist() == [[False, True]]
    assert merge_lesions(np.array([[0, 255]]), "medseg").tolist() == [[False, True]]  # 0/255 accepted
    with pytest.raises(InputError, match="label values \\[3\\]"):
        merge_lesions(m, "medseg", "x.png")


def test_mask_to_instances_connectivity_and_min_area(blob_mask):
    """Catches 4-connectivity, dropping 101-px lesions or keeping 100-px ones, wrong exclusive box ends."""
    les = merge_lesions(blob_mask, "medseg")
    masks, boxes = mask_to_instances(les, 100)
    assert masks.shape == (2, 64, 64)
    # first: 12x12 square + diagonal 5x5 consolidation (8-connected), second: the 101-px region
    assert masks[0].sum() == 144 + 25 and masks[1].sum() == 101
    assert boxes.tolist() == [[2, 2, 19, 19], [2, 50, 12, 61]]
    assert not masks.any(0)[30:40, 30:40].any()  # exactly 100 px: dropped
    assert len(mask_to_instances(les, 200)[0]) == 0
    inst = instance_map(les, 100)
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(inst == 1, masks[0])
    t = to_target(CTSlice(np.zeros((64, 64), np.uint8), inst, "x"))
    assert t["boxes"].tolist() == boxes.tolist() and t["labels"].tolist() == [1, 1]
    assert t["masks"].shape == (2, 64, 64) and int(t["masks"][1].sum()) == 101


def test_min_area_rule_applies_once_at_native_resolution(tmp_path):
    """Catches the 100-px rule applied again after resizing (a 120-px lesion shrunk to 30 px by a 2x
    downscale must stay an instance; a 90-px one must be gone even when the slice is upscaled)."""
    root = tmp_path / "MultiClassInfection-Train"
    m = np.zeros((128, 128), np.uint8)
    m[10:22, 10:20] = 1  # 120 px: kept at native size
    m[60:69, 60:70] = 2  # 90 px: dropped at native size
    _write_pair(root, "0", np.full((128, 128), 90, np.uint8), m)
    (s,), = load_segmentation_data(tmp_path).values()
    assert int(s.instances.max()) == 1 and int(s.mask.sum()) == 120
    small = resize_slice(s, 64)
    t = to_target(small)
    assert len(t["boxes"]) == 1 and 20 <= int(t["masks"][0].sum()) <= 40  # about 120 / 4
    big = resize_slice(s, 256)
    t = to_target(big)
    assert len(t["boxes"]) == 1 and int(t["masks"][0].sum()) == 480  # the 90-px one does not come back


def test_class_names():
    assert class_from_name("2_341_1834_0022.png") == (2, "341")
    assert class_from_name("NCP_341_1834_0022.png")[0] == 2
    assert class_from_name("CP_1_2_3.png")[0] == 1 and class_from_name("Normal_1_2_3.png")[0] == 0
    with pytest.raises(InputError, match="unknown class '7'"):
        class_from_name("7_1_2_3.png")
    with pytest.raises(InputError, match="not Class_Patient_Scan_Slice"):
        class_from_name("slice.png")


def test_covidx_split_file(tmp_path):
    p = tmp_path / "split.txt"
    p.write_text("NCP_1_2_0001.png 2 0 130 512 429\nNormal_3_4_0001.png 0 10 20 30 40\n\nCP_5_6_7.png 1\n")
    e = read_covidx_split(p)
    assert [(x.filename, x.label, x.box) for x in e] == [("NCP_1_2_0001.png", 2, (0, 130, 512, 429)),
                                                          ("Normal_3_4_0001.png", 0, (10, 20, 30, 40)),
                                                          ("CP_5_6_7.png", 1, None)]
    p.write_text("a.png 5 0 0 1 1\n")
    with pytest.raises(InputError, match="split.txt:1: unknown class '5'"):
        read_covidx_split(p)
    p.write_text("a.png 2 0 0 1\n")
    with pytest.raises(InputError, match="5 fields"):
        read_covidx_split(p)


def _write_pair(folder, name, img, mask, palette=True):
    (folder / "Imgs").mkdir(parents=True, exist_ok=True)
    (folder / "GT").mkdir(exist_ok=True)
    Image.fromarray(img).save(folder / "Imgs" / f"{name}.jpg", quality=95)
    m = Image.fromarray(mask.astype(np.uint8), "P" if palette else "L")
    if palette:
        m.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    m.save(folder / "GT" / f"{name}.png")


def test_medseg_layout_palette_masks_and_size_mismatch(tmp_path, blob_mask):
    """Catches palette indices read as RGB, GGO/consolidation not merged, and a size mismatch accepted."""
    root = tmp_path / "MultiClassInfection-Train"
    img = np.full((64, 64), 100, np.uint8)
    _write_pair(root, "0", img, blob_mask)
    data = load_segmentation_data(tmp_path)
    (name, slices), = data.items()
    assert name.startswith("medseg") and len(slices) == 1
    assert slices[0].mask.sum() == 144 + 25 + 101  # merged, small component dropped
    _write_pair(root, "1", np.zeros((60, 64), np.uint8), blob_mask)
    with pytest.raises(InputError, match=r"GT/1.png: mask is 64x64 but its image 1.jpg is 64x60"):
        load_segmentation_data(tmp_path)


def test_empty_folder_and_missing_mask(tmp_path):
    with pytest.raises(InputError, match="no CT slices found"):
        load_segmentation_data(tmp_path)
    (tmp_path / "x" / "ct").mkdir(parents=True)
    (tmp_path / "x" / "covid").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x" / "ct" / "0000.png")
    with pytest.raises(InputError, match="0000.png: image has no mask"):
        load_segmentation_data(tmp_path)


def test_nifti_and_metaimage_volumes(tmp_path):
    """Catches volumes read in the wrong axis order or orientation (the display is radiological: rows from
    anterior, columns from the patient's right, slices from the feet) and the 100-px rule at load."""
    import nibabel as nib
    import SimpleITK as sitk

    vol = np.full((40, 30, 3), -1000.0, np.float32)  # (x, y, z) HU, RAS affine (identity)
    vol[5:25, 5:20, :] = 0.0
    seg = np.zeros((40, 30, 3), np.float32)
    seg[5:20, 5:15, 1] = 1  # 150 px lesion in slice 1, near x=0 (patient's left) and y=0 (posterior)
    seg[30:33, 20:23, 2] = 2  # 9 px: dropped
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "images" / "case1.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(tmp_path / "masks" / "case1.nii.gz"))
    sl = load_pairs(tmp_path / "images", tmp_path / "masks", "medseg")
    assert [s.name for s in sl] == ["case1#0000", "case1#0001", "case1#0002"]
    assert sl[0].image.shape == (30, 40)  # rows = y, columns = x
    assert [int(s.mask.sum()) for s in sl] == [0, 150, 0]
    # x = 5..19 (left side) -> columns 40-20..40-6; y = 5..14 (posterior) -> rows 30-15..30-6
    assert sl[1].mask[15:25, 20:35].all()
    assert sl[0].image[29, 39] == 0 and sl[0].image[20, 30] == round(1000 / 1400 * 255)
    # the same volume as MetaImage through SimpleITK ((z, y, x) array, LPS): x and y run the other way
    for f in list((tmp_path / "images").iterdir()) + list((tmp_path / "masks").iterdir()):
        f.unlink()
    sitk.WriteImage(sitk.GetImageFromArray(np.transpose(vol, (2, 1, 0))[:, ::-1, ::-1].copy()),
                    str(tmp_path / "images" / "c.mhd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.transpose(seg, (2, 1, 0))[:, ::-1, ::-1].copy()),
                    str(tmp_path / "masks" / "c.mhd"))
    sl2 = load_pairs(tmp_path / "images", tmp_path / "masks", "medseg")
    assert [int(s.mask.sum()) for s in sl2] == [0, 150, 0]
    np.testing.assert_array_equal(sl2[1].mask, sl[1].mask)
    np.testing.assert_array_equal(sl2[0].image, sl[0].image)
    (tmp_path / "images" / "bad.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(InputError, match="bad.nii.gz: not a readable volume"):
        load_pairs(tmp_path / "images", tmp_path / "masks", "medseg")


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S"), ("P", "S", "L"), ("S", "L", "A")])
def test_nifti_orientation_round_trip_and_label_volume(tmp_path, codes):
    """Catches labels written on a reoriented grid (not the input's voxels), a changed affine, spacing
    taken from the wrong axis, and a display orientation that depends on the file's axis order."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform, apply_orientation

    rng = np.random.default_rng(0)
    ras = rng.normal(-500, 300, (20, 16, 6)).astype(np.float32)  # x, y, z in RAS
    ras[17, 12, 4] = 3000.0  # a marker at the patient's right, anterior, superior
    zooms_ras = np.array([0.7, 0.8, 2.5])
    t = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(codes))
    arr = apply_orientation(ras, t)
    aff = np.diag([*zooms_ras, 1.0]) @ inv_ornt_aff(t, ras.shape)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(arr, aff), str(path))
    v = read_volume_geom(path)
    assert v.array.shape == (6, 16, 20)
    assert v.spacing == pytest.approx((2.5, 0.8, 0.7))
    z, r, c = np.unravel_index(np.argmax(v.array), v.array.shape)
    assert (z, r, c) == (4, 16 - 1 - 12, 20 - 1 - 17)  # top-left = right-anterior, whatever the file order
    labels = (v.array > 0).astype(np.uint16)
    out = write_label_volume(v, labels, tmp_path / "lab.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, nib.load(str(path)).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), (arr > 0).astype(np.uint16))


def test_volume_scaling_and_global_stats():
    """Catches a wrong HU window and a biased global SD."""
    assert volume_to_uint8(np.array([-2000.0, -1000.0, 400.0, 1000.0])).tolist() == [0, 0, 255, 255]
    assert volume_to_uint8(np.array([2.0, 4.0, 6.0])).tolist() == [0, 128, 255]
    S = type("S", (), {})
    a, b = S(), S()
    a.image, b.image = np.zeros((2, 2), np.uint8), np.full((1, 4), 255, np.uint8)
    mean, sd = global_mean_std([a, b])
    assert mean == pytest.approx(0.5) and sd == pytest.approx(0.5)


def test_classification_folder_unknown_class(tmp_path):
    """Catches unknown class names accepted silently."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "2_1_1_0001.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "0_2_1_0001.png")
    assert [s.label for s in load_classification_folder(tmp_path)] == [0, 2]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "9_3_1_0001.png")
    with pytest.raises(InputError, match="9_3_1_0001.png: unknown class '9'"):
        load_classification_folder(tmp_path)


def test_synthetic_slices_per_class(tmp_path):
    """Catches built-in slices without lesions for pneumonia/COVID, lesions on normal slices, lesions outside
    the lung masks, and the class-specific lesion sizes collapsing."""
    from detectlab.lesions.synthetic import generate

    root = generate(tmp_path, 6, 2, 128, seed=0)
    sl = load_classification_folder(root)
    assert len(sl) == 12 and sorted({s.label for s in sl}) == [0, 1, 2]
    with Image.open(root / "masks" / "2_0002_0000_0000.png") as m:
        assert m.mode == "L" and set(np.unique(np.asarray(m))) <= {0, 1, 2}
    area = {c: [int(s.mask.sum()) for s in sl if s.label == c] for c in range(3)}
    assert all(a == 0 for a in area[0])  # normal: no lesion
    assert all(a > 0 for a in area[1] + area[2])
    inst = {c: [len(mask_to_instances(s.mask)[0]) for s in sl if s.label == c] for c in (1, 2)}
    # pneumonia: few large consolidations; COVID: smaller patches
    assert np.mean(area[1]) / np.mean(inst[1]) > np.mean(area[2]) / max(np.mean(inst[2]), 1)
    for x in sl:  # lung masks come with the slices; lesions lie inside the lungs
        assert x.lungs is not None and x.lungs.any() and not (x.mask & ~x.lungs).any()
    assert generate(tmp_path, 6, 2, 128, seed=0) == root  # reused, not rewritten


def _ellipse_lungs(n, cy, cx, r0, dr, size=64):
    yy, xx = np.mgrid[:size, :size]
    return [((yy - cy) ** 2 + (xx - cx) ** 2) <= (r0 + dr * k) ** 2 for k in range(n)]


def test_volume_boundaries_recovered_from_slice_order():
    """Catches a split that cuts a volume into pieces (a slowly changing lung mask must stay one volume)
    and missed volume starts (a jump in the lung mask that stands out from its neighbours)."""
    lungs = _ellipse_lungs(6, 20, 20, 6, 0.5) + _ellipse_lungs(5, 44, 40, 9, -0.6) + _ellipse_lungs(7, 30, 30, 4, 0.7)
    slices = [CTSlice(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.int32), f"{k:04d}", lungs=m, index=k)
              for k, m in enumerate(lungs)]
    groups = assign_volumes(slices, "ct")
    assert groups == ["ct/v00"] * 6 + ["ct/v01"] * 5 + ["ct/v02"] * 7
    # a large step is not a start when its neighbours are as large (the apex of one volume)
    steps = np.array([0, 0.1, 0.1, 0.6, 0.1, 0.1, 0.6, 0.55, 0.6, 0.58, 0.1])
    assert volume_starts(steps, 0.5, 2.0) == [0, 3]


@pytest.mark.parametrize("sizes,frac,held", [((10, 10, 80), 0.2, 20), ((50, 50), 0.2, 50), ((5, 3, 2, 40), 0.1, 5),
                                             ((30, 30, 30, 10), 0.34, 30)])
def test_group_holdout_fraction_with_few_groups(sizes, frac, held):
    """Catches held-out fractions that miss the target with few groups (k-fold with k = 1/fraction needs
    at least k groups and then holds out whatever one fold got), groups split across sides, and an
    empty side."""
    groups = [f"g{k}" for k, n in enumerate(sizes) for _ in range(n)]
    for seed in range(4):
        tr, va = group_holdout(groups, frac, seed)
        assert len(va) == held and len(tr) == len(groups) - held
        gtr, gva = {groups[i] for i in tr}, {groups[i] for i in va}
        assert gtr and gva and not gtr & gva
    with pytest.raises(InputError, match="at least 2 groups"):
        group_holdout(["a"] * 5, 0.2)


@pytest.mark.realdata
def test_real_split_is_by_volume(real_data):
    """Catches validation slices whose volume continues in training: the recovered COVID-19-CT-Seg volume
    starts must include the ones visible in the full 1614-slice snapshot (17 of its 18 jumps; the 18th,
    at 1588, merges two volumes, which cannot leak), no volume on both sides, the guard slices next to
    validation volumes out of training, and every MedSeg slice its own group (no patient ids)."""
    from detectlab.lesions.config import Config
    from detectlab.lesions.data import segmentation_data

    cfg = Config()
    cfg.data, cfg.image_size, cfg.split.medseg = str(real_data / "ct"), 256, "train"
    d = segmentation_data(cfg, "/tmp/unused")
    (vol,) = d.info["volumes"].values()
    assert vol["first_slices"] == ["0000", "0160", "0280", "0400", "0512", "0628", "0696", "0792", "0972", "1084",
                                   "1248", "1260", "1376", "1444", "1476", "1480", "1512", "1568"]
    val_groups = {s.group for s in d.val}
    assert not val_groups & {s.group for s in d.train}
    assert all(s.lungs is not None for s in d.val) and abs(len(d.val) - 0.2 * 404) < 1
    ct_train = {int(s.name) for s in d.train if s.source.startswith("covid19")}
    for s in d.val:
        assert int(s.name) - 4 not in ct_train and int(s.name) + 4 not in ct_train
    med = [s for s in d.train if s.source.startswith("medseg")]
    assert len(med) == 50 and len({s.group for s in med}) == 50


@pytest.mark.realdata
def test_real_ct_folder(real_data):
    """Catches lost slices or sources in the real folder and wrong split-list readers."""
    ct = real_data / "ct"
    data = load_segmentation_data(ct)
    n = {k.split(":")[0]: len(v) for k, v in data.items()}
    assert n == {"medseg": 50, "covid19-ct-seg": 404}
    for ss in data.values():
        for s in ss:
            assert s.image.dtype == np.uint8 and s.mask.shape == s.image.shape
    med = data[next(k for k in data if k.startswith("medseg"))]
    assert sum(s.mask.any() for s in med) >= 45  # GGO in 96/98 slices
    split = ct / "splits"
    assert len(read_name_list(split / "covid_ct_mask_net" / "train_split_segmentation.txt")) == 650
    assert len(read_name_list(split / "covid_ct_mask_net" / "test_split_segmentation.txt")) == 100
    names = read_name_list(split / "covid_ct_mask_net" / "train_split_classification.txt")
    assert np.bincount([class_from_name(x)[0] for x in names]).tolist() == [1000, 1000, 1000]
    test = read_covidx_split(split / "covidx_ct_v1" / "test_COVIDx_CT-1.txt")
    assert len(test) == 21191 and np.bincount([e.label for e in test]).tolist() == [9450, 7395, 4346]
