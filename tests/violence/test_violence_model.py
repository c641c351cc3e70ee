"""Diff-Gated shapes and parameter counts, the gate, Per-FedAvg steps against hand computation, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detectlab.violence import task
from detectlab.violence.model import DiffGated, layer_table, param_counts, split_state


def test_shapes_and_input_check():
    m = DiffGated(width=4).eval()
    for s in (32, 48):
        assert m(torch.rand(3, 3, 16, s, s)).shape == (3, 2)
    with pytest.raises(ValueError, match="expected"):
        m(torch.rand(3, 16, 32, 32))


def test_parameter_counts_by_hand():
    w = 4  # conv: in*out*k + out; branches have two convs each, three convs after the gate
    conv1, conv2 = 3 * w * 9 + w, w * 2 * w * 27 + 2 * w
    conv3, conv4, conv5 = 2 * w * 4 * w * 27 + 4 * w, 4 * w * 4 * w * 27 + 4 * w, 4 * w * 8 * w * 27 + 8 * w
    base = 2 * (conv1 + conv2) + conv3 + conv4 + conv5
    head = (8 * w * 128 + 128) + (128 * 32 + 32) + (32 * 2 + 2)
    m = DiffGated(width=w)
    assert param_counts(m) == {"base": base, "head": head, "total": base + head} == \
        {"base": 26224, "head": 8418, "total": 34642}
    rows = layer_table(m)
    assert sum(r["type"] == "Conv3d" for r in rows) == 7 and sum(r["type"] == "Linear" for r in rows) == 3
    b, h = split_state(m.state_dict())
    assert set(b) | set(h) == set(m.state_dict()) and all(k.startswith("head.fc") for k in h)


def test_motion_branch_is_a_sigmoid_gate():
    m = DiffGated(width=4).eval()
    # a static clip has zero frame differences: with zero biases the gate is sigmoid(0) = 0.5 everywhere
    gate = m.base.diff(torch.zeros(2, 3, 16, 32, 32))
    assert torch.allclose(gate, torch.full_like(gate, 0.5))
    g = m.base.diff(torch.randn(2, 3, 16, 32, 32) * 5)
    g = g.detach()
    assert float(g.min()) >= 0 and float(g.max()) <= 1 and float(g.std()) > 0.01


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 2 * 2, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _grad(model, params, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, params, create_graph=True)


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_perfedavg_step_matches_hand_computation(variant):
    torch.manual_seed(0)
    m = Tiny()
    x = np.random.default_rng(0).integers(0, 255, (1, 16, 2, 2, 3), dtype=np.uint8)
    y = np.array([1])
    alpha, beta = 0.1, 0.05
    w0 = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    xt, yt = task.to_tensor(x), torch.as_tensor(y)
    ref = Tiny()

    def loss_at(ws):
        return nn.functional.cross_entropy(nn.functional.linear(xt.flatten(1), ws[0], ws[1]), yt)

    g1 = torch.autograd.grad(loss_at(w0), w0)
    w_tmp = [w - alpha * g for w, g in zip(w0, g1)]
    g2 = torch.autograd.grad(loss_at(w_tmp), w_tmp)
    if variant == "hf":  # exact Hessian-vector product H(w0) g2
        gw = torch.autograd.grad(loss_at(w0), w0, create_graph=True)
        hv = torch.autograd.grad(sum((a * b.detach()).sum() for a, b in zip(gw, g2)), w0)
        update = [g - alpha * h for g, h in zip(g2, hv)]
    else:
        update = g2
    want = [(w - beta * u).detach() for w, u in zip(w0, update)]
    del ref
    task.perfedavg_steps(m, x, y, steps=1, batch=1, alpha=alpha, beta=beta, gen=torch.Generator().manual_seed(0),
                         device=torch.device("cpu"), variant=variant, delta=1e-3)
    for p, w in zip(m.parameters(), want):
        assert torch.allclose(p.detach(), w, atol=2e-6, rtol=1e-4)
    # not the naive (un-restored) update w_tmp - beta * g2
    naive = [(w - beta * g).detach() for w, g in zip(w_tmp, g2)]
    assert not torch.allclose(next(m.parameters()).detach(), naive[0], atol=1e-7)


def test_perfedavg_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        task.perfedavg_steps(Tiny(), np.zeros((1, 16, 2, 2, 3), np.uint8), np.array([0]), 1, 1, 0.1, 0.1,
                             torch.Generator(), torch.device("cpu"), variant="xx")


def test_diff_gated_learns_the_synthetic_clips(syn_chunks):
    """Centralised training; held out: one fight and one non-fight clip of every source (split by clip)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y, clip = np.asarray(syn_chunks.x), syn_chunks.y, syn_chunks.clip
    te = np.isin(clip, [i for i in range(len(syn_chunks.clips)) if i % 4 in (0, 3)])
    assert y[te].mean() == 0.5 and not set(clip[te]) & set(clip[~te])
    m = DiffGated(width=4)
    gen = torch.Generator().manual_seed(0)
    before = task.evaluate(m, x[te], y[te])
    task.train_epochs(m, x[~te], y[~te], epochs=21, batch=8, lr=2e-3, gen=gen, device=torch.device("cpu"))
    after = task.evaluate(m, x[te], y[te])
    assert after["loss"] < before["loss"] - 0.2
    assert after["accuracy"] >= 0.75
