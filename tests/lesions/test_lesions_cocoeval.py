import numpy as np
import pytest

from detectlab.lesions.cocoeval import coco_ap


def _square(x, y, n=50, size=128):
    m = np.zeros((size, size), bool)
    m[y:y + n, x:x + n] = True
    return m


def _case(shift):
    g = _square(20, 20)
    p = _square(20 + shift, 20)
    gt = [{"masks": g[None], "boxes": np.array([[20, 20, 70, 70]])}]
    pred = [{"masks": p[None], "boxes": np.array([[20 + shift, 20, 70 + shift, 70]]), "scores": np.array([0.9])}]
    return gt, pred


@pytest.mark.parametrize("shift,ap50,ap75,ap", [(5, 1.0, 1.0, 0.7), (10, 1.0, 0.0, 0.4), (0, 1.0, 1.0, 1.0)])
def test_ap_hand_built(shift, ap50, ap75, ap):
    # IoU(shift 5) = 45*50 / (2*2500 - 2250) = 0.818: passes 7 of the 10 thresholds; shift 10: 0.667, 4 of 10
    gt, pred = _case(shift)
    for kind in ("segm", "bbox"):
        r = coco_ap(gt, pred, kind)
        assert r["ap50"] == pytest.approx(ap50, abs=1e-6)
        assert r["ap75"] == pytest.approx(ap75, abs=1e-6)
        assert r["ap"] == pytest.approx(ap, abs=1e-6)


def test_ap_false_positive_ranked_first_halves_precision():
    gt, pred = _case(0)
    fp = _square(75, 75, 40)
    pred[0] = {"masks": np.stack([fp, pred[0]["masks"][0]]), "boxes": np.array([[75, 75, 115, 115], [20, 20, 70, 70]]),
               "scores": np.array([0.95, 0.9])}
    # precision 1/2 at recall 1 -> AP 0.5 (101-point interpolation)
    assert coco_ap(gt, pred)["ap50"] == pytest.approx(0.5, abs=1e-6)
    pred[0]["scores"] = np.array([0.5, 0.9])  # the true positive ranked first -> AP 1
    assert coco_ap(gt, pred)["ap50"] == pytest.approx(1.0, abs=1e-6)


def test_ap_edge_cases():
    gt, pred = _case(0)
    empty = [{"masks": np.zeros((0, 128, 128), bool), "boxes": np.zeros((0, 4)), "scores": np.zeros(0)}]
    assert coco_ap(gt, empty)["ap"] == 0.0
    no_gt = [{"masks": np.zeros((0, 128, 128), bool), "boxes": np.zeros((0, 4)), "size": (128, 128)}]
    assert np.isnan(coco_ap(no_gt, pred)["ap"])


# ------------------------------------------------------------------ the authors' per-image AP and Dice

from detectlab.lesions.cocoeval import (PAPER_IOUS, dice, dice_summary, image_ap, mask_ious,  # noqa: E402
                                        per_image_ap)


def _sq(x, y, n=10, size=40):
    m = np.zeros((size, size), bool)
    m[y:y + n, x:x + n] = True
    return m


def test_mask_ious_hand_computed():
    """Catches IoU as intersection over the sum (not the union) or over one mask's area."""
    a, b, c = _sq(0, 0), _sq(5, 0), _sq(20, 20)
    iou = mask_ious(np.stack([a, b]), np.stack([a, c]))
    assert iou.shape == (2, 2)
    assert iou[0, 0] == 1.0 and iou[0, 1] == 0.0 and iou[1, 1] == 0.0
    assert iou[1, 0] == pytest.approx(50 / 150)
    assert mask_ious(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))[0, 0] == 0.0


def test_image_ap_cases():
    """Catches the empty-image rule (both empty: 1, one empty: 0), ranking by score, the strict IoU
    threshold, and the monotone precision envelope of the authors' compute_ap."""
    g = np.stack([_sq(0, 0), _sq(20, 20)])
    e = np.zeros((0, 40, 40), bool)
    assert image_ap(e, e, np.zeros(0)) == 1.0
    assert image_ap(g, e, np.zeros(0)) == 0.0 and image_ap(e, g, np.ones(2)) == 0.0
    assert image_ap(g, g, np.array([0.9, 0.8])) == 1.0
    fp = _sq(10, 25)
    # a false positive ranked first: precision 0 then 1/2, 2/3 at recall 1/2, 1 -> envelope 2/3: AP 2/3
    p = np.stack([fp, g[0], g[1]])
    assert image_ap(g, p, np.array([0.95, 0.9, 0.8])) == pytest.approx(2 / 3)
    assert image_ap(g, p, np.array([0.5, 0.9, 0.8])) == pytest.approx(1.0)  # ranked last: no loss
    # one of two found: recall 1/2 at precision 1
    assert image_ap(g, g[:1], np.array([0.9])) == pytest.approx(0.5)
    # IoU exactly 0.5 does not count (their test is IoU > threshold); a 5-px shift of a 10x10 square: 1/3
    half = _sq(0, 0, 10)[None]
    shifted = (_sq(0, 0, 10) | _sq(10, 0, 10))[None]  # 200 px, 100 shared: IoU 0.5
    assert image_ap(half, shifted, np.array([1.0]), 0.5) == 0.0
    assert image_ap(half, shifted, np.array([1.0]), 0.45) == 1.0


