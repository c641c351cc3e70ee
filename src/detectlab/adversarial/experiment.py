"""The paper's protocol: eps sweep of PGD against the natural and the secret model, the detector's TPR,
the classifiers' accuracy and their combination (Table II, Figs. 2-4), the detector's ROC, the peer
detector (feature squeezing) and the trivial one on the same images, and stronger attacks: FGSM,
APGD-CE, CW-L2 and the adaptive attacker who knows the detector.

Definitions (DESIGN.md, following the authors' code); every attacked image is first quantised to 8 bits
(`detector.quantize`), and the classifier and both detectors read that image:
- accuracy: classifier accuracy on the attacked test images;
- tpr (the paper's Table II): images both misclassified and flagged, over all attacked test images;
- flag_rate: flagged attacked images over all attacked images (the plain detection rate);
- combined_accuracy: images flagged or correctly classified, over all attacked images;
- undetected_success: misclassified and not flagged, i.e. the attacker's real success rate;
- auc, tpr_at_fpr_0.01 / 0.001: the ROC of the detector's score with the clean test images
  (`n_benign`, default all 10,000) as negatives and all attacked images as positives;
- benign_fpr: clean test images flagged at the operating threshold.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detectlab.adversarial.baseline import FeatureSqueezing, trivial_scores
from detectlab.adversarial.config import ADAPTIVE_VARIANTS, ATTACKS, Config
from detectlab.adversarial.data import Split, load_data
from detectlab.adversarial.detector import (THRESHOLDS, roc_auc, roc_curve, statistic_fast, to_uint8,
                                            tpr_at_fpr)
from detectlab.adversarial.train import fit_detector, fit_squeezers, load_model, squeezer_record, train_both
from detectlab.core import progress
from detectlab.core.baselines import mark_below_baseline
from detectlab.core.config import from_dict, to_dict
from detectlab.core.runs import Run
from detectlab.core.runtime import generator
from detectlab.core.units import Unit, run_units

#: The paper's Table II (TPR, over all 10,000 test images), for side-by-side tables.
PAPER_EPS = [0.01, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.33, 0.35, 0.37, 0.40, 0.42, 0.45, 0.47, 0.50]
PAPER_TPR = {
    "natural": [0.0, 0.0, 0.529, 0.982, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "secret": [0.0, 0.0, 0.0, 0.001, 0.009, 0.025, 0.047, 0.137, 0.320, 0.574, 0.848, 0.937, 0.985, 0.995, 0.999],
}
#: the paper's Fig. 3/4 markers: 50 % TPR and perfect separation (combined accuracy 1)
PAPER_MARKERS = {"natural": {"eps_perfect_separation": 0.17}, "secret": {"eps_perfect_separation": 0.31}}
FPRS = (0.01, 0.001)
HIST_BINS = np.linspace(0, 4, 81)  # statistic / threshold
DETECTORS = ("steganalysis", "feature_squeezing", "flags_nothing")


def _generator(seed: int, model: str, attack: str, eps: float) -> torch.Generator:
    """A CPU generator per unit: attack.uniform_noise draws on it and moves the noise to the data, so the
    random starts are the same on a CPU and a GPU."""
    key = (seed * 1_000_003 + ATTACKS.index(attack) * 10_007 + int(round(eps * 1000)) * 7
           + (0 if model == "natural" else 1))
    return generator("cpu", key % (2 ** 63))


def attack_images(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float,
                  cfg: Config, threshold: float, generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
    """Attack x and return (the delivered images in [0, 1], on 8-bit levels unless quantize = 'none'; info)."""
    from detectlab.adversarial import attack as atk

    a, q = cfg.attack, cfg.detector.quantize
    info: dict[str, Any] = {}
    if attack == "pgd":
        adv = atk.pgd(model, x, y, eps, a.step_size, a.steps, a.random_start, a.batch_size, generator)
    elif attack == "fgsm":
        adv = atk.fgsm(model, x, y, eps, a.batch_size)
    elif attack == "apgd":
        adv = atk.apgd(model, x, y, eps, a.apgd_steps, seed=int(generator.initial_seed() % 2 ** 31) if generator
                       else 0, batch_size=a.batch_size)
    elif attack == "cw":
        adv = atk.cw_l2(model, x, y, c=a.cw_c, steps=a.cw_steps, lr=a.cw_lr, batch_size=a.batch_size)
    elif attack == "adaptive":
        ad = cfg.adaptive
        res = atk.adaptive_attack(model, x, y, eps, threshold, weight=ad.weight, margin=ad.margin,
                                  alpha=ad.step_size or a.step_size, steps=ad.steps or a.steps,
                                  variants=ad.variants, restarts=ad.restarts, restart_radius=ad.restart_radius,
                                  quantization=q,
                                  c=cfg.detector.constant, divisor=cfg.detector.divisor,
                                  batch_size=a.batch_size, generator=generator)
        info["variant"] = res.variant.tolist()
        return res.x, info  # already delivered
    else:
        raise ValueError(f"unknown attack {attack}")
    adv = adv.detach()
    if attack != "cw":
        linf = float((adv - x).abs().max()) if len(x) else 0.0
        if linf > eps + 1e-5 or adv.min() < 0 or adv.max() > 1:
            raise RuntimeError(f"{attack} left the L-inf ball ({linf} > {eps}) or [0, 1]")
    if q == "none":
        return adv, info
    return atk.deliver(adv, x, None if attack == "cw" else eps, q).float().div_(255.0), info


def _scores(model: torch.nn.Module, xf: torch.Tensor, cfg: Config, fs: FeatureSqueezing | None) -> dict:
    """Per image: the class, the statistic (read from 8-bit levels unless quantize = 'none'), the FS score."""
    from detectlab.adversarial.attack import predict_labels

    scored = xf if cfg.detector.quantize == "none" else to_uint8(xf, "round")
    out = {"pred": predict_labels(model, xf).tolist(),
           "stat": statistic_fast(scored, c=cfg.detector.constant, divisor=cfg.detector.divisor).tolist()}
    if fs is not None:
        out["fs"] = fs.score(xf).tolist()
    return out


def _squeezer(model: torch.nn.Module, cfg: Config) -> FeatureSqueezing | None:
    s = cfg.squeeze
    return FeatureSqueezing(model, bits=s.bits, median=tuple(s.median), batch_size=cfg.attack.batch_size) \
        if s.enabled else None


def eval_unit(model_name: str, attack: str, eps: float, cfg_dict: dict, ckpt: str, threshold: float) -> dict:
    """One unit: attack the test subset at one eps; per image the class, the statistic and the FS score."""
    from detectlab.core.runtime import choose_device

    cfg = from_dict(Config, cfg_dict)
    device = choose_device(cfg.device)
    model = load_model(Path(ckpt), device)
    _, test = load_data(cfg)
    test = test.subset(cfg.attack.n_test, cfg.seed)
    t0 = time.perf_counter()
    adv, info = attack_images(model, test.x, test.y, attack, eps, cfg, threshold,
                              _generator(cfg.seed, model_name, attack, eps))
    seconds = time.perf_counter() - t0
    delta = adv - test.x
    out = {"model": model_name, "attack": attack, "eps": eps if attack != "cw" else None, "n": len(test),
           "linf": float(delta.abs().amax()) if len(test) else 0.0,
           "l2_mean": float(delta.flatten(1).norm(dim=1).mean()) if len(test) else 0.0,
           "attack_seconds": seconds, **_scores(model, adv, cfg, _squeezer(model, cfg)), **info}
    return out


# -------------------------------------------------------------------------------------------- metrics


def rates(y: np.ndarray, pred: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    correct = pred == y
    return {
        "accuracy": float(correct.mean()),
        "tpr": float((~correct & flagged).mean()),
        "flag_rate": float(flagged.mean()),
        "combined_accuracy": float((flagged | correct).mean()),
        "undetected_success": float((~correct & ~flagged).mean()),
    }


def detection(neg: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    out = {"auc": roc_auc(neg, pos)}
    for f in FPRS:
        r = tpr_at_fpr(neg, pos, f)
        out[f"tpr_at_fpr_{f:g}"] = r["tpr"]
        out[f"fpr_reached_{f:g}"] = r["fpr"]
    return out


def eps_markers(eps: list[float], tpr: list[float], combined: list[float], clean_combined: float = 1.0
                ) -> dict[str, float | None]:
    """The paper's vertical lines: the eps of 50 % TPR (linear interpolation between sweep points) and
    the smallest sweep eps from which the combined accuracy is 1 at every larger eps of the sweep."""
    pts = sorted(zip(eps, tpr, combined))
    tpr50 = None
    for (e0, t0, _), (e1, t1, _) in zip([(0.0, 0.0, clean_combined)] + pts[:-1], pts):
        if t0 < 0.5 <= t1:
            tpr50 = e0 + (0.5 - t0) * (e1 - e0) / (t1 - t0)
            break
    perfect = None
    for e, _, c in reversed(pts):
        if c < 1.0:
            break
        perfect = e
    return {"eps_tpr50": tpr50, "eps_perfect_separation": perfect}


def summarize(cfg: Config, units: dict[str, dict], models: dict[str, torch.nn.Module], train: Split,
              test: Split, benign: Split, det, fs_models: dict[str, FeatureSqueezing | None]) -> tuple[dict, list]:
    """metrics.json content and the long detector table rows from the per-image unit results."""
    y = test.y.numpy()
    benign_u8 = to_uint8(benign.x, "round")
    train_u8 = to_uint8(train.subset(cfg.detector.threshold_images, cfg.seed).x, "round")
    train_stat = statistic_fast(train_u8, c=det.c, divisor=det.divisor).numpy()
    benign_stat = statistic_fast(benign_u8, c=det.c, divisor=det.divisor).numpy()
    thr = float(det.threshold)
    metrics: dict[str, Any] = {
        "threshold": thr, "threshold_rule": det.rule, "thresholds": det.thresholds,
        "threshold_images": det.n_fit, "detector_fit": det.fit_stats,
        "detector": {"divisor": det.divisor, "constant": det.c, "quantize": cfg.detector.quantize},
        "train_fpr": float((train_stat > thr).mean()),
        "threshold_fpr": {k: {"train": float((train_stat > v).mean()), "test": float((benign_stat > v).mean())}
                          for k, v in det.thresholds.items()},
        "data": test.source, "n_test": len(test), "n_benign": len(benign), "models": {},
    }
    rows: list[dict] = []
    fs_benign_all: dict[str, np.ndarray | None] = {}
    for m, model in models.items():
        clean = _scores(model, test.x, cfg, fs_models[m])
        fs = fs_models[m]
        fs_benign = fs_benign_all[m] = fs.score(benign.x).numpy() if fs is not None else None
        flag_clean = np.asarray(clean["stat"]) > thr
        entry: dict[str, Any] = {
            "clean_accuracy": float((np.asarray(clean["pred"]) == y).mean()),
            "benign_fpr": float((benign_stat > thr).mean()),
            "clean_combined_accuracy": rates(y, np.asarray(clean["pred"]), flag_clean)["combined_accuracy"],
            "attacks": {},
        }
        if fs is not None:
            entry["feature_squeezing"] = {**squeezer_record(fs), "benign_fpr": float((fs_benign > fs.threshold).mean())}
        for attack in ATTACKS:
            rs = [r for r in units.values() if r["model"] == m and r["attack"] == attack]
            rs.sort(key=lambda r: r["eps"] if r["eps"] is not None else -1)
            if not rs:
                continue
            series: dict[str, list] = {"eps": [], "linf": [], "l2_mean": []}
            fs_series: dict[str, list] = {}
            for r in rs:
                pred, stat = np.asarray(r["pred"]), np.asarray(r["stat"])
                flag = stat > thr
                st = {**rates(y, pred, flag), **detection(benign_stat, stat)}
                st["threshold_rules"] = {k: rates(y, pred, stat > v) for k, v in det.thresholds.items()}
                for k in ("eps", "linf", "l2_mean"):
                    series[k].append(r[k])
                for k, v in st.items():
                    series.setdefault(k, []).append(v)
                base = {"model": m, "attack": attack, "eps": r["eps"], "n": r["n"]}
                rows.append({**base, "detector": "steganalysis", "kind": "detector", **_flat(st)})
                if fs is not None:
                    fsc = np.asarray(r["fs"])
                    fst = {**rates(y, pred, fsc > fs.threshold), **detection(fs_benign, fsc)}
                    for k, v in fst.items():
                        fs_series.setdefault(k, []).append(v)
                    rows.append({**base, "detector": "feature_squeezing", "kind": "baseline", **fst})
                triv = trivial_scores(len(pred))
                rows.append({**base, "detector": "flags_nothing", "kind": "baseline",
                             **rates(y, pred, triv > 0.5), **detection(trivial_scores(len(benign_stat)), triv)})
                if attack == "adaptive" and "variant" in r:
                    v = np.asarray(r["variant"])
                    series.setdefault("variant_share", []).append(
                        {name: float((v == i).mean()) for i, name in enumerate(ADAPTIVE_VARIANTS)
                         if name in cfg.adaptive.variants})
            if fs_series:
                series["feature_squeezing"] = fs_series
            if attack == "pgd":
                entry.update({k: series[k] for k in ("eps", "accuracy", "tpr", "flag_rate", "combined_accuracy",
                                                     "undetected_success", "auc")})
                entry.update(eps_markers(series["eps"], series["tpr"], series["combined_accuracy"]))
            entry["attacks"][attack] = series
        metrics["models"][m] = entry
    mark_below_baseline(rows, "auc", group_by=("model", "attack", "eps"), name_key="detector")
    for m, entry in metrics["models"].items():
        for attack, series in entry["attacks"].items():
            series["below_baseline"] = [r["below_baseline"] for r in rows
                                        if r["model"] == m and r["attack"] == attack and r["kind"] == "detector"]
            series["best_baseline"] = [r["best_baseline"] for r in rows
                                       if r["model"] == m and r["attack"] == attack and r["kind"] == "detector"]
    metrics["below_baseline"] = any(r.get("below_baseline") for r in rows if r["kind"] == "detector")
    metrics["roc"] = _rocs(units, benign_stat, fs_benign_all, cfg)
    metrics["hist"] = {"bins": HIST_BINS.tolist(), "train": _hist(train_stat / thr), "benign": _hist(benign_stat / thr),
                       "attacked": {f"{r['model']}-{r['attack']}-{r['eps']:.2f}": _hist(np.asarray(r["stat"]) / thr)
                                    for r in units.values() if r["eps"] is not None and r["attack"] in ("pgd", "adaptive")
                                    and any(abs(r["eps"] - h) < 1e-9 for h in cfg.hist_eps)}}
    return metrics, rows


def _flat(st: dict) -> dict:
    return {k: v for k, v in st.items() if not isinstance(v, dict)}


def _hist(v: np.ndarray) -> list[int]:
    return np.histogram(np.clip(v, HIST_BINS[0], HIST_BINS[-1]), HIST_BINS)[0].tolist()


def _rocs(units: dict, benign_stat: np.ndarray, fs_benign: dict, cfg: Config) -> dict:
    """ROC curves (thinned) of both detectors for PGD at the histogram eps values, and CW."""
    out: dict[str, dict] = {}
    for r in units.values():
        if r["attack"] == "cw" or (r["attack"] == "pgd" and any(abs(r["eps"] - h) < 1e-9 for h in cfg.hist_eps)):
            key = f"{r['model']}-{r['attack']}" + (f"-{r['eps']:.2f}" if r["eps"] is not None else "")
            out[key] = {"steganalysis": roc_curve(benign_stat, np.asarray(r["stat"]))}
            if fs_benign.get(r["model"]) is not None:
                out[key]["feature_squeezing"] = roc_curve(fs_benign[r["model"]], np.asarray(r["fs"]))
    return out


# ---------------------------------------------------------------------------------------------- run


def plan_units(cfg: Config, run: Run, threshold: float) -> list[Unit]:
    cd = to_dict(cfg)
    units = []
    for m in cfg.models:
        ck = str(run.checkpoints / f"{m}.safetensors")
        for attack in cfg.attack.attacks:
            if attack == "cw":
                eps_list: list[float] = [0.0]
            elif attack == "apgd":
                eps_list = cfg.attack.apgd_eps or cfg.attack.eps
            elif attack == "adaptive":
                eps_list = cfg.adaptive.eps or cfg.attack.eps
            else:
                eps_list = cfg.attack.eps
            for eps in eps_list:
                key = f"{m}-cw" if attack == "cw" else f"{m}-{attack}-eps={eps:.3f}"
                units.append(Unit(key, eval_unit, dict(model_name=m, attack=attack, eps=float(eps), cfg_dict=cd,
                                                       ckpt=ck, threshold=threshold)))
    return units


def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.adversarial import figures

    trained = train_both(cfg, run)
    train, test_full = load_data(cfg)
    det = fit_detector(cfg, train)
    thr = float(det.threshold)
    test = test_full.subset(cfg.attack.n_test, cfg.seed)
    benign = test_full.subset(cfg.n_benign, cfg.seed)
    progress.log(f"detector threshold {thr:.6g} ({det.rule} over {det.n_fit} training images; variance / "
                 f"{det.divisor}, quantisation {cfg.detector.quantize})")
    res = run_units(run, plan_units(cfg, run, thr), cfg.workers, cfg.ray_address, description="attack x eps")

    models = {m: load_model(run.checkpoints / f"{m}.safetensors") for m in cfg.models}
    fs_models = fit_squeezers(cfg, models, train)
    metrics, rows = summarize(cfg, res, models, train, test, benign, det, fs_models)
    for m in cfg.models:
        metrics["models"][m]["train_seconds"] = trained[m]["train_seconds"]
        metrics["models"][m]["training"] = trained[m].get("training")
    run.write_metrics(metrics)
    tables(run, cfg, metrics, rows)
    figures.all_figures(run, metrics)
    progress.log("adversarial: " + "; ".join(
        f"{m}: clean acc {e['clean_accuracy']:.3f}" + (f", PGD TPR at eps {e['eps'][-1]:.2f} = {e['tpr'][-1]:.3f}"
                                                       if "eps" in e else "")
        for m, e in metrics["models"].items()))
    return metrics


# -------------------------------------------------------------------------------------------- tables

_DET_COLS = ["model", "attack", "eps", "detector", "kind", "accuracy", "auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001",
             "flag_rate", "tpr", "combined_accuracy", "undetected_success", "below_baseline", "best_baseline"]


def tables(run: Run, cfg: Config, metrics: dict, rows: list[dict]) -> None:
    t2 = []
    first = next((e for e in metrics["models"].values() if "eps" in e), None)
    if first is not None:
        eps = first["eps"]
        for m, e in metrics["models"].items():
            if "eps" in e:
                t2.append({"model": f"{m} (ours)", **{f"{x:.2f}": v for x, v in zip(e["eps"], e["tpr"])}})
        for m in metrics["models"]:
            paper = dict(zip(PAPER_EPS, PAPER_TPR[m]))
            t2.append({"model": f"{m} (paper)", **{f"{x:.2f}": next((v for p, v in paper.items() if abs(p - x) < 1e-9), "")
                                                    for x in eps}})
        run.write_table(
            "table2_tpr", t2, title="Table II: detector TPR (misclassified and flagged, over all attacked test images)",
            columns=["model"] + [f"{x:.2f}" for x in eps],
            note=f"PGD, {cfg.attack.steps} steps of {cfg.attack.step_size}, random start, {metrics['n_test']} test "
                 f"images of {metrics['data']}, quantised ({cfg.detector.quantize}) to 8 bits; threshold "
                 f"{metrics['threshold']:.6g} = {metrics['threshold_rule']} over {metrics['threshold_images']} training "
                 f"images (variance / {metrics['detector']['divisor']}); FPR on {metrics['n_benign']} clean test images "
                 f"{first['benign_fpr']:.4f}. Paper rows: the published Table II (full MNIST test set, the "
                 f"MNIST-challenge models).")
    for r in rows:
        r["eps"] = "L2" if r["eps"] is None else r["eps"]
    run.write_table(
        "detectors", rows, columns=_DET_COLS,
        title="Detectors side by side on the same attacked images: steganalysis statistic, feature squeezing, "
              "the detector that flags nothing",
        note=f"auc and tpr_at_fpr: ROC with the {metrics['n_benign']} clean test images as negatives and all attacked "
             "images as positives. flag_rate, tpr (misclassified and flagged), combined_accuracy and "
             "undetected_success at each detector's operating threshold: steganalysis "
             f"{metrics['threshold_rule']} of the training statistic; feature squeezing (bit depth {cfg.squeeze.bits}, "
             f"median {cfg.squeeze.median}) at {cfg.squeeze.fpr:g} FPR on {cfg.squeeze.n_fit or 'all'} training images. "
             "below_baseline: the steganalysis AUC is not above the best baseline's (kind = baseline) on the same "
             "images. eps 'L2': CW-L2 (unbounded L-inf).")
    summary = [r for r in rows if r["attack"] == "cw" or (isinstance(r["eps"], float)
                                                          and any(abs(r["eps"] - e) < 1e-9 for e in (0.1, 0.2, 0.3, 0.4)))]
    run.write_table("detectors_summary", [r for r in summary if r["detector"] != "flags_nothing"], columns=_DET_COLS,
                    title="Detectors at eps 0.1 / 0.2 / 0.3 / 0.4 and CW-L2 (full table: detectors.md)")
    th = []
    for m, e in metrics["models"].items():
        for attack, s in e["attacks"].items():
            for i, ep in enumerate(s["eps"]):
                for rule, rr in s["threshold_rules"][i].items():
                    th.append({"model": m, "attack": attack, "eps": "L2" if ep is None else ep, "threshold_rule": rule,
                               "threshold": metrics["thresholds"][rule],
                               "train_fpr": metrics["threshold_fpr"][rule]["train"],
                               "test_fpr": metrics["threshold_fpr"][rule]["test"], **rr})
    run.write_table("thresholds", th, title="Steganalysis thresholds: max and 0.9999 / 0.999 quantiles of the training "
                                             "statistic, their FPR and the detection at each")
    adaptive = []
    for m, e in metrics["models"].items():
        s = e["attacks"].get("adaptive")
        if not s:
            continue
        for i, ep in enumerate(s["eps"]):
            row = {"model": m, "eps": ep, "accuracy": s["accuracy"][i], "flag_rate": s["flag_rate"][i],
                   "undetected_success": s["undetected_success"][i], "auc": s["auc"][i]}
            if "variant_share" in s:
                row.update({f"won_by_{k}": v for k, v in s["variant_share"][i].items()})
            if "feature_squeezing" in s:
                row["fs_flag_rate"] = s["feature_squeezing"]["flag_rate"][i]
                row["fs_undetected_success"] = s["feature_squeezing"]["undetected_success"][i]
            adaptive.append(row)
    if adaptive:
        ad = cfg.adaptive
        run.write_table(
            "adaptive", adaptive, title="The adaptive attacker (knows the statistic and its threshold)",
            note=f"variants {ad.variants} ({ad.restarts} random restart(s) of radius {ad.restart_radius}), "
                 f"{ad.steps or cfg.attack.steps} steps of {ad.step_size or cfg.attack.step_size} each, loss - {ad.weight} x "
                 f"relu(statistic/threshold - {ad.margin}); each iterate quantised ({cfg.detector.quantize}) and "
                 "checked, per image the first misclassified unflagged one kept. won_by_*: share of images "
                 "first broken by each variant. fs_*: feature squeezing on the same images (this attacker does "
                 "not target it).")
