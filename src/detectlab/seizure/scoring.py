"""Metric definitions shared by the protocol (experiment.py) and `evaluate`: window metrics per patient and
pooled, SzCORE event scores per recording, and the below-baseline marking."""

from __future__ import annotations

from typing import Any

import numpy as np

from detectlab.core.baselines import mark_below_baseline as core_mark
from detectlab.core.metrics import binary_metrics
from detectlab.seizure.baseline import MAJORITY, NAME as BASELINE_NAME
from detectlab.seizure.data import WindowStore
from detectlab.seizure.events import pool, score_probs

METRICS = ("sensitivity", "specificity", "mcc", "auc_roc", "auc_pr")
LABELS = {"cnn": "CNN w/o AT", "cnn_at": "CNN w/ AT", "cnn_bilstm": "CNN-BiLSTM w/o AT",
          "cnn_bilstm_at": "CNN-BiLSTM w/ AT (proposed)", "logrms_lr": BASELINE_NAME, "majority": MAJORITY}
BASELINES = ("logrms_lr", "majority")


def score_entries(store: WindowStore, probs: dict[str, list[float]], threshold: float, ev: Any,
                  events: bool = True) -> dict[str, Any]:
    """Window metrics per patient (all its entries' windows) and pooled, and SzCORE event scores per
    recording (continuous recordings only), for one model's probabilities {entry id: probs}."""
    by_pat: dict[str, list[int]] = {}
    for i in sorted(int(k) for k in probs):
        by_pat.setdefault(store.entries[i]["patient"], []).append(i)
    per_patient, ev_parts = {}, []
    for p, ids in by_pat.items():
        y = np.concatenate([store.y(i) for i in ids])
        s = np.concatenate([np.asarray(probs[str(i)]) for i in ids])
        m = binary_metrics(y, s, threshold)
        per_patient[p] = {k: m[k] for k in (*METRICS, "f1", "accuracy", "balanced_accuracy") if k in m}
        if events and store.kind == "recordings":
            parts = [score_probs([tuple(z) for z in store.entries[i]["seizures"]], np.asarray(probs[str(i)]), threshold,
                                 store.window_s, ev) for i in ids]
            per_patient[p]["events"] = pool(parts)
            ev_parts += parts
    ids = sorted(int(k) for k in probs)
    y = np.concatenate([store.y(i) for i in ids])
    s = np.concatenate([np.asarray(probs[str(i)]) for i in ids])
    pooled = binary_metrics(y, s, threshold)
    out = {"per_patient": per_patient, "pooled": {k: pooled[k] for k in pooled}, "threshold": threshold}
    if ev_parts:
        out["events"] = pool(ev_parts)
    return out


def mark_below_baseline(rows: list[dict], metric: str) -> list[dict]:
    """Every learned row gets below_baseline (its `metric` not strictly above the best baseline's) and
    best_baseline ("name (metric value)"); rows carry "name" and "kind" ("baseline" or "learned")."""
    return core_mark(rows, metric, name_key="name")
