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


# ------------------------------------------------------------------ faults found by mutation testing


def test_coco_bbox_ap_uses_box_widths_from_corners_off_the_origin():
    """Catches a wrong x1y1x2y2 -> xywh conversion (width x2 + x1 or height y2 + y1): the boxes of the
    other tests start where the error happens not to move an IoU across a threshold. Here the ground-truth
    box starts at x=40 (y=40) and the prediction is shifted by half its width: box IoU 1/3, so AP@.5 = 0;
    with the width taken as x2 + x1 the two boxes would overlap by 85 / 105."""
    m = np.zeros((1, 128, 128), bool)
    for gt_box, pred_box in (([40, 0, 50, 10], [45, 0, 55, 10]), ([0, 40, 10, 50], [0, 45, 10, 55])):
        gt = [{"masks": m, "boxes": np.array([gt_box])}]
        pred = [{"masks": m, "boxes": np.array([pred_box]), "scores": np.array([0.9])}]
        assert coco_ap(gt, pred, "bbox")["ap50"] == 0.0


def test_coco_ap_two_instances_in_one_image_keep_their_own_ids():
    """Catches annotation ids that are not unique (every instance given id 1): pycocotools indexes the
    ground truth by id, so both instances would read back as the last one and the prediction that finds
    the first instance would count as a false positive. Two instances, two exact predictions: AP 1; a
    third prediction on nothing ranked between them gives precision 2/3 at recall 1 -> AP@.5 = 5/6
    (101-point interpolation: recall <= 1/2 at precision 1, above it 2/3)."""
    a, b = _square(0, 0, 20), _square(60, 60, 20)
    boxes = np.array([[0, 0, 20, 20], [60, 60, 80, 80]])
    gt = [{"masks": np.stack([a, b]), "boxes": boxes}]
    for kind in ("segm", "bbox"):
        pred = [{"masks": np.stack([a, b]), "boxes": boxes, "scores": np.array([0.9, 0.8])}]
        r = coco_ap(gt, pred, kind)
        assert (r["ap"], r["ap50"], r["ap75"]) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
        fp = _square(100, 0, 20)
        pred = [{"masks": np.stack([a, fp, b]),
                 "boxes": np.array([[0, 0, 20, 20], [100, 0, 120, 20], [60, 60, 80, 80]]),
                 "scores": np.array([0.9, 0.85, 0.8])}]
        expected = (51 * 1.0 + 50 * 2 / 3) / 101
        assert coco_ap(gt, pred, kind)["ap50"] == pytest.approx(expected, abs=1e-6)


def test_coco_segm_ap_compares_masks_and_bbox_ap_compares_boxes():
    """Catches the mask AP computed from the boxes (a prediction without its RLE, which pycocotools turns
    into the box polygon) and the box AP computed from the masks (COCOeval left on its default 'segm').
    The squares of the other tests are their own boxes, so neither fault shows there. Here the two shapes
    share the same box but are two opposite triangles: box IoU 1, mask IoU 0."""
    yy, xx = np.mgrid[:64, :64]
    inside = (xx >= 10) & (xx < 50) & (yy >= 10) & (yy < 50)
    upper, lower = inside & (xx > yy), inside & (xx < yy)
    box = np.array([[10, 10, 50, 50]])
    gt = [{"masks": upper[None], "boxes": box}]
    pred = [{"masks": lower[None], "boxes": box, "scores": np.array([0.9])}]
    one = pytest.approx(1.0)
    assert coco_ap(gt, pred, "bbox") == {"ap": one, "ap50": one, "ap75": one}
    assert coco_ap(gt, pred, "segm") == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    same = [{"masks": upper[None], "boxes": box, "scores": np.array([0.9])}]
    assert coco_ap(gt, same, "segm")["ap"] == pytest.approx(1.0)


def test_coco_ap_empty_cases_fill_every_key():
    """Catches a misspelt or wrong key in the early returns (no ground truth: NaN in all three; no
    prediction: 0 in all three), which the tables read by name."""
    gt, pred = _case(0)
    empty = [{"masks": np.zeros((0, 128, 128), bool), "boxes": np.zeros((0, 4)), "scores": np.zeros(0)}]
    assert coco_ap(gt, empty) == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    no_gt = [{"masks": np.zeros((0, 128, 128), bool), "boxes": np.zeros((0, 4)), "size": (128, 128)}]
    r = coco_ap(no_gt, pred)
    assert sorted(r) == ["ap", "ap50", "ap75"] and all(np.isnan(v) for v in r.values())


