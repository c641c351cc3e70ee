"""The paper's protocol: Table 1 (sizes), Table 2 (segmentation AP and training time per backbone),
Table 3 (COVID-CT-Mask-Net per-class sensitivity and accuracy), Fig. 2 overlays and Fig. 3 RoI plots.

Units: one segmentation unit per backbone (train on the training slices, COCO AP on the validation
slices), then one classifier unit per backbone (the frozen segmentation model + S trained on the
classification data). Real data here has COVID-19 slices only, so the classifier data defaults to the
built-in three-class slices (`cls.data = "builtin"`); a folder of `Class_Patient_Scan_Slice.png`
images (optionally with a COVIDx split file) can be given instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import progress
from detectlab.core.config import BaseConfig, resolve_data, to_dict
from detectlab.core.errors import InputError
from detectlab.core.runs import Run
from detectlab.core.splits import stratified_holdout
from detectlab.core.units import Unit, run_units
from detectlab.lesions.data import (CLASS_NAMES, CTSlice, global_mean_std, load_classification_folder,
                                    load_segmentation_data, resize_slice)
from detectlab.lesions.model import PAPER_CLS_PARAMS, PAPER_SEG_PARAMS, ModelConfig, parse_backbone

DATA_SUBDIR = "ct"
ALL_BACKBONES = ["resnet18_full", "resnet18_t1", "resnet18_t2", "resnet34_full", "resnet34_t1", "resnet34_t2"]

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


@dataclass
class SegTrainConfig:
    iterations: int = 20000
    batch_size: int = 2
    lr: float = 1e-5
    weight_decay: float = 1e-3
    log_every: int = 100
    checkpoint_every: int = 500


@dataclass
class ClsTrainConfig:
    enabled: bool = True
    data: str = "builtin"  # "builtin" (three-class synthetic slices) or a folder of labelled slices
    split_file: str = ""  # optional COVIDx-CT split file naming the images of `data`
    test_fraction: float = 0.3
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 1e-3
    roi_batch: int = 128
    hidden: int = 512
    score_thresh: float = -0.01


@dataclass
class SynthConfig:
    seg_patients: int = 60  # patients cycle through normal / pneumonia / COVID-19
    cls_patients: int = 90
    slices_per_patient: int = 3
    size: int = 512


@dataclass
class Config(BaseConfig):
    backbones: list[str] = field(default_factory=lambda: list(ALL_BACKBONES))
    image_size: int = 512  # longer side of every slice (0: keep); the model's min/max size should match
    min_area: int = 100  # lesion components of this many pixels or fewer are merged with the background
    val_fraction: float = 0.2
    max_per_source: int = 0  # cap on slices per real-data source (0: all)
    volume_block: int = 40  # COVID-19-CT-Seg slices: contiguous index blocks form the split groups
    figure_examples: int = 4
    model: ModelConfig = field(default_factory=ModelConfig)
    seg: SegTrainConfig = field(default_factory=SegTrainConfig)
    cls: ClsTrainConfig = field(default_factory=ClsTrainConfig)
    synthetic: SynthConfig = field(default_factory=SynthConfig)


# ------------------------------------------------------------------ data


def _split(slices: list[CTSlice], y: list, groups: list, frac: float, seed: int) -> tuple[list, list]:
    tr, te = stratified_holdout(np.asarray(y), frac, seed, np.asarray(groups))
    return [slices[i] for i in tr], [slices[i] for i in te]


def segmentation_data(cfg: Config, run_dir: Path) -> tuple[list[CTSlice], list[CTSlice], dict]:
    """(train, validation, info): real slices (split by source-stratified groups) or built-in ones (by patient)."""
    from detectlab.lesions.synthetic import generate

    path = resolve_data(cfg.data, DATA_SUBDIR)
    if path is None:
        sy = cfg.synthetic
        root = generate(Path(run_dir) / "data" / "segmentation", sy.seg_patients, sy.slices_per_patient, sy.size,
                        cfg.seed)
        slices = load_classification_folder(root)
        y, groups = [s.label for s in slices], [s.group for s in slices]
        info = {"source": "builtin synthetic", "sources": {"builtin": len(slices)}}
    else:
        per = load_segmentation_data(path, cfg.min_area, cfg.max_per_source)
        slices, y, groups = [], [], []
        for k, (name, ss) in enumerate(per.items()):
            for j, s in enumerate(ss):
                slices.append(s)
                y.append(k)
                # COVID-19-CT-Seg: contiguous blocks (volume order); MedSeg: one slice per group
                groups.append(f"{name}/{j // cfg.volume_block}" if name.startswith("covid19-ct-seg") else
                              f"{name}/{s.group}")
        info = {"source": str(path), "sources": {n: len(v) for n, v in per.items()}}
    slices = [resize_slice(s, cfg.image_size) for s in slices]
    train, val = _split(slices, y, groups, cfg.val_fraction, cfg.seed)
    info.update(n_train=len(train), n_val=len(val),
                val_with_lesion=int(sum(bool(s.mask.any()) for s in val)))
    return train, val, info


def classification_data(cfg: Config, run_dir: Path) -> tuple[list[CTSlice], list[CTSlice], dict]:
    """(train, test, info) of three-class slices, split by patient and stratified by class."""
    from detectlab.lesions.synthetic import generate

    cc = cfg.cls
    if cc.data in ("", "builtin"):
        sy = cfg.synthetic
        root = generate(Path(run_dir) / "data" / "classification", sy.cls_patients, sy.slices_per_patient, sy.size,
                        cfg.seed + 1)
        slices = load_classification_folder(root)
        info = {"source": "builtin synthetic (three classes)"}
    else:
        p = Path(cc.data).expanduser()
        slices = load_classification_folder(p, cc.split_file or None)
        info = {"source": str(p)}
    labels = [s.label for s in slices]
    present = sorted(set(labels))
    if len(present) < 2:
        raise InputError(cc.data, f"classification data has only class {present}", "slices of at least two classes")
    slices = [resize_slice(s, cfg.image_size) for s in slices]
    train, test = _split(slices, labels, [s.group for s in slices], cc.test_fraction, cfg.seed)
    info.update(n_train=len(train), n_test=len(test),
                per_class_test={CLASS_NAMES[c]: int(sum(s.label == c for s in test)) for c in range(3)})
    return train, test, info


def model_config(cfg: Config, backbone: str, train: list[CTSlice]) -> ModelConfig:
    mean, std = global_mean_std(train)
    return replace(cfg.model, backbone=backbone, image_mean=mean, image_std=std,
                   anchor_sizes=list(cfg.model.anchor_sizes), aspect_ratios=list(cfg.model.aspect_ratios))


# ------------------------------------------------------------------ protocol


def check_config(cfg: Config) -> None:
    for b in cfg.backbones:
        try:
            parse_backbone(b)
        except ValueError as e:
            raise InputError("config key 'backbones'", str(e)) from None
    if not cfg.backbones:
        raise InputError("config key 'backbones'", "is empty", "e.g. ['resnet18_t1']")


def validate_data(cfg: Config, run_dir: Path) -> None:
    """Read (and for built-in data, generate) every input once before any unit starts, so bad input
    fails at once with one line, and parallel units find the generated files in place."""
    if not any((Path(run_dir) / "units").glob("*.json")) or not (Path(run_dir) / "metrics.json").exists():
        segmentation_data(cfg, run_dir)
        if cfg.cls.enabled:
            classification_data(cfg, run_dir)


def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.lesions import figures
    from detectlab.lesions.train import cls_unit, seg_unit

    check_config(cfg)
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
        r = seg[f"seg-{b}"]
        metrics["segmentation"][b] = {k: r[k] for k in ("ap50", "ap75", "ap", "params", "train_minutes")}
        if cls:
            c = cls[f"cls-{b}"]
            metrics["classification"][b] = {k: c[k] for k in ("sensitivity", "accuracy", "params",
                                                              "trainable_params")}
    run.write_metrics(metrics)
    _tables(run, cfg, seg, cls)
    figures.all_figures(run, cfg, seg, cls)
    b = cfg.backbones[0]
    msg = f"lesions: {b} mask AP {seg[f'seg-{b}']['ap']:.3f} (AP50 {seg[f'seg-{b}']['ap50']:.3f})"
    if cls:
        msg += f"; classifier accuracy {cls[f'cls-{b}']['accuracy']:.3f}"
    progress.log(msg)
    return metrics


def _tables(run: Run, cfg: Config, seg: dict, cls: dict) -> None:
    t1 = []
    for b in cfg.backbones:
        s = seg[f"seg-{b}"]
        row = {"model": b, "segmentation params": s["params"], "paper (M)": PAPER_SEG_PARAMS[b],
               "diff": s["params"] / 1e6 / PAPER_SEG_PARAMS[b] - 1}
        if cls:
            c = cls[f"cls-{b}"]
            row.update({"classifier params": c["params"], "paper cls (M)": PAPER_CLS_PARAMS[b],
                        "cls diff": c["params"] / 1e6 / PAPER_CLS_PARAMS[b] - 1,
                        "trainable": c["trainable_params"]})
        t1.append(row)
    run.write_table("table1_params", t1, title="Table 1: model sizes (ours vs the paper's, millions)",
                    note="diff = ours / paper - 1. Trainable = S only (the segmentation model is frozen).")
    info = seg[f"seg-{cfg.backbones[0]}"]["data"]
    t2 = []
    for b in cfg.backbones:
        s = seg[f"seg-{b}"]
        t2.append({"model": f"{b} (ours)", "AP@0.5": s["ap50"], "AP@0.75": s["ap75"], "AP@[.5:.95]": s["ap"],
                   "box AP@0.5": s["box_ap50"], "box AP": s["box_ap"], "training (min)": s["train_minutes"]})
    for b in cfg.backbones:
        p = PAPER_TABLE2[b]
        t2.append({"model": f"{b} (paper)", "AP@0.5": p[0], "AP@0.75": p[1], "AP@[.5:.95]": p[2],
                   "training (min)": p[3]})
    run.write_table("table2_segmentation", t2, title="Table 2: lesion segmentation, mask AP (pycocotools)",
                    note=f"Ours: {info['n_train']} training / {info['n_val']} validation slices from {info['source']} "
                         f"({info['sources']}), {cfg.image_size} px, {cfg.seg.iterations} iterations of batch "
                         f"{cfg.seg.batch_size}, Adam lr {cfg.seg.lr}; test RPN/RoI NMS {cfg.model.rpn_nms_thresh}/"
                         f"{cfg.model.box_nms_thresh}, score threshold {cfg.model.box_score_thresh}. Paper: 500/150 CNCB "
                         "slices (GPU).")
    if not cls:
        return
    ci = cls[f"cls-{cfg.backbones[0]}"]["data"]
    t3 = []
    for b in cfg.backbones:
        c = cls[f"cls-{b}"]
        t3.append({"model": f"{b} (ours)", "COVID-19": c["sensitivity"]["covid"],
                   "Pneumonia": c["sensitivity"]["pneumonia"], "Normal": c["sensitivity"]["normal"],
                   "Overall": c["accuracy"], "training (min)": c["train_minutes"]})
    for b in cfg.backbones:
        p = PAPER_TABLE3[b]
        t3.append({"model": f"{b} (paper)", "COVID-19": p[0], "Pneumonia": p[1], "Normal": p[2], "Overall": p[3],
                   "training (min)": p[4]})
    run.write_table("table3_classification", t3,
                    title="Table 3: COVID-CT-Mask-Net, per-class sensitivity and overall accuracy",
                    note=f"Ours: {ci['n_train']} training / {ci['n_test']} test slices ({ci['per_class_test']}) from "
                         f"{ci['source']}, {cfg.cls.epochs} epochs, RoI batch {cfg.cls.roi_batch}, score threshold "
                         f"{cfg.cls.score_thresh}. Paper: 3000 training / 21192 COVIDx-CT test slices.")
