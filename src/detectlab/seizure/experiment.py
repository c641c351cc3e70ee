"""The paper's protocol: patient-wise folds x seeds x {with, without adversarial training}, each unit giving
the CNN (stage 1) and, on continuous recordings, the CNN-BiLSTM (stage 2); baselines on the same folds;
Table I, the patient-identity probe, SzCORE event scoring, Figs. 2-4.

Folds
- ``lopo`` (continuous recordings, CHB-MIT windows): leave one patient out; per patient the metrics of
  all its windows (each seed), the mean over seeds, then mean +- SD across patients (Table I).
- ``group_kfold`` (Helsinki, where every infant holds one class, so per-infant sensitivity/specificity/
  MCC are undefined): k folds of whole infants, each test fold holding infants of both classes; the
  test windows of all folds are pooled per seed, then mean +- SD across seeds.
One unit = (fold, seed, AT on/off); one baseline unit per fold (log-RMS + LR, majority class; both are
deterministic). Units return per-window probabilities; every metric is computed here from them, so the
protocol and `evaluate` use the same definitions (`score_entries`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import progress
from detectlab.core.config import from_dict, resolve_data, to_dict
from detectlab.core.errors import InputError
from detectlab.core.metrics import binary_metrics, fmt_mean_sd, mean_sd, pr_auc, roc_auc
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units
from detectlab.seizure.baseline import log_rms, majority_scores
from detectlab.seizure.config import DATA_SUBDIR, GRID_FIELDS, VARIANTS, Config  # noqa: F401 - re-exported
from detectlab.seizure.data import WindowStore, prepare_data
from detectlab.seizure.scoring import BASELINES, LABELS, METRICS, mark_below_baseline, score_entries
from detectlab.seizure.synthetic import builtin_data
from detectlab.seizure.train import fit, fit_baseline, predict_windows, save_model, small_model_threads



# ------------------------------------------------------------------------------------------------ folds
def make_folds(store: WindowStore, cfg: Config) -> tuple[str, list[tuple[str, list[str]]]]:
    """(kind, [(fold name, test patients)]) for the configured split."""
    pats = store.patients
    classes = {p: store.patient_class(p) for p in pats}
    one_class = all(c in (0, 1) for c in classes.values())
    kind = cfg.split.kind
    if kind == "auto":
        kind = "group_kfold" if store.dataset == "helsinki" or (store.kind == "windows" and one_class) else "lopo"
    if kind == "lopo":
        if store.kind == "windows" and one_class:
            raise InputError("config key 'split.kind'", "leave-one-patient-out on a set where every patient holds "
                             "one class: per-patient sensitivity, specificity and MCC are undefined",
                             "split.kind = group_kfold (pooled window metrics)")
        folds = [(p, [p]) for p in pats]
    else:
        k = cfg.split.k
        rng = np.random.default_rng(cfg.split.seed)
        by_cls: dict[int, list[str]] = {}
        for p in pats:
            by_cls.setdefault(classes[p], []).append(p)
        assign: dict[str, int] = {}
        start = 0
        for c in sorted(by_cls):  # deal each class's patients round-robin over the folds
            ps = [by_cls[c][i] for i in rng.permutation(len(by_cls[c]))]
            for j, p in enumerate(ps):
                assign[p] = (start + j) % k
            start += len(ps)
        folds = [(f"fold{f + 1}", sorted(p for p in pats if assign[p] == f)) for f in range(k)]
        for name, test in folds:
            ys = store.labels(store.entries_of(test))
            if not test or ys.min() == ys.max():
                raise InputError("config key 'split.k'", f"{k} folds leave {name} without both classes "
                                 f"({len(by_cls.get(1, []))} patients with seizures, {len(by_cls.get(0, []))} without)",
                                 "fewer folds than patients of the rarer class")
    if cfg.folds:
        names = [f for f, _ in folds]
        unknown = [f for f in cfg.folds if f not in names]
        if unknown:
            raise InputError("config key 'folds'", f"unknown folds {unknown}", "names among " + ", ".join(names))
        folds = [f for f in folds if f[0] in cfg.folds]
    return kind, folds


# ------------------------------------------------------------------------------------------------ units
def fold_unit(cache: str, cfg_dict: dict, fold: str, test_patients: list[str], seed: int, adversarial: bool,
              ckpt_dir: str) -> dict:
    """Train on every patient but `test_patients` (stage 1, the probe, stage 2) and predict the test entries."""
    from detectlab.core.runtime import choose_device

    cfg = from_dict(Config, cfg_dict)
    device = choose_device(cfg.device)
    small_model_threads()
    store = WindowStore(Path(cache))
    train = [p for p in store.patients if p not in test_patients]
    t0 = time.perf_counter()
    stage2 = cfg.stage2.enabled and any("bilstm" in v for v in cfg.variants)
    res = fit(store, cfg, seed, adversarial, train, device, stage2=stage2)
    test_ids = store.entries_of(test_patients)
    sfx = "_at" if adversarial else ""
    out: dict[str, Any] = {"fold": fold, "test_patients": list(test_patients), "seed": seed, "adversarial": adversarial,
                           "history": res["history"], "stage1_seconds": res["stage1_seconds"], "probe": res.get("probe")}
    out["cnn" + sfx] = {"threshold": res["tau_cnn"],
                        "probs": {str(i): _r(predict_windows(res["cnn"], store.X(i), device, res["norm"]))
                                  for i in test_ids}}
    pre = to_dict(cfg.preprocess)
    if cfg.save_checkpoints:
        save_model(Path(ckpt_dir) / f"{fold}-seed{seed}-cnn{sfx}.safetensors", res["cnn"], "cnn", res["tau_cnn"],
                   len(train), store.fs, store.window, pre, res["norm"], held_out=test_patients, seed=seed,
                   data_kind=store.kind)
    if "cnn_bilstm" in res:
        sl = cfg.stage2.seq_len
        out["cnn_bilstm" + sfx] = {"threshold": res["tau_cnn_bilstm"],
                                   "probs": {str(i): _r(predict_windows(res["cnn_bilstm"], store.X(i), device, None, sl))
                                             for i in test_ids}}
        out["stage2_history"] = res["history2"]
        out["stage2_seconds"] = res["stage2_seconds"]
        if cfg.save_checkpoints:
            save_model(Path(ckpt_dir) / f"{fold}-seed{seed}-cnn_bilstm{sfx}.safetensors", res["cnn_bilstm"],
                       "cnn_bilstm", res["tau_cnn_bilstm"], len(train), store.fs, store.window, pre, None, sl,
                       held_out=test_patients, seed=seed, data_kind=store.kind)
    out["seconds"] = time.perf_counter() - t0
    progress.log(f"fold {fold} seed {seed} {'AT' if adversarial else 'no AT'}: done in {out['seconds']:.0f} s"
                 + (f", probe accuracy {out['probe']['accuracy']:.2f} (chance {out['probe']['chance_accuracy']:.2f})"
                    if out.get("probe") else ""))
    return out


def baseline_unit(cache: str, fold: str, test_patients: list[str], c: float) -> dict:
    """The log-RMS + LR and majority baselines on one fold (fit on its training patients)."""
    from detectlab.seizure.data import fold_norm

    store = WindowStore(Path(cache))
    train = [p for p in store.patients if p not in test_patients]
    tr_ids, te_ids = store.entries_of(train), store.entries_of(test_patients)
    norm = fold_norm(store, tr_ids) if store.kind == "windows" else None
    base = fit_baseline(store, tr_ids, norm, c)
    ytr = store.labels(tr_ids)
    out: dict[str, Any] = {"fold": fold, "test_patients": list(test_patients), "seed": None,
                           "logrms_lr": {"threshold": base.threshold, "probs": {}},
                           "majority": {"threshold": 0.5, "probs": {}}}
    for i in te_ids:
        out["logrms_lr"]["probs"][str(i)] = _r(base.scores(log_rms(store.X(i), norm=norm)))
        out["majority"]["probs"][str(i)] = _r(majority_scores(ytr, len(store.y(i))))
    return out


def _r(p: Any) -> list[float]:
    return np.round(np.asarray(p, dtype=float), 5).tolist()


# ------------------------------------------------------------------------------------------- protocol
def make_units(cfg: Config, cache: Path, folds: list[tuple[str, list[str]]], ckpt_dir: Path) -> list[Unit]:
    """(fold, seed, AT) training units (one GPU each on a CUDA Ray cluster) and one CPU-only baseline
    unit per fold."""
    at_modes = sorted({v.endswith("_at") for v in cfg.variants})
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    cd = to_dict(cfg)
    units = [Unit(f"{f}-seed={s}-{'at' if a else 'noat'}", fold_unit,
                  dict(cache=str(cache), cfg_dict=cd, fold=f, test_patients=t, seed=s, adversarial=a,
                       ckpt_dir=str(ckpt_dir)))
             for s in seeds for f, t in folds for a in at_modes]
    units += [Unit(f"{f}-baselines", baseline_unit, dict(cache=str(cache), fold=f, test_patients=t, c=cfg.probe.c),
                   num_cpus=1, num_gpus=0) for f, t in folds]
    return units


def check_variants(cfg: Config, store: WindowStore) -> None:
    """Stage 2 needs continuous recordings: on windowed data (labels follow position) it is refused."""
    bad = [v for v in cfg.variants if v not in VARIANTS]
    if bad or not cfg.variants:  # also checked when the config loads (param choices)
        raise InputError("config key 'variants'", f"unknown or no variants {bad}", "some of " + ", ".join(VARIANTS))
    seq = [v for v in cfg.variants if "bilstm" in v]
    if store.kind == "windows" and seq and cfg.stage2.enabled:
        raise InputError(f"data set '{store.dataset}'", f"CNN-BiLSTM variants {seq} need continuous recordings, but "
                         "these are isolated windows whose label is a function of their position (pre-onset piece, "
                         "then ictal piece)", "variants = [\"cnn\", \"cnn_at\"] and stage2.enabled = false")
    if seq and not cfg.stage2.enabled:
        raise InputError("config key 'variants'", f"{seq} need stage 2, but stage2.enabled = false",
                         "stage2.enabled = true, or only cnn / cnn_at")


def run(cfg: Config, run: Run) -> dict[str, Any]:
    from detectlab.seizure import figures

    if any(v not in VARIANTS for v in cfg.variants) or not cfg.variants:
        check_variants(cfg, None)  # type: ignore[arg-type]
    data_path = resolve_data(cfg.data, DATA_SUBDIR)
    src = data_path or builtin_data(cfg.synthetic, run.dir / "data" / "edf")
    cache = prepare_data(cfg, run.dir / "data" / "windows", src, builtin=data_path is None)
    store = WindowStore(cache)
    check_variants(cfg, store)
    split, folds = make_folds(store, cfg)
    units = make_units(cfg, cache, folds, run.checkpoints)
    at_modes = sorted({v.endswith("_at") for v in cfg.variants})
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    progress.log(f"seizure: {split}, {len(units)} units = {len(folds)} folds x {len(seeds)} seeds x {len(at_modes)} "
                 f"AT modes + {len(folds)} baseline units")
    res = run_units(run, units, cfg.workers, cfg.ray_address, description="seizure folds", device=cfg.device)
    metrics = aggregate(cfg, store, res, folds, split)
    metrics["data"] = {"source": str(data_path) if data_path else "builtin synthetic", "dataset": store.dataset,
                       "kind": store.kind, "patients": store.patients, "entries": len(store.entries),
                       "windows": store.n(list(range(len(store.entries)))),
                       "seizure_windows": int(store.labels(list(range(len(store.entries)))).sum()),
                       "fs": store.fs, "window_samples": store.window, "standardise": store.meta.get("standardise")}
    if store.dataset == "helsinki":
        metrics["data"]["expert"] = cfg.helsinki.expert
    metrics["seeds"] = seeds
    metrics["folds"] = {f: t for f, t in folds}
    learned = [r for r in res.values() if r.get("seed") is not None]
    metrics["seconds_per_unit"] = mean_sd(r["seconds"] for r in learned)
    run.write_metrics(metrics)
    write_tables(run, cfg, metrics)
    figures.all_figures(run, cfg, res, store, metrics)
    progress.log("seizure: " + "; ".join(f"{v} MCC {fmt_mean_sd(metrics['variants'][v]['mcc'])}" for v in cfg.variants)
                 + f"; baseline {fmt_mean_sd(metrics['baselines']['logrms_lr']['mcc'])}")
    return metrics


def aggregate(cfg: Config, store: WindowStore, res: dict[str, dict], folds: list[tuple[str, list[str]]],
              split: str) -> dict[str, Any]:
    """Table I, per-patient metrics, events, probe and baselines from the units' probabilities.

    lopo: per (model, patient) the metrics of each seed, averaged over seeds; Table I = mean +- SD across
    patients. group_kfold: per seed the pooled metrics of all test windows; Table I = mean +- SD across
    seeds. Baselines (no seed) enter as one 'seed'. Events: per seed the SzCORE scores pooled over all test
    recordings, then mean +- SD across seeds."""
    names = list(cfg.variants) + list(BASELINES)
    scored: dict[str, list[tuple[Any, dict]]] = {v: [] for v in names}  # v -> [(seed, score_entries of one fold)]
    for r in res.values():
        for v in names:
            if v in r:
                sc = score_entries(store, r[v]["probs"], r[v]["threshold"], cfg.events)
                sc["fold"] = r["fold"]
                scored[v].append((r["seed"], sc))
    per_patient: dict[str, dict[str, dict[str, float]]] = {}
    per_fold: dict[str, dict[str, dict[str, float]]] = {}
    table: dict[str, dict[str, dict[str, float]]] = {}
    events: dict[str, Any] = {}
    for v in names:
        seeds = sorted({s for s, _ in scored[v]}, key=lambda s: -1 if s is None else s)
        pp: dict[str, dict[str, float]] = {}
        for p in store.patients:
            rows = [sc["per_patient"][p] for _, sc in scored[v] if p in sc["per_patient"]]
            if rows:
                pp[p] = {k: mean_sd(r[k] for r in rows)["mean"] for k in METRICS}
        per_patient[v] = pp if split == "lopo" else {}
        if split == "lopo":
            table[v] = {k: {kk: mean_sd(pp[p][k] for p in pp)[kk] for kk in ("mean", "sd")} for k in METRICS}
        else:
            pooled = []
            for s in seeds:
                probs: dict[str, list[float]] = {}
                thr = {}
                for r in res.values():
                    if v in r and r["seed"] == s:
                        probs.update(r[v]["probs"])
                        thr.update({k: r[v]["threshold"] for k in r[v]["probs"]})
                ids = sorted(int(k) for k in probs)
                y = np.concatenate([store.y(i) for i in ids])
                # each fold's windows at that fold's threshold: pool the 0/1 decisions and scores
                pred_scores = np.concatenate([np.asarray(probs[str(i)]) - thr[str(i)] for i in ids])
                m = binary_metrics(y, pred_scores, 0.0)
                raw = np.concatenate([np.asarray(probs[str(i)]) for i in ids])
                m["auc_roc"], m["auc_pr"] = roc_auc(y, raw), pr_auc(y, raw)
                pooled.append(m)
            table[v] = {k: {kk: mean_sd(m[k] for m in pooled)[kk] for kk in ("mean", "sd")} for k in METRICS}
            per_fold.setdefault(v, {})
            for f, _ in folds:
                fs_ = [sc["pooled"] for ss, sc in scored[v] if sc.get("fold") == f]
                per_fold[v][f] = {k: mean_sd(m[k] for m in fs_)["mean"] for k in METRICS}
        if store.kind == "recordings":
            ev_seed = []
            for s in seeds:
                parts = [sc["events"] for ss, sc in scored[v] if ss == s and "events" in sc]
                if parts:
                    ev_seed.append(_merge_pools(parts))
            if ev_seed:
                events[v] = {k: mean_sd(e[k] for e in ev_seed) for k in ("sensitivity", "precision", "f1", "fp_per_24h")}
                events[v]["latency_s"] = mean_sd(e["latency_s"]["mean"] for e in ev_seed)
                events[v]["seizures"] = ev_seed[0]["ref"]
                events[v]["hours"] = ev_seed[0]["hours"]
                events[v]["per_seed"] = ev_seed
    rows = [{"name": v, "kind": "baseline" if v in BASELINES else "learned", "mcc": table[v]["mcc"]["mean"]}
            for v in names if v in table]
    marks = {r["name"]: r for r in mark_below_baseline(rows, "mcc")}
    variants = {}
    for v in cfg.variants:
        variants[v] = dict(table[v])
        variants[v]["below_baseline"] = bool(marks[v]["below_baseline"])
        variants[v]["best_baseline"] = marks[v]["best_baseline"]
    probe: dict[str, Any] = {}
    for adv, name in ((False, "cnn"), (True, "cnn_at")):
        ps = [r["probe"] for r in res.values() if r.get("seed") is not None and r["adversarial"] == adv and r.get("probe")]
        if ps:
            probe[name] = {k: mean_sd(p[k] for p in ps) for k in ps[0] if k != "patients"}
            probe[name]["source_patients"] = mean_sd(p["patients"] for p in ps)
    return {"protocol": split, "variants": variants, "baselines": {b: table[b] for b in BASELINES},
            "per_patient": per_patient, "per_fold": per_fold, "events": events, "probe": probe,
            "metric_for_baseline": "mcc"}


def _merge_pools(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool already-pooled event scores (folds of one seed) by their counts."""
    ref, tp, fp = (sum(p[k] for p in parts) for k in ("ref", "tp", "fp"))
    hours = sum(p["hours"] for p in parts)
    n_lat = sum(p["latency_s"]["n"] for p in parts)
    lat = sum(p["latency_s"]["mean"] * p["latency_s"]["n"] for p in parts if p["latency_s"]["n"]) / n_lat if n_lat else float("nan")
    return {"ref": ref, "tp": tp, "fp": fp, "hours": hours, "sensitivity": tp / ref if ref else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "f1": 2 * tp / (2 * tp + fp + (ref - tp)) if ref + fp else float("nan"),
            "fp_per_24h": fp / (hours / 24.0) if hours else float("nan"), "latency_s": {"mean": lat, "n": n_lat}}


