"""Early stopping, the fine-tuning loop, BatchNorm re-estimation, checks every N iterations, the batch that
runs, the largest-batch finder, generators on the data's device, and a small real learning run."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectlab.core.errors import InputError
from detectlab.fluid.data import Prepared
from detectlab.fluid.train import (EarlyStopping, class_weights, evaluate, find_max_batch, fit, recalibrate_bn,
                                   heldout_metrics)

CPU = torch.device("cpu")


def test_early_stopping_counts_more_than_patience():
    """Catches: stopping at `patience` checks instead of after more than `patience`, or no reset."""
    es = EarlyStopping(patience=5)
    seq = [1.0, 0.9, 0.95, 0.9, 0.91, 0.92, 0.93]  # 0.9 again is no improvement
    assert [es.step(v) for v in seq] == [False] * 7  # five checks without improvement: go on
    assert es.step(0.99) is True  # the sixth: stop
    es = EarlyStopping(patience=5)
    assert [es.step(v) for v in [3, 2, 2.5, 1, 1.5, 1.6, 1.7, 1.8, 1.9]] == [False] * 9  # improvement resets


def _tc(**kw):
    base = dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, max_epochs=3, checks_per_epoch=2,
                val_every=0, patience=5, select_by="accuracy", eval_batch=16, aux_weight=0.3, class_weights=False,
                bn_recalibrate=False, bn_images=256)
    return SimpleNamespace(**(base | kw))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 2)

    def forward(self, x):
        return self.lin(x.flatten(1) * 8 - 4)


def _toy(n=64, seed=0):
    """Grey 4x4 images (uint8): class 1 brighter than class 0."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (torch.randn(n, 1, 4, 4, generator=g) * 20 + 90 + 80 * y.view(n, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
    return Prepared(x, y)


def test_fit_stops_after_six_checks_without_improvement():
    """Catches: early stopping that checks too often, too rarely, or stops one check early/late."""
    d = _toy()
    torch.manual_seed(0)
    res = fit(Tiny(), d.take(range(32)), d.take(range(32, 64)), _tc(lr=0.0, max_epochs=10), 8, CPU)
    # lr 0: the loss never improves after the first check; 4 steps per epoch, checks at 2 and 4
    assert res.stopped_early and len(res.checks) == 7
    assert [c["iteration"] for c in res.checks] == [2, 4, 6, 8, 10, 12, 14] and res.iterations == 14
    assert res.iterations_to_best == 2  # accuracy never improves strictly after the first check


def test_validation_every_n_iterations():
    """Fault 8: checks only at half-epochs quantise iterations_to_best; val_every=3 checks at 3, 6, 9, ..."""
    d = _toy()
    torch.manual_seed(0)
    res = fit(Tiny(), d.take(range(32)), d.take(range(32, 64)), _tc(val_every=3, max_epochs=4, patience=99), 8, CPU)
    assert [c["iteration"] for c in res.checks] == [3, 6, 9, 12, 15] and res.iterations == 16
    assert res.iterations_to_best % 3 == 0
    res = fit(Tiny(), d.take(range(32)), d.take(range(32, 64)), _tc(val_every=1, max_epochs=1, patience=99), 8, CPU)
    assert [c["iteration"] for c in res.checks] == [1, 2, 3, 4]


def test_fit_learns_and_keeps_the_chosen_state():
    """Catches: the final weights returned instead of the best check's, or metrics from another state."""
    d = _toy()
    torch.manual_seed(0)
    model = Tiny()
    res = fit(model, d.take(range(32)), d.take(range(32, 64)), _tc(), 8, CPU)
    assert res.iterations == 12 and len(res.checks) == 6 and not res.stopped_early
    assert res.best_accuracy == max(c["val_accuracy"] for c in res.checks) and res.best_accuracy > 0.9
    best = next(c for c in res.checks if c["val_accuracy"] == res.best_accuracy)
    assert res.iterations_to_best == best["iteration"]
    model.load_state_dict(res.state)
    _, acc, auc, prob = evaluate(model, d.take(range(32, 64)), CPU)
    assert acc == res.best_accuracy and auc == pytest.approx(res.best_auc) and prob.shape == (32,)
    # select_by="loss" keeps the check of the lowest validation loss
    res = fit(Tiny(), d.take(range(32)), d.take(range(32, 64)), _tc(select_by="loss"), 8, CPU)
    assert res.best_loss == min(c["val_loss"] for c in res.checks)


