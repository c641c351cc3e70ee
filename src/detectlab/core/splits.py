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
    """One stratified train/test split; with `groups`, :func:`group_holdout` (no group on both sides)."""
    if not 0 < test_size < 1:
        raise InputError("test_size", f"holdout fraction {test_size} is outside (0, 1)")
    y = np.asarray(y)
    if groups is not None:
        return group_holdout(y, test_size, groups, seed)
    tr, te = ms.train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
    return np.sort(tr), np.sort(te)


def group_holdout(y: Any, test_size: float, groups: Any, seed: int = 0, tries: int = 2000
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A grouped holdout whose test share of the samples is as close to `test_size` as the groups allow.

    Whole groups go to one side. Among `tries` seeded random orders of the groups, each cut where the
    test share first reaches the target, the split kept is the one that (1) leaves every class on both
    sides when that is possible, (2) comes closest to `test_size`, (3) keeps the class proportions
    closest. Works with few groups (a k-fold cut with k = 1/test_size does not: with 5 groups and 0.1 it
    would hold out a fifth). Raises InputError with fewer than 2 groups."""
    y = np.asarray(y)
    g = np.asarray(groups)
    if g.shape[0] != y.shape[0]:
        raise InputError("groups", f"{g.shape[0]} group labels for {y.shape[0]} samples")
    uniq, inv = np.unique(g, return_inverse=True)
    if uniq.size < 2:
        raise InputError("groups", f"a grouped holdout needs at least 2 groups, got {uniq.size}")
    classes = np.unique(y)
    sizes = np.bincount(inv, minlength=uniq.size)
    per_class = np.stack([np.bincount(inv, weights=(y == c).astype(float), minlength=uniq.size) for c in classes], 1)
    total, total_c = sizes.sum(), per_class.sum(0)
    rng = np.random.default_rng(seed)
    best_key, best = None, None
    for _ in range(max(1, tries)):
        order = rng.permutation(uniq.size)
        cum = np.cumsum(sizes[order])
        # cut after k groups (1 <= k <= n-1): the first k whose share reaches the target, or the one before
        k = int(np.searchsorted(cum, test_size * total))
        for kk in {max(1, min(uniq.size - 1, k)), max(1, min(uniq.size - 1, k + 1))}:
            te_groups = order[:kk]
            share = sizes[te_groups].sum() / total
            te_c = per_class[te_groups].sum(0)
            both_sides = bool(np.all(te_c > 0) and np.all(total_c - te_c > 0))
            balance = float(np.abs(te_c / max(te_c.sum(), 1) - total_c / total).sum())
            key = (not both_sides, round(abs(share - test_size), 9), round(balance, 9))
            if best_key is None or key < best_key:
                best_key, best = key, np.sort(te_groups)
    test_mask = np.isin(inv, best)
    idx = np.arange(y.shape[0])
    return idx[~test_mask], idx[test_mask]


def _check_classes(y: np.ndarray, k: int) -> None:
    vals, counts = np.unique(y, return_counts=True)
    if vals.size < 2:
        raise InputError("labels", f"only one class present ({vals.tolist()})", "at least two classes")
    if counts.min() < k:
        raise InputError("labels", f"class {vals[counts.argmin()].item()!r} has {int(counts.min())} samples, "
                                   f"fewer than {k} folds")
