import numpy as np
import pytest
from PIL import Image

from detectlab.core.errors import InputError
from detectlab.lesions.data import (class_from_name, global_mean_std, load_classification_folder, load_pairs,
                                    load_segmentation_data, mask_to_instances, merge_lesions, read_covidx_split,
                                    read_name_list, to_target, volume_to_uint8)


def test_merge_conventions():
    m = np.array([[0, 1, 2, 3]])
    assert merge_lesions(m[:, :3], "medseg").tolist() == [[False, True, True]]
    assert merge_lesions(m, "cncb").tolist() == [[False, False, True, True]]  # 1 = lung field, not lesion
    assert merge_lesions(np.array([[0, 255]]), "binary").tolist() == [[False, True]]
    assert merge_lesions(np.array([[0, 255]]), "medseg").tolist() == [[False, True]]  # 0/255 accepted
    with pytest.raises(InputError, match="label values \\[3\\]"):
        merge_lesions(m, "medseg", "x.png")


def test_mask_to_instances_connectivity_and_min_area(blob_mask):
    les = merge_lesions(blob_mask, "medseg")
    masks, boxes = mask_to_instances(les, 100)
    assert masks.shape == (2, 64, 64)
    # first: 12x12 square + diagonal 5x5 consolidation (8-connected), second: the 101-px region
    assert masks[0].sum() == 144 + 25 and masks[1].sum() == 101
    assert boxes.tolist() == [[2, 2, 19, 19], [2, 50, 12, 61]]
    assert not masks.any(0)[30:40, 30:40].any()  # exactly 100 px: dropped
    assert len(mask_to_instances(les, 200)[0]) == 0
    t = to_target(type("S", (), {"mask": les})(), 100)
    assert t["boxes"].shape == (2, 4) and t["labels"].tolist() == [1, 1] and t["masks"].shape == (2, 64, 64)


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
    import nibabel as nib
    import SimpleITK as sitk

    vol = np.full((40, 30, 3), -1000.0, np.float32)  # (x, y, z) HU
    vol[5:25, 5:20, :] = 0.0
    seg = np.zeros((40, 30, 3), np.float32)
    seg[5:20, 5:15, 1] = 1  # 150 px lesion in slice 1
    seg[30:33, 20:23, 2] = 2  # 9 px: dropped
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "images" / "case1.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(tmp_path / "masks" / "case1.nii.gz"))
    sl = load_pairs(tmp_path / "images", tmp_path / "masks", "medseg")
    assert [s.name for s in sl] == ["case1#0000", "case1#0001", "case1#0002"]
    assert sl[0].image.shape == (30, 40)  # rows = y
    assert [int(s.mask.sum()) for s in sl] == [0, 150, 0]
    assert sl[1].mask[5:15, 5:20].all()
    assert sl[0].image[0, 0] == 0 and sl[0].image[10, 10] == round(1000 / 1400 * 255)
    # the same volume as MetaImage through SimpleITK ((z, y, x) array order)
    for f in (tmp_path / "images").iterdir():
        f.unlink()
    for f in (tmp_path / "masks").iterdir():
        f.unlink()
    sitk.WriteImage(sitk.GetImageFromArray(np.transpose(vol, (2, 1, 0)).copy()), str(tmp_path / "images" / "c.mhd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.transpose(seg, (2, 1, 0)).copy()), str(tmp_path / "masks" / "c.mhd"))
    sl2 = load_pairs(tmp_path / "images", tmp_path / "masks", "medseg")
    assert [int(s.mask.sum()) for s in sl2] == [0, 150, 0]
    np.testing.assert_array_equal(sl2[0].image, sl[0].image)
    (tmp_path / "images" / "bad.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(InputError, match="bad.nii.gz: not a readable volume"):
        load_pairs(tmp_path / "images", tmp_path / "masks", "medseg")


def test_volume_scaling_and_global_stats():
    assert volume_to_uint8(np.array([-2000.0, -1000.0, 400.0, 1000.0])).tolist() == [0, 0, 255, 255]
    assert volume_to_uint8(np.array([2.0, 4.0, 6.0])).tolist() == [0, 128, 255]
    S = type("S", (), {})
    a, b = S(), S()
    a.image, b.image = np.zeros((2, 2), np.uint8), np.full((1, 4), 255, np.uint8)
    mean, sd = global_mean_std([a, b])
    assert mean == pytest.approx(0.5) and sd == pytest.approx(0.5)


def test_classification_folder_unknown_class(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "2_1_1_0001.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "0_2_1_0001.png")
    assert [s.label for s in load_classification_folder(tmp_path)] == [0, 2]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "9_3_1_0001.png")
    with pytest.raises(InputError, match="9_3_1_0001.png: unknown class '9'"):
        load_classification_folder(tmp_path)


def test_synthetic_slices_per_class(tmp_path):
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
    assert generate(tmp_path, 6, 2, 128, seed=0) == root  # reused, not rewritten


@pytest.mark.realdata
def test_real_ct_folder(real_data):
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
