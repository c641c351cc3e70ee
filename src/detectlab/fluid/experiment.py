"""The paper's protocol: designs (train 90% / validate 10%, and the reverse) x architectures x batch sizes
x stratified folds, each fold a unit of work; Tables II and III, Figs. 2-4.

Per fold (one unit): a fresh model, optimizer and early-stopping state; training on the design's training
part and validation on the rest; the fold's accuracy and AUC are those of the best-accuracy check on the
validation part (the paper's protocol: the validation set both stops training and is reported).

Splits: stratified k-fold; grouped by subject when subjects are known (a subject is never on both sides).
With fewer subjects than folds the grouped split uses one fold per subject (logged and recorded in
metrics.json as ``folds``). Design train90 trains on k-1 folds and validates on one; train10 trains on one
fold and validates on the other k-1.

Beyond the paper: ``variants = ["augment", "denoise"]`` re-run the same grid with simple augmentation
(flip, shift, contrast) or a 3x3 median denoising of every input, reported in the same table format.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detectlab.core import progress
from detectlab.core.config import BaseConfig, from_dict, resolve_data, to_dict
from detectlab.core.errors import InputError
from detectlab.core.metrics import fmt_mean_sd, mean_sd
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units

DATA_SUBDIR = "oct"
DESIGNS = ("train90", "train10")
VARIANTS = ("augment", "denoise")

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


@dataclass
class TrainConfig:
    lr: float = 1e-4
    momentum: float = 0.9
    max_epochs: int = 10
    checks_per_epoch: int = 2
    patience: int = 5  # stop after more than `patience` checks without a lower validation loss
    eval_batch: int = 64
    weights: str = "none"  # "imagenet" (local torch hub cache), a file, or "none" (from scratch)
    aux_logits: bool = False  # keep googlenet/inception_v3 auxiliary heads (the MATLAB models have none)
    aux_weight: float = 0.3


@dataclass
class SyntheticConfig:
    volumes: int = 6
    slices: int = 16
    height: int = 128
    width: int = 128
    fluid_fraction: float = 0.6


@dataclass
class Config(BaseConfig):
    archs: list[str] = field(default_factory=lambda: ["vgg16", "alexnet", "inception_resnet_v2", "inception_v3",
                                                      "xception", "densenet201", "resnet18", "googlenet",
                                                      "mobilenet_v2", "squeezenet"])
    designs: list[str] = field(default_factory=lambda: list(DESIGNS))
    batch_sizes: list[int] = field(default_factory=list)  # empty: 8, 16, ... up to the largest that fits
    max_batch: int = 64  # cap of the largest-batch search
    folds: int = 10
    group_by_subject: bool = True
    input_size: int = 0  # 0: each architecture's Table I size (224/227/299)
    resize: int = 0  # > 0: scale the shorter side to this before the centre crop (0: crop only, the paper)
    augment: bool = False
    denoise: bool = False
    variants: list[str] = field(default_factory=list)  # extra grids beyond the paper: "augment", "denoise"
    max_images: int = 0  # > 0: a stratified subset (quick looks)
    save_checkpoints: bool = True  # fold 0 of every design x arch x batch
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


def input_size_for(cfg: Config, arch: str) -> int:
    from detectlab.fluid.model import get_arch

    a = get_arch(arch)
    return max(cfg.input_size, a.min_size) if cfg.input_size > 0 else a.input_size


def data_path(cfg: Config, run: Run | None) -> Path:
    """The data folder: the configured path, or the synthetic volumes (written once under the run)."""
    from detectlab.fluid.synthetic import generate

    p = resolve_data(cfg.data, DATA_SUBDIR)
    if p is not None:
        return p
    s = cfg.synthetic
    root = run.path("data", "synthetic") if run is not None else Path("runs/fluid-synthetic")
    return generate(root, s.volumes, s.slices, s.height, s.width, s.fluid_fraction, seed=cfg.seed)


_CACHE: dict[str, Any] = {}


def read_data(path: Path, max_images: int = 0, seed: int = 0):
    """load_dataset, cached per process (units of one run share it), optional stratified subset."""
    from detectlab.fluid.data import BScans, load_dataset

    key = f"{Path(path).resolve()}|{max_images}|{seed}"
    if key not in _CACHE:
        ds = load_dataset(Path(path))
        if 0 < max_images < len(ds):
            from sklearn.model_selection import train_test_split

            idx, _ = train_test_split(np.arange(len(ds)), train_size=max_images, random_state=seed,
                                      stratify=ds.labels)
            idx = np.sort(idx)
            ds = BScans([ds.images[i] for i in idx], ds.labels[idx], ds.subjects[idx],
                        [ds.names[i] for i in idx], ds.source, ds.groups_known)
        _CACHE.clear()
        _CACHE[key] = ds
    return _CACHE[key]


def load_data(cfg: Config, run: Run | None = None):
    return read_data(data_path(cfg, run), cfg.max_images, cfg.seed)


def make_folds(labels: np.ndarray, subjects: np.ndarray | None, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (grouped when subjects are given; one fold per subject if fewer than k)."""
    from detectlab.core.splits import stratified_kfold

    if subjects is not None:
        k = min(k, np.unique(subjects).size)
    return stratified_kfold(labels, k, seed, subjects)


