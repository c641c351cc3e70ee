import pytest
import torch
import torch.nn.functional as F

from detectlab.adversarial.attack import adaptive_pgd, fgsm, pgd, predict_labels
from detectlab.adversarial.detector import SteganalysisDetector


def test_pgd_stays_in_ball_and_raises_loss(trained_model, digits):
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
    # the model's state is left as it was
    assert all(p.requires_grad for p in trained_model.parameters())


def test_fgsm_is_one_signed_step(trained_model, digits):
    _, test = digits
    x, y = test.x[:50].clone(), test.y[:50]
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(trained_model(xr), y, reduction="sum"), xr)
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    assert torch.allclose(fgsm(trained_model, x, y, 0.1), expected, atol=1e-6)


def test_agrees_with_torchattacks_pgd(trained_model, digits):
    """Same random start (same RNG stream), same steps: success rates within 0.5 percentage points."""
    torchattacks = pytest.importorskip("torchattacks")
    train, test = digits
    x = torch.cat([test.x, train.x])[:1000]
    y = torch.cat([test.y, train.y])[:1000]
    eps, alpha, steps = 0.08, 0.01, 10
    torch.manual_seed(123)
    ours = pgd(trained_model, x, y, eps, alpha, steps, random_start=True, batch_size=1000)
    torch.manual_seed(123)
    theirs = torchattacks.PGD(trained_model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    succ_ours = (predict_labels(trained_model, ours) != y).float().mean().item()
    succ_theirs = (predict_labels(trained_model, theirs) != y).float().mean().item()
    assert 0.05 < succ_theirs < 0.95  # a regime where the comparison means something
    assert abs(succ_ours - succ_theirs) <= 0.005


def test_adaptive_attacker_lowers_the_statistic(trained_model, digits):
    train, test = digits
    det = SteganalysisDetector().fit(train.x)
    x, y = test.x[:50], test.y[:50]
    torch.manual_seed(0)
    plain = pgd(trained_model, x, y, 0.2, 0.02, 10)
    torch.manual_seed(0)
    adaptive = adaptive_pgd(trained_model, x, y, 0.2, det.threshold, weight=10.0, alpha=0.02, steps=10)
    assert det.score(adaptive).mean() < 0.7 * det.score(plain).mean()
    assert (adaptive - x).abs().max() <= 0.2 + 1e-6


def test_adaptive_attacker_returns_undetected_misclassified_when_found(trained_model, digits):
    """With a lenient threshold the adaptive attacker's returned images are misclassified and unflagged."""
    train, test = digits
    det = SteganalysisDetector(threshold=1e9)  # a detector that never fires
    x, y = test.x[:40], test.y[:40]
    adv = adaptive_pgd(trained_model, x, y, 0.3, det.threshold, alpha=0.03, steps=30)
    wrong = predict_labels(trained_model, adv) != y
    assert wrong.float().mean() > 0.8
    assert (adv - x).abs().amax() <= 0.3 + 1e-6
