"""The paper's protocol: leave-one-patient-out x seeds x {with, without adversarial training}, each unit
giving the CNN (stage 1) and CNN-BiLSTM (stage 2) variants; Table I (mean +- SD across patients of the
seed-averaged metrics), Figs. 2-4, and event-level metrics (beyond the paper).

One unit = (held-out patient, seed, AT on/off): stage 1 (-> variant cnn / cnn_at), then stage 2 from it
(-> cnn_bilstm / cnn_bilstm_at). Units are resumable and run in parallel (--workers N / --ray-address).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import progress
from detectlab.core.config import BaseConfig, from_dict, resolve_data, to_dict
from detectlab.core.errors import InputError
from detectlab.core.metrics import binary_metrics, fmt_mean_sd, mean_sd
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units
from detectlab.seizure.data import PreprocessConfig
from detectlab.seizure.synthetic import SyntheticConfig
from detectlab.seizure.train import Stage1Config, Stage2Config

DATA_SUBDIR = "eeg"
VARIANTS = ("cnn", "cnn_at", "cnn_bilstm", "cnn_bilstm_at")
METRICS = ("sensitivity", "specificity", "mcc", "auc_roc", "auc_pr")
LABELS = {"cnn": "CNN w/o AT", "cnn_at": "CNN w/ AT", "cnn_bilstm": "CNN-BiLSTM w/o AT",
          "cnn_bilstm_at": "CNN-BiLSTM w/ AT (proposed)"}


@dataclass
class EventConfig:
    merge_gap_s: float = 0.0  # detections closer than this are one event


@dataclass
class Config(BaseConfig):
    data: str = "builtin"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    events: EventConfig = field(default_factory=EventConfig)
    seeds: int = 15  # seeds seed, seed+1, ..., seed+seeds-1
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    patients: list[str] = field(default_factory=list)  # use only these patients (empty: all)
    folds: list[str] = field(default_factory=list)  # held-out patients to evaluate (empty: all)
    fig3_patients: list[str] = field(default_factory=list)  # empty: the best and worst AT gain
    save_checkpoints: bool = True
    train_adversarial: bool = True  # `seizure train`: AT on (the proposed model) or off


# ------------------------------------------------------------------------------------------------ data
def prepare_data(cfg: Config, run: Run) -> Path:
    """Read (or generate) the recordings once, preprocess, and cache the windows in the run folder."""
    from detectlab.seizure.data import (load_chbmit_windows, load_edf_folder, preprocess_recording, read_edf,
                                        resolve_dataset, save_windows)
    from detectlab.seizure.synthetic import write_patients

    cache = run.dir / "data" / "windows"
    if (cache / "meta.json").exists():
        return cache
    path = resolve_data(cfg.data, DATA_SUBDIR)
    if path is None:
        edf = run.dir / "data" / "edf"
        progress.log(f"seizure: writing {cfg.synthetic.n_patients} synthetic patients as EDF to {edf}")
        write_patients(edf, cfg.synthetic)
        patients = load_edf_folder(edf, cfg.preprocess)
    else:
        kind, folder = resolve_dataset(path)
        progress.log(f"seizure: reading {kind} from {folder}")
        if kind == "chbmit_windows":
            patients = load_chbmit_windows(folder, cfg.preprocess, cfg.patients or None)
        elif folder.is_file():
            patients = [preprocess_recording(read_edf(folder), cfg.preprocess)]
        else:
            patients = load_edf_folder(folder, cfg.preprocess)
    if cfg.patients:
        unknown = set(cfg.patients) - {p.patient for p in patients}
        if unknown:
            raise InputError("config key 'patients'", f"unknown patients {sorted(unknown)}",
                             "names among " + ", ".join(p.patient for p in patients))
        patients = [p for p in patients if p.patient in cfg.patients]
    if len(patients) < 2:
        raise InputError(path or "builtin", f"{len(patients)} patient(s) found", "at least 2 for leave-one-patient-out")
    for p in patients:
        if p.y.sum() == 0:
            progress.log(f"seizure: patient {p.patient} has no seizure windows")
    save_windows(patients, cache)
    progress.log(f"seizure: {len(patients)} patients, {sum(len(p.y) for p in patients)} windows of "
                 f"{patients[0].X.shape[2]} samples at {patients[0].fs:g} Hz, "
                 f"{sum(int(p.y.sum()) for p in patients)} seizure windows")
    return cache


# ------------------------------------------------------------------------------------------------ unit
def small_model_threads() -> None:
    """The CNN has 10k parameters: one intra-op thread is as fast, and 2+ OpenMP threads spin-wait badly on a
    busy machine (measured: a smoke unit took 278 s with 2 threads vs ~3 s with 1 under load 6). Honour an
    explicit DETECTLAB_THREADS."""
    import os

    import torch

    if not os.environ.get("DETECTLAB_THREADS"):
        torch.set_num_threads(1)


def _score(y: np.ndarray, probs: np.ndarray, tau: float, meta: dict, ev: EventConfig) -> dict[str, Any]:
    from detectlab.seizure.events import detect_intervals, event_metrics

    m = binary_metrics(y, probs, tau)
    out = {"sensitivity": m["sensitivity"], "specificity": m["specificity"], "mcc": m["mcc"],
           "auc_roc": m["auc_roc"], "auc_pr": m["auc_pr"], "threshold": float(tau)}
    iv = detect_intervals(probs, tau, meta.get("window_s", 1.0), ev.merge_gap_s)
    out["events"] = event_metrics(iv, [tuple(s) for s in meta["seizures"]], len(y) * meta.get("window_s", 1.0))
    out["probs"] = np.round(probs.astype(float), 4).tolist()
    return out


def fold_unit(cache: str, cfg_dict: dict, test_patient: str, seed: int, adversarial: bool, ckpt_dir: str) -> dict:
    """Train on every patient but `test_patient` (stage 1, then stage 2) and score the held-out one."""
    from detectlab.core.runtime import choose_device
    from detectlab.seizure.data import load_windows
    from detectlab.seizure.train import fit_all, save_model, stage1_probs, stage2_probs

    cfg = from_dict(Config, cfg_dict)
    device = choose_device(cfg.device)
    small_model_threads()
    ws = load_windows(Path(cache))
    names = ws.names
    te = names.index(test_patient)
    train_ids = [i for i in range(len(names)) if i != te]
    t0 = time.perf_counter()
    res = fit_all(ws, cfg, seed, adversarial, train_ids, device)
    Xte = np.asarray(ws.X[ws.pid == te])
    yte = ws.y[ws.pid == te]
    meta = ws.patients[te]
    sfx = "_at" if adversarial else ""
    out: dict[str, Any] = {"patient": test_patient, "seed": seed, "adversarial": adversarial,
                           "history": res["history"], "stage1_seconds": res["stage1_seconds"]}
    out["cnn" + sfx] = _score(yte, stage1_probs(res["cnn"], Xte, device), res["tau_cnn"], meta, cfg.events)
    fs, win, pre = meta["fs"], int(ws.X.shape[2]), to_dict(cfg.preprocess)
    if cfg.save_checkpoints:
        save_model(Path(ckpt_dir) / f"{test_patient}-seed{seed}-cnn{sfx}.safetensors", res["cnn"], "cnn",
                   res["tau_cnn"], len(train_ids), fs, win, pre, held_out=test_patient, seed=seed)
    if "cnn_bilstm" in res:
        p2 = stage2_probs(res["cnn_bilstm"], [Xte], device)[0]
        out["cnn_bilstm" + sfx] = _score(yte, p2, res["tau_cnn_bilstm"], meta, cfg.events)
        out["stage2_history"] = res["history2"]
        out["stage2_seconds"] = res["stage2_seconds"]
        if cfg.save_checkpoints:
            save_model(Path(ckpt_dir) / f"{test_patient}-seed{seed}-cnn_bilstm{sfx}.safetensors", res["cnn_bilstm"],
                       "cnn_bilstm", res["tau_cnn_bilstm"], len(train_ids), fs, win, pre, held_out=test_patient,
                       seed=seed)
    out["seconds"] = time.perf_counter() - t0
    progress.log(f"fold {test_patient} seed {seed} {'AT' if adversarial else 'no AT'}: " + ", ".join(
        f"{v} MCC {out[v]['mcc']:.3f}" for v in VARIANTS if v in out) + f" ({out['seconds']:.0f} s)")
    return out


# ------------------------------------------------------------------------------------------- protocol
def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.seizure import figures
    from detectlab.seizure.data import load_windows

    bad = [v for v in cfg.variants if v not in VARIANTS]
    if bad:
        raise InputError("config key 'variants'", f"unknown variants {bad}", "some of " + ", ".join(VARIANTS))
    if not cfg.stage2.enabled and any("bilstm" in v for v in cfg.variants):
        cfg.variants = [v for v in cfg.variants if "bilstm" not in v]
    if cfg.stage2.enabled and not any("bilstm" in v for v in cfg.variants):
        cfg.stage2.enabled = False  # only CNN variants asked for: skip stage 2
    cache = prepare_data(cfg, run)
    ws = load_windows(cache)
    names = ws.names
    folds = cfg.folds or names
    unknown = [f for f in folds if f not in names]
    if unknown:
        raise InputError("config key 'folds'", f"unknown patients {unknown}", "names among " + ", ".join(names))
    at_modes = sorted({v.endswith("_at") for v in cfg.variants})
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    cd = to_dict(cfg)
    units = [Unit(f"{p}-seed={s}-{'at' if a else 'noat'}", fold_unit,
                  dict(cache=str(cache), cfg_dict=cd, test_patient=p, seed=s, adversarial=a,
                       ckpt_dir=str(run.checkpoints)))
             for s in seeds for p in folds for a in at_modes]
    progress.log(f"seizure: {len(units)} units = {len(folds)} folds x {len(seeds)} seeds x {len(at_modes)} AT modes")
    res = run_units(run, units, cfg.workers, cfg.ray_address, description="LOPO folds")
    metrics = aggregate(cfg, res, folds)
    src = resolve_data(cfg.data, DATA_SUBDIR)
    metrics["data"] = {"source": str(src) if src else "builtin synthetic", "patients": names, "windows": int(len(ws.y)),
                       "seizure_windows": int(ws.y.sum()), "fs": ws.patients[0]["fs"],
                       "window_samples": int(ws.X.shape[2])}
    metrics["seeds"] = seeds
    metrics["seconds_per_unit"] = mean_sd(r["seconds"] for r in res.values())
    run.write_metrics(metrics)
    write_tables(run, cfg, metrics)
    figures.all_figures(run, cfg, res, ws, metrics)
    progress.log("seizure: " + "; ".join(
        f"{v} MCC {fmt_mean_sd(metrics['variants'][v]['mcc'])}" for v in cfg.variants))
    return metrics


def aggregate(cfg: Config, res: dict[str, dict], folds: list[str]) -> dict[str, Any]:
    """Per (variant, patient) mean over seeds; then mean +- SD across patients (Table I)."""
    per_patient: dict[str, dict[str, dict[str, float]]] = {}
    events: dict[str, Any] = {}
    for v in cfg.variants:
        per_patient[v] = {}
        ev_rows = []
        for p in folds:
            rs = [r[v] for r in res.values() if r["patient"] == p and v in r]
            if not rs:
                continue
            per_patient[v][p] = {k: mean_sd(r[k] for r in rs)["mean"] for k in METRICS}
            per_patient[v][p]["threshold"] = float(np.mean([r["threshold"] for r in rs]))
            e = [r["events"] for r in rs]
            ev_rows.append({"patient": p, "seizures": e[0]["seizures"],
                            "detected": float(np.mean([x["detected"] for x in e])),
                            "latency_s": mean_sd(x["latency_s"] for x in e)["mean"],
                            "false_alarms": float(np.mean([x["false_alarms"] for x in e])),
                            "fa_per_hour": float(np.mean([x["fa_per_hour"] for x in e]))})
        n_sz = sum(r["seizures"] for r in ev_rows)
        det = sum(r["detected"] for r in ev_rows)
        events[v] = {"seizures": n_sz, "detected": det, "event_sensitivity": det / n_sz if n_sz else float("nan"),
                     "latency_s": mean_sd(r["latency_s"] for r in ev_rows),
                     "fa_per_hour": mean_sd(r["fa_per_hour"] for r in ev_rows),
                     "per_patient": {r["patient"]: {k: r[k] for k in r if k != "patient"} for r in ev_rows}}
    variants = {v: {k: {kk: mean_sd(per_patient[v][p][k] for p in per_patient[v])[kk] for kk in ("mean", "sd")}
                    for k in METRICS} for v in cfg.variants}
    return {"variants": variants, "per_patient": per_patient, "events": events}


def write_tables(run: Run, cfg: Config, metrics: dict) -> None:
    rows = [{"method": LABELS[v], **{k: fmt_mean_sd(metrics["variants"][v][k]) for k in METRICS}}
            for v in cfg.variants]
    d = metrics["data"]
    run.write_table("table1", rows, title="Table I: mean ± SD across patients (each patient: mean over seeds)",
                    columns=["method", *METRICS],
                    note=f"Leave-one-patient-out over {len(metrics['per_patient'][cfg.variants[0]])} patients "
                         f"({d['source']}), {len(metrics['seeds'])} seed(s), {d['windows']} windows of "
                         f"{d['window_samples']} samples at {d['fs']:g} Hz. Threshold: F1-optimal on the "
                         f"training predictions. The paper's Table I numbers are not in the text we have.")
    pp = []
    for p in metrics["per_patient"][cfg.variants[0]]:
        pp.append({"patient": p, **{f"mcc {v}": metrics["per_patient"][v].get(p, {}).get("mcc", float("nan"))
                                    for v in cfg.variants}})
    run.write_table("per_patient_mcc", pp, title="Per-patient MCC (mean over seeds; Fig. 4)")
    ev = [{"method": LABELS[v], "seizures": e["seizures"], "detected (mean over seeds)": e["detected"],
           "event sensitivity": e["event_sensitivity"], "onset latency s": fmt_mean_sd(e["latency_s"], 1),
           "false alarms / h": fmt_mean_sd(e["fa_per_hour"], 1)}
          for v, e in metrics["events"].items()]
    run.write_table("events", ev, title="Event level (beyond the paper): seizures detected, latency, false alarms",
                    note="A detection is a run of consecutive windows >= threshold; detected = it overlaps the "
                         "annotated seizure; latency = its start - onset (negative: early); false alarms = "
                         "detections overlapping no seizure, per hour of recording (mean ± SD across patients).")
