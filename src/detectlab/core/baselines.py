"""Baselines every protocol table carries: the majority class, and a helper that puts a system's own
hand-crafted baseline rows beside the learned ones and marks a learned row that does not beat them.

A learned row *beats* the baselines when its value of the compared metric is strictly better than the
best baseline's value in the same group (same split, same data); otherwise it is ``below_baseline``.
Rows are plain dicts, the same ones written with :meth:`detectlab.core.runs.Run.write_table`: a row
with ``kind == "baseline"`` is a baseline; every other row is a learned one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from detectlab.core.metrics import binary_metrics

BASELINE = "baseline"


def majority_scores(y_train: Any, n: int) -> np.ndarray:
    """A constant score for `n` test items: the share of positives among the training labels.

    At threshold 0.5 it predicts the training majority class (a tie predicts the positive class)."""
    y = np.asarray(y_train, dtype=float).reshape(-1)
    if y.size == 0:
        raise ValueError("majority baseline needs training labels")
    return np.full(int(n), float(y.mean()))


def majority_metrics(y_train: Any, y_test: Any, threshold: float = 0.5) -> dict[str, float]:
    """:func:`binary_metrics` of the training-majority constant predictor on the test labels."""
    y_test = np.asarray(y_test).reshape(-1)
    return binary_metrics(y_test, majority_scores(y_train, y_test.size), threshold)


def _value(row: Mapping[str, Any], metric: str) -> float:
    v = row.get(metric)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return v


def mark_below_baseline(rows: Sequence[dict[str, Any]], metric: str, *, group_by: Sequence[str] = (),
                        higher_is_better: bool = True, name_key: str | None = None,
                        is_baseline: Callable[[Mapping[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """Mark every learned row with ``below_baseline`` and ``best_baseline`` (in place; returns the rows).

    Within each group (rows sharing the values of `group_by`), the best baseline is the baseline row with
    the best finite value of `metric`; a learned row is below baseline unless its value is strictly
    better. A learned row with no finite value is below baseline (it has not shown anything); a group with
    no baseline row leaves ``below_baseline`` None (nothing to compare with). `name_key` names the column
    holding a row's name (default: the first of "model", "name", "method", "variant", "strategy").
    """
    is_base = is_baseline or (lambda r: r.get("kind") == BASELINE)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_by), []).append(r)
    for members in groups.values():
        bases = [r for r in members if is_base(r) and math.isfinite(_value(r, metric))]
        best = None
        if bases:
            best = (max if higher_is_better else min)(bases, key=lambda r: _value(r, metric))
        for r in members:
            if is_base(r):
                r.setdefault("kind", BASELINE)
                continue
            r.setdefault("kind", "model")
            if best is None:
                r["below_baseline"] = None
                r["best_baseline"] = ""
                continue
            v, b = _value(r, metric), _value(best, metric)
            beats = math.isfinite(v) and (v > b if higher_is_better else v < b)
            r["below_baseline"] = not beats
            r["best_baseline"] = f"{_row_name(best, name_key)} ({metric} {b:.4g})"
    return list(rows)


def _row_name(row: Mapping[str, Any], name_key: str | None) -> str:
    if name_key:
        return str(row.get(name_key, ""))
    for k in ("model", "name", "method", "variant", "strategy", "detector"):
        if k in row:
            return str(row[k])
    return "baseline"


def below_baseline_summary(rows: Sequence[Mapping[str, Any]], name_key: str | None = None,
                           group_by: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """{learned row name (with its group): {"below_baseline": bool|None, "best_baseline": str}} for
    metrics.json."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") == BASELINE:
            continue
        name = "/".join([str(r.get(k)) for k in group_by] + [_row_name(r, name_key)])
        out[name] = {"below_baseline": r.get("below_baseline"), "best_baseline": r.get("best_baseline", "")}
    return out
