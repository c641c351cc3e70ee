import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectlab.adversarial import attack as atk
from detectlab.adversarial.attack import (adaptive_attack, apgd, cw_l2, deliver, fgsm, margin_loss, pgd,
                                          predict_labels, uniform_noise)
from detectlab.adversarial.detector import SteganalysisDetector, statistic_fast, to_uint8


def test_pgd_stays_in_ball_and_raises_loss(trained_model, digits):
    """Faults: no projection onto the eps-ball or [0, 1]; a step that descends the loss; the model left
    with frozen parameters after attacking."""
    _, test = digits
    x, y = test.x[:100], test.y[:100]
    with torch.no_grad():
        losses = [F.cross_entropy(trained_model(x), y)]
    for eps in (0.05, 0.2):
        adv = pgd(trained_model, x, y, eps, alpha=0.02, steps=10, batch_size=64)
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            losses.append(F.cross_entropy(trained_model(adv), y))
    # the loss rises with the budget: x2 at eps 0.05, and past ln(10) (worse than chance) at eps 0.2
    assert losses[1] > 2 * losses[0] and losses[2] > 2.3 > losses[1]
    acc = (predict_labels(trained_model, pgd(trained_model, x, y, 0.3, 0.02, 20)) == y).float().mean()
    assert acc < 0.05  # a natural model does not survive eps 0.3
    assert torch.equal(pgd(trained_model, x, y, 0.0), x)
    assert all(p.requires_grad for p in trained_model.parameters())


def test_fgsm_is_one_signed_step(trained_model, digits):
    """Fault: FGSM with a random start, several steps, or an unsigned gradient."""
    _, test = digits
    x, y = test.x[:50].clone(), test.y[:50]
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(trained_model(xr), y, reduction="sum"), xr)
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    assert torch.allclose(fgsm(trained_model, x, y, 0.1), expected, atol=1e-6)


