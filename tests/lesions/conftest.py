import numpy as np
import pytest

#: A tiny but complete configuration: ResNet18-T2 with GroupNorm, 64 px built-in slices, a few iterations,
#: the classifier on cached RoIs (so predict shares one backbone pass).
TINY = ["backbones=['resnet18_t2']", "image_size=64", "model.min_size=64", "model.max_size=64", "model.norm=group",
        "model.fit_anchors=true", "model.box_batch_size_per_image=16", "model.rpn_post_nms_top_n_train=100",
        "model.box_score_thresh=0.05", "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50",
        "model.detections_per_img=10", "seg.iterations=4", "seg.batch_size=2", "seg.lr=1e-3", "seg.log_every=2",
        "seg.checkpoint_every=2", "seg.eval_every=2", "seg.hflip=true", "cls.epochs=3", "cls.lr=1e-3",
        "cls.roi_batch=16", "cls.hidden=32", "cls.test_fraction=0.34", "cls.train_norm_affine=false",
        "synthetic.seg_patients=6", "split.val_fraction=0.34", "synthetic.cls_patients=6",
        "synthetic.slices_per_patient=2", "synthetic.size=64", "figure_examples=1"]


@pytest.fixture(scope="session")
def tiny_overrides():
    return list(TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`detectlab lesions train` on built-in data with the tiny config (shared by the CLI tests)."""
    from detectlab.cli import main

    out = tmp_path_factory.mktemp("lesions") / "train"
    rc = main(["lesions", "train", "--data", "builtin", "--out", str(out), "--device", "cpu", *TINY])
    assert rc == 0
    return out


@pytest.fixture
def blob_mask():
    """A 64x64 label mask: a 12x12 GGO square (label 1) touching a 5x5 consolidation (label 2), a 10x10
    GGO square (exactly 100 px, dropped) and a 101-px GGO region (kept)."""
    m = np.zeros((64, 64), np.uint8)
    m[2:14, 2:14] = 1
    m[14:19, 14:19] = 2  # touches the first square only at a corner: 8-connected -> same instance
    m[30:40, 30:40] = 1  # 100 px
    m[50:60, 2:12] = 1  # 100 px ...
    m[60, 2] = 1  # ... + 1 = 101 px
    return m