def test_batch_larger_than_the_training_part_is_refused():
    """Fault 4: bs = min(batch, n) ran the '16, 32, 64' rows of train10 at 11; a batch above n is refused
    (the protocol skips and reports it), and the batch that ran is returned."""
    d = _toy(n=24)
    with pytest.raises(InputError, match="larger than the 11 training images"):
        fit(Tiny(), d.take(range(11)), d.take(range(11, 24)), _tc(), 16, CPU)
    res = fit(Tiny(), d.take(range(11)), d.take(range(11, 24)), _tc(max_epochs=1), 8, CPU)
    assert res.batch == 8 and res.iterations == 1


class BNNet(torch.nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear whose activations sit far below 0 (mean about -44): after a few
    training steps the running mean is still near 0, so in eval mode every ReLU is off."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.out = torch.nn.Linear(8, 2)
        with torch.no_grad():
            self.lin.weight.fill_(10 / 16)
            self.lin.bias.fill_(-50.0)
            self.out.weight.copy_(torch.tensor([[-1.0] * 8, [1.0] * 8]))
            self.out.bias.zero_()

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.lin(x.flatten(1)))))


def test_batchnorm_reestimated_before_each_check():
    """Fault 2: with few updates the BatchNorm running statistics are stale and eval-mode outputs collapse to
    a constant (AUC 0.5) while train-mode outputs separate the classes; re-estimating them on the training
    images before each check gives non-constant eval outputs that separate the classes."""
    d = _toy()
    tr, va = d.take(range(32)), d.take(range(32, 64))
    stale = fit(BNNet(), tr, va, _tc(lr=0.0, max_epochs=1, checks_per_epoch=1), 8, CPU)
    assert stale.best_auc == 0.5  # constant eval outputs: the collapse
    model = BNNet()
    res = fit(model, tr, va, _tc(lr=0.0, max_epochs=1, checks_per_epoch=1, bn_recalibrate=True), 8, CPU)
    assert res.best_auc == 1.0 and res.best_accuracy == 1.0
    model.load_state_dict(res.state)
    x, y, _ = va.batch(torch.arange(32), CPU)
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[:, 1]
    assert float(p.std()) > 0.1 and float(p[y == 1].min()) > float(p[y == 0].max())
    # the estimate is the statistic of the training images themselves
    n = recalibrate_bn(model, tr, CPU, max_images=256, batch=8)
    xt, _, _ = tr.batch(torch.arange(32), CPU)
    h = model.lin(xt.flatten(1)).detach()
    assert n == 32 and torch.allclose(model.bn.running_mean, h.mean(0), atol=1e-4)


def test_class_weights_and_test_metrics():
    """Catches: class weights that favour the majority, and a balanced accuracy that is plain accuracy."""
    w = class_weights(torch.tensor([1, 1, 1, 0]))
    assert w.tolist() == pytest.approx([2.0, 2 / 3])
    m = heldout_metrics(np.array([1, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6]))
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5 and m["auc"] == 1.0
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0


def test_augmentation_generator_follows_the_data(monkeypatch):
    """GPU readiness: the augmentation draws from a generator made for the device the batches are moved to
    (a CPU ``torch.Generator()`` meeting CUDA tensors is an error on a GPU). Seam: fit asks make_generator
    for the training device and hands that very generator to augment; a hard-coded CPU generator (or one
    made for another device) fails here even on a CPU-only machine: training runs on ``cpu:0``, which a
    generator asked for ``"cpu"`` is not (tensors on cpu:0 report plain ``cpu``, so batches compare by type)."""
    from detectlab.fluid import train as T

    asked, made, seen = [], [], []
    real = T.make_generator

    def gen_spy(device, seed):
        asked.append(torch.device(device))
        made.append(real(device, seed))
        return made[-1]

    def aug_spy(x, m, g, **kw):
        seen.append((g, x.device))
        return x, m

    monkeypatch.setattr(T, "make_generator", gen_spy)
    monkeypatch.setattr(T, "augment_fn", aug_spy)
    d = _toy()
    dev0 = torch.device("cpu", 0)
    fit(Tiny(), d.take(range(32)), d.take(range(32, 64)), _tc(max_epochs=1), 8, dev0, augment=True)
    assert asked == [dev0]  # the training device itself, not a device named in the code
    assert len(seen) == 4  # 32 images, batches of 8, one epoch: every batch augmented
    assert all(g is made[0] and dev.type == dev0.type for g, dev in seen)  # with that very generator


