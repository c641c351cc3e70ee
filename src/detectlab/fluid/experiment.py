"""The paper's protocol: designs (train 90% / 10%) x architectures x batch sizes x folds, each fold a unit of
work, with baseline rows on the same folds; Tables II and III, Figs. 2-4, ROC curves, saliency.

Per fold (one unit): a fresh model, optimizer and early-stopping state. The design's training part is
split by subject into a fitting part and an inner validation part that stops training and picks the
weights (``selection = "inner"``); the fold's held-out part is scored once with those weights. The paper's
rule (``selection = "test"``: the held-out part itself stops training and picks the best check) is kept and
labelled optimistic wherever it is reported.

Splits: stratified k-fold, grouped by subject whenever subjects are known (with fewer subjects than folds,
one fold per subject). Design train90 trains on k-1 folds and tests on one; train10 trains on one fold and
tests on the other k-1.

Metrics per row: mean (SD) across folds of accuracy, AUC (folds with one class only have no AUC: they are
counted apart, `auc_folds`), balanced accuracy; and the AUC and balanced accuracy of all held-out
predictions pooled. Baselines (majority class; dark-pocket features + logistic regression) are fitted on
each fold's training part and scored on the same held-out part; a learned row that does not beat the best
baseline's mean balanced accuracy is marked ``below_baseline``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detectlab.core import progress
from detectlab.core.config import from_dict, to_dict
from detectlab.core.errors import InputError
from detectlab.core.metrics import fmt_mean_sd, mean_sd, roc_auc
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units
from detectlab.fluid import baseline as B
from detectlab.fluid.config import DESIGNS, VARIANTS, Config
from detectlab.fluid.data import (design_split, holdout, make_folds, prep_for, prepared, read_data,
                                  subjects_for)
from detectlab.fluid.data import data_path as _data_path
from detectlab.fluid.train import (SYSTEM, fit, heldout_metrics, model_config, pocket_baseline, predict_probs,
                                   youden_threshold)

#: the paper's Table II (train 90%) and Table III (train 10%): (batch, arch) -> (accuracy, sd, auc, sd)
PAPER = {
    "train90": {
        (8, "vgg16"): (0.92, 0.06, 0.97, 0.04), (8, "alexnet"): (0.88, 0.08, 0.93, 0.08),
        (8, "googlenet"): (0.88, 0.10, 0.91, 0.12), (16, "vgg16"): (0.90, 0.07, 0.96, 0.05),
        (16, "alexnet"): (0.86, 0.07, 0.93, 0.08), (16, "googlenet"): (0.87, 0.09, 0.92, 0.16),
        (32, "vgg16"): (0.90, 0.07, 0.96, 0.04), (32, "googlenet"): (0.86, 0.09, 0.90, 0.16),
        (32, "alexnet"): (0.85, 0.09, 0.92, 0.11), (64, "alexnet"): (0.82, 0.09, 0.91, 0.11),
        (64, "inception_v3"): (0.79, 0.07, 0.83, 0.16), (64, "googlenet"): (0.71, 0.05, 0.87, 0.13),
    },
    "train10": {
        (8, "vgg16"): (0.80, 0.06, 0.87, 0.06), (8, "alexnet"): (0.77, 0.07, 0.82, 0.07),
        (8, "googlenet"): (0.73, 0.06, 0.77, 0.12), (16, "vgg16"): (0.78, 0.05, 0.86, 0.05),
        (16, "alexnet"): (0.72, 0.06, 0.80, 0.07), (16, "densenet201"): (0.70, 0.03, 0.79, 0.04),
    },
}
BASELINES = ("majority", "dark_pockets_lr")


def data_path(cfg: Config, run: Run | None) -> Path:
    return _data_path(cfg, run)


def prep_key(prep) -> str:
    return f"{prep.crop}-{prep.size[0]}x{prep.size[1]}" + ("-denoise" if prep.denoise else "")


def fold_split(cfg: Config, ds, design: str, fold: int) -> dict[str, Any]:
    """The indices of one fold of one design: fit, inner validation (the test part under selection='test'),
    test; and whether the inner split is by subject."""
    folds = make_folds(ds.labels, subjects_for(cfg, ds), cfg.folds, cfg.seed)
    tr, te = design_split(design, folds[fold])
    if cfg.selection == "inner":
        fi, va, grouped = holdout(tr, ds.labels, subjects_for(cfg, ds), cfg.inner_val, cfg.seed * 7919 + fold)
    else:
        fi, va, grouped = tr, te, subjects_for(cfg, ds) is not None
    return {"train": tr, "fit": fi, "val": va, "test": te, "inner_grouped": bool(grouped), "k": len(folds)}


def fold_unit(variant: str, design: str, arch: str, batch: int, fold: int, cfg_dict: dict, data: str,
              ckpt: str = "") -> dict[str, Any]:
    """One unit: train a fresh model on one fold of one design, score its held-out part once."""
    from detectlab.core.checkpoints import save_checkpoint
    from detectlab.core.runtime import choose_device, seed_everything
    from detectlab.fluid.model import build, count_params

    cfg = from_dict(Config, cfg_dict)
    augment = cfg.augment or variant == "augment"
    denoise = cfg.denoise or variant == "denoise"
    mask = variant == "mask"
    ds = read_data(Path(data), cfg.max_images, cfg.seed)
    sp = fold_split(cfg, ds, design, fold)
    prep = prep_for(cfg, arch, denoise)
    allp = prepared(ds, prep)
    key = {"variant": variant, "design": design, "arch": arch, "batch": batch, "fold": fold, "prep": prep_key(prep)}
    subj = {k: sorted(set(ds.subjects[sp[k]].tolist())) for k in ("fit", "val", "test")}
    if batch > len(sp["fit"]):
        return key | {"skipped": True, "n_fit": int(len(sp["fit"])),
                      "reason": f"batch {batch} > {len(sp['fit'])} training images"}
    device = choose_device(cfg.device)
    seed = cfg.seed * 7919 + fold
    seed_everything(seed)  # fresh model, optimizer and early stopping for every fold, seeded by the fold
    model = build(arch, cfg.train.weights, cfg.train.aux_logits, norm=cfg.train.norm, mask_head=mask)
    res = fit(model, allp.take(sp["fit"]), allp.take(sp["val"]), cfg.train, batch, device, seed, augment,
              cfg.train.mask_weight if mask else 0.0,
              log_prefix=f"{variant or 'plain'} {design} {arch} bs={batch} fold {fold}")
    model.load_state_dict(res.state)
    test = allp.take(sp["test"])
    logits, y = predict_probs(model, test, device, cfg.train.eval_batch)
    prob = torch.softmax(logits, 1)[:, 1].numpy()
    thr = 0.5
    if cfg.selection == "inner":  # the decision threshold, too, comes from the inner validation split
        vlog, vy = predict_probs(model, allp.take(sp["val"]), device, cfg.train.eval_batch)
        thr = youden_threshold(vy.numpy(), torch.softmax(vlog, 1)[:, 1].numpy())
    out = key | {"skipped": False, "batch_ran": res.batch, **heldout_metrics(y.numpy(), prob, thr),
                 "threshold": thr, "at_0.5": heldout_metrics(y.numpy(), prob),
                 "test_pred": (prob >= thr).astype(int).tolist(),
                 "val_accuracy": res.best_accuracy, "val_auc": res.best_auc, "val_loss": res.best_loss,
                 "iterations_to_best": res.iterations_to_best, "iterations": res.iterations, "epochs": res.epochs,
                 "stopped_early": res.stopped_early, "n_train": int(len(sp["train"])), "n_fit": int(len(sp["fit"])),
                 "n_val": int(len(sp["val"])), "n_test": int(len(sp["test"])), "inner_grouped": sp["inner_grouped"],
                 "subjects": subj, "params": count_params(model), "input_size": list(prep.size),
                 "seconds": res.seconds, "images_per_s": res.images_per_s, "checks": res.checks,
                 "test_index": sp["test"].tolist(), "test_prob": prob.tolist(), "test_y": y.tolist(),
                 "relabelled": allp.relabelled}
    if cfg.saliency and allp.m is not None:
        from detectlab.fluid.saliency import saliency_on

        sal = saliency_on(model, test, device)
        out["saliency"] = {k: v for k, v in sal.items() if k not in ("index", "hit")}
    if ckpt:
        save_checkpoint(ckpt, model, SYSTEM, model_config(cfg, arch, prep, mask), val_accuracy=res.best_accuracy,
                        design=design, fold=fold, batch=batch, variant=variant, selection=cfg.selection,
                        threshold=thr, threshold_from=THRESHOLD_FROM[cfg.selection],
                        baselines=stored_baselines(ds, allp, prep, sp, cfg.selection, cfg.seed))
    return out


#: where a checkpoint's decision threshold came from, by cfg.selection (evaluate and predict use it)
THRESHOLD_FROM = {"inner": "Youden's J on the inner validation split of the training side",
                  "test": "0.5 (the paper's rule)"}


def stored_baselines(ds, allp, prep, sp: dict[str, Any], selection: str, seed: int) -> dict[str, Any]:
    """The baselines as the protocol fits them on a model's training side (the same fit and threshold as that
    fold's baseline row: :func:`pocket_baseline`), for its checkpoint (evaluate applies them to new data)."""
    y = allp.y.numpy()
    params, thr = pocket_baseline(_features(ds, prep, allp), y, sp, selection, seed)
    return {"train_fluid_share": float(y[np.asarray(sp["train"])].mean()), "dark_pockets_lr": params,
            "dark_pockets_lr_threshold": float(thr)}