def _strip(a, b, n=20):
    m = np.zeros((1, n), bool)
    m[0, a:b] = True
    return m


def test_image_ap_one_prediction_can_serve_two_instances():
    """Catches a 'fix' of the authors' matching: in their code each instance, in order, takes its best
    prediction without checking whether another instance took it already. Here p1 is the best match of
    both instances, so p2 stays a false positive (AP 0.5); a one-to-one matching would give p2 to the
    first instance (AP 1)."""
    gt = np.stack([_strip(0, 10), _strip(10, 20)])
    p1, p2 = _strip(1, 20), _strip(0, 4)  # IoU p1: 0.45 / 0.53; p2: 0.4 with the first instance
    assert image_ap(gt, np.stack([p1, p2]), np.array([0.9, 0.8]), 0.3) == pytest.approx(0.5)
    assert image_ap(gt, np.stack([p1, p2]), np.array([0.9, 0.8]), 0.42) == pytest.approx(0.5)


def test_per_image_ap_averages_images_and_thresholds():
    """Catches pooling instead of averaging images, empty images left out (they score 1), and a threshold
    grid other than 0.5:0.05:0.95."""
    assert PAPER_IOUS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    a = _sq(0, 0)
    e = np.zeros((0, 40, 40), bool)
    gt = [{"masks": a[None]}, {"masks": e}, {"masks": a[None]}]
    preds = [{"masks": a[None], "scores": np.array([0.9])}, {"masks": e, "scores": np.zeros(0)},
             {"masks": e, "scores": np.zeros(0)}]
    r = per_image_ap(gt, preds)
    assert r["ap50"] == pytest.approx(2 / 3) and r["ap75"] == pytest.approx(2 / 3) and r["ap"] == pytest.approx(2 / 3)
    # a 1-px shift of a 10x10 square: IoU 90/110 = 0.818 passes 0.5..0.8 (7 thresholds) only
    shifted = [{"masks": _sq(1, 0)[None], "scores": np.array([0.9])}]
    r = per_image_ap([{"masks": a[None]}], shifted)
    assert r["ap50"] == 1.0 and r["ap75"] == 1.0 and r["ap"] == pytest.approx(0.7)
    assert np.isnan(per_image_ap([], [])["ap50"])


def test_per_image_ap_differs_from_coco_ap_on_empty_images():
    """Catches the two APs being confused: COCO AP ignores images without instances, the authors' AP
    counts an empty prediction there as 1."""
    a = _sq(0, 0)
    e = np.zeros((0, 40, 40), bool)
    gt = [{"masks": a[None], "boxes": np.array([[0, 0, 10, 10]])}, {"masks": e, "boxes": np.zeros((0, 4)),
                                                                     "size": (40, 40)}]
    preds = [{"masks": e, "boxes": np.zeros((0, 4)), "scores": np.zeros(0)},
             {"masks": e, "boxes": np.zeros((0, 4)), "scores": np.zeros(0)}]
    assert coco_ap(gt, preds)["ap50"] == 0.0
    assert per_image_ap(gt, preds)["ap50"] == 0.5


def test_dice_and_summary():
    """Catches Dice as IoU, the both-empty rule, pooled Dice computed as a mean of slices, and volumes
    pooled across groups."""
    a, b = _sq(0, 0), _sq(5, 0)
    assert dice(a, a) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, b) == pytest.approx(2 * 50 / 200)
    big = _sq(0, 0, 20)
    pred = [a, big, np.zeros_like(a)]
    gt = [a, np.zeros_like(a), np.zeros_like(a)]
    r = dice_summary(pred, gt, ["v1", "v1", "v2"])
    assert r["pooled"] == pytest.approx(2 * 100 / (100 + 400 + 100))
    assert r["mean_slice"] == pytest.approx((1 + 0 + 1) / 3)
    assert r["per_volume"] == {"v1": pytest.approx(200 / 600), "v2": 1.0}
    assert r["mean_volume"] == pytest.approx((200 / 600 + 1) / 2)
    empty = dice_summary([np.zeros_like(a)], [np.zeros_like(a)], ["v"])
    assert empty["pooled"] == 1.0 and empty["mean_volume"] == 1.0
    none = dice_summary([], [], [])
    assert none["pooled"] == 1.0 and np.isnan(none["mean_slice"]) and np.isnan(none["mean_volume"])
