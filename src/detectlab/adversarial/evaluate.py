"""`detectlab adversarial evaluate MODEL_RUN DATA`: a trained run's detector and classifiers on labelled digits.

DATA: an idx image file (its labels file beside it), a folder with an MNIST idx pair (t10k first), or a
folder of 28x28 PNGs in class subfolders 0-9 or listed in labels.csv (file,label).

With the run's fitted detectors (the steganalysis threshold and conventions, and feature squeezing's
threshold, from its metrics.json) and its models, it measures what the protocol measures: the
detectors' false-positive rate on the clean images, and on PGD images made against the run's model
(its attack settings unless overridden) the classifier accuracy, the TPR (misclassified and flagged),
flag rate, combined accuracy, undetected success, ROC AUC and TPR at 1 % / 0.1 % FPR (clean images as
negatives), beside feature squeezing and the detector that flags nothing.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detectlab.adversarial.baseline import FeatureSqueezing, trivial_scores
from detectlab.adversarial.config import MODELS, Config
from detectlab.adversarial.data import load_labelled
from detectlab.adversarial.detector import statistic_fast, to_uint8
from detectlab.adversarial.experiment import _generator, attack_images, detection, rates
from detectlab.adversarial.predict import detector_of
from detectlab.adversarial.train import load_model
from detectlab.core import progress
from detectlab.core.baselines import mark_below_baseline
from detectlab.core.config import from_dict
from detectlab.core.errors import InputError
from detectlab.core.runs import evaluation_run
from detectlab.core.units import Unit, run_units


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="both", choices=[*MODELS, "both"], help="which classifier(s) of the run [both]")
    p.add_argument("--eps", default=None, help="comma-separated PGD eps values [the run's attack.eps]")
    p.add_argument("--steps", type=int, default=None, help="PGD steps [the run's attack.steps]")
    p.add_argument("--step-size", type=float, default=None, help="PGD step size [the run's attack.step_size]")
    p.add_argument("--n", type=int, default=0, help="attack a class-stratified subset of n images [0: all]")


def _known(cls: Any, d: dict) -> dict:
    """The part of a config dict that `cls` knows (runs written by older versions carry retired keys)."""
    names = {f.name: f for f in fields(cls)}
    out = {}
    for k, v in d.items():
        if k not in names:
            continue
        default = cls().__dict__[k] if k in cls().__dict__ else None
        out[k] = _known(type(default), v) if is_dataclass(default) and isinstance(v, dict) else v
    return out


def run_config(folder: Path) -> Config:
    try:
        raw = tomllib.loads((folder / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(folder / "config.toml", f"cannot read the run's config ({e})") from None
    raw["models_from"] = ""  # its checkpoints are read from the run folder itself
    return from_dict(Config, _known(Config, raw))


def _eps_list(text: str | None, default: list[float]) -> list[float]:
    if text is None:
        return list(default)
    try:
        eps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError("--eps", f"{text!r} is not a comma-separated list of numbers", "e.g. 0.1,0.2,0.3") from None
    if not eps or any(not 0 <= e <= 1 for e in eps):
        raise InputError("--eps", f"{text!r}", "values in [0, 1]")
    return eps


def evaluate_unit(model_name: str, eps: float, cfg_dict: dict, ckpt: str, threshold: float, data: str,
                  n: int, fs_threshold: float | None) -> dict:
    """PGD at one eps against one model on the evaluation images; per image class, statistic, FS score."""
    from detectlab.core.runtime import choose_device

    cfg = from_dict(Config, cfg_dict)
    device = choose_device(cfg.device)
    model = load_model(Path(ckpt), device)
    split = load_labelled(data).subset(n, cfg.seed)
    adv, _ = attack_images(model, split.x, split.y, "pgd", eps, cfg, threshold,
                           _generator(cfg.seed, model_name, "pgd", eps))
    scored = adv if cfg.detector.quantize == "none" else to_uint8(adv, "round")
    from detectlab.adversarial.attack import predict_labels

    out = {"model": model_name, "eps": eps, "n": len(split), "linf": float((adv - split.x).abs().amax()),
           "pred": predict_labels(model, adv).tolist(),
           "stat": statistic_fast(scored, c=cfg.detector.constant, divisor=cfg.detector.divisor).tolist()}
    if fs_threshold is not None:
        out["fs"] = FeatureSqueezing(model, bits=cfg.squeeze.bits, median=tuple(cfg.squeeze.median)).score(adv).tolist()
    return out


def run(model_run: Path, data: Path, out: Path, args: argparse.Namespace) -> int:
    from detectlab.core.runs import open_run

    folder, _ = open_run(model_run)
    det = detector_of(folder)
    metrics_in = json.loads((folder / "metrics.json").read_text())
    cfg = run_config(folder)
    if getattr(args, "device", None):
        cfg.device = args.device
    if getattr(args, "steps", None) is not None:
        if args.steps < 1:
            raise InputError("--steps", f"{args.steps}", ">= 1")
        cfg.attack.steps = args.steps
    if getattr(args, "step_size", None) is not None:
        if not args.step_size > 0:
            raise InputError("--step-size", f"{args.step_size}", "> 0")
        cfg.attack.step_size = args.step_size
    # the detector of the model run, with its conventions
    cfg.detector.divisor, cfg.detector.constant = det.divisor, det.c
    cfg.detector.quantize = (metrics_in.get("detector") or {}).get("quantize", cfg.detector.quantize)
    n = int(getattr(args, "n", 0) or 0)
    if n < 0:
        raise InputError("--n", f"{n}", ">= 0")
    eps_list = _eps_list(getattr(args, "eps", None), cfg.attack.eps)
    which = list(MODELS) if getattr(args, "model", "both") == "both" else [args.model]
    which = [m for m in which if (folder / "checkpoints" / f"{m}.safetensors").exists()] or which
    for m in which:
        if not (folder / "checkpoints" / f"{m}.safetensors").exists():
            raise InputError(folder / "checkpoints" / f"{m}.safetensors", "checkpoint missing", "a finished run")
    split = load_labelled(data)
    settings = {"models": which, "eps": eps_list, "steps": cfg.attack.steps, "step_size": cfg.attack.step_size,
                "n": n, "threshold": det.threshold, "divisor": det.divisor, "quantize": cfg.detector.quantize,
                "device": cfg.device}
    fs_thr = {m: ((metrics_in.get("models") or {}).get(m, {}).get("feature_squeezing") or {}).get("threshold")
              for m in which}
    run = evaluation_run(out, "adversarial", folder, data, settings)
    try:
        progress.log(f"evaluate: {len(split)} labelled images from {data}; detector threshold {det.threshold:.6g} "
                     f"(variance / {det.divisor}); PGD {cfg.attack.steps} x {cfg.attack.step_size} at eps {eps_list}")
        cfg_dict = _cfg_dict(cfg)
        units = [Unit(f"{m}-pgd-eps={e:.3f}", evaluate_unit,
                      dict(model_name=m, eps=float(e), cfg_dict=cfg_dict, ckpt=str(folder / "checkpoints" / f"{m}.safetensors"),
                           threshold=float(det.threshold), data=str(data), n=n, fs_threshold=fs_thr[m]))
                 for m in which for e in eps_list]
        res = run_units(run, units, description="evaluate: PGD x eps")
        metrics, rows = _summarize(cfg, split, which, folder, det, fs_thr, res, n)
        metrics.update({"model_run": str(folder.resolve()), "data": str(data), "settings": settings})
        run.write_metrics(metrics)
        cols = ["model", "eps", "detector", "kind", "n", "accuracy", "auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001",
                "fpr", "flag_rate", "tpr", "combined_accuracy", "undetected_success", "below_baseline", "best_baseline"]
        run.write_table("evaluation", rows, columns=cols,
                        title=f"{folder.name} on {Path(data).name}: detectors on clean and PGD images",
                        note=f"fpr: clean images flagged (all {len(split)}); the other columns on the PGD images "
                             f"({metrics['n_attacked']} attacked). auc / tpr_at_fpr: clean images as negatives. "
                             "Operating thresholds from the model run: steganalysis "
                             f"{det.threshold:.6g}, feature squeezing {fs_thr}.")
    finally:
        run.close()
    return 0


def _cfg_dict(cfg: Config) -> dict:
    from detectlab.core.config import to_dict

    d = to_dict(cfg)
    d["models_from"] = ""  # the evaluation reads the checkpoints directly
    return d


def _summarize(cfg: Config, split, which: list[str], folder: Path, det, fs_thr: dict, res: dict, n: int):
    thr = float(det.threshold)
    clean_stat = statistic_fast(to_uint8(split.x, "round"), c=det.c, divisor=det.divisor).numpy()
    attacked = split.subset(n, cfg.seed)
    y = attacked.y.numpy()
    from detectlab.adversarial.attack import predict_labels

    metrics: dict[str, Any] = {"threshold": thr, "n_clean": len(split), "n_attacked": len(attacked),
                               "benign_fpr": float((clean_stat > thr).mean()), "models": {}}
    rows: list[dict] = []
    for m in which:
        model = load_model(folder / "checkpoints" / f"{m}.safetensors")
        clean_pred = predict_labels(model, split.x).numpy()
        fs = None
        if fs_thr[m] is not None:
            fs = FeatureSqueezing(model, bits=cfg.squeeze.bits, median=tuple(cfg.squeeze.median), threshold=fs_thr[m])
            fs_clean = fs.score(split.x).numpy()
        entry: dict[str, Any] = {"clean_accuracy": float((clean_pred == split.y.numpy()).mean()),
                                 "benign_fpr": float((clean_stat > thr).mean()), "eps": []}
        if fs is not None:
            entry["feature_squeezing_fpr"] = float((fs_clean > fs.threshold).mean())
        for r in sorted((r for r in res.values() if r["model"] == m), key=lambda r: r["eps"]):
            pred, stat = np.asarray(r["pred"]), np.asarray(r["stat"])
            st = {**rates(y, pred, stat > thr), **detection(clean_stat, stat), "fpr": entry["benign_fpr"]}
            entry["eps"].append(r["eps"])
            for k, v in st.items():
                entry.setdefault(k, []).append(v)
            base = {"model": m, "eps": r["eps"], "n": r["n"]}
            rows.append({**base, "detector": "steganalysis", "kind": "detector", **st})
            if fs is not None:
                fsc = np.asarray(r["fs"])
                rows.append({**base, "detector": "feature_squeezing", "kind": "baseline",
                             **rates(y, pred, fsc > fs.threshold), **detection(fs_clean, fsc),
                             "fpr": entry["feature_squeezing_fpr"]})
            triv = trivial_scores(len(pred))
            rows.append({**base, "detector": "flags_nothing", "kind": "baseline", **rates(y, pred, triv > 0.5),
                         **detection(trivial_scores(len(clean_stat)), triv), "fpr": 0.0})
        metrics["models"][m] = entry
    mark_below_baseline(rows, "auc", group_by=("model", "eps"), name_key="detector")
    for m, e in metrics["models"].items():
        e["below_baseline"] = [r["below_baseline"] for r in rows if r["model"] == m and r["kind"] == "detector"]
    return metrics, rows
