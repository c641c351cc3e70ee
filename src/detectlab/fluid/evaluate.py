"""`detectlab fluid evaluate MODEL_RUN DATA [--out DIR]`: a trained run's model(s) on a labelled data set.

DATA in any layout `fluid run` reads: a Duke-style folder with labels.csv (labels and/or masks), RETOUCH
MetaImage volumes with their reference volumes, or class folders (Kermany OCT2017, train/test/val read).
MODEL_RUN: a `fluid train` folder (its model) or a `fluid run` folder (every fold-0 checkpoint, or the one
named by --checkpoint).

Metrics, as in the protocol: accuracy, AUC, balanced accuracy, sensitivity, specificity at each model's
decision threshold (the one stored in its checkpoint: chosen on validation data of the training side by
Youden's J for `fluid train` and selection="inner", 0.5 for the paper's rule and for older checkpoints; or
--threshold for every model and baseline), with labels from the region each network sees where masks are
known; per volume (MetaImage): a volume is fluid when any B-scan is, scored against its reference. Baseline
rows: the majority class and the dark-pocket logistic regression *fitted on the model's own training part*
(stored in its checkpoint with its own threshold, chosen as the model's), applied to the same data; a model
whose balanced accuracy is not above the best of them is below_baseline. With masks: the share of fluid
B-scans whose Grad-CAM peak falls inside the mask.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="", help="one checkpoint name in MODEL_RUN/checkpoints (default: all)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability at or above which a B-scan is fluid, for every model and baseline (default: "
                        "the threshold stored in each checkpoint, chosen on validation data when it was trained; "
                        "0.5 for checkpoints that hold none)")


def checkpoints(model_run: Path, name: str = "") -> list[Path]:
    from detectlab.core.errors import InputError
    from detectlab.fluid.predict import pick_checkpoint

    ck = Path(model_run) / "checkpoints"
    if name or (ck / "model.safetensors").exists():
        return [pick_checkpoint(Path(model_run), name)]
    found = sorted(ck.glob("*.safetensors"))
    if not found:
        raise InputError(model_run, "run folder has no checkpoints", "a finished `fluid train` or `fluid run` folder")
    return found


def volume_metrics(ds, y: np.ndarray, prob: np.ndarray, thr: float) -> dict[str, Any] | None:
    """A volume is fluid when any of its B-scans is: predicted (p >= thr) against the reference."""
    from detectlab.fluid.train import heldout_metrics

    if not ds.volumes or not any(ds.volumes):
        return None
    vols = sorted({v for v in ds.volumes if v})
    vy, vp = [], []
    for v in vols:
        idx = [i for i, w in enumerate(ds.volumes) if w == v]
        vy.append(int(y[idx].max()))
        vp.append(float(prob[idx].max()))
    m = heldout_metrics(np.asarray(vy), np.asarray(vp), thr)
    return m | {"volumes": [{"volume": v, "reference_fluid": bool(a), "p_fluid_max": b} for v, a, b in zip(vols, vy, vp)]}


def run(model_run: Path, data: Path, out: Path, args: argparse.Namespace) -> int:
    from detectlab.core.baselines import mark_below_baseline
    from detectlab.core.checkpoints import read_header
    from detectlab.core.errors import InputError
    from detectlab.core.runs import evaluation_run
    from detectlab.core.runtime import choose_device
    from detectlab.fluid import baseline as B
    from detectlab.fluid.data import Prep, load_dataset, prepare
    from detectlab.fluid.saliency import saliency_on
    from detectlab.fluid.train import heldout_metrics, load_model, predict_probs, stored_threshold, threshold_arg

    model_run, data = Path(model_run), Path(data)
    if not (model_run / "config.toml").exists():
        raise InputError(model_run, "not a detectlab run folder (no config.toml)", "the --out folder of fluid train/run")
    cks = checkpoints(model_run, getattr(args, "checkpoint", "") or "")
    given = threshold_arg(args)
    device = choose_device(getattr(args, "device", "auto") or "auto")
    ds = load_dataset(data)
    run = evaluation_run(out, "fluid", model_run, data, {"checkpoint": getattr(args, "checkpoint", "") or "all",
                                                         "threshold": "stored" if given is None else float(given)})
    rows: list[dict[str, Any]] = []
    entries: dict[str, Any] = {}
    feats: dict[Any, np.ndarray] = {}
    try:
        for ck in cks:
            model, mc = load_model(ck, device)
            header = read_header(ck)
            thr, thr_from = stored_threshold(header, given)
            prep = Prep.from_dict(mc["prep"])
            p = prepare(ds, prep)
            logits, y = predict_probs(model, p, device)
            prob = torch.softmax(logits, 1)[:, 1].numpy()
            yy = y.numpy()
            m = heldout_metrics(yy, prob, thr)
            e: dict[str, Any] = {"checkpoint": ck.name, "arch": mc["arch"], "input": f"{prep.crop}-{prep.size[0]}x"
                                 f"{prep.size[1]}", **m, "threshold": thr, "threshold_from": thr_from,
                                 "relabelled": p.relabelled}
            vm = volume_metrics(ds, yy, prob, thr)
            if vm is not None:
                e["per_volume"] = vm
            if p.m is not None:
                sal = saliency_on(model, p, device)
                e["saliency"] = {k: v for k, v in sal.items() if k not in ("index", "hit")}
            group = ck.stem
            rows.append({"kind": "model", "group": group, "name": ck.stem, "threshold": round(thr, 4), **_cells(m),
                         "volume_balanced_accuracy": round(vm["balanced_accuracy"], 3) if vm else ""})
            stored = header.get("baselines")
            if stored:
                if prep not in feats:
                    feats[prep] = B.features_of(p)
                lr_thr = float(given) if given is not None else float(stored.get("dark_pockets_lr_threshold", 0.5))
                base = {"majority": (np.full(len(yy), float(stored["train_fluid_share"])),
                                     float(given) if given is not None else 0.5),
                        "dark_pockets_lr": (B.apply_pocket_lr(stored["dark_pockets_lr"], feats[prep]), lr_thr)}
                e["baselines"] = {}
                for bname, (bp, bthr) in base.items():
                    bm = heldout_metrics(yy, bp, bthr) | {"threshold": bthr}
                    e["baselines"][bname] = bm
                    rows.append({"kind": "baseline", "group": group, "name": f"{bname} (fitted with {ck.stem})",
                                 "threshold": round(bthr, 4), **_cells(bm), "volume_balanced_accuracy": ""})
            entries[ck.stem] = e
        mark_below_baseline(rows, "balanced_accuracy", group_by=("group",), name_key="name")
        for r in rows:
            if r["kind"] == "model":
                entries[r["group"]]["below_baseline"] = r["below_baseline"]
                entries[r["group"]]["best_baseline"] = r["best_baseline"]
        metrics = {"model_run": str(model_run), "data": str(data), "source": ds.source, "n_images": len(ds),
                   "counts": ds.counts(), "threshold": "stored in each checkpoint" if given is None else float(given),
                   "masks_known": ds.masks is not None, "models": entries}
        run.write_metrics(metrics)
        run.write_table("evaluation", rows, title=f"{model_run.name} on {data}",
                        columns=["kind", "group", "name", "threshold", "accuracy", "auc", "balanced_accuracy",
                                 "sensitivity", "specificity", "n", "volume_balanced_accuracy", "below_baseline", "best_baseline"],
                        note=f"{len(ds)} B-scans ({ds.counts()}); " + (
                             f"threshold {float(given)} for every row (--threshold)" if given is not None else
                             "each row at its own threshold, stored with the model when it was trained (chosen on "
                             "validation data of its training side; 0.5 where none is stored)")
                             + ". Baselines fitted on each model's training part (stored in its checkpoint). "
                             "below_baseline: balanced accuracy not above the best baseline's.")
        sal_rows = [{"checkpoint": k, "fluid_bscans": e["saliency"]["n"], "peak_in_mask": e["saliency"].get("hits", 0),
                     "share": round(e["saliency"].get("share", float("nan")), 3),
                     "chance": round(e["saliency"].get("chance", float("nan")), 3),
                     "peak_cell_has_fluid": e["saliency"].get("cell_hits", 0),
                     "cell_share": round(e["saliency"].get("cell_share", float("nan")), 3),
                     "cell_chance": round(e["saliency"].get("cell_chance", float("nan")), 3)}
                    for k, e in entries.items() if e.get("saliency", {}).get("n", 0) > 0]
        if sal_rows:
            run.write_table("saliency_in_mask", sal_rows, title="Grad-CAM peak inside the fluid mask")
    finally:
        run.close()
    print(f"# {len(cks)} model(s) on {len(ds)} B-scans of {data}")
    for r in rows:
        print(f"{r['kind']:<9} {r['name'][:60]:<60} acc {r['accuracy']:.3f} auc {r['auc']:.3f} "
              f"bal {r['balanced_accuracy']:.3f}" + (f" below_baseline={r['below_baseline']}" if r["kind"] == "model" else ""))
    return 0


def _cells(m: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(m[k]), 4) if np.isfinite(m[k]) else float("nan")
            for k in ("accuracy", "auc", "balanced_accuracy", "sensitivity", "specificity")} | {"n": m["n"]}
