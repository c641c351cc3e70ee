"""`detectlab lesions evaluate MODEL_RUN DATA [--out DIR]`: a trained run's segmentation model on another
labelled data set, with the protocol's metrics.

DATA is any layout the readers know: MedSeg/Inf-Net `Imgs/`+`GT/`, COVID-19-CT-Seg `ct/`+`covid/`
(+`lungs/`), or `images/`+`masks/` holding PNG slices or NIfTI/MetaImage volumes with mask volumes of the
same name (optional `lungs/` of the same kind; a `CONVENTION` file names the mask convention). Volumes
in Hounsfield units are checked to look like CT and made 8-bit as the model's training slices were
(`volume_preprocess` of the run). Instances follow the same 100-px rule at native resolution; slices are
resized to the model's size.

Output run folder: metrics.json (COCO mask/box AP, the authors' per-image AP, Dice pooled / per slice /
per volume, the same for the baselines, `below_baseline`), tables/evaluation (.md/.csv) with the
baseline rows (no lesion; the lung threshold with the threshold fitted on the model run's training
slices, on the slices that have lung masks), tables/dice_per_volume, figures/examples.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="", help="which backbone of the run to use [the run's first]")
    p.add_argument("--allow-non-ct", action="store_true", help="accept volumes that do not look like CT in HU")


def _open_out(out: Path, model_run: Path, data: Path, settings: dict):
    try:
        from detectlab.core.runs import evaluation_run
    except ImportError:  # older core
        from detectlab.core.runs import Run

        return Run(out, {"model_run": str(model_run), "data": str(data), **settings}, "lesions")
    return evaluation_run(out, "lesions", model_run, data, settings)


def load_labelled(data: Path, min_area: int, volume_preprocess: str, check_ct: bool, size: int) -> tuple[list, dict]:
    """The labelled slices of `data`, grouped by volume (recovered for COVID-19-CT-Seg), resized."""
    from detectlab.core.errors import InputError
    from detectlab.lesions.data import assign_volumes, find_layouts, load_pairs, resize_slice

    data = Path(data)
    if not data.exists():
        raise InputError(data, "data folder does not exist")
    layouts = find_layouts(data)
    if not layouts:
        raise InputError(data, "no CT slices found",
                         "Imgs/+GT/ (MedSeg), ct/+covid/ (COVID-19-CT-Seg) or images/+masks/ folders")
    slices, sources = [], {}
    for name, imgs, masks, conv in layouts:
        if masks is None or not masks.is_dir():
            raise InputError(imgs, "no mask folder next to the images", "masks/ (or GT/, covid/) with the same names")
        lung_dir = imgs.parent / "lungs" if not name.startswith("medseg") else None
        ss = load_pairs(imgs, masks, conv, min_area, name, require_masks=True, lung_dir=lung_dir,
                        volume_preprocess=volume_preprocess, check_ct=check_ct)
        if name.startswith("covid19-ct-seg"):
            for s, g in zip(ss, assign_volumes(ss, name)):
                s.group = g
        elif name.startswith("medseg"):
            for s in ss:
                s.group = f"{name}/{s.name}"
        else:
            for s in ss:
                s.group = f"{name}/{s.group}"
        sources[name] = len(ss)
        slices += ss
    return [resize_slice(s, size) for s in slices], sources


def run(model_run: Path, data: Path, out: Path | None, args: argparse.Namespace) -> int:
    import numpy as np

    from detectlab.core import progress
    from detectlab.core.errors import InputError
    from detectlab.core.runs import open_run
    from detectlab.core.runtime import choose_device
    from detectlab.lesions import baseline
    from detectlab.lesions.cocoeval import dice_summary
    from detectlab.lesions.baseline import mark_below_baseline
    from detectlab.lesions.train import load_segmentation, predict_segmentation, segmentation_metrics

    folder, cfg = open_run(model_run)
    backbone = getattr(args, "backbone", "") or next(iter(cfg.get("backbones", [])), "")
    seg_path = folder / "checkpoints" / f"seg-{backbone}.safetensors"
    if not seg_path.exists():
        have = sorted(p.stem for p in (folder / "checkpoints").glob("seg-*.safetensors"))
        raise InputError(seg_path, "no segmentation checkpoint for this backbone",
                         f"one of {have}" if have else "a finished `lesions train` or `lesions run` folder")
    device = choose_device(getattr(args, "device", None) or "cpu")
    model, header = load_segmentation(seg_path, device)
    size = int(header.get("image_size", 0) or 0)
    min_area = int(header.get("min_area", cfg.get("min_area", 100)))
    dice_t = float(header.get("dice_score_thresh", 0.5))
    pre = header.get("volume_preprocess", "window")
    slices, sources = load_labelled(Path(data), min_area, pre, not getattr(args, "allow_non_ct", False), size)
    out = Path(out) if out is not None else folder / "evaluations" / Path(data).name
    settings = {"backbone": backbone, "image_size": size, "min_area": min_area, "dice_score_thresh": dice_t,
                "volume_preprocess": pre}
    run_ = _open_out(out, Path(model_run), Path(data), settings)
    try:
        preds = predict_segmentation(model, slices, device)
        ev = segmentation_metrics(slices, preds, dice_t)
        empty = segmentation_metrics(slices, [{"masks": np.zeros((0, *s.image.shape), bool), "boxes": np.zeros((0, 4)),
                                               "scores": np.zeros(0)} for s in slices], dice_t)
        rows = [_row(f"{backbone} (model run {Path(model_run).name})", "learned", ev),
                _row("no lesion (empty prediction)", "baseline", empty)]
        metrics: dict[str, Any] = {"model_run": str(model_run), "data": str(data), "backbone": backbone,
                                   "sources": sources, "n_slices": len(slices), "segmentation": _summary(ev),
                                   "baselines": {"empty": _summary(empty)}}
        t = header.get("baseline_threshold")
        with_lungs = [s for s in slices if s.lungs is not None]
        if t is not None and with_lungs:
            bp = [baseline.predict(s, t, min_area) for s in with_lungs]
            bev = segmentation_metrics(with_lungs, bp, dice_t)
            bev["dice"] = dice_summary([p["mask"] for p in bp], [s.mask for s in with_lungs],
                                       [s.group for s in with_lungs])  # the threshold mask, not its instances
            rows.append(_row(f"lung threshold (> {t:.0f}/255, fitted on the model run's training slices; "
                             f"{len(with_lungs)} slices with lungs)", "baseline", bev))
            metrics["baselines"]["lung_threshold"] = {**_summary(bev), "threshold": t, "n_slices": len(with_lungs)}
        mark_below_baseline(rows, "Dice")
        metrics["segmentation"]["below_baseline"] = rows[0].get("below_baseline")
        run_.write_metrics(metrics)
        run_.write_table("evaluation", rows, title=f"Evaluation of {backbone} on {data}",
                         note="AP@...: COCO AP; per-image AP: the authors' (an empty prediction on an empty slice "
                              f"scores 1); Dice pooled over pixels (detections >= {dice_t}), per slice and per "
                              "volume. below_baseline compares Dice with the best baseline.")
        pv = ev["dice"]["per_volume"]
        run_.write_table("dice_per_volume", [{"volume": k, "Dice": v, "slices": sum(s.group == k for s in slices)}
                                             for k, v in pv.items()], title="Dice per volume")
        _figure(run_, slices, preds)
        progress.log(f"lesions evaluate: {len(slices)} slices, mask AP50 {ev['ap50']:.4f}, per-image AP50 "
                     f"{ev['paper_ap50']:.4f}, Dice {ev['dice']['pooled']:.4f}; results in {out}")
    finally:
        run_.close()
    print(out)
    return 0


def _row(name: str, kind: str, ev: dict) -> dict:
    return {"model": name, "kind": kind, "AP@0.5": ev["ap50"], "AP@[.5:.95]": ev["ap"], "box AP@0.5": ev["box_ap50"],
            "per-image AP@0.5": ev["paper_ap50"], "per-image AP@[.5:.95]": ev["paper_ap"],
            "Dice": ev["dice"]["pooled"], "Dice/slice": ev["dice"]["mean_slice"],
            "Dice/volume": ev["dice"]["mean_volume"]}


def _summary(ev: dict) -> dict:
    out = {k: ev[k] for k in ("ap50", "ap75", "ap", "box_ap50", "paper_ap50", "paper_ap75", "paper_ap",
                              "n_instances", "n_detections")}
    out["dice"] = dict(ev["dice"])
    return out


def _figure(run_, slices, preds, k: int = 4) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from detectlab.lesions.figures import draw_detections

    idx = sorted(range(len(slices)), key=lambda i: -int(slices[i].mask.sum()))[:k]
    if not idx:
        return
    fig, axes = plt.subplots(2, len(idx), figsize=(3.2 * len(idx), 6.4), squeeze=False)
    for j, i in enumerate(idx):
        s = slices[i]
        draw_detections(axes[0, j], s.image, preds[i], s.name)
        axes[1, j].imshow(s.image, cmap="gray")
        axes[1, j].imshow(np.ma.masked_where(~s.mask, s.mask), cmap="autumn", alpha=0.6)
        axes[1, j].set_title("ground truth", fontsize=8)
        axes[1, j].axis("off")
    fig.tight_layout()
    run_.save_figure(fig, "examples")

