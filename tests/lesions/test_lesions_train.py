import math

import numpy as np
import pytest
import torch

from detectlab.lesions.config import Config, ModelConfig, SegTrainConfig


def _lesion_slices(n=8, size=64, seed=5, native=128, patients=12):
    """n built-in slices with lesion instances, made at `native` px (the 100-px rule applies there) and
    resized to `size`."""
    import tempfile

    from detectlab.lesions.data import load_classification_folder, resize_slice
    from detectlab.lesions.synthetic import generate

    with tempfile.TemporaryDirectory() as d:
        sl = load_classification_folder(generate(d, patients, 1, native, seed=seed))
    return [resize_slice(s, size) for s in sl if s.mask.any()][:n]


def _mc(size=64):
    return ModelConfig(backbone="resnet18_t2", norm="group", min_size=size, max_size=size, box_fg_iou_thresh=0.5,
                       box_bg_iou_thresh=0.5, box_batch_size_per_image=64, box_positive_fraction=0.25,
                       rpn_positive_fraction=0.5, rpn_post_nms_top_n_train=300, rpn_post_nms_top_n_test=300,
                       box_score_thresh=0.05, fit_anchors=True)


@pytest.mark.slow
def test_overfits_eight_slices():
    """Proof that the pipeline can learn (boxes, instance rule, anchors, losses, evaluation): 8 built-in
    slices are learnt to mask AP@0.5 >= 0.9 on themselves. Catches broken targets or masks, anchors that
    no box matches, a learning rate schedule that never starts, and an evaluator that cannot reach 1."""
    from detectlab.lesions.train import evaluate_segmentation, model_config, train_segmentation

    sl = _lesion_slices(8, 128, patients=16)
    assert len(sl) == 8 and all(int(s.instances.max()) for s in sl)
    cfg = Config()
    cfg.model = _mc(128)
    mc, _ = model_config(cfg, "resnet18_t2", sl)
    tc = SegTrainConfig(iterations=220, batch_size=2, lr=1e-3, weight_decay=0, warmup=10, log_every=55,
                        checkpoint_every=0)
    model, _ = train_segmentation(mc, sl, tc, torch.device("cpu"), seed=0)
    ev, _ = evaluate_segmentation(model, sl, torch.device("cpu"))
    assert ev["ap50"] >= 0.9, ev
    assert ev["dice"]["pooled"] >= 0.8, ev["dice"]


def test_in_unit_resume_continues_exactly():
    """Catches a resume that restarts the schedule, redraws batches or flips, loses the Adam moments or the
    RNG state: 2 iterations + resume 2 must equal 4 uninterrupted iterations bit for bit."""
    from detectlab.lesions.train import train_segmentation

    sl = _lesion_slices(4, 48)
    assert all(int(s.instances.max()) for s in sl)
    mc = _mc(48)
    tc = SegTrainConfig(iterations=4, batch_size=2, lr=1e-3, warmup=2, schedule="cosine", hflip=True, zoom=1.2,
                        intensity_jitter=0.1, log_every=1, checkpoint_every=0)
    full, h_full = train_segmentation(mc, sl, tc, torch.device("cpu"), seed=3)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        state = Path(d) / "state.safetensors"
        _, h1 = train_segmentation(mc, sl, tc, torch.device("cpu"), seed=3, state_path=state, stop_at=2)
        assert h1["stopped_at"] == 2 and state.exists()
        resumed, h2 = train_segmentation(mc, sl, tc, torch.device("cpu"), seed=3, state_path=state)
    assert h2["resumed_at"] == [2] and h2["step"] == [1, 2, 3, 4]
    assert h2["loss"] == h_full["loss"]
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_schedule():
    """Catches a warm-up that starts at the full rate or never ends, and cosine/step decays that miss their
    floor."""
    from detectlab.lesions.train import lr_at

    tc = SegTrainConfig(iterations=110, lr=1.0, warmup=10, schedule="cosine", min_lr_factor=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1) and lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(10, tc) == pytest.approx(1.0) and lr_at(60, tc) == pytest.approx(0.55)
    assert lr_at(110, tc) == pytest.approx(0.1)
    step = SegTrainConfig(iterations=110, lr=1.0, warmup=10, schedule="step", min_lr_factor=0.1)
    assert lr_at(84, step) == 1.0 and lr_at(85, step) == pytest.approx(0.1)
    const = SegTrainConfig(iterations=110, lr=0.5, warmup=0)
    assert lr_at(0, const) == lr_at(109, const) == 0.5


def test_batches_are_a_function_of_seed_and_step():
    """Catches batches that repeat a slice within an epoch or differ between a run and its resume."""
    from detectlab.lesions.train import batch_at

    ep = [i for s in range(5) for i in batch_at(s, 10, 2, 7)]
    assert sorted(ep) == list(range(10))
    assert batch_at(3, 10, 2, 7) == batch_at(3, 10, 2, 7) and batch_at(5, 10, 2, 7) != batch_at(0, 10, 2, 7)
    assert sorted(batch_at(0, 1, 2, 0)) == [0]


