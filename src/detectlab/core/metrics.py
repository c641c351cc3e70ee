"""Binary detection metrics (scikit-learn underneath), F1-optimal thresholds, mean±SD summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def _as1d(a: Any) -> np.ndarray:
    return np.asarray(a).reshape(-1)


def confusion(y_true: Any, y_pred: Any) -> tuple[int, int, int, int]:
    """(tp, tn, fp, fn) for binary labels {0,1}."""
    t = _as1d(y_true).astype(bool)
    p = _as1d(y_pred).astype(bool)
    return int((t & p).sum()), int((~t & ~p).sum()), int((~t & p).sum()), int((t & ~p).sum())


def _div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def sensitivity(y_true: Any, y_pred: Any) -> float:
    tp, tn, fp, fn = confusion(y_true, y_pred)
    return _div(tp, tp + fn)


def specificity(y_true: Any, y_pred: Any) -> float:
    tp, tn, fp, fn = confusion(y_true, y_pred)
    return _div(tn, tn + fp)


def mcc(y_true: Any, y_pred: Any) -> float:
    """Matthews correlation coefficient; 0 when undefined (a constant prediction or label)."""
    tp, tn, fp, fn = confusion(y_true, y_pred)
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


def accuracy(y_true: Any, y_pred: Any) -> float:
    t, p = _as1d(y_true), _as1d(y_pred)
    return float((t == p).mean()) if t.size else float("nan")


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean of sensitivity and specificity; with one class present, that class's recall."""
    tp, tn, fp, fn = confusion(y_true, y_pred)
    rates = [r for r in (_div(tp, tp + fn), _div(tn, tn + fp)) if not math.isnan(r)]
    return float(sum(rates) / len(rates)) if rates else float("nan")


def roc_auc(y_true: Any, y_score: Any) -> float:
    """ROC-AUC; NaN when only one class is present."""
    t = _as1d(y_true)
    if np.unique(t).size < 2:
        return float("nan")
    return float(skm.roc_auc_score(t, _as1d(y_score)))


def pr_auc(y_true: Any, y_score: Any) -> float:
    """Area under the precision-recall curve (average precision); NaN without positives."""
    t = _as1d(y_true)
    if t.sum() == 0:
        return float("nan")
    return float(skm.average_precision_score(t, _as1d(y_score)))


def f1_optimal_threshold(y_true: Any, y_score: Any) -> float:
    """The score threshold that maximises F1 on the precision-recall curve.

    Predictions are ``score >= threshold``. Falls back to 0.5 when there are no positives.
    """
    t, s = _as1d(y_true), _as1d(y_score).astype(float)
    if t.sum() == 0 or t.size == 0:
        return 0.5
    prec, rec, thr = skm.precision_recall_curve(t, s)
    prec, rec = prec[:-1], rec[:-1]  # the last point has no threshold
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    return float(thr[int(np.argmax(f1))])


def binary_metrics(y_true: Any, y_score: Any, threshold: float = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, MCC, accuracy, balanced accuracy, F1, ROC-AUC and PR-AUC at a threshold."""
    t = _as1d(y_true).astype(int)
    s = _as1d(y_score).astype(float)
    p = (s >= threshold).astype(int)
    tp, tn, fp, fn = confusion(t, p)
    return {
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "mcc": mcc(t, p),
        "accuracy": accuracy(t, p),
        "balanced_accuracy": balanced_accuracy(t, p),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "auc_roc": roc_auc(t, s),
        "auc_pr": pr_auc(t, s),
        "threshold": float(threshold),
    }


def mean_sd(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample SD (ddof=1) of the finite values; SD is 0 for one value, NaN for none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarize(rows: Sequence[Mapping[str, float]], keys: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Mean±SD across groups (e.g. patients or folds) for each metric key."""
    keys = keys or [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    return {k: mean_sd(r[k] for r in rows if k in r) for k in keys}


def fmt_mean_sd(d: Mapping[str, float], digits: int = 3, style: str = "pm") -> str:
    """'0.812 ± 0.034' (style 'pm') or '0.812 (0.034)' (style 'paren')."""
    m, s = d.get("mean", float("nan")), d.get("sd", float("nan"))
    if not np.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ({s:.{digits}f})" if style == "paren" else f"{m:.{digits}f} ± {s:.{digits}f}"
