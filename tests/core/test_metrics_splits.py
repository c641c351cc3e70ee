import math

import numpy as np
import pytest

from detectlab.core import metrics, splits
from detectlab.core.errors import InputError


def test_binary_metrics_hand_computed():
    """Fault caught: any metric formula wrong (swapped fp/fn, MCC denominator, AP as ROC-AUC, threshold
    compared with > instead of >=)."""
    # tp=2 (0.9,0.8), fn=1 (0.3), fp=1 (0.7), tn=2 (0.1,0.2)
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.8, 0.3, 0.7, 0.1, 0.2]
    m = metrics.binary_metrics(y, s, threshold=0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert m["f1"] == pytest.approx(4 / 6)
    assert m["threshold"] == 0.5
    # ROC-AUC by pair counting: positives 0.9,0.8,0.3 vs negatives 0.7,0.1,0.2 -> 3 + 3 + 2 = 8 of 9 pairs ordered
    assert m["auc_roc"] == pytest.approx(8 / 9)
    # average precision: ranks 0.9(P) 0.8(P) 0.7(N) 0.3(P): (1 + 1 + 3/4)/3
    assert m["auc_pr"] == pytest.approx((1 + 1 + 0.75) / 3)
    # a score exactly on the threshold is a positive prediction
    on = metrics.binary_metrics([1, 0], [0.5, 0.2], threshold=0.5)
    assert on["sensitivity"] == 1.0 and on["specificity"] == 1.0


def test_asymmetric_confusion_pins_each_cell():
    """Fault caught: tp/tn/fp/fn swapped or miscounted (a symmetric example cannot tell fp from fn)."""
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert metrics.confusion(y, p) == (3, 4, 2, 1)
    assert metrics.sensitivity(y, p) == pytest.approx(3 / 4)
    assert metrics.specificity(y, p) == pytest.approx(4 / 6)
    assert metrics.accuracy(y, p) == pytest.approx(7 / 10)
    assert metrics.mcc(y, p) == pytest.approx((3 * 4 - 2 * 1) / math.sqrt(5 * 4 * 6 * 5))
    m = metrics.binary_metrics(y, np.array(p) * 0.9 + 0.05)
    assert m["f1"] == pytest.approx(6 / 9) and m["balanced_accuracy"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert math.isnan(metrics.sensitivity([0, 0], [1, 0])) and math.isnan(metrics.specificity([1, 1], [1, 0]))
    assert math.isnan(metrics.accuracy([], []))


def test_mcc_undefined_is_zero_and_auc_nan_for_one_class():
    """Fault caught: a constant prediction given MCC 1/NaN, or ROC/PR-AUC computed with one class."""
    assert metrics.mcc([1, 1, 0], [1, 1, 1]) == 0.0
    assert metrics.mcc([1, 0], [1, 0]) == 1.0 and metrics.mcc([1, 0], [0, 1]) == -1.0
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    assert math.isnan(metrics.pr_auc([0, 0], [0.2, 0.3]))
    assert metrics.pr_auc([0, 1], [0.2, 0.3]) == 1.0


def test_f1_optimal_threshold_picks_best_f1():
    """Fault caught: a threshold that does not maximise F1 on the PR curve (wrong F1 formula, off-by-one
    against the threshold array), or a crash without positives."""
    y = [0, 0, 1, 1, 1, 0]
    s = [0.1, 0.35, 0.4, 0.8, 0.9, 0.2]
    thr = metrics.f1_optimal_threshold(y, s)
    assert thr == pytest.approx(0.4)  # all three positives, no false positive: F1 = 1
    assert metrics.binary_metrics(y, s, thr)["f1"] == 1.0
    # precision 1 / recall 1/3 at 0.9 (F1 0.5) vs precision 3/5 / recall 1 at 0.2 (F1 0.75): the latter
    y2 = [1, 0, 0, 1, 1, 0]
    s2 = [0.9, 0.8, 0.7, 0.3, 0.25, 0.1]
    assert metrics.f1_optimal_threshold(y2, s2) == pytest.approx(0.25)
    assert metrics.f1_optimal_threshold([0, 0, 0], [0.1, 0.9, 0.3]) == 0.5


def test_mean_sd():
    """Fault caught: population SD (ddof 0) instead of sample SD, NaNs averaged in, a wrong count, or the
    one-value and no-value cases."""
    d = metrics.mean_sd([1.0, 2.0, 3.0, float("nan"), None])
    assert d == {"mean": 2.0, "sd": pytest.approx(1.0), "n": 3}
    assert metrics.mean_sd([4.0]) == {"mean": 4.0, "sd": 0.0, "n": 1}
    none = metrics.mean_sd([float("nan")])
    assert math.isnan(none["mean"]) and math.isnan(none["sd"]) and none["n"] == 0
    assert metrics.fmt_mean_sd(d, 2) == "2.00 ± 1.00"
    assert metrics.fmt_mean_sd(d, 1, style="paren") == "2.0 (1.0)"
    assert metrics.fmt_mean_sd(none) == "n/a"


def test_summarize_across_groups():
    """Fault caught: summarize averaging the wrong key, skipping rows, or summarising non-numeric columns."""
    rows = [{"patient": "a", "mcc": 0.5, "f1": 1.0}, {"patient": "b", "mcc": 0.7, "f1": 0.0}, {"patient": "c", "mcc": 0.9}]
    s = metrics.summarize(rows)
    assert set(s) == {"mcc", "f1"}
    assert s["mcc"]["mean"] == pytest.approx(0.7) and s["mcc"]["n"] == 3 and s["mcc"]["sd"] == pytest.approx(0.2)
    assert s["f1"] == {"mean": 0.5, "sd": pytest.approx(math.sqrt(0.5)), "n": 2}
    assert set(metrics.summarize(rows, ["f1"])) == {"f1"}
    assert metrics.summarize([]) == {}


def test_leave_one_group_out():
    """Fault caught: a held-out group that also appears in training, folds in an unstable order, numpy
    scalars leaking into keys, or a single group accepted."""
    g = np.array(["b", "a", "a", "c", "b"])
    folds = splits.leave_one_group_out(g)
    assert [f[2] for f in folds] == ["a", "b", "c"] and all(type(f[2]) is str for f in folds)
    for tr, te, held in folds:
        assert set(g[te]) == {held} and held not in set(g[tr])
        assert len(tr) + len(te) == len(g)
    assert [f[2] for f in splits.leave_one_group_out([3, 1, 3])] == [1, 3]
    assert type(splits.leave_one_group_out(np.array([3, 1]))[0][2]) is int
    with pytest.raises(InputError) as e:
        splits.leave_one_group_out(["a", "a"])
    assert e.value.line() == "groups: leave-one-group-out needs at least 2 groups, got 1"


def test_stratified_kfold_grouped_never_leaks_groups():
    """Fault caught: a group on both sides of a fold, samples lost or duplicated, a fold without one class,
    or folds that ignore the seed."""
    groups = np.repeat(np.arange(20), 5)
    y = (groups % 2).astype(int)
    folds = splits.stratified_kfold(y, 5, seed=1, groups=groups)
    assert len(folds) == 5
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(100))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert set(y[te]) == {0, 1} and len(tr) + len(te) == 100
    other = splits.stratified_kfold(y, 5, seed=2, groups=groups)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))
    again = splits.stratified_kfold(y, 5, seed=1, groups=groups)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    with pytest.raises(InputError) as e:
        splits.stratified_kfold(y, 5, groups=np.repeat(np.arange(4), 25))
    assert e.value.line() == "groups: 5-fold grouped CV needs at least 5 groups, got 4"


