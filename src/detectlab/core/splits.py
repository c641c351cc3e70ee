"""Leave-one-group-out, stratified k-fold (grouped when groups are known) and stratified holdout.

Every splitter returns a list of (train_idx, test_idx) numpy arrays and is deterministic in `seed`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import model_selection as ms

from detectlab.core.errors import InputError


def leave_one_group_out(groups: Any) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """One split per distinct group: (train_idx, test_idx, held_out_group), groups in sorted order."""
    g = np.asarray(groups)
    uniq = np.unique(g)
    if uniq.size < 2:
        raise InputError("groups", f"leave-one-group-out needs at least 2 groups, got {uniq.size}")
    idx = np.arange(g.size)
    return [(idx[g != u], idx[g == u], u.item() if hasattr(u, "item") else u) for u in uniq]


def stratified_kfold(y: Any, k: int, seed: int = 0, groups: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold; with `groups`, StratifiedGroupKFold so no group spans train and test."""
    y = np.asarray(y)
    _check_classes(y, k)
    x = np.zeros(len(y))
    if groups is not None:
        g = np.asarray(groups)
        n_groups = np.unique(g).size
        if n_groups < k:
            raise InputError("groups", f"{k}-fold grouped CV needs at least {k} groups, got {n_groups}")
        splitter = ms.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(x, y, g)]
    splitter = ms.StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(x, y)]


def stratified_holdout(y: Any, test_size: float, seed: int = 0, groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """One stratified train/test split; grouped (by StratifiedGroupKFold) when groups are given."""
    y = np.asarray(y)
    if groups is not None:
        k = max(2, int(round(1 / test_size)))
        tr, te = stratified_kfold(y, k, seed, groups)[0]
        return tr, te
    tr, te = ms.train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
    return np.sort(tr), np.sort(te)


def _check_classes(y: np.ndarray, k: int) -> None:
    vals, counts = np.unique(y, return_counts=True)
    if vals.size < 2:
        raise InputError("labels", f"only one class present ({vals.tolist()})", "at least two classes")
    if counts.min() < k:
        raise InputError("labels", f"class {vals[counts.argmin()]!r} has {counts.min()} samples, fewer than {k} folds")
