"""Early stopping, the fine-tuning loop (checks, best-accuracy state), fresh state per fold, batch finder."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectlab.fluid.train import EarlyStopping, evaluate, find_max_batch, fit


def test_early_stopping_counts_more_than_patience():
    es = EarlyStopping(patience=5)
    seq = [1.0, 0.9, 0.95, 0.9, 0.91, 0.92, 0.93]  # 0.9 again is no improvement
    assert [es.step(v) for v in seq] == [False] * 7  # five checks without improvement: go on
    assert es.step(0.99) is True  # the sixth: stop
    es = EarlyStopping(patience=5)
    assert [es.step(v) for v in [3, 2, 2.5, 1, 1.5, 1.6, 1.7, 1.8, 1.9]] == [False] * 9  # improvement resets


def _tc(**kw):
    base = dict(lr=0.01, momentum=0.9, max_epochs=3, checks_per_epoch=2, patience=5, eval_batch=16, aux_weight=0.3)
    return SimpleNamespace(**(base | kw))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 2)

    def forward(self, x):
        return self.lin(x.flatten(1))


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 4, 4, generator=g) * 0.3 + (y.float() * 2 - 1).view(n, 1, 1, 1)
    return x, y


def test_fit_stops_after_six_checks_without_improvement():
    x, y = _toy()
    torch.manual_seed(0)
    res = fit(Tiny(), x[:32], y[:32], x[32:], y[32:], _tc(lr=0.0, max_epochs=10), 8,
              torch.device("cpu"), torch.Generator().manual_seed(0))
    # lr 0: the loss never improves after the first check; 4 steps per epoch, checks at 2 and 4
    assert res.stopped_early and len(res.checks) == 7
    assert [c["iteration"] for c in res.checks] == [2, 4, 6, 8, 10, 12, 14] and res.iterations == 14
    assert res.iterations_to_best == 2  # accuracy never improves strictly after the first check


def test_fit_learns_and_keeps_best_accuracy_state():
    x, y = _toy()
    torch.manual_seed(0)
    model = Tiny()
    res = fit(model, x[:32], y[:32], x[32:], y[32:], _tc(), 8, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert res.iterations == 12 and len(res.checks) == 6 and not res.stopped_early
    assert res.best_accuracy == max(c["val_accuracy"] for c in res.checks) and res.best_accuracy > 0.9
    best = next(c for c in res.checks if c["val_accuracy"] == res.best_accuracy)
    assert res.iterations_to_best == best["iteration"]
    model.load_state_dict(res.state)
    _, acc, auc, prob = evaluate(model, x[32:], y[32:], torch.device("cpu"))
    assert acc == res.best_accuracy and auc == pytest.approx(res.best_auc) and prob.shape == (32,)


def test_fresh_state_per_fold(syn_root):
    """A fold's result does not depend on the folds run before it in the same process."""
    from detectlab.core.config import to_dict
    from detectlab.fluid.experiment import Config, fold_unit

    cfg = Config(archs=["squeezenet"], folds=2, input_size=32, resize=32)
    cfg.train.max_epochs = 1
    cfg.train.lr = 0.01
    cd = to_dict(cfg)
    kw = dict(variant="", design="train90", arch="squeezenet", batch=8, cfg_dict=cd, data=str(syn_root))
    alone = fold_unit(fold=1, **kw)
    fold_unit(fold=0, **kw)
    again = fold_unit(fold=1, **kw)
    for k in ("accuracy", "auc", "iterations_to_best", "iterations"):
        assert alone[k] == again[k] or (np.isnan(alone[k]) and np.isnan(again[k]))
    assert [c["val_loss"] for c in alone["checks"]] == pytest.approx([c["val_loss"] for c in again["checks"]])
    assert alone["n_train"] + alone["n_val"] == 32


def test_find_max_batch_cpu():
    b, secs = find_max_batch("squeezenet", 32, torch.device("cpu"), cap=32)
    assert b in (8, 16, 32) and secs > 0
    b, _ = find_max_batch("squeezenet", 32, torch.device("cpu"), cap=8)
    assert b == 8


def test_resnet18_learns_synthetic_fluid(syn_root):
    """A tiny real run: resnet18 from scratch on the built-in B-scans ranks fluid above no-fluid."""
    from detectlab.fluid.data import load_dataset, to_tensor
    from detectlab.fluid.model import build

    ds = load_dataset(syn_root)
    x, y = to_tensor(ds.images, 32, 32), torch.from_numpy(ds.labels)
    va = np.isin(ds.subjects, ["SYN003"])
    torch.manual_seed(0)
    res = fit(build("resnet18"), x[~va], y[~va], x[va], y[va], _tc(lr=1e-3, max_epochs=10, patience=100), 8,
              torch.device("cpu"), torch.Generator().manual_seed(0))
    majority = max(float(y[va].float().mean()), 1 - float(y[va].float().mean()))
    assert res.iterations == 30
    assert res.best_auc > 0.85 and res.best_accuracy > majority
