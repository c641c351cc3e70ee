"""`detectlab seizure evaluate MODEL_RUN DATA [--out DIR]`: a trained run's models on another labelled data
set, with the protocol's metric definitions.

MODEL_RUN is a `seizure train` folder (models trained on all its patients; `--model` picks one checkpoint,
e.g. a fold model of a `seizure run`). DATA is any data set the protocol reads: an EDF/BDF folder or file
with annotations (EDF+, TUH, BIDS/SzCORE, SeizeIT, CSV, CHB-MIT summary), the CHB-MIT windows, the Helsinki
windows (`--expert`). Every recording must have readable labels. The data are preprocessed exactly as
the model's training data (rate, band, window, standardisation, or the training fold's statistics for
models trained on windowed sets). Output: metrics.json (pooled and per-patient window metrics, SzCORE
event scores on continuous recordings), tables/evaluation.md|csv and events.md|csv, with the train run's
baselines (log-RMS + LR, majority class, from checkpoints/baselines.json) scored on the same windows and
every model marked below_baseline when its pooled MCC does not beat the best baseline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PREFERENCE = ("cnn_bilstm_at", "cnn_bilstm", "cnn_at", "cnn")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None,
                   help="checkpoint name(s) in MODEL_RUN/checkpoints (repeatable; default: every model of a "
                        "train run)")
    p.add_argument("--expert", default=None, choices=["A", "B"], help="Helsinki: the expert whose labels to use")


def _models(folder: Path, names: list[str] | None) -> list[Path]:
    from detectlab.core.errors import InputError

    ck = folder / "checkpoints"
    if names:
        out = []
        for n in names:
            p = ck / (n if n.endswith(".safetensors") else f"{n}.safetensors")
            if not p.exists():
                raise InputError(p, "checkpoint not found",
                                 "a name from " + ", ".join(sorted(q.stem for q in ck.glob("*.safetensors"))))
            out.append(p)
        return out
    out = [ck / f"{v}.safetensors" for v in PREFERENCE if (ck / f"{v}.safetensors").exists()]
    if not out:
        fold = sorted(ck.glob("*-seed*.safetensors"))
        raise InputError(folder, "no model trained on all patients in this run" + (
            f" (it holds {len(fold)} per-fold models; pick one with --model)" if fold else ""),
            "the --out folder of `seizure train`")
    return out


def run(model_run: Path, data: Path, out: Path | None, args: argparse.Namespace) -> int:
    import numpy as np

    from detectlab.core import progress
    from detectlab.core.config import from_dict
    from detectlab.core.errors import InputError
    from detectlab.core.metrics import fmt_mean_sd, mean_sd
    from detectlab.core.runs import open_run
    from detectlab.core.runtime import choose_device
    from detectlab.seizure.baseline import MAJORITY, NAME, LogRMSBaseline, log_rms
    from detectlab.seizure.config import Config
    from detectlab.seizure.data import WindowStore, prepare_data
    from detectlab.seizure.scoring import LABELS, METRICS, mark_below_baseline, score_entries
    from detectlab.seizure.train import checkpoint_preprocess as preprocess_of
    from detectlab.seizure.train import header_norm, load_model, predict_windows

    folder, cfg_dict = open_run(model_run)
    data = Path(data)
    if not data.exists():
        raise InputError(data, "data path does not exist", "an EDF folder/file, chbmit_windows or the Helsinki folder")
    device = choose_device(getattr(args, "device", None) or "auto")
    paths = _models(folder, getattr(args, "model", None))
    loaded = [(p, *load_model(p, device)) for p in paths]
    pre = preprocess_of(loaded[0][2])
    for p, _, h in loaded[1:]:
        if preprocess_of(h) != pre:
            raise InputError(p, "models of this run were trained with different preprocessing", "one --model at a time")
    norm0 = header_norm(loaded[0][2])
    cfg = from_dict(Config, {k: v for k, v in cfg_dict.items() if k in Config.__dataclass_fields__})
    cfg.preprocess, cfg.patients = pre, []
    if getattr(args, "expert", None):
        cfg.helsinki.expert = args.expert
    settings = {"model_run": str(Path(model_run).resolve()), "data": str(data.resolve()),
                "models": [p.name for p in paths], "expert": cfg.helsinki.expert, "preprocess": vars(pre).copy()}
    out = Path(out) if out else folder / "evaluations" / data.name
    run_ = _open_out(out, model_run, data, settings)
    try:
        store = WindowStore(prepare_data(cfg, run_.dir / "data" / "windows", data, standardise=norm0 is None,
                                         min_patients=1))
        ids = list(range(len(store.entries)))
        y_all = store.labels(ids)
        progress.log(f"seizure evaluate: {len(store.patients)} patients, {store.n(ids)} windows "
                     f"({int(y_all.sum())} seizure) from {data}")
        results: dict[str, Any] = {}
        for p, model, h in loaded:
            if int(h["model_config"].get("window", store.window)) != store.window:
                raise InputError(p, f"model windows of {h['model_config']['window']} samples, data windows of "
                                    f"{store.window}", "the same preprocessing")
            kind = h["model_config"].get("kind")
            if kind == "cnn_bilstm" and store.kind != "recordings":
                progress.log(f"seizure evaluate: {p.stem} skipped: a CNN-BiLSTM needs continuous recordings")
                continue
            norm = header_norm(h)
            probs = {str(i): predict_windows(model, store.X(i), device, norm, int(h.get("seq_len", 0))).tolist()
                     for i in ids}
            results[p.stem] = score_entries(store, probs, float(h["threshold"]), cfg.events)
        bpath = folder / "checkpoints" / "baselines.json"
        baselines: dict[str, Any] = {}
        if bpath.exists():
            bd = json.loads(bpath.read_text())
            base = LogRMSBaseline.from_dict(bd["logrms_lr"])
            share = float(bd["majority"]["positive_share"])
            bp = {str(i): base.scores(log_rms(store.X(i), norm=norm0)).tolist() for i in ids}
            baselines["logrms_lr"] = score_entries(store, bp, base.threshold, cfg.events)
            mp = {str(i): np.full(len(store.y(i)), share).tolist() for i in ids}
            baselines["majority"] = score_entries(store, mp, 0.5, cfg.events)
        else:
            progress.log(f"seizure evaluate: {bpath} not found: no baseline rows")
        rows = [{"name": k, "kind": "learned", "mcc": r["pooled"]["mcc"]} for k, r in results.items()]
        rows += [{"name": k, "kind": "baseline", "mcc": r["pooled"]["mcc"]} for k, r in baselines.items()]
        marks = {r["name"]: r for r in mark_below_baseline(rows, "mcc")} if baselines else {}
        metrics: dict[str, Any] = {"models": {}, "baselines": {}, "data": {
            "path": str(data), "dataset": store.dataset, "kind": store.kind, "patients": store.patients,
            "windows": store.n(ids), "seizure_windows": int(y_all.sum()), "fs": store.fs}}
        table = []
        for group, src in (("models", results), ("baselines", baselines)):
            for k, r in src.items():
                pp = r["per_patient"]
                entry = {"pooled": r["pooled"], "per_patient": pp, "threshold": r["threshold"],
                         "per_patient_mean": {m: mean_sd(pp[p][m] for p in pp) for m in METRICS}}
                if "events" in r:
                    entry["events"] = r["events"]
                if group == "models" and k in marks:
                    entry["below_baseline"] = bool(marks[k]["below_baseline"])
                    entry["best_baseline"] = marks[k]["best_baseline"]
                metrics[group][k] = entry
                label = {"logrms_lr": NAME, "majority": MAJORITY}.get(k, f"{k} ({LABELS.get(k, k)})")
                table.append({"model": label,
                              "kind": "baseline" if group == "baselines" else "learned",
                              **{m: r["pooled"][m] for m in METRICS},
                              "per-patient MCC": fmt_mean_sd(entry["per_patient_mean"]["mcc"]),
                              "below_baseline": entry.get("below_baseline", "")})
        run_.write_metrics(metrics)
        run_.write_table("evaluation", table, title=f"Evaluation on {data.name}",
                         note="Pooled window metrics over all windows (each model at its training threshold); "
                              "per-patient MCC mean ± SD across patients. below_baseline: pooled MCC not above the "
                              "best baseline's.")
        ev = []
        named = [(k, results[k]) for k in results] + [(k, baselines[k]) for k in baselines]
        for t, (_, r) in zip(table, named):
            if "events" in r:
                e = r["events"]
                ev.append({"model": t["model"], "kind": t["kind"],
                           **{f: e[f] for f in ("ref", "tp", "fp", "sensitivity", "precision", "f1", "fp_per_24h")},
                           "latency s (mean)": e["latency_s"]["mean"]})
        if ev:
            run_.write_table("events", ev, title="SzCORE event scoring (timescoring), all recordings pooled")
        print(run_.dir)
    finally:
        run_.close()
    return 0


def _open_out(out: Path, model_run: Path, data: Path, settings: dict):
    from detectlab.core.runs import evaluation_run

    return evaluation_run(out, "seizure", model_run, data, settings)
