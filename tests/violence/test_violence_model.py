"""Diff-Gated shapes and parameter counts, the gate, Per-FedAvg steps against hand computation, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from detectlab.violence import task
from detectlab.violence.model import DiffGated, build_model, layer_table, param_counts, split_state


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


def test_groupnorm_and_chunk_standardisation():
    """Fault caught: the recipe silently missing (no GroupNorm in the convolutional blocks, or an input
    normalisation that lets a camera's brightness/contrast change the prediction), or a GroupNorm right before the
    global pooling (it made the pooled features the same for every chunk)."""
    m = DiffGated(width=4, norm="group", input_norm="chunk").eval()
    gns = [x for x in m.base.modules() if isinstance(x, nn.GroupNorm)]
    assert len(gns) == 6 and all(g.num_groups == 4 for g in gns)  # every convolution but the last
    assert not any(isinstance(x, nn.GroupNorm) for x in m.base.merge[-2:])
    rgb_only = DiffGated(width=4, norm="group_rgb")
    where = [n for n, x in rgb_only.base.named_modules() if isinstance(x, nn.GroupNorm)]
    assert len(where) == 2 and all(n.startswith("rgb.") for n in where)
    x = torch.rand(2, 3, 16, 32, 32) * 0.5
    with torch.no_grad():
        assert torch.allclose(m(x), m(0.6 * x + 0.2), atol=1e-4)  # darker/brighter camera: same logits
        plain = DiffGated(width=4).eval()
        assert not torch.allclose(plain(x), plain(0.6 * x + 0.2), atol=1e-3)
    w = 4  # GroupNorm adds a weight and a bias per channel: 2 * (w + 2w) per branch, then 2 * (4w + 4w)
    assert param_counts(m)["base"] == param_counts(DiffGated(width=w))["base"] + 2 * 2 * 3 * w + 2 * 8 * w


class DropNet(nn.Module):
    """A small network with dropout at batch > 1 (what the Hessian-free passes must handle)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


def test_hessian_free_passes_share_their_dropout_masks():
    """Fault caught (fault 1): the finite-difference gradient passes in train mode with fresh dropout masks, so
    two gradients at the same weights differ and the Hessian-vector estimate is noise (336 vs 7.2 measured).
    With a zero direction the estimate must be exactly 0; along a direction it must match autograd's
    Hessian-vector product under the same mask."""
    torch.manual_seed(0)
    m = DropNet().train()
    params = list(m.parameters())
    xb, yb = torch.randn(8, 6), torch.randint(0, 2, (8,))
    zero = [torch.zeros_like(p) for p in params]
    hv0 = task.hessian_vector_fd(m, params, zero, xb, yb, 1e-3)
    assert all(torch.count_nonzero(h) == 0 for h in hv0)
    v = [torch.randn_like(p) for p in params]
    state = torch.get_rng_state()
    hv = task.hessian_vector_fd(m, params, v, xb, yb, 1e-3)
    torch.set_rng_state(state)  # the same mask for the exact product
    g = torch.autograd.grad(nn.functional.cross_entropy(m(xb), yb), params, create_graph=True)
    exact = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params)
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(hv, exact)) ** 0.5
    den = sum(float((b ** 2).sum()) for b in exact) ** 0.5
    assert num / den < 0.02
    assert all(torch.equal(p, p0) for p, p0 in zip(params, [p.detach().clone() for p in params]))


def _hand_meta_step(m, batches, alpha):
    """By hand, with the dropout masks the tested step draws (seed 123, one pass per batch in order): the
    starting weights w0, the inner step w_tmp, the outer gradient g2 at w_tmp, and the exact Hessian-vector
    product H(w0; batch 3) g2; returns them and the RNG state to replay."""
    w0 = {n: p.detach().clone().requires_grad_(True) for n, p in m.named_parameters()}

    def loss_at(ws, b):
        return nn.functional.cross_entropy(torch.func.functional_call(m, ws, (b[0],)), b[1])

    torch.manual_seed(123)
    state = torch.get_rng_state()
    g1 = torch.autograd.grad(loss_at(w0, batches[0]), list(w0.values()))
    w_tmp = {n: (w - alpha * g).detach().requires_grad_(True) for (n, w), g in zip(w0.items(), g1)}
    g2 = torch.autograd.grad(loss_at(w_tmp, batches[1]), list(w_tmp.values()))
    gw = torch.autograd.grad(loss_at(w0, batches[2]), list(w0.values()), create_graph=True)
    hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(gw, g2)), list(w0.values()))
    return w0, w_tmp, g2, hv, state


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_perfedavg_step_matches_hand_computation(variant):
    """Fault caught: the meta-step not restoring the pre-step weights before the outer update (it would apply
    it to w_tmp), or the Hessian-free correction computed with other dropout masks than the hand computation
    (fault 1). A network with dropout at batch 8; the hand computation replays the same masks."""
    torch.manual_seed(0)
    m = DropNet().train()
    names = [n for n, _ in m.named_parameters()]
    batches = [(torch.randn(8, 6), torch.randint(0, 2, (8,))) for _ in range(3)]
    it = iter(batches)
    alpha, beta = 0.1, 0.05
    w0, w_tmp, g2, hv, state = _hand_meta_step(m, batches, alpha)
    if variant == "hf":  # exact Hessian-vector product H(w0; D'') g2 with the mask of the third pass
        update = [g - alpha * h for g, h in zip(g2, hv)]
    else:
        update = list(g2)
    want = [(w0[n] - beta * u).detach() for n, u in zip(names, update)]
    naive = [(w_tmp[n] - beta * u).detach() for n, u in zip(names, update)]
    torch.set_rng_state(state)
    task.perfedavg_steps(m, lambda: next(it), steps=1, alpha=alpha, beta=beta, variant=variant, delta=1e-3)
    for p, w in zip(m.parameters(), want):
        assert torch.allclose(p.detach(), w, atol=3e-5, rtol=1e-3)
    assert not torch.allclose(next(m.parameters()).detach(), naive[0], atol=1e-6)  # restored before the update


