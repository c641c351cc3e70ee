"""The paper's protocol: eps sweep of PGD against the natural and the secret model, the detector's TPR,
the classifiers' accuracy and their combination (Table II, Figs. 2-4), plus FGSM and an adaptive
attacker who knows the detector.

Definitions (DESIGN.md, following the authors' code):
- accuracy: classifier accuracy on the attacked test images;
- tpr (the paper's Table II): images both misclassified and flagged, over all test images;
- flag_rate: flagged attacked images over all attacked images (the plain detection rate);
- combined_accuracy: images flagged or correctly classified, over all test images;
- undetected_success: misclassified and not flagged, i.e. the attacker's real success rate;
- benign_fpr: clean test images flagged (the threshold gives 0 on the training images by construction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detectlab.adversarial.data import Split, load_mnist
from detectlab.adversarial.detector import SteganalysisDetector, statistic_batched
from detectlab.core import progress
from detectlab.core.config import BaseConfig, from_dict, resolve_data, to_dict
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units

DATA_SUBDIR = "mnist"
MODELS = ("natural", "secret")
ATTACKS = ("pgd", "fgsm", "adaptive")

#: The paper's Table II (TPR, over all 10,000 test images), for side-by-side tables.
PAPER_EPS = [0.01, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.33, 0.35, 0.37, 0.40, 0.42, 0.45, 0.47, 0.50]
PAPER_TPR = {
    "natural": [0.0, 0.0, 0.529, 0.982, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "secret": [0.0, 0.0, 0.0, 0.001, 0.009, 0.025, 0.047, 0.137, 0.320, 0.574, 0.848, 0.937, 0.985, 0.995, 0.999],
}
HIST_BINS = np.linspace(0, 4, 81)  # statistic / threshold


@dataclass
class TrainConfig:
    epochs: int = 2
    iterations: int = 0  # > 0 overrides epochs
    batch_size: int = 50
    lr: float = 1e-4
    n_train: int = 0  # 0: all training images


@dataclass
class AdvTrainConfig(TrainConfig):
    eps: float = 0.3
    steps: int = 40
    step_size: float = 0.01
    init_from_natural: bool = False
    eps_warmup: float = 0.0  # fraction of the iterations over which eps ramps up linearly from 0


@dataclass
class AttackConfig:
    eps: list[float] = field(default_factory=lambda: [round(0.01 * i, 2) for i in range(1, 51)])
    steps: int = 100
    step_size: float = 0.01
    n_test: int = 0  # 0: the whole test set
    batch_size: int = 1000


@dataclass
class AdaptiveConfig:
    enabled: bool = True
    weight: float = 10.0  # weight of relu(statistic / threshold - margin) against the cross-entropy
    margin: float = 0.9
    eps: list[float] = field(default_factory=list)  # empty: the attack's eps
    steps: int = 0  # 0: the attack's steps


@dataclass
class Config(BaseConfig):
    models: list[str] = field(default_factory=lambda: list(MODELS))
    train: TrainConfig = field(default_factory=TrainConfig)
    adv_train: AdvTrainConfig = field(default_factory=AdvTrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    fgsm: bool = True
    threshold_images: int = 0  # 0: every training image
    hist_eps: list[float] = field(default_factory=lambda: [0.1, 0.3])


def load_data(cfg: Config) -> tuple[Split, Split]:
    """(train, test): MNIST from the data path, or the built-in digits."""
    from detectlab.adversarial.synthetic import builtin_digits

    path = resolve_data(cfg.data, DATA_SUBDIR)
    if path is None:
        train, test = builtin_digits(seed=0)
    else:
        train, test = load_mnist(path, "train"), load_mnist(path, "test")
    return train.subset(cfg.train.n_train, cfg.seed), test


def fit_detector(cfg: Config, train: Split) -> SteganalysisDetector:
    return SteganalysisDetector().fit(train.subset(cfg.threshold_images, cfg.seed).x)


def _rates(y: torch.Tensor, pred: torch.Tensor, flagged: torch.Tensor) -> dict[str, float]:
    correct = pred == y
    return {
        "accuracy": float(correct.float().mean()),
        "tpr": float((~correct & flagged).float().mean()),
        "flag_rate": float(flagged.float().mean()),
        "combined_accuracy": float((flagged | correct).float().mean()),
        "undetected_success": float((~correct & ~flagged).float().mean()),
    }


def eval_unit(model_name: str, attack: str, eps: float, cfg_dict: dict, ckpt: str, threshold: float) -> dict:
    """One unit: attack the test set at one eps, then classify and detect."""
    from detectlab.adversarial.attack import adaptive_pgd, fgsm, pgd, predict_labels
    from detectlab.adversarial.train import load_model
    from detectlab.core.runtime import choose_device, seed_everything

    cfg = from_dict(Config, cfg_dict)
    device = choose_device(cfg.device)
    model = load_model(Path(ckpt), device)
    _, test = load_data(cfg)
    test = test.subset(cfg.attack.n_test, cfg.seed)
    g = seed_everything(cfg.seed * 1000 + int(round(eps * 1000)))
    a = cfg.attack
    if attack == "pgd":
        adv = pgd(model, test.x, test.y, eps, a.step_size, a.steps, True, a.batch_size, g)
    elif attack == "fgsm":
        adv = fgsm(model, test.x, test.y, eps, a.batch_size)
    elif attack == "adaptive":
        adv = adaptive_pgd(model, test.x, test.y, eps, threshold, cfg.adaptive.weight, a.step_size,
                           cfg.adaptive.steps or a.steps, a.batch_size, g, cfg.adaptive.margin)
    else:
        raise ValueError(f"unknown attack {attack}")
    linf = float((adv - test.x).abs().max())
    assert linf <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1, "attack left the L-inf ball or [0,1]"
    pred = predict_labels(model, adv)
    stat = statistic_batched(adv)
    out = {"model": model_name, "attack": attack, "eps": eps, "n": len(test), "linf": linf,
           **_rates(test.y, pred, stat > threshold)}
    if any(abs(eps - h) < 1e-9 for h in cfg.hist_eps):
        out["hist"] = np.histogram((stat / threshold).numpy(), HIST_BINS)[0].tolist()
    return out


def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.adversarial import figures
    from detectlab.adversarial.attack import predict_labels
    from detectlab.adversarial.train import load_model, train_both

    for m in cfg.models:
        if m not in MODELS:
            raise ValueError(f"unknown model '{m}' (natural or secret)")
    trained = train_both(cfg, run)
    train, test_full = load_data(cfg)
    det = fit_detector(cfg, train)
    thr = float(det.threshold)
    test = test_full.subset(cfg.attack.n_test, cfg.seed)
    benign_stat = statistic_batched(test.x)
    train_stat = statistic_batched(train.subset(cfg.threshold_images, cfg.seed).x)
    benign_fpr = float((benign_stat > thr).float().mean())
    progress.log(f"detector threshold {thr:.6g} (max over {det.n_fit} training images); "
                 f"benign false-positive rate on {len(test)} test images: {benign_fpr:.4f}")

    cd = to_dict(cfg)
    units = []
    for m in cfg.models:
        ck = str(run.checkpoints / f"{m}.safetensors")
        plan = [("pgd", cfg.attack.eps)]
        if cfg.fgsm:
            plan.append(("fgsm", cfg.attack.eps))
        if cfg.adaptive.enabled:
            plan.append(("adaptive", cfg.adaptive.eps or cfg.attack.eps))
        for attack, eps_list in plan:
            for eps in eps_list:
                units.append(Unit(f"{m}-{attack}-eps={eps:.3f}", eval_unit,
                                  dict(model_name=m, attack=attack, eps=float(eps), cfg_dict=cd, ckpt=ck, threshold=thr)))
    res = run_units(run, units, cfg.workers, cfg.ray_address, description="attack x eps")

    metrics: dict[str, Any] = {"threshold": thr, "threshold_images": det.n_fit,
                               "train_fpr": float((train_stat > thr).float().mean()), "data": test.source,
                               "n_test": len(test), "detector_fit": det.fit_stats, "models": {}}
    rows = []
    for m in cfg.models:
        model = load_model(run.checkpoints / f"{m}.safetensors")
        clean_pred = predict_labels(model, test.x)
        clean = _rates(test.y, clean_pred, benign_stat > thr)
        entry: dict[str, Any] = {"clean_accuracy": clean["accuracy"], "benign_fpr": benign_fpr,
                                 "clean_combined_accuracy": clean["combined_accuracy"],
                                 "train_seconds": trained[m]["train_seconds"], "attacks": {}}
        for attack in ATTACKS:
            rs = sorted((r for r in res.values() if r["model"] == m and r["attack"] == attack), key=lambda r: r["eps"])
            if not rs:
                continue
            series = {k: [r[k] for r in rs] for k in ("eps", "accuracy", "tpr", "flag_rate", "combined_accuracy",
                                                      "undetected_success")}
            if attack == "pgd":
                entry.update(series)
            entry["attacks"][attack] = series
            rows += [{"model": m, "attack": attack, "eps": r["eps"], "accuracy": r["accuracy"], "tpr": r["tpr"],
                      "flag_rate": r["flag_rate"], "combined_accuracy": r["combined_accuracy"],
                      "undetected_success": r["undetected_success"]} for r in rs]
        metrics["models"][m] = entry
    run.write_metrics(metrics)

    _tables(run, cfg, metrics, rows)
    figures.all_figures(run, metrics, res, train_stat / thr, benign_stat / thr, HIST_BINS)
    progress.log("adversarial: " + "; ".join(
        f"{m}: clean acc {metrics['models'][m]['clean_accuracy']:.3f}, PGD TPR at eps "
        f"{metrics['models'][m]['eps'][-1]:.2f} = {metrics['models'][m]['tpr'][-1]:.3f}" for m in cfg.models))
    return metrics


def _tables(run: Run, cfg: Config, metrics: dict, rows: list[dict]) -> None:
    eps = metrics["models"][cfg.models[0]]["eps"]
    t2 = []
    for m in cfg.models:
        e = metrics["models"][m]
        t2.append({"model": f"{m} (ours)", **{f"{x:.2f}": v for x, v in zip(e["eps"], e["tpr"])}})
    shown = [x for x in eps if any(abs(x - p) < 1e-9 for p in PAPER_EPS)]
    for m in cfg.models:
        paper = dict(zip(PAPER_EPS, PAPER_TPR[m]))
        t2.append({"model": f"{m} (paper)", **{f"{x:.2f}": next((v for p, v in paper.items() if abs(p - x) < 1e-9), "")
                                                for x in shown}})
    cols = ["model"] + [f"{x:.2f}" for x in eps]
    run.write_table("table2_tpr", t2, title="Table II: detector TPR (misclassified and flagged, over all test images)",
                    columns=cols,
                    note=f"PGD, {cfg.attack.steps} steps of {cfg.attack.step_size}, random start, "
                         f"{metrics['n_test']} test images of {metrics['data']}; threshold = max over "
                         f"{metrics['threshold_images']} training images; benign FPR on the test images "
                         f"{metrics['models'][cfg.models[0]]['benign_fpr']:.4f}. Paper rows: the published Table II "
                         f"(full MNIST test set, the MNIST-challenge models).")
    run.write_table("results", rows, title="All attacks: accuracy, TPR, flag rate, combined accuracy",
                    note="attacks: pgd (the paper's), fgsm, adaptive (projected gradient ascent on CE minus "
                         f"{cfg.adaptive.weight} x relu(statistic/threshold - {cfg.adaptive.margin}), keeping the "
                         "first misclassified iterate under the threshold: an attacker who knows the detector). "
                         "undetected_success = misclassified and not flagged.")
