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