_FEATURES: dict[tuple, np.ndarray] = {}


def _features(ds, prep, allp) -> np.ndarray:
    """The dark-pocket features of every B-scan, kept for the last (data, input) this process saw."""
    fk = (ds.source, len(ds), prep)
    if fk not in _FEATURES:
        _FEATURES.clear()
        _FEATURES[fk] = B.features_of(allp)
    return _FEATURES[fk]


def baseline_unit(design: str, fold: int, arch: str, denoise: bool, cfg_dict: dict, data: str) -> dict[str, Any]:
    """Both baselines on one fold, on the input `arch` sees: fitted on the training part, scored on the test part."""
    cfg = from_dict(Config, cfg_dict)
    ds = read_data(Path(data), cfg.max_images, cfg.seed)
    sp = fold_split(cfg, ds, design, fold)
    prep = prep_for(cfg, arch, denoise)
    allp = prepared(ds, prep)
    f = _features(ds, prep, allp)
    y = allp.y.numpy()
    tr, te = sp["train"], sp["test"]
    out = {"design": design, "fold": fold, "prep": prep_key(prep), "test_index": te.tolist(), "test_y": y[te].tolist()}
    params, lr_thr = pocket_baseline(f, y, sp, cfg.selection, cfg.seed)
    lr_prob = B.apply_pocket_lr(params, f[te])
    for name, prob, thr in (("majority", B.majority_scores(y[tr], len(te)), 0.5), ("dark_pockets_lr", lr_prob, lr_thr)):
        prob = np.asarray(prob, float)
        out[name] = heldout_metrics(y[te], prob, thr) | {"test_prob": prob.tolist(), "threshold": thr,
                                                         "test_pred": (prob >= thr).astype(int).tolist()}
    return out