def test_augment_keeps_targets_consistent():
    """Catches flipped images with unflipped boxes or masks, zoom crops that keep boxes of cut-away
    instances, and intensity jitter outside [0, 1]."""
    from torchvision.ops import masks_to_boxes

    from detectlab.lesions.train import augment, augment_rng, hflip

    img = torch.rand(3, 48, 48)
    m = torch.zeros(2, 48, 48, dtype=torch.uint8)
    m[0, 5:15, 2:12] = 1
    m[1, 40:46, 40:46] = 1
    tgt = {"boxes": torch.tensor([[2.0, 5, 12, 15], [40, 40, 46, 46]]), "labels": torch.ones(2, dtype=torch.long),
           "masks": m}
    fi, ft = hflip(img, tgt)
    assert torch.equal(fi[..., 0], img[..., -1]) and ft["boxes"][0].tolist() == [36.0, 5.0, 46.0, 15.0]
    assert (masks_to_boxes(ft["masks"][:1]) + torch.tensor([0, 0, 1, 1])).tolist() == [[36.0, 5.0, 46.0, 15.0]]
    tc = SegTrainConfig(hflip=True, zoom=1.5, intensity_jitter=0.3)
    kept = set()
    for k in range(30):
        ai, at = augment(img, tgt, tc, augment_rng(k, 0, 0))
        assert float(ai.min()) >= 0 and float(ai.max()) <= 1
        assert len(at["boxes"]) == len(at["masks"]) == len(at["labels"])
        if len(at["masks"]):
            exp = masks_to_boxes(at["masks"]) + torch.tensor([0, 0, 1, 1])
            assert torch.equal(exp, at["boxes"])
        kept.add(len(at["boxes"]))
    assert 1 in kept and 2 in kept  # zoom cuts the corner lesion away sometimes
    a1, _ = augment(img, tgt, tc, augment_rng(4, 1, 0))
    a2, _ = augment(img, tgt, tc, augment_rng(4, 1, 0))
    assert torch.equal(a1, a2)


def test_perfect_predictions_score_one_end_to_end():
    """Catches an evaluator that cannot reach 1: predictions equal to the ground truth of resized slices
    (instances from the native-resolution rule) give mask and box AP 1, the authors' AP 1 and Dice 1;
    an empty prediction gives 0 on slices with lesions."""
    from detectlab.lesions.data import instances_from_map, resize_slice
    from detectlab.lesions.train import segmentation_metrics

    sl = _lesion_slices(4, 96)
    preds = []
    for s in sl:
        m, b = instances_from_map(s.instances)
        preds.append({"masks": m, "boxes": b, "scores": np.linspace(0.9, 0.6, len(m))})
    r = segmentation_metrics(sl, preds)
    assert r["ap50"] == 1.0 and r["ap"] == 1.0 and r["box_ap50"] == 1.0
    assert r["paper_ap50"] == 1.0 and r["paper_ap"] == 1.0
    assert r["dice"]["pooled"] == 1.0 and r["dice"]["mean_volume"] == 1.0
    assert r["n_instances"] == r["n_detections"] == sum(int(s.instances.max()) for s in sl)
    empty = [{"masks": np.zeros((0, *s.image.shape), bool), "boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
             for s in sl]
    r0 = segmentation_metrics(sl, empty)
    assert r0["ap50"] == 0.0 and r0["paper_ap50"] == 0.0 and r0["dice"]["pooled"] == 0.0
    # the Dice mask keeps only detections at the score threshold
    low = [{**p, "scores": np.full(len(p["scores"]), 0.2)} for p in preds]
    assert segmentation_metrics(sl, low, 0.5)["dice"]["pooled"] == 0.0
    assert segmentation_metrics(sl, low, 0.1)["dice"]["pooled"] == 1.0


def test_lung_threshold_baseline():
    """Catches a baseline threshold not fitted to the training slices, predictions outside the lungs, and
    components under the area rule kept as instances."""
    from detectlab.lesions import baseline
    from detectlab.lesions.data import CTSlice

    img = np.full((40, 40), 20, np.uint8)
    lungs = np.zeros((40, 40), bool)
    lungs[5:35, 5:35] = True
    img[10:22, 10:22] = 120  # 144-px lesion
    img[30:33, 30:33] = 200  # 9-px bright speck inside the lungs
    img[0:4, 0:4] = 250  # bright, outside the lungs
    les = np.zeros((40, 40), bool)
    les[10:22, 10:22] = True
    s = CTSlice(img, les, "a", lungs=lungs, group="v")
    t = baseline.fit_threshold([s])
    assert 20 <= t < 120
    p = baseline.predict(s, t, min_area=100)
    assert not (p["mask"] & ~lungs).any()
    assert len(p["masks"]) == 1 and int(p["masks"][0].sum()) == 144
    assert p["scores"][0] == pytest.approx((120 - t) / (255 - t))
    r = baseline.evaluate([s], [s, CTSlice(img, les, "b")], min_area=100)
    assert r["n_val"] == 1 and r["n_val_without_lungs"] == 1
    assert r["dice"]["pooled"] == pytest.approx(2 * 144 / (144 + 144 + 9))
    assert math.isclose(r["coco"]["ap50"], 1.0) and math.isclose(r["per_image"]["ap50"], 1.0)


def test_table3_states_when_the_classifier_is_out_of_domain(tmp_path):
    """Catches the real-data Table 3 presented as if detector and classifier saw one domain: a detector
    trained on real CT applied to the built-in phantoms must be labelled out of domain."""
    from detectlab.lesions.train import classifier_domain

    assert classifier_domain(True, True).startswith("out of domain: detector trained on real CT")
    assert classifier_domain(False, False).startswith("out of domain")
    assert classifier_domain(False, True).startswith("one domain")
    assert classifier_domain(True, False).startswith("one domain")