def test_same_images_as_torchattacks_pgd(trained_model, digits):
    """Same random start (same RNG stream), same steps: the same adversarial images, pixel for pixel
    (fault: another projection order, step rule or start distribution than Madry/torchattacks)."""
    torchattacks = pytest.importorskip("torchattacks")
    _, test = digits
    x, y = test.x[:200], test.y[:200]
    eps, alpha, steps = 0.08, 0.01, 10
    torch.manual_seed(123)
    ours = pgd(trained_model, x, y, eps, alpha, steps, random_start=True, batch_size=200)
    torch.manual_seed(123)
    theirs = torchattacks.PGD(trained_model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    assert ((ours - theirs).abs() > 1e-5).float().mean() < 0.001
    succ = (predict_labels(trained_model, ours) != y).float().mean()
    assert 0.05 < succ < 0.95  # a regime where the comparison means something


def test_random_start_draws_on_the_generators_device(trained_model, monkeypatch):
    """Fault (issue 11 §6): the random start drew from a CPU torch.Generator into tensors on the model's
    device, which crashes on CUDA. On the `meta` device the same code path runs without a GPU; every
    uniform_ call with a generator must fill a tensor on the generator's own device."""
    real = torch.Tensor.uniform_
    seen = []

    def checked(self, a=0.0, b=1.0, *, generator=None):
        if generator is not None:
            seen.append((generator.device.type, self.device.type))
        return real(self, a, b, generator=generator)

    monkeypatch.setattr(torch.Tensor, "uniform_", checked)
    model = type(trained_model)().to("meta")
    x = torch.empty(6, 1, 28, 28, device="meta")
    y = torch.zeros(6, dtype=torch.long, device="meta")
    out = pgd(model, x, y, 0.3, 0.01, 2, True, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta"
    assert uniform_noise(x, 0.3, torch.Generator().manual_seed(0)).device.type == "meta"
    assert seen and all(g == t for g, t in seen), seen
    # and the same seed gives the same start wherever the data live
    a = uniform_noise(torch.zeros(3, 4), 0.3, torch.Generator().manual_seed(5))
    b = uniform_noise(torch.zeros(3, 4, dtype=torch.float32), 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.abs().max() <= 0.3


def test_deliver_rounds_into_the_ball_and_floor_follows_the_authors():
    """An attacker hands over 8-bit images: 'round' gives the nearest level but never leaves the eps-ball
    (fault: rounding 0.3·255 = 76.5 levels up to 77); 'floor' is the authors' truncation."""
    x = torch.full((1, 1, 3, 3), 100 / 255)
    adv = x + torch.tensor([0.3, -0.3, 0.102, 0.0, 0.002, -0.002, 0.3, 0.299, -0.2]).view(1, 1, 3, 3)
    r = deliver(adv.clamp(0, 1), x, 0.3, "round").view(-1).tolist()
    assert r == [176, 24, 126, 100, 101, 99, 176, 176, 49]
    f = deliver(adv.clamp(0, 1), x, 0.3, "floor").view(-1).tolist()
    assert f == (adv.clamp(0, 1).float() * 255).view(-1).numpy().astype(int).tolist()


def test_margin_loss_is_madrylab_cw():
    """MadryLab's 'cw' loss: -relu(z_y - max_{j != y} z_j + 50). Fault: the max taken over all classes."""
    z = torch.tensor([[5.0, 1.0, 3.0], [0.0, 80.0, 10.0]])
    assert margin_loss(z, torch.tensor([0, 2])).tolist() == [-52.0, 0.0]


def test_cw_margin_matches_torchattacks(trained_model, digits):
    """Our device-safe override of torchattacks.CW.f equals the original on the CPU (fault: another margin);
    saturated pixels get a finite tanh-space start (fault: ±inf, they never move); CW returns misclassified
    images, else the clean one (its contract)."""
    torchattacks = pytest.importorskip("torchattacks")
    z = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    lab = torch.arange(7)
    ours = atk._cw_class()(trained_model, kappa=0.5)
    theirs = torchattacks.CW(trained_model, kappa=0.5)
    assert torch.allclose(ours.f(z, lab), theirs.f(z, lab))
    w = ours.inverse_tanh_space(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isfinite(w).all() and torch.allclose(ours.tanh_space(w), torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)
    assert not torch.isfinite(theirs.inverse_tanh_space(torch.tensor([0.0]))).all()
    _, test = digits
    x, y = test.x[:40], test.y[:40]
    adv = cw_l2(trained_model, x, y, c=10.0, steps=30, lr=0.05, batch_size=40)
    wrong = predict_labels(trained_model, adv) != y
    assert wrong.float().mean() > 0.3  # 0.425 measured: most MNIST-like pixels sit at 0 or 1, slow in tanh space
    assert torch.equal(adv[~wrong], x[~wrong])


def test_apgd_keeps_the_ball_and_the_callers_rng(trained_model, digits):
    """torchattacks' APGD reseeds the global RNG: the caller's stream must continue unchanged (fault:
    every later random start identical across units); it stays in the ball and breaks the model."""
    _, test = digits
    x, y = test.x[:60], test.y[:60]
    torch.manual_seed(7)
    adv = apgd(trained_model, x, y, 0.3, steps=10, batch_size=30)
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))
    assert (adv - x).abs().max() <= 0.3 + 1e-6
    assert (predict_labels(trained_model, adv) == y).float().mean() < 0.1


@pytest.fixture(scope="module")
def detector(digits):
    train, _ = digits
    return SteganalysisDetector().fit(to_uint8(train.x))


def test_adaptive_penalty_is_what_evades_the_detector(trained_model, digits, detector):
    """Fault: the detector term has no effect (weight 0 still passes the old test). With the penalty the
    delivered images evade the detector far more often than plain PGD's or the weight-0 attacker's."""
    _, test = digits
    x, y = test.x[:60], test.y[:60]
    thr = detector.threshold
    # the built-in digits are smoother than MNIST (threshold 0.0038 vs 0.013): sign steps of 0.004
    kw = dict(alpha=0.004, steps=30, variants=("penalty",), batch_size=60)
    with_pen = adaptive_attack(trained_model, x, y, 0.2, thr, weight=10.0, **kw)
    no_pen = adaptive_attack(trained_model, x, y, 0.2, thr, weight=0.0, **kw)
    plain = pgd(trained_model, x, y, 0.2, 0.004, 30, random_start=False)

    def undetected(adv):
        u8 = to_uint8(adv)
        return ((predict_labels(trained_model, u8.float() / 255) != y)
                & (statistic_fast(u8) <= thr)).float().mean().item()

    assert undetected(with_pen.x) > 0.3
    assert undetected(with_pen.x) > undetected(no_pen.x) + 0.2
    assert undetected(with_pen.x) > undetected(plain) + 0.2


def test_adaptive_successes_are_real_after_quantisation(trained_model, digits, detector):
    """With the real threshold (not one that never fires): every image the attacker reports as broken is,
    as delivered (8-bit, inside the ball), misclassified and under the threshold; others are not.
    Faults: checking the unquantised iterate, reporting the last instead of the successful iterate."""
    _, test = digits
    x, y = test.x[:50], test.y[:50]
    thr = detector.threshold
    res = adaptive_attack(trained_model, x, y, 0.3, thr, alpha=0.01, steps=20, batch_size=20,
                          variants=("penalty", "margin", "restart", "maxnorm"), generator=torch.Generator().manual_seed(0))
    levels = res.x * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert ((levels.round() - (x * 255).round()).abs() <= int(0.3 * 255)).all()
    broken = (predict_labels(trained_model, res.x) != y) & (statistic_fast(to_uint8(res.x)) <= thr)
    assert torch.equal(broken, res.variant >= 0)
    assert broken.float().mean() > 0.2
    # variants run only on what the first left, so they only add successes
    first = adaptive_attack(trained_model, x, y, 0.3, thr, alpha=0.01, steps=20, batch_size=20,
                            variants=("penalty",))
    assert (res.variant >= 0).sum() >= (first.variant >= 0).sum()
    assert torch.equal(res.variant[first.variant >= 0], first.variant[first.variant >= 0])
    with pytest.raises(ValueError, match="unknown adaptive variant"):
        adaptive_attack(trained_model, x, y, 0.1, thr, variants=("blur",))
    assert np.all(adaptive_attack(trained_model, x, y, 0.0, thr).variant.numpy() == -1)
