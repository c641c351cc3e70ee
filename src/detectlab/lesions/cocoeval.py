"""Segmentation metrics for one-class lesion instances: COCO AP (pycocotools), the authors' per-image
Matterport-style AP (the one their Table 2 reports) and Dice (pooled, per slice, per volume)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def _rle(m: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_ap(gt: list[dict], preds: list[dict], iou_type: str = "segm") -> dict[str, float]:
    """AP@[.5:.95], AP@.5 and AP@.75 (maxDets 100) for one class.

    gt[i]: {"masks": (N, H, W) bool, "boxes": (N, 4) x1y1x2y2}; preds[i]: {"masks", "boxes", "scores"}
    for the same image i. Returns NaN without any ground-truth instance, 0 without any prediction.
    """
    images, anns, results = [], [], []
    aid = 0
    for i, g in enumerate(gt):
        gm = np.asarray(g["masks"], bool)
        h, w = gm.shape[-2:] if gm.ndim == 3 and gm.shape[0] else g.get("size", (1, 1))
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for m, b in zip(gm, np.asarray(g["boxes"]).reshape(-1, 4)):
            aid += 1
            rle = _rle(m)
            xywh = _xywh(b)
            anns.append({"id": aid, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                         "area": float(mask_utils.area(rle)) if iou_type == "segm" else xywh[2] * xywh[3],
                         "bbox": xywh, "iscrowd": 0})
    for i, p in enumerate(preds):
        for m, b, s in zip(np.asarray(p["masks"], bool), np.asarray(p["boxes"]).reshape(-1, 4),
                           np.asarray(p["scores"]).reshape(-1)):
            r = {"image_id": i + 1, "category_id": 1, "score": float(s), "bbox": _xywh(b)}
            if iou_type == "segm":
                r["segmentation"] = _rle(m)
            results.append(r)
    if not anns:
        return {"ap": float("nan"), "ap50": float("nan"), "ap75": float("nan")}
    if not results:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
        coco.createIndex()
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    st = [float(v) if v >= 0 else float("nan") for v in ev.stats[:3]]
    return {"ap": st[0], "ap50": st[1], "ap75": st[2]}


# ------------------------------------------------------------------ the authors' per-image AP (Table 2)


def mask_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU matrix (P, G) of boolean masks pred (P, H, W) and gt (G, H, W)."""
    p = np.asarray(pred, bool).reshape(len(pred), -1).astype(np.float64)
    g = np.asarray(gt, bool).reshape(len(gt), -1).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def image_ap(gt_masks: np.ndarray, pred_masks: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> float:
    """One image's AP at one IoU threshold, as the authors' utils.compute_ap (adapted from Matterport).

    Predictions are ranked by score; each ground-truth instance, in order, takes its best-overlapping
    prediction with IoU > `iou` (a prediction can be taken by more than one instance, as in their code);
    precision is made monotone and integrated over the recall steps. Both empty: 1; one empty: 0.
    """
    g = np.asarray(gt_masks, bool)
    p = np.asarray(pred_masks, bool)
    if len(g) == 0 and len(p) == 0:
        return 1.0
    if len(g) == 0 or len(p) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    ov = mask_ious(p[order], g)
    match = np.full(len(p), -1)
    for j in range(len(g)):
        cand = np.flatnonzero(ov[:, j] > iou)
        if cand.size:
            match[cand[np.argmax(ov[cand, j])]] = j
    tp = np.cumsum(match > -1)
    prec = np.concatenate([[0.0], tp / np.arange(1, len(p) + 1), [0.0]])
    rec = np.concatenate([[0.0], tp / len(g), [1.0]])
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    idx = np.flatnonzero(rec[:-1] != rec[1:]) + 1
    return float(np.sum((rec[idx] - rec[idx - 1]) * prec[idx]))


PAPER_IOUS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def per_image_ap(gt: list[dict], preds: list[dict]) -> dict[str, float]:
    """The authors' evaluation_mean_ap.py: for each IoU in 0.5:0.05:0.95 the mean over images of the
    per-image AP (an image with no instance and no prediction scores 1), then the mean over IoUs.
    Keys: ap (AP@[.5:.95]), ap50, ap75. This is the AP that compares with the paper's Table 2."""
    per_iou = {}
    for t in PAPER_IOUS:
        vals = [image_ap(g["masks"], p["masks"], p["scores"], t) for g, p in zip(gt, preds)]
        per_iou[t] = float(np.mean(vals)) if vals else float("nan")
    return {"ap": float(np.mean(list(per_iou.values()))), "ap50": per_iou[0.5], "ap75": per_iou[0.75]}


# ------------------------------------------------------------------ Dice


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P & G| / (|P| + |G|) of two boolean masks; 1 when both are empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    s = int(p.sum()) + int(g.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(p, g).sum()) / s


def dice_summary(pred: list[np.ndarray], gt: list[np.ndarray], groups: list[str]) -> dict:
    """Dice pooled over all pixels, the mean over slices, and per volume (pixels pooled within each
    group) with the mean over volumes."""
    inter = np.array([int(np.logical_and(p, g).sum()) for p, g in zip(pred, gt)], np.float64)
    sums = np.array([int(np.asarray(p, bool).sum()) + int(np.asarray(g, bool).sum()) for p, g in zip(pred, gt)],
                    np.float64)
    per_slice = [1.0 if s == 0 else 2 * i / s for i, s in zip(inter, sums)]
    per_volume = {}
    for grp in dict.fromkeys(groups):
        sel = np.asarray([x == grp for x in groups])
        per_volume[grp] = 1.0 if sums[sel].sum() == 0 else float(2 * inter[sel].sum() / sums[sel].sum())
    return {"pooled": 1.0 if sums.sum() == 0 else float(2 * inter.sum() / sums.sum()),
            "mean_slice": float(np.mean(per_slice)) if per_slice else float("nan"),
            "mean_volume": float(np.mean(list(per_volume.values()))) if per_volume else float("nan"),
            "per_volume": per_volume}