def test_find_max_batch_cpu_measures_each_architecture_on_its_own():
    """Fault 3: ru_maxrss is a lifetime peak (and Linux hands it to child processes): after one large
    allocation every later architecture got the cap. Each architecture is measured in a fresh subprocess
    on its own peak (VmHWM): a big peak in this process changes nothing, and under a budget the answer is
    the largest batch whose measured memory fits, not the cap."""
    big, secs, info = find_max_batch("squeezenet", 48, CPU, cap=1024, budget_bytes=1 << 40)
    assert big == 1024 and info["per_image_bytes"] > 1e4 and secs > 0
    budget = int(info["fixed_bytes"] + 40 * info["per_image_bytes"])
    peak = np.ones(400 * 2**20 // 8)  # a 400 MB peak in the calling process
    peak[::512] += 1
    b2, _, i2 = find_max_batch("squeezenet", 48, CPU, cap=1024, budget_bytes=budget)
    del peak
    assert b2 == 32  # 40 images' worth of budget: 32 fits, 64 does not
    assert i2["per_image_bytes"] == pytest.approx(info["per_image_bytes"], rel=0.5)


def test_resnet18_learns_synthetic_fluid(syn_root):
    """A tiny real run: resnet18 from scratch on the built-in B-scans (retina band) ranks held-out fluid
    B-scans above no-fluid ones; catches a training loop, preprocessing or label pipeline that does not learn."""
    from detectlab.fluid.data import Prep, load_dataset, prepare
    from detectlab.fluid.model import build

    ds = load_dataset(syn_root)
    p = prepare(ds, Prep("retina", (32, 48), band_rows=0.6, band_cols=0.9))
    va = np.flatnonzero(np.isin(ds.subjects, ["SYN003"]))
    tr = np.flatnonzero(~np.isin(ds.subjects, ["SYN003"]))
    torch.manual_seed(0)
    tc = _tc(optimizer="adam", lr=1e-3, max_epochs=8, patience=100, class_weights=True, bn_recalibrate=True,
             select_by="loss")
    res = fit(build("resnet18"), p.take(tr), p.take(va), tc, 8, CPU, seed=0, augment=True)
    yv = p.y[va].float()
    majority = max(float(yv.mean()), 1 - float(yv.mean()))
    assert res.iterations == 24
    assert res.best_auc > 0.85 and res.best_accuracy > majority


def test_a_training_step_keeps_every_tensor_on_the_data_device():
    """GPU readiness without a GPU: batches, augmentation draws, class weights, the mask target and its
    pos_weight all follow the device of the model and data ('meta' here); a CPU tensor left in the step
    (e.g. class weights not moved) would fail exactly as it would on CUDA."""
    from detectlab.fluid.data import augment
    from detectlab.fluid.model import build
    from detectlab.fluid.train import make_generator, make_optimizer, train_step

    meta = torch.device("meta")
    d = Prepared(torch.randint(0, 255, (8, 1, 32, 48), dtype=torch.uint8), torch.tensor([0, 1] * 4),
                 torch.randint(0, 255, (8, 1, 32, 48), dtype=torch.uint8))
    model = build("resnet18", mask_head=True).to(meta)
    opt = make_optimizer(model.parameters(), _tc(optimizer="adam", lr=1e-3))
    x, y, m = d.batch(torch.arange(8), meta)
    assert x.device == y.device == m.device == meta and x.dtype == torch.float32
    x, m = augment(x, m, make_generator(meta, 0))
    loss = train_step(model, opt, x, y, m, _tc(), class_weights(d.y).to(meta), mask_weight=1.0)
    assert loss.device == meta
    with pytest.raises((RuntimeError, NotImplementedError)):
        train_step(model, opt, x, y, m, _tc(), class_weights(d.y), mask_weight=1.0)  # CPU weights meet meta