def batch_plan(cfg: Config, ds, device: torch.device) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Batch sizes per architecture: the configured list, or 8, 16, ... up to the largest that fits."""
    from detectlab.fluid.train import find_max_batch

    plan, finder = {}, {}
    for arch in cfg.archs:
        if cfg.batch_sizes:
            plan[arch] = sorted(set(cfg.batch_sizes))
            continue
        prep = prep_for(cfg, arch)
        budget = int(cfg.max_memory_gb * 2**30) if cfg.max_memory_gb > 0 else None
        mb, secs, info = find_max_batch(arch, prep.size, device, cfg.max_batch, aux_logits=cfg.train.aux_logits,
                                        budget_bytes=budget)
        sizes, b = [], 8
        while b <= mb:
            sizes.append(b)
            b *= 2
        plan[arch] = sizes or [mb]
        finder[arch] = {"max_batch": mb, "seconds": secs, "device": str(device), **info}
        progress.log(f"largest batch for {arch} on {device}: {mb} ({secs:.1f} s, {info['method']})")
    return plan, finder


def check_config(cfg: Config, ds) -> None:
    """Cross-checks that need the data (the config's own fields are validated when it loads)."""
    from detectlab.fluid.model import check_weights, get_arch

    for a in cfg.archs:
        get_arch(a)
    for d in cfg.designs:
        if d not in DESIGNS:
            raise InputError(f"design '{d}'", "unknown design", "train90 or train10")
    for v in cfg.variants:
        if v not in VARIANTS:
            raise InputError(f"variant '{v}'", "unknown variant", ", ".join(VARIANTS))
    if "mask" in cfg.variants and ds.masks is None:
        raise InputError(ds.source, "the mask-supervised variant needs fluid masks, and this data set has none",
                         "MetaImage volumes with reference.mhd or a labels CSV with a mask column")
    for a in cfg.archs:  # every architecture's weights, before the first unit starts
        check_weights(a, cfg.train.weights)


def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.core.runtime import choose_device
    from detectlab.fluid import figures

    t0 = time.perf_counter()
    path = data_path(cfg, run)
    ds = read_data(path, cfg.max_images, cfg.seed)
    check_config(cfg, ds)
    subj = subjects_for(cfg, ds)
    k = len(make_folds(ds.labels, subj, cfg.folds, cfg.seed))
    progress.log(f"fluid: {len(ds)} B-scans from {ds.source} ({ds.counts()}), {k} stratified folds"
                 f"{' grouped by subject (' + str(np.unique(subj).size) + ' subjects)' if subj is not None else ''}"
                 f", selection: {cfg.selection}")
    device = choose_device(cfg.device)
    plan, finder = batch_plan(cfg, ds, device)
    cd = to_dict(cfg)
    units = []
    base_keys: dict[str, tuple] = {}
    for variant in [""] + list(cfg.variants):
        for design in cfg.designs:
            for arch in cfg.archs:
                dn = cfg.denoise or variant == "denoise"
                pk = prep_key(prep_for(cfg, arch, dn))
                base_keys.setdefault(pk, (arch, dn))
                for b in plan[arch]:
                    for f in range(k):
                        name = f"{variant + '-' if variant else ''}{design}-{arch}-bs={b}"
                        ck = ""
                        if cfg.save_checkpoints and (f == 0 or cfg.checkpoint_all_folds):
                            ck = str(run.checkpoints / (f"{name}.safetensors" if f == 0 else f"{name}-fold={f}.safetensors"))
                        units.append(Unit(f"{name}-fold={f}", fold_unit,
                                          dict(variant=variant, design=design, arch=arch, batch=b, fold=f,
                                               cfg_dict=cd, data=str(path), ckpt=ck)))
    for pk, (arch, dn) in base_keys.items():
        for design in cfg.designs:
            for f in range(k):
                units.insert(0, Unit(f"baseline-{design}-{pk}-fold={f}", baseline_unit,
                                     dict(design=design, fold=f, arch=arch, denoise=dn, cfg_dict=cd, data=str(path))))
    res = run_units(run, units, cfg.workers, cfg.ray_address, description="design x arch x batch x fold")
    metrics = summarise(cfg, res, k, len(ds))
    metrics.update({"data": ds.source, "n_images": len(ds), "counts": ds.counts(), "folds": k,
                    "grouped_by_subject": subj is not None, "selection": cfg.selection,
                    "optimistic": cfg.selection == "test", "device": str(device), "batch_finder": finder,
                    "batch_plan": plan, "masks_known": ds.masks is not None, "seconds": time.perf_counter() - t0})
    run.write_metrics(metrics)
    tables(run, cfg, metrics)
    figures.all_figures(run, metrics, roc_curves(res, metrics))
    return metrics


def roc_curves(res: dict[str, dict], metrics: dict) -> dict[str, Any]:
    """Pooled held-out (labels, probabilities) per design: every learned cell and the baselines."""
    out: dict[str, Any] = {}
    for key, r in res.items():
        if key.startswith("baseline-") or r.get("skipped"):
            continue
        name = f"{r['variant'] + '/' if r['variant'] else ''}{r['arch']} bs={r['batch']}"
        c = out.setdefault(r["design"], {"cells": {}, "baselines": {}})["cells"].setdefault(name, {"y": [], "p": []})
        c["y"] += r["test_y"]
        c["p"] += r["test_prob"]
    for key, r in res.items():
        if key.startswith("baseline-") and r["design"] in out:
            for name in BASELINES:
                c = out[r["design"]]["baselines"].setdefault(f"{name} ({r['prep']})", {"y": [], "p": []})
                c["y"] += r["test_y"]
                c["p"] += r[name]["test_prob"]
    for d in out.values():
        for group in (d["cells"], d["baselines"]):
            for c in group.values():
                c["auc"] = roc_auc(np.asarray(c["y"]), np.asarray(c["p"]))
        d["cells"] = sorted(d["cells"].items(), key=lambda kv: -np.nan_to_num(kv[1]["auc"], nan=0))
    return out


# ------------------------------------------------------------- summaries
def _ms(values) -> dict[str, float]:
    d = mean_sd(values)
    return {"mean": d["mean"], "sd": d["sd"]}


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


def pooled(rows: list[dict]) -> dict[str, float]:
    """Every held-out prediction of the rows pooled: the AUC of the probabilities, and balanced accuracy,
    sensitivity, specificity of the decisions (each fold's own threshold; 0.5 when none is recorded)."""
    y = np.concatenate([np.asarray(r["test_y"]) for r in rows])
    p = np.concatenate([np.asarray(r["test_prob"]) for r in rows])
    d = np.concatenate([np.asarray(r["test_pred"]) if "test_pred" in r else (np.asarray(r["test_prob"]) >= 0.5)
                        for r in rows]).astype(float)
    m = heldout_metrics(y, d, 0.5)
    return {"auc": roc_auc(y, p), "balanced_accuracy": m["balanced_accuracy"], "sensitivity": m["sensitivity"],
            "specificity": m["specificity"], "n": int(len(y))}


def summarise_rows(rows: list[dict], k: int) -> dict[str, Any]:
    """Mean (SD) across folds, NaN-AUC folds counted apart, and the pooled metrics of one grid cell."""
    rows = sorted(rows, key=lambda r: r["fold"])
    aucs = _finite(r["auc"] for r in rows)
    out = {"accuracy": _ms(r["accuracy"] for r in rows),
           "auc": _ms(aucs) if aucs else {"mean": float("nan"), "sd": float("nan")},
           "auc_folds": len(aucs), "folds": len(rows), "folds_planned": k,
           "balanced_accuracy": _ms(r["balanced_accuracy"] for r in rows),
           "pooled": pooled(rows), "fold_accuracy": [r["accuracy"] for r in rows],
           "fold_auc": [r["auc"] for r in rows], "fold_balanced_accuracy": [r["balanced_accuracy"] for r in rows]}
    return out


def summarise(cfg: Config, res: dict[str, dict], k: int, n_images: int) -> dict[str, Any]:
    from detectlab.fluid.model import get_arch

    out: dict[str, Any] = {"designs": {}, "baselines": {}, "skipped": [], "saliency": {}}
    if cfg.variants:
        out["variants"] = {v: {"designs": {}} for v in cfg.variants}
    cells: dict[tuple, list[dict]] = {}
    base: dict[tuple, list[dict]] = {}
    for key, r in res.items():
        if key.startswith("baseline-"):
            base.setdefault((r["design"], r["prep"]), []).append(r)
        elif r.get("skipped"):
            out["skipped"].append({k2: r[k2] for k2 in ("variant", "design", "arch", "batch", "fold", "reason")})
        else:
            cells.setdefault((r["variant"], r["design"], r["arch"], r["batch"]), []).append(r)
    for (design, pk), rows in base.items():
        for name in BASELINES:
            sub = [{"fold": r["fold"], "test_y": r["test_y"], **r[name]} for r in rows]
            out["baselines"].setdefault(design, {}).setdefault(pk, {})[name] = summarise_rows(sub, k)
    for (variant, design, arch, batch), rows in cells.items():
        tgt = out if not variant else out["variants"][variant]
        its = mean_sd(r["iterations_to_best"] for r in rows)
        e = summarise_rows(rows, k) | {
            "iterations_to_best": its["mean"], "iterations_to_best_sd": its["sd"],
            "batch": batch, "batch_ran": sorted({r["batch_ran"] for r in rows}), "params": rows[0]["params"],
            "input_size": rows[0]["input_size"], "prep": rows[0]["prep"],
            "n_train": float(np.mean([r["n_train"] for r in rows])), "n_fit": float(np.mean([r["n_fit"] for r in rows])),
            "n_val": float(np.mean([r["n_val"] for r in rows])), "n_test": float(np.mean([r["n_test"] for r in rows])),
            "inner_grouped": all(r["inner_grouped"] for r in rows), "seconds": float(sum(r["seconds"] for r in rows)),
            "images_per_s": float(np.mean([r["images_per_s"] for r in rows])), "relabelled": rows[0]["relabelled"],
            "paper_params_m": get_arch(arch).paper_params_m,
            "threshold": float(np.mean([r.get("threshold", 0.5) for r in rows]))}
        sal = [r["saliency"] for r in rows if r.get("saliency", {}).get("n", 0) > 0]
        if sal:
            n = sum(s["n"] for s in sal)
            e["saliency"] = {"n": n, "hits": sum(s["hits"] for s in sal), "share": sum(s["hits"] for s in sal) / n,
                             "chance": float(sum(s["chance"] * s["n"] for s in sal) / n)}
            if all("seg_hits" in s for s in sal):
                e["saliency"].update({"seg_hits": sum(s["seg_hits"] for s in sal),
                                      "seg_cell_hits": sum(s["seg_cell_hits"] for s in sal)})
            if all("cell_hits" in s for s in sal):
                e["saliency"].update({"cell_hits": sum(s["cell_hits"] for s in sal),
                                      "cell_share": sum(s["cell_hits"] for s in sal) / n,
                                      "cell_chance": float(sum(s["cell_chance"] * s["n"] for s in sal) / n)})
            out["saliency"].setdefault(variant or "plain", {}).setdefault(design, {})[f"{arch}-bs={batch}"] = e["saliency"]
        tgt["designs"].setdefault(design, {}).setdefault(arch, {})[str(batch)] = e
    mark_baselines(out)
    return out


def mark_baselines(out: dict[str, Any]) -> None:
    """below_baseline / best_baseline of every learned cell: its mean balanced accuracy against the best
    baseline's on the same folds and input (core.baselines.mark_below_baseline: strictly better beats it)."""
    from detectlab.core.baselines import mark_below_baseline

    groups = [("", out["designs"])] + [(v, m["designs"]) for v, m in out.get("variants", {}).items()]
    for design, by_prep in out["baselines"].items():
        rows = [{"kind": "baseline", "name": name, "input": pk, "balanced_accuracy": m["balanced_accuracy"]["mean"]}
                for pk, bl in by_prep.items() for name, m in bl.items()]
        cells = [(e, {"kind": "model", "name": f"{arch} bs={b}", "input": e["prep"],
                      "balanced_accuracy": e["balanced_accuracy"]["mean"]})
                 for _, designs in groups for arch, batches in designs.get(design, {}).items() for b, e in batches.items()]
        mark_below_baseline(rows + [r for _, r in cells], "balanced_accuracy", group_by=("input",), name_key="name")
        for e, r in cells:
            e["below_baseline"], e["best_baseline"] = r["below_baseline"], r["best_baseline"]


# ------------------------------------------------------------- tables
def _paren(d: dict) -> str:
    return fmt_mean_sd(d, 2, "paren")


def table_rows(metrics: dict, design: str, cfg: Config) -> list[dict[str, Any]]:
    """Baseline rows then learned rows (every variant) of one design's table."""
    rows = []
    for pk, bl in metrics.get("baselines", {}).get(design, {}).items():
        for name, m in bl.items():
            rows.append({"kind": "baseline", "variant": "", "batch": "", "batch_ran": "", "architecture": name,
                         "input": pk, **_cells(m), "iterations_to_best": "", "params_M": "",
                         "below_baseline": "", "paper_accuracy": "", "paper_auc": "", "_sort": (0, 0, 0)})
    groups = [("", metrics["designs"])] + [(v, m["designs"]) for v, m in metrics.get("variants", {}).items()]
    for variant, designs in groups:
        for arch, batches in designs.get(design, {}).items():
            for b, m in batches.items():
                p = PAPER.get(design, {}).get((int(b), arch)) if not variant else None
                ran = m["batch_ran"]
                rows.append({"kind": "model", "variant": variant or "plain", "batch": int(b),
                             "batch_ran": ",".join(str(v) for v in ran), "architecture": arch, "input": m["prep"],
                             **_cells(m), "iterations_to_best": round(m["iterations_to_best"], 1),
                             "params_M": round(m["params"] / 1e6, 2),
                             "below_baseline": m.get("below_baseline", ""),
                             "paper_accuracy": f"{p[0]:.2f} ({p[1]:.2f})" if p else "",
                             "paper_auc": f"{p[2]:.2f} ({p[3]:.2f})" if p else "",
                             "_sort": (1, int(b), -m["balanced_accuracy"]["mean"])})
    rows.sort(key=lambda r: r["_sort"])
    for r in rows:
        r.pop("_sort")
    return rows


def _cells(m: dict) -> dict[str, Any]:
    return {"accuracy": _paren(m["accuracy"]), "auc": _paren(m["auc"]),
            "auc_folds": f"{m['auc_folds']}/{m['folds']}", "balanced_accuracy": _paren(m["balanced_accuracy"]),
            "pooled_auc": round(m["pooled"]["auc"], 3), "pooled_bal_acc": round(m["pooled"]["balanced_accuracy"], 3)}


COLUMNS = ["kind", "variant", "batch", "batch_ran", "architecture", "input", "accuracy", "auc", "auc_folds",
           "balanced_accuracy", "pooled_auc", "pooled_bal_acc", "iterations_to_best", "params_M", "below_baseline",
           "paper_accuracy", "paper_auc"]


def tables(run: Run, cfg: Config, metrics: dict) -> None:
    names = {"train90": ("table2_train90", "Table II: held-out mean (SD) across folds, train set = 90%"),
             "train10": ("table3_train10", "Table III: held-out mean (SD) across folds, train set = 10%")}
    sel = ("model chosen on the held-out fold itself (the paper's rule): OPTIMISTIC; threshold 0.5"
           if cfg.selection == "test" else
           f"early stopping, model choice and the decision threshold (Youden's J) on {cfg.inner_val:.0%} of the "
           "training subjects, for the networks and the dark-pocket baseline alike; the held-out fold is scored once")
    skipped = sorted({f"{s['design']} {s['arch']} batch {s['batch']} ({s['reason']})" for s in metrics["skipped"]})
    for design in cfg.designs:
        if design not in metrics["designs"] and not any(design in v["designs"] for v in metrics.get("variants", {}).values()):
            continue
        name, title = names[design]
        note = (f"{metrics['n_images']} B-scans of {metrics['data']}, {metrics['folds']} stratified folds"
                f"{' grouped by subject' if metrics['grouped_by_subject'] else ''}; {sel}. Weights: {cfg.train.weights}; "
                f"{cfg.train.optimizer} lr {cfg.train.lr}, <= {cfg.train.max_epochs} epochs, early stop after > "
                f"{cfg.train.patience} checks without a lower validation loss; class weights {cfg.train.class_weights}; "
                f"BatchNorm re-estimated before each check: {cfg.train.bn_recalibrate}. auc: mean over the folds with "
                "both classes (auc_folds of all); pooled: all held-out predictions together. below_baseline: mean "
                "balanced accuracy not above the best baseline's on the same folds. batch_ran: the batch that ran. "
                "Paper columns: the published tables (RETOUCH Spectralis, 1176 B-scans, ImageNet weights, 10 folds, "
                "model chosen on the reported fold)."
                + (f" Skipped (batch larger than the training part): {'; '.join(skipped)}." if skipped else ""))
        run.write_table(name, table_rows(metrics, design, cfg), title=title, columns=COLUMNS, note=note)
    sal_rows = []
    for variant, designs in metrics.get("saliency", {}).items():
        for design, cells in designs.items():
            for cell, s in cells.items():
                sal_rows.append({"variant": variant, "design": design, "architecture": cell, "fluid_bscans": s["n"],
                                 "peak_in_mask": s["hits"], "share": round(s["share"], 3),
                                 "chance": round(s["chance"], 3), "peak_cell_has_fluid": s.get("cell_hits", ""),
                                 "cell_share": round(s["cell_share"], 3) if "cell_share" in s else "",
                                 "cell_chance": round(s["cell_chance"], 3) if "cell_chance" in s else "",
                                 "mask_head_peak_in_mask": s.get("seg_hits", ""),
                                 "mask_head_peak_cell_has_fluid": s.get("seg_cell_hits", "")})
    if sal_rows:
        run.write_table("saliency_in_mask", sal_rows, title="Grad-CAM peak inside the fluid mask (held-out fluid "
                        "B-scans)", note="Grad-CAM on the last feature map; its peak is the largest cell, at that cell's centre. share: "
                        "fluid B-scans whose peak lies on a fluid pixel of the input (chance: the share of the input "
                        "covered by fluid, where a random peak would land); cell_share: fluid B-scans whose peak cell "
                        "holds any fluid (cell_chance: the share of cells holding fluid). mask_head_*: the same for the "
                        "peak of the mask head's fluid map (mask-supervised variant).")