def design_split(design: str, fold: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: train90 trains on k-1 folds, train10 on one fold."""
    rest, one = fold
    if design == "train90":
        return rest, one
    if design == "train10":
        return one, rest
    raise InputError(f"design '{design}'", "unknown design", "train90 or train10")


def subjects_for(cfg: Config, ds) -> np.ndarray | None:
    return ds.subjects if cfg.group_by_subject and ds.groups_known else None


def fold_unit(variant: str, design: str, arch: str, batch: int, fold: int, cfg_dict: dict, data: str,
              ckpt: str = "") -> dict[str, Any]:
    """One unit: train a fresh model on one fold of one design, return its best validation metrics."""
    from detectlab.core.checkpoints import save_checkpoint
    from detectlab.core.runtime import choose_device, seed_everything
    from detectlab.fluid.data import to_tensor
    from detectlab.fluid.model import build, count_params
    from detectlab.fluid.train import SYSTEM, fit, model_config

    cfg = from_dict(Config, cfg_dict)
    augment = cfg.augment or variant == "augment"
    denoise = cfg.denoise or variant == "denoise"
    ds = read_data(Path(data), cfg.max_images, cfg.seed)
    folds = make_folds(ds.labels, subjects_for(cfg, ds), cfg.folds, cfg.seed)
    tr, va = design_split(design, folds[fold])
    size = input_size_for(cfg, arch)
    x = to_tensor([ds.images[i] for i in np.concatenate([tr, va])], size, cfg.resize, denoise)
    y = torch.from_numpy(ds.labels[np.concatenate([tr, va])])
    ntr = len(tr)
    device = choose_device(cfg.device)
    # fresh model, optimizer and early stopping for every fold, seeded by the fold
    g = seed_everything(cfg.seed * 7919 + fold)
    model = build(arch, cfg.train.weights, cfg.train.aux_logits)
    res = fit(model, x[:ntr], y[:ntr], x[ntr:], y[ntr:], cfg.train, batch, device, g, augment,
              log_prefix=f"{variant or 'paper'} {design} {arch} bs={batch} fold {fold}")
    if ckpt:
        model.load_state_dict(res.state)
        mc = model_config(cfg, arch) | {"denoise": denoise}
        save_checkpoint(ckpt, model, SYSTEM, mc, val_accuracy=res.best_accuracy, design=design, fold=fold,
                        batch=batch, variant=variant)
    return {"variant": variant, "design": design, "arch": arch, "batch": batch, "fold": fold,
            "accuracy": res.best_accuracy, "auc": res.best_auc, "iterations_to_best": res.iterations_to_best,
            "iterations": res.iterations, "epochs": res.epochs, "stopped_early": res.stopped_early,
            "n_train": int(ntr), "n_val": int(len(va)), "params": count_params(model), "input_size": size,
            "seconds": res.seconds, "images_per_s": res.images_per_s, "checks": res.checks}


def batch_plan(cfg: Config, ds, device: torch.device) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Batch sizes per architecture: the configured list, or 8, 16, ... up to the largest that fits."""
    from detectlab.fluid.train import find_max_batch

    plan, finder = {}, {}
    for arch in cfg.archs:
        if cfg.batch_sizes:
            plan[arch] = sorted(set(cfg.batch_sizes))
            continue
        mb, secs = find_max_batch(arch, input_size_for(cfg, arch), device, cfg.max_batch,
                                  aux_logits=cfg.train.aux_logits)
        sizes, b = [], 8
        while b <= mb:
            sizes.append(b)
            b *= 2
        plan[arch] = sizes or [mb]
        finder[arch] = {"max_batch": mb, "seconds": secs, "device": str(device)}
        progress.log(f"largest batch for {arch} on {device}: {mb} ({secs:.1f} s)")
    return plan, finder


def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.core.runtime import choose_device
    from detectlab.fluid import figures
    from detectlab.fluid.model import get_arch

    for a in cfg.archs:
        get_arch(a)
    for d in cfg.designs:
        if d not in DESIGNS:
            raise InputError(f"design '{d}'", "unknown design", "train90 or train10")
    for v in cfg.variants:
        if v not in VARIANTS:
            raise InputError(f"variant '{v}'", "unknown variant", "augment or denoise")
    t0 = time.perf_counter()
    path = data_path(cfg, run)
    ds = read_data(path, cfg.max_images, cfg.seed)
    subj = subjects_for(cfg, ds)
    folds = make_folds(ds.labels, subj, cfg.folds, cfg.seed)
    k = len(folds)
    progress.log(f"fluid: {len(ds)} B-scans from {ds.source} ({ds.counts()}), {k} stratified folds"
                 f"{' grouped by subject (' + str(np.unique(subj).size) + ' subjects)' if subj is not None else ''}")
    device = choose_device(cfg.device)
    plan, finder = batch_plan(cfg, ds, device)
    cd = to_dict(cfg)
    units = []
    for variant in [""] + list(cfg.variants):
        for design in cfg.designs:
            for arch in cfg.archs:
                for b in plan[arch]:
                    for f in range(k):
                        name = f"{variant + '-' if variant else ''}{design}-{arch}-bs={b}"
                        ck = str(run.checkpoints / f"{name}.safetensors") if cfg.save_checkpoints and f == 0 else ""
                        units.append(Unit(f"{name}-fold={f}", fold_unit,
                                          dict(variant=variant, design=design, arch=arch, batch=b, fold=f,
                                               cfg_dict=cd, data=str(path), ckpt=ck)))
    res = run_units(run, units, cfg.workers, cfg.ray_address, description="design x arch x batch x fold")
    metrics = summarise(cfg, res, plan, k)
    metrics.update({"data": ds.source, "n_images": len(ds), "counts": ds.counts(), "folds": k,
                    "grouped_by_subject": subj is not None, "device": str(device), "batch_finder": finder,
                    "seconds": time.perf_counter() - t0})
    run.write_metrics(metrics)
    tables(run, cfg, metrics)
    figures.all_figures(run, metrics)
    return metrics


def summarise(cfg: Config, res: dict[str, dict], plan: dict[str, list[int]], k: int) -> dict[str, Any]:
    out: dict[str, Any] = {"designs": {}}
    if cfg.variants:
        out["variants"] = {v: {"designs": {}} for v in cfg.variants}
    for r in res.values():
        tgt = out if not r["variant"] else out["variants"][r["variant"]]
        tgt["designs"].setdefault(r["design"], {}).setdefault(r["arch"], {}).setdefault(str(r["batch"]), []).append(r)
    for tgt in [out] + list(out.get("variants", {}).values()):
        for design, archs in tgt["designs"].items():
            for arch, batches in archs.items():
                for b, rows in batches.items():
                    its = mean_sd(r["iterations_to_best"] for r in rows)
                    batches[b] = {"accuracy": _ms(r["accuracy"] for r in rows),
                                  "auc": _ms(r["auc"] for r in rows),
                                  "iterations_to_best": its["mean"], "iterations_to_best_sd": its["sd"],
                                  "params": rows[0]["params"], "input_size": rows[0]["input_size"],
                                  "folds": len(rows), "n_train": float(np.mean([r["n_train"] for r in rows])),
                                  "n_val": float(np.mean([r["n_val"] for r in rows])),
                                  "seconds": float(sum(r["seconds"] for r in rows)),
                                  "images_per_s": float(np.mean([r["images_per_s"] for r in rows])),
                                  "fold_accuracy": [r["accuracy"] for r in sorted(rows, key=lambda r: r["fold"])]}
    return out


def _ms(values) -> dict[str, float]:
    d = mean_sd(values)
    return {"mean": d["mean"], "sd": d["sd"]}


def table_rows(design_metrics: dict, design: str) -> list[dict[str, Any]]:
    rows = []
    for arch, batches in design_metrics.items():
        for b, m in batches.items():
            p = PAPER.get(design, {}).get((int(b), arch))
            rows.append({"batch": int(b), "architecture": arch,
                         "accuracy": fmt_mean_sd(m["accuracy"], 2, "paren"), "auc": fmt_mean_sd(m["auc"], 2, "paren"),
                         "iterations_to_best": round(m["iterations_to_best"], 1),
                         "params_M": round(m["params"] / 1e6, 2), "input": m["input_size"], "folds": m["folds"],
                         "paper_accuracy": f"{p[0]:.2f} ({p[1]:.2f})" if p else "",
                         "paper_auc": f"{p[2]:.2f} ({p[3]:.2f})" if p else "",
                         "_acc": m["accuracy"]["mean"]})
    rows.sort(key=lambda r: (r["batch"], -(r["_acc"] if np.isfinite(r["_acc"]) else -1)))
    for r in rows:
        r.pop("_acc")
    return rows


def tables(run: Run, cfg: Config, metrics: dict) -> None:
    cols = ["batch", "architecture", "accuracy", "auc", "iterations_to_best", "params_M", "input", "folds",
            "paper_accuracy", "paper_auc"]
    names = {"train90": ("table2_train90", "Table II: mean (SD) accuracy, AUC across folds, train set = 90%"),
             "train10": ("table3_train10", "Table III: mean (SD) accuracy, AUC across folds, train set = 10%")}
    note = (f"{metrics['n_images']} B-scans of {metrics['data']}, {metrics['folds']} stratified folds"
            f"{' grouped by subject' if metrics['grouped_by_subject'] else ''}; weights: {cfg.train.weights}; "
            f"SGD lr {cfg.train.lr} momentum {cfg.train.momentum}, <= {cfg.train.max_epochs} epochs, early stop "
            f"after > {cfg.train.patience} checks without a lower validation loss. Paper columns: the published "
            "tables (RETOUCH Spectralis, 1176 B-scans, ImageNet weights, 10 folds).")
    for design, dm in metrics["designs"].items():
        name, title = names[design]
        run.write_table(name, table_rows(dm, design), title=title, columns=cols, note=note)
    for v, vm in metrics.get("variants", {}).items():
        for design, dm in vm["designs"].items():
            name, title = names[design]
            run.write_table(f"{name}_{v}", table_rows(dm, design), title=f"{title} ({v}, beyond the paper)",
                            columns=cols, note=note)
