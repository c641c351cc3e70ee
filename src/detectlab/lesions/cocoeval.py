"""COCO-style AP (pycocotools) for one-class instance masks and boxes."""

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
