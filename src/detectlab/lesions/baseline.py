"""The hand-crafted baseline: an intensity threshold inside the lung mask.

Ground-glass opacity and consolidation are brighter than aerated lung, so `image > t` inside the lung
mask (COVID-19-CT-Seg's `lungs/`, or the built-in slices' lung masks) is a lesion segmentation. The
threshold t is fitted on the training slices (the value that maximises their pooled Dice); on the
validation slices the baseline reports Dice (pooled, per slice, per volume) and, for AP, its connected
components over `min_area` pixels as instances, each scored by its mean brightness above t.
Slices without a lung mask are left out (their number is reported).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from detectlab.lesions.data import CTSlice, instance_map, instances_from_map


def with_lungs(slices: list[CTSlice]) -> list[CTSlice]:
    return [s for s in slices if s.lungs is not None]


def fit_threshold(slices: list[CTSlice]) -> float:
    """The threshold (0-254) maximising the pooled Dice of (image > t) & lungs on `slices` (exact, by
    cumulative histograms). Ties go to the lowest threshold."""
    lung_hist = np.zeros(256, np.float64)
    les_hist = np.zeros(256, np.float64)
    gt_total = 0.0
    for s in with_lungs(slices):
        img, lungs, les = s.image, s.lungs, s.mask
        lung_hist += np.bincount(img[lungs].ravel(), minlength=256)
        les_hist += np.bincount(img[lungs & les].ravel(), minlength=256)
        gt_total += float(les.sum())
    if gt_total == 0 and lung_hist.sum() == 0:
        return 128.0
    # predicted pixels at threshold t: lung pixels with value > t
    pred = lung_hist[::-1].cumsum()[::-1]  # pred[v] = count of values >= v
    inter = les_hist[::-1].cumsum()[::-1]
    t = np.arange(255)
    d = 2 * inter[t + 1] / np.maximum(pred[t + 1] + gt_total, 1e-12)
    return float(t[int(np.argmax(d))])


def predict(s: CTSlice, t: float, min_area: int = 100) -> dict[str, Any]:
    """{'mask': (H, W) bool, 'masks', 'boxes', 'scores'} of the baseline on one slice with lungs."""
    mask = (s.image > t) & s.lungs
    masks, boxes = instances_from_map(instance_map(mask, min_area))
    span = max(255.0 - t, 1.0)
    scores = np.array([float(np.clip((s.image[m].mean() - t) / span, 0, 1)) for m in masks], np.float32)
    order = np.argsort(-scores, kind="stable")
    return {"mask": mask, "masks": masks[order], "boxes": boxes[order], "scores": scores[order]}


def evaluate(train: list[CTSlice], val: list[CTSlice], min_area: int = 100) -> dict[str, Any]:
    """Fit on `train`, score on `val` (slices with lungs): threshold, Dice summary, COCO and per-image AP."""
    from detectlab.lesions.cocoeval import coco_ap, dice_summary, per_image_ap

    t = fit_threshold(train)
    vv = with_lungs(val)
    preds = [predict(s, t, min_area) for s in vv]
    gt = [dict(zip(("masks", "boxes"), instances_from_map(s.instances)), size=s.image.shape) for s in vv]
    res: dict[str, Any] = {"threshold": t, "n_val": len(vv), "n_val_without_lungs": len(val) - len(vv)}
    if not vv:
        return res
    res["dice"] = dice_summary([p["mask"] for p in preds], [s.mask for s in vv], [s.group for s in vv])
    res["coco"] = coco_ap(gt, preds, "segm")
    res["per_image"] = per_image_ap(gt, preds)
    return res


def mark_below_baseline(rows: list[dict], metric: str) -> list[dict]:
    """Every learned row gets below_baseline (not strictly better than the best baseline on `metric`)
    and best_baseline; rows with kind == 'baseline' are the baselines."""
    try:
        from detectlab.core.baselines import mark_below_baseline as core_mark

        return core_mark(rows, metric)
    except ImportError:  # older core
        pass
    base = [r for r in rows if r.get("kind") == "baseline" and _num(r.get(metric))]
    if not base:
        return rows
    best = max(base, key=lambda r: r[metric])
    for r in rows:
        if r.get("kind") == "learned":
            r["below_baseline"] = not (_num(r.get(metric)) and r[metric] > best[metric])
            r["best_baseline"] = f"{best['model']} ({best[metric]:.4g})"
    return rows


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
