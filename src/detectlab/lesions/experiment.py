"""The paper's protocol: Table 1 (sizes), Table 2 (segmentation AP and training time per backbone),
Table 3 (COVID-CT-Mask-Net per-class sensitivity and accuracy), Fig. 2 overlays and Fig. 3 RoI plots,
with baseline rows on the same validation slices and the learning curve.

Units: one segmentation unit per backbone (train on the training volumes, evaluate on the validation
volumes: COCO AP, the authors' per-image AP, Dice; the lung-threshold baseline on the same slices), then
one classifier unit per backbone (the frozen segmentation model + S on the classification data). Real
data here has COVID-19 slices only, so the classifier data defaults to the built-in three-class
slices: with a detector trained on real CT that Table 3 is out of domain, and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectlab.core import progress
from detectlab.core.config import to_dict
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units
from detectlab.lesions.config import DATA_SUBDIR, GRID_FIELDS, Config, check  # noqa: F401 - the CLI reads these here
from detectlab.lesions.baseline import mark_below_baseline
from detectlab.lesions.data import classification_data, segmentation_data
from detectlab.lesions.model import PAPER_CLS_PARAMS, PAPER_SEG_PARAMS
from detectlab.lesions.train import cls_summary, cls_unit, seg_summary, seg_unit

#: Table 2 (AP@0.5, AP@0.75, AP@[.5:.95], training minutes) and Table 3 (COVID, CP, normal, overall, minutes).
PAPER_TABLE2 = {"resnet18_full": (0.3699, 0.2898, 0.3137, 128.75), "resnet18_t1": (0.4995, 0.3778, 0.3932, 108.8),
                "resnet18_t2": (0.4993, 0.3852, 0.3759, 126.9), "resnet34_full": (0.5357, 0.3333, 0.3465, 119.23),
                "resnet34_t1": (0.5988, 0.4506, 0.4476, 134.01), "resnet34_t2": (0.4491, 0.3118, 0.3404, 129.2)}
PAPER_TABLE3 = {"resnet18_full": (0.8751, 0.7731, 0.7457, 0.7818, 151.2),
                "resnet18_t1": (0.9135, 0.9163, 0.9698, 0.9395, 106.6),
                "resnet18_t2": (0.8405, 0.8581, 0.9301, 0.8866, 113.66),
                "resnet34_full": (0.8698, 0.9427, 0.7112, 0.8245, 163.81),
                "resnet34_t1": (0.9176, 0.9170, 0.9436, 0.9289, 144.73),
                "resnet34_t2": (0.8925, 0.9332, 0.9211, 0.9199, 112.6)}
#: Table 1: trainable parameters of the classifiers (millions); "0.6M" for the lightweight ones.
PAPER_TRAINABLE = 0.6


def validate_data(cfg: Config, run_dir: Path) -> None:
    """Read (and for built-in data, generate) every input once before any unit starts, so bad input
    fails at once with one line, and parallel units find the generated files in place."""
    if not (Path(run_dir) / "metrics.json").exists():
        segmentation_data(cfg, run_dir)
        if cfg.cls.enabled:
            classification_data(cfg, run_dir)


def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.lesions import figures

    check(cfg)
    validate_data(cfg, run.dir)
    cd = to_dict(cfg)
    kw = lambda b: dict(backbone=b, cfg_dict=cd, run_dir=str(run.dir))  # noqa: E731
    seg = run_units(run, [Unit(f"seg-{b}", seg_unit, kw(b)) for b in cfg.backbones], cfg.workers,
                    cfg.ray_address, description="segmentation x backbone")
    cls = {}
    if cfg.cls.enabled:
        cls = run_units(run, [Unit(f"cls-{b}", cls_unit, kw(b)) for b in cfg.backbones], cfg.workers,
                        cfg.ray_address, description="classifier x backbone")
    metrics: dict[str, Any] = {"segmentation": {}, "classification": {}}
    for b in cfg.backbones:
        metrics["segmentation"][b] = seg_summary(seg[f"seg-{b}"])
        if cls:
            metrics["classification"][b] = cls_summary(cls[f"cls-{b}"])
    first = seg[f"seg-{cfg.backbones[0]}"]
    metrics["data"] = {k: first["data"][k] for k in ("source", "sources", "n_train", "n_val", "val_groups")
                       if k in first["data"]}
    metrics["learning_curve"] = {b: seg[f"seg-{b}"]["history"]["curve"] for b in cfg.backbones}
    run.write_metrics(metrics)
    tables(run, cfg, seg, cls)
    figures.all_figures(run, cfg, seg, cls)
    s = seg[f"seg-{cfg.backbones[0]}"]
    msg = (f"lesions: {cfg.backbones[0]} mask AP50 {s['ap50']:.3f} (per-image {s['paper_ap50']:.3f}), "
           f"Dice {s['dice']['pooled']:.3f}")
    if "dice" in s.get("baseline", {}):
        msg += f" vs lung-threshold Dice {s['baseline']['dice']['pooled']:.3f}"
    if cls:
        msg += f"; classifier accuracy {cls[f'cls-{cfg.backbones[0]}']['accuracy']:.3f}"
    progress.log(msg)
    return metrics


def table2_rows(cfg: Config, seg: dict) -> list[dict]:
    rows = []
    first = seg[f"seg-{cfg.backbones[0]}"]
    for b in cfg.backbones:
        s = seg[f"seg-{b}"]
        rows.append({"model": f"{b} (ours)", "kind": "learned", "AP@0.5": s["ap50"], "AP@0.75": s["ap75"],
                     "AP@[.5:.95]": s["ap"], "box AP@0.5": s["box_ap50"], "per-image AP@0.5": s["paper_ap50"],
                     "per-image AP@0.75": s["paper_ap75"], "per-image AP@[.5:.95]": s["paper_ap"],
                     "Dice": s["dice"]["pooled"], "Dice/slice": s["dice"]["mean_slice"],
                     "Dice/volume": s["dice"]["mean_volume"], "training (CPU-min)": s["train_cpu_minutes"]})
    empty = first.get("empty_baseline")
    if empty:
        rows.append({"model": "no lesion (empty prediction)", "kind": "baseline", **empty})
    base = first.get("baseline", {})
    if "dice" in base:
        rows.append({"model": f"lung threshold (> {base['threshold']:.0f}/255 inside the lungs)", "kind": "baseline",
                     "AP@0.5": base["coco"]["ap50"], "AP@0.75": base["coco"]["ap75"], "AP@[.5:.95]": base["coco"]["ap"],
                     "per-image AP@0.5": base["per_image"]["ap50"], "per-image AP@0.75": base["per_image"]["ap75"],
                     "per-image AP@[.5:.95]": base["per_image"]["ap"], "Dice": base["dice"]["pooled"],
                     "Dice/slice": base["dice"]["mean_slice"], "Dice/volume": base["dice"]["mean_volume"]})
    mark_below_baseline(rows, "Dice")
    for b in cfg.backbones:
        p = PAPER_TABLE2[b]
        rows.append({"model": f"{b} (paper, CNCB, GPU)", "kind": "paper", "per-image AP@0.5": p[0],
                     "per-image AP@0.75": p[1], "per-image AP@[.5:.95]": p[2], "training (GPU-min)": p[3]})
    return rows


def tables(run: Run, cfg: Config, seg: dict, cls: dict) -> None:
    t1 = []
    for b in cfg.backbones:
        s = seg[f"seg-{b}"]
        row = {"model": b, "segmentation params": s["params"], "paper (M)": PAPER_SEG_PARAMS[b],
               "diff": s["params"] / 1e6 / PAPER_SEG_PARAMS[b] - 1}
        if cls:
            c = cls[f"cls-{b}"]
            row.update({"classifier params": c["params"], "paper cls (M)": PAPER_CLS_PARAMS[b],
                        "cls diff": c["params"] / 1e6 / PAPER_CLS_PARAMS[b] - 1,
                        "trainable": c["trainable_params"], "paper trainable (M)": PAPER_TRAINABLE})
        t1.append(row)
    run.write_table("table1_params", t1, title="Table 1: model sizes (ours vs the paper's, millions)",
                    note="diff = ours / paper - 1. Trainable = S + the backbone's bn* affine parameters when "
                         f"cls.train_norm_affine (here {cfg.cls.train_norm_affine}; the authors' setting), else S only.")
    first = seg[f"seg-{cfg.backbones[0]}"]
    info = first["data"]
    rows = table2_rows(cfg, seg)
    run.write_table(
        "table2_segmentation", rows, title="Table 2: lesion segmentation on the validation volumes",
        note=(f"Ours: {info['n_train']} training / {info['n_val']} validation slices from {info['source']} "
              f"({info['sources']}); validation groups {info.get('val_groups')}. {cfg.image_size} px, "
              f"{cfg.seg.iterations} iterations of batch {cfg.seg.batch_size}, Adam lr {cfg.seg.lr}; test RPN/RoI NMS "
              f"{cfg.model.rpn_nms_thresh}/{cfg.model.box_nms_thresh}, score threshold {cfg.model.box_score_thresh}. "
              "AP@...: COCO AP (pycocotools, 101-point, all images pooled). per-image AP: the authors' "
              "evaluation_mean_ap.py (Matterport-style AP per image, an empty prediction on an empty image "
              "scores 1, averaged over images): the one that compares with the paper's Table 2. Dice: pooled over "
              f"all validation pixels, detections scoring >= {cfg.seg.dice_score_thresh}; Dice/slice and "
              "Dice/volume: means over slices / volumes. below_baseline compares Dice with the best baseline. "
              "Paper: 500/150 CNCB slices, GPU."))
    curve = first["history"].get("curve") or []
    if curve:
        run.write_table("learning_curve", [{"iteration": p["iteration"], "CPU-min": p["cpu_seconds"] / 60,
                                            "AP@0.5": p["ap50"], "AP@[.5:.95]": p["ap"],
                                            "per-image AP@0.5": p["paper_ap50"], "Dice": p["dice"],
                                            "Dice/volume": p["dice_volume"], "detections": p["n_detections"]}
                                           for p in curve],
                        title=f"Learning curve ({cfg.backbones[0]}, validation volumes)",
                        note="Training CPU time excludes the evaluations. The reported model is the last point, "
                             "not the best one.")
    if not cls:
        return
    ci = cls[f"cls-{cfg.backbones[0]}"]["data"]
    t3 = []
    for b in cfg.backbones:
        c = cls[f"cls-{b}"]
        t3.append({"model": f"{b} (ours)", "kind": "learned", "COVID-19": c["sensitivity"]["covid"],
                   "Pneumonia": c["sensitivity"]["pneumonia"], "Normal": c["sensitivity"]["normal"],
                   "Overall": c["accuracy"], "training (min)": c["train_minutes"]})
    maj = cls[f"cls-{cfg.backbones[0]}"]["majority"]
    t3.append({"model": f"majority class ({maj['class']})", "kind": "baseline",
               "COVID-19": maj["sensitivity"]["covid"], "Pneumonia": maj["sensitivity"]["pneumonia"],
               "Normal": maj["sensitivity"]["normal"], "Overall": maj["accuracy"]})
    mark_below_baseline(t3, "Overall")
    for b in cfg.backbones:
        p = PAPER_TABLE3[b]
        t3.append({"model": f"{b} (paper, COVIDx-CT)", "kind": "paper", "COVID-19": p[0], "Pneumonia": p[1],
                   "Normal": p[2], "Overall": p[3], "training (min)": p[4]})
    run.write_table("table3_classification", t3,
                    title="Table 3: COVID-CT-Mask-Net, per-class sensitivity and overall accuracy",
                    note=f"{ci['domain'].capitalize()}. Ours: {ci['n_train']} training / {ci['n_test']} test slices "
                         f"({ci['per_class_test']}) from {ci['source']}, {cfg.cls.epochs} epochs, RoI batch "
                         f"{cfg.cls.roi_batch}, score threshold {cfg.cls.score_thresh}, loss {cfg.cls.loss}, S input "
                         f"score + {cfg.cls.box_values}. Paper: 3000 training / 21192 COVIDx-CT test slices.")