def test_hessian_free_correction_is_bounded():
    """Fault caught: an unbounded Hessian-free correction. With alpha too large for the curvature
    (alpha |H g| > |g|) the step must use the correction scaled to |g| (so |u| <= 2 |g|), by hand with the same
    dropout masks; with a small alpha (see the hand-computation test) nothing is scaled."""
    torch.manual_seed(0)
    m = DropNet().train()
    names = [n for n, _ in m.named_parameters()]
    batches = [(torch.randn(8, 6), torch.randint(0, 2, (8,))) for _ in range(3)]
    alpha, beta = 20.0, 0.05
    w0, _, g2, hv, state = _hand_meta_step(m, batches, alpha)
    g_norm = sum(float((g ** 2).sum()) for g in g2) ** 0.5
    c_norm = alpha * sum(float((h ** 2).sum()) for h in hv) ** 0.5
    assert c_norm > 3 * g_norm  # the case the bound is for
    want = [(w0[n] - beta * (g - alpha * (g_norm / c_norm) * h)).detach() for n, g, h in zip(names, g2, hv)]
    torch.set_rng_state(state)
    it = iter(batches)
    st = task.perfedavg_steps(m, lambda: next(it), steps=1, alpha=alpha, beta=beta, variant="hf", delta=1e-4)
    assert st["hf_clipped"] == 1
    for p, w in zip(m.parameters(), want):
        assert torch.allclose(p.detach(), w, atol=1e-4, rtol=1e-3)
    step = sum(float(((p.detach() - w0[n].detach()) ** 2).sum()) for n, p in zip(names, m.parameters())) ** 0.5
    assert step <= beta * 2 * g_norm * (1 + 1e-3)
    torch.manual_seed(0)
    small = task.perfedavg_steps(DropNet().train(), lambda: batches[0], steps=2, alpha=0.01, beta=beta, variant="hf")
    assert small["hf_clipped"] == 0


def test_hessian_free_paper_steps_stay_finite():
    """Fault caught: an honest Per-FedAvg (hf) client whose weights go NaN. With the paper preset's SGD steps
    (alpha 0.03, beta 0.1; no GroupNorm, fixed input normalisation) the unbounded correction drove the
    Diff-Gated weights to NaN within 30 meta-steps on these chunks (measured: the old CI failure of
    test_bad_updates_rejected_and_meta_strategies_run was this kind of divergence); bounded, they stay finite."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    m = build_model({"arch": "DiffGated", "width": 4, "hidden": [128, 32], "dropout": 0.2, "norm": "none",
                     "input_norm": "fixed", "groups": 4})
    x = torch.rand(64, 3, 16, 32, 32, generator=g)
    y = (torch.rand(64, generator=g) > 0.5).long()
    x[y == 1] += 0.2 * torch.randn(int((y == 1).sum()), 3, 16, 32, 32, generator=g)
    x = x.clamp(0, 1)

    def sample():
        i = torch.randint(0, 64, (8,), generator=g)
        return x[i], y[i]

    st = task.perfedavg_steps(m, sample, 30, 0.03, 0.1, "hf", 1e-3)
    assert math.isfinite(st["train_loss"]) and task.finite_state(m.state_dict())
    assert st["hf_clipped"] >= 1  # the bound was needed on this run


def test_perfedavg_rejects_unknown_variant():
    """Fault caught: an unknown variant silently run as first-order."""
    with pytest.raises(ValueError, match="variant"):
        task.perfedavg_steps(DropNet(), lambda: (torch.randn(2, 6), torch.tensor([0, 1])), 1, 0.1, 0.1, variant="xx")


def test_diff_gated_learns_the_synthetic_clips(syn_clips):
    """Fault caught: a training loop that does not learn (loss not falling, held-out clips at chance) with the
    recipe's windows, jitter, flips and per-chunk standardisation (GroupNorm off, as in the smoke preset: at
    width 4 it removes the synthetic clips' motion-magnitude cue); held out: one fight and one non-fight clip of
    every source (split by clip)."""
    from detectlab.violence.data import ClientData

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = len(syn_clips)
    te = np.asarray([i for i in range(n) if i % 4 in (0, 3)])
    tr = np.asarray([i for i in range(n) if i % 4 in (1, 2)])
    assert syn_clips.label[te].mean() == 0.5 and not set(te) & set(tr)
    data = ClientData(syn_clips.subset(tr), syn_clips.subset(tr[:0]), syn_clips.subset(te))
    m = DiffGated(width=4, input_norm="chunk")
    spec = {"lr": 3e-3, "batch": 8, "aug": {"stride": 8, "jitter": 4, "crop": 0, "flip": True}}
    before = task.evaluate(m, data.test)
    task.train_local(m, data, spec, epochs=8, rng=np.random.default_rng(0))
    after = task.evaluate(m, data.test)
    assert after["loss"] < before["loss"] - 0.2
    assert after["clip"]["balanced_accuracy"] >= 0.75