def test_masks_stored_as_0_255_bytes_score_as_boolean_masks():
    """Catches a mask not read as boolean: masks read from PNG files are uint8 0/255. Without the bool
    cast the IoU would weigh a shared pixel 255² and the Dice sums would count 255 per pixel. (coco_ap
    needs no such test: pycocotools' RLE encoder treats any non-zero byte as foreground.)"""
    a, b = _sq(0, 0), _sq(5, 0)
    a8, b8 = a.astype(np.uint8) * 255, b.astype(np.uint8) * 255
    assert mask_ious(np.stack([a8, b8]), np.stack([a8])) == pytest.approx(mask_ious(np.stack([a, b]), a[None]))
    assert mask_ious(b8[None], a8[None])[0, 0] == pytest.approx(50 / 150)
    assert dice(a8, b8) == pytest.approx(0.5)
    assert dice(a8, b) == pytest.approx(0.5) and dice(a, b8) == pytest.approx(0.5)
    r = dice_summary([a8, b8], [b8, np.zeros_like(a8)], ["v", "v"])
    assert r["pooled"] == pytest.approx(2 * 50 / 300) and r["per_volume"]["v"] == pytest.approx(2 * 50 / 300)
    assert r["mean_slice"] == pytest.approx((0.5 + 0.0) / 2)


def test_single_pixel_instances_have_iou_one():
    """Catches the union guard written as union > 1 (a one-pixel lesion found exactly would get IoU 0)
    or the divisor floor raised to about 1 (IoU 1 - 1e-12, which misses an IoU threshold of 1)."""
    m = np.zeros((1, 5, 5), bool)
    m[0, 2, 2] = True
    assert mask_ious(m, m)[0, 0] == 1.0
    two = np.zeros((1, 5, 5), bool)
    two[0, 2, 2:4] = True
    assert mask_ious(m, two)[0, 0] == 0.5
    assert image_ap(m, m, np.array([0.9]), 0.95) == 1.0


def test_image_ap_instance_takes_its_best_overlap_not_the_first_candidate():
    """Catches each instance taking the first (highest-ranked) prediction above the IoU threshold instead
    of its best-overlapping one: p1 (score 0.9, IoU 0.6) ranks before p2 (score 0.8, IoU 0.9); the
    authors' matching gives the instance p2, so p1 is a false positive ranked first: AP 1/2 (taking p1
    would give AP 1)."""
    gt = _strip(0, 10)[None]
    p1, p2 = _strip(0, 6), _strip(0, 9)  # IoU 6/10 and 9/10
    assert image_ap(gt, np.stack([p1, p2]), np.array([0.9, 0.8]), 0.5) == pytest.approx(0.5)
    assert image_ap(gt, np.stack([p2, p1]), np.array([0.9, 0.8]), 0.5) == pytest.approx(1.0)


def test_image_ap_ties_in_score_keep_the_input_order():
    """Catches an unstable sort of the scores: with tied scores the AP would depend on numpy's sort
    algorithm (its quicksort reorders ties among 20 predictions). Ties are ranked in input order: the
    true positive listed first among 20 equal scores gives AP 1, listed last AP 1/20."""
    g = _sq(0, 0)[None]
    fps = [_sq(25, 25, 5) for _ in range(19)]
    ties = np.full(20, 0.5)
    assert image_ap(g, np.stack([g[0]] + fps), ties) == pytest.approx(1.0)
    assert image_ap(g, np.stack(fps + [g[0]]), ties) == pytest.approx(1 / 20)
    # tied and untied scores mixed: order among each tie group is the input order
    mixed = np.array([0.9, 0.5] * 10)
    masks = np.stack(fps[:1] + [g[0]] + fps[1:])  # the true positive is the first of the 0.5 group
    assert image_ap(g, masks, mixed) == pytest.approx(1 / 11)


def test_per_image_ap_ranks_by_the_given_scores():
    """Catches per_image_ap not passing the scores on: a false positive scored above the true positive
    costs precision (AP 1/2), scored below it costs nothing (AP 1)."""
    a = _sq(0, 0)
    masks = np.stack([_sq(25, 25), a])
    assert per_image_ap([{"masks": a[None]}], [{"masks": masks, "scores": np.array([0.9, 0.1])}])["ap50"] == 0.5
    assert per_image_ap([{"masks": a[None]}], [{"masks": masks, "scores": np.array([0.1, 0.9])}])["ap50"] == 1.0
