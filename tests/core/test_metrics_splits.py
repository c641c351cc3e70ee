import math

import numpy as np
import pytest

from detectlab.core import metrics, splits
from detectlab.core.errors import InputError


def test_binary_metrics_hand_computed():
    # tp=2 (0.9,0.8), fn=1 (0.3), fp=1 (0.7), tn=2 (0.1,0.2)
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.8, 0.3, 0.7, 0.1, 0.2]
    m = metrics.binary_metrics(y, s, threshold=0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert m["f1"] == pytest.approx(4 / 6)
    # ROC-AUC by pair counting: positives 0.9,0.8,0.3 vs negatives 0.7,0.1,0.2 -> 3 + 3 + 2 = 8 of 9 pairs ordered
    assert m["auc_roc"] == pytest.approx(8 / 9)
    # average precision: ranks 0.9(P) 0.8(P) 0.7(N) 0.3(P): (1 + 1 + 3/4)/3
    assert m["auc_pr"] == pytest.approx((1 + 1 + 0.75) / 3)


def test_mcc_undefined_is_zero_and_auc_nan_for_one_class():
    assert metrics.mcc([1, 1, 0], [1, 1, 1]) == 0.0
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_f1_optimal_threshold_picks_best_f1():
    y = [0, 0, 1, 1, 1, 0]
    s = [0.1, 0.35, 0.4, 0.8, 0.9, 0.2]
    thr = metrics.f1_optimal_threshold(y, s)
    assert thr == pytest.approx(0.4)  # all three positives, no false positive: F1 = 1
    assert metrics.binary_metrics(y, s, thr)["f1"] == 1.0


def test_mean_sd():
    d = metrics.mean_sd([1.0, 2.0, 3.0, float("nan")])
    assert d["mean"] == 2.0 and d["sd"] == pytest.approx(1.0) and d["n"] == 3
    assert metrics.fmt_mean_sd(d, 2) == "2.00 ± 1.00"


def test_leave_one_group_out():
    g = np.array(["b", "a", "a", "c", "b"])
    folds = splits.leave_one_group_out(g)
    assert [f[2] for f in folds] == ["a", "b", "c"]
    for tr, te, held in folds:
        assert set(g[te]) == {held} and held not in set(g[tr])
        assert len(tr) + len(te) == len(g)


def test_stratified_kfold_grouped_never_leaks_groups():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 5)
    y = (groups % 2).astype(int)
    folds = splits.stratified_kfold(y, 5, seed=1, groups=groups)
    assert len(folds) == 5
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(100))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert set(y[te]) == {0, 1}


def test_stratified_holdout_keeps_ratio():
    y = np.array([0] * 90 + [1] * 10)
    tr, te = splits.stratified_holdout(y, 0.2, seed=0)
    assert len(te) == 20 and y[te].sum() == 2 and not set(tr) & set(te)


def test_kfold_rejects_tiny_class():
    with pytest.raises(InputError, match="fewer than 5 folds"):
        splits.stratified_kfold([0] * 10 + [1] * 3, 5)