def test_stratified_kfold_ungrouped_stratifies_and_shuffles():
    """Fault caught: unstratified folds (a fold with no positive), no shuffling (folds in input order), or
    a seed that changes nothing."""
    y = np.array([0] * 40 + [1] * 10)
    folds = splits.stratified_kfold(y, 5, seed=0)
    assert [int(y[te].sum()) for _, te in folds] == [2] * 5
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(50))
    assert not np.array_equal(folds[0][1], np.arange(10))
    other = splits.stratified_kfold(y, 5, seed=3)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_stratified_holdout_keeps_ratio():
    """Fault caught: an unstratified or unseeded holdout, overlap of the two sides, or a fraction outside (0, 1)."""
    y = np.array([0] * 90 + [1] * 10)
    tr, te = splits.stratified_holdout(y, 0.2, seed=0)
    assert len(te) == 20 and y[te].sum() == 2 and not set(tr) & set(te) and len(tr) == 80
    assert list(tr) == sorted(tr) and list(te) == sorted(te)
    assert not np.array_equal(te, splits.stratified_holdout(y, 0.2, seed=1)[1])
    with pytest.raises(InputError, match="outside"):
        splits.stratified_holdout(y, 1.0)


def test_group_holdout_holds_the_fraction_with_few_groups():
    """Fault caught: a grouped holdout made as the first of k = 1/test_size grouped folds, which with few
    groups holds out a fifth of the data when a tenth was asked (issue 16), or one that splits a group,
    or one that leaves a class out of one side when a split with both exists."""
    groups = np.repeat(np.arange(5), [30, 10, 20, 25, 15])
    y = (np.arange(100) % 3 == 0).astype(int)
    for frac, want in ((0.1, 10), (0.3, 30), (0.45, 45)):
        tr, te = splits.stratified_holdout(y, frac, seed=0, groups=groups)
        assert len(te) == want and len(tr) + len(te) == 100
        assert not set(groups[tr]) & set(groups[te])
        assert set(y[te]) == {0, 1} and set(y[tr]) == {0, 1}
    # one class confined to two groups: the test side must still get one of them (and training the other)
    g2 = np.repeat(np.arange(6), 10)
    y2 = np.isin(g2, [4, 5]).astype(int)
    tr, te = splits.group_holdout(y2, 0.2, g2, seed=0)
    assert set(y2[te]) == {0, 1} and set(y2[tr]) == {0, 1} and len(te) == 20
    with pytest.raises(InputError, match="at least 2 groups, got 1"):
        splits.group_holdout(y2, 0.2, np.zeros(60), seed=0)
    with pytest.raises(InputError, match="60 group labels for 59 samples"):
        splits.group_holdout(y2[:59], 0.2, g2, seed=0)


def test_kfold_rejects_tiny_class_and_one_class():
    """Fault caught: a class with fewer samples than folds (empty test folds for it) or a single class
    accepted silently."""
    with pytest.raises(InputError) as e:
        splits.stratified_kfold([0] * 10 + [1] * 3, 5)
    assert e.value.line() == "labels: class 1 has 3 samples, fewer than 5 folds"
    with pytest.raises(InputError) as e:
        splits.stratified_kfold([1] * 10, 2)
    assert e.value.line() == "labels: only one class present ([1]) (expected at least two classes)"
    assert len(splits.stratified_kfold([0] * 5 + [1] * 5, 5)) == 5