# --------------------------------------------------------------------------------------------- tables
def write_tables(run: Run, cfg: Config, metrics: dict) -> None:
    d = metrics["data"]
    lopo = metrics["protocol"] == "lopo"
    rows = []
    for v in cfg.variants:
        t = metrics["variants"][v]
        rows.append({"method": LABELS[v], "kind": "learned", **{k: fmt_mean_sd(t[k]) for k in METRICS},
                     "below_baseline": t["below_baseline"]})
    for b in BASELINES:
        rows.append({"method": LABELS[b], "kind": "baseline", **{k: fmt_mean_sd(metrics["baselines"][b][k]) for k in METRICS},
                     "below_baseline": ""})
    how = ("leave-one-patient-out; per patient the mean over seeds, then mean ± SD across "
           f"{len(metrics['per_patient'][cfg.variants[0]])} patients" if lopo else
           f"{len(metrics['folds'])} folds of whole patients, each test fold with patients of both classes; the "
           "test windows of all folds pooled per seed (each fold at its own training threshold), mean ± SD across "
           f"{len(metrics['seeds'])} seed(s); per-patient metrics are undefined here (every patient holds one class)")
    run.write_table("table1", rows, title="Table I with baselines", columns=["method", "kind", *METRICS, "below_baseline"],
                    note=f"{how}. Data: {d['source']} ({d['dataset']}), {d['windows']} windows of {d['window_samples']} "
                         f"samples at {d['fs']:g} Hz, {d['seizure_windows']} seizure windows; standardisation: "
                         f"{d['standardise']}. Thresholds: F1-optimal on each fold's training predictions. "
                         f"below_baseline: MCC not above the best baseline's. The paper's Table I numbers are not "
                         f"in the text we have.")
    if lopo:
        pp = []
        for p in metrics["per_patient"][cfg.variants[0]]:
            pp.append({"patient": p, **{f"mcc {v}": metrics["per_patient"][v].get(p, {}).get("mcc", float("nan"))
                                        for v in (*cfg.variants, *BASELINES)}})
        run.write_table("per_patient_mcc", pp, title="Per-patient MCC (mean over seeds; Fig. 4)")
    else:
        pf = [{"fold": f, "test patients": len(metrics["folds"][f]),
               **{f"mcc {v}": metrics["per_fold"][v][f]["mcc"] for v in (*cfg.variants, *BASELINES)}}
              for f in metrics["folds"]]
        run.write_table("per_fold_mcc", pf, title="Per-fold MCC of the pooled test windows (mean over seeds)")
    pr = []
    for v, p in metrics["probe"].items():
        pr.append({"features": LABELS[v] + " (stage 1)", "probe accuracy": fmt_mean_sd(p["accuracy"]),
                   "chance (majority)": fmt_mean_sd(p["chance_accuracy"]),
                   "balanced accuracy": fmt_mean_sd(p["balanced_accuracy"]), "chance (1/K)": fmt_mean_sd(p["chance_balanced"]),
                   "within-class balanced": fmt_mean_sd(p["within_class_balanced"]),
                   "within-class chance": fmt_mean_sd(p["within_class_chance"]),
                   "source patients": fmt_mean_sd(p["source_patients"], 1)})
    if pr:
        run.write_table("identity_probe", pr, title="Patient identity from frozen stage-1 features (linear probe)",
                        note=f"Multinomial logistic regression (C = {cfg.probe.c}) on the 40-d CNN features of the "
                             f"training patients' windows, fitted on alternate blocks of {cfg.probe.block} consecutive "
                             "windows (per patient and class) and scored on the others; mean ± SD over the units. Within-class: the same "
                             "probe among the windows of one class (identity beyond the label), averaged over classes."
                             " Lower = more patient-invariant.")
    if metrics["events"]:
        ev = []
        for v, e in metrics["events"].items():
            ev.append({"method": LABELS[v], "kind": "baseline" if v in BASELINES else "learned",
                       "seizures": e["seizures"], "hours": e["hours"], "sensitivity": fmt_mean_sd(e["sensitivity"]),
                       "precision": fmt_mean_sd(e["precision"]), "F1": fmt_mean_sd(e["f1"]),
                       "FP / 24 h": fmt_mean_sd(e["fp_per_24h"], 1), "onset latency s": fmt_mean_sd(e["latency_s"], 1)})
        c = cfg.events
        run.write_table("events", ev, title="Event scoring (SzCORE any-overlap, timescoring)",
                        note=f"Per seed, all test recordings pooled (each scored on its own), then mean ± SD across "
                             f"seeds. Tolerances {c.tolerance_start:g} s before / {c.tolerance_end:g} s after, events "
                             f"longer than {c.max_event_duration:g} s split, closer than "
                             f"{c.min_duration_between_events:g} s merged. Latency: first overlapping detection's "
                             f"start - onset, clipped at -{c.tolerance_start:g} s.")
