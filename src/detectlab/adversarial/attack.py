"""Batched L∞ attacks: PGD with random start (Madry et al.), FGSM, and an adaptive PGD that knows the detector.

All attacks work on images in [0, 1] and keep ||x_adv - x||∞ <= eps and x_adv in [0, 1].
They run in chunks of `batch_size` so memory stays bounded on 10k-image sets.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from detectlab.adversarial.detector import statistic


@contextmanager
def _frozen(model: nn.Module):
    """Eval mode and no parameter gradients while attacking (the attack only needs d loss / d x)."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def _in_chunks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
               attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run `attack(xb, yb)` on the model's device chunk by chunk, parameters frozen; results on x's device."""
    dev = next(model.parameters()).device
    out = torch.empty_like(x)
    with _frozen(model):
        for i in range(0, len(x), batch_size):
            out[i: i + batch_size] = attack(x[i: i + batch_size].to(dev), y[i: i + batch_size].to(dev)).to(out.device)
    return out


def _pgd_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
               random_start: bool, generator: torch.Generator | None,
               extra_loss: Callable[[torch.Tensor], torch.Tensor] | None, sign: bool = True) -> torch.Tensor:
    lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    if random_start:
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator) if generator is not None \
            else torch.empty_like(x).uniform_(-eps, eps)
        adv = torch.max(torch.min(x + noise, hi), lo)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        if extra_loss is not None:
            loss = loss + extra_loss(adv)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            if sign:  # L-inf steepest ascent
                step = grad.sign_()
            else:  # plain gradient scaled so its largest pixel moves by alpha
                step = grad / grad.abs().amax(dim=tuple(range(1, grad.dim())), keepdim=True).clamp_min_(1e-12)
            adv = adv.detach().add_(step, alpha=alpha)
            adv = torch.max(torch.min(adv, hi), lo)
    return adv.detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float = 0.01, steps: int = 40,
        random_start: bool = True, batch_size: int = 1000, generator: torch.Generator | None = None,
        extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None, sign: bool = True) -> torch.Tensor:
    """Untargeted L∞ PGD maximising cross-entropy (plus `extra_loss`, summed over the batch).

    Same algorithm as Madry et al. and torchattacks.PGD: uniform random start in the eps-ball, then
    `steps` signed-gradient steps of `alpha`, each projected back onto the ball and onto [0, 1].
    """
    if eps <= 0:
        return x.clone()
    return _in_chunks(model, x, y, batch_size, lambda xb, yb: _pgd_batch(
        model, xb, yb, eps, alpha, steps, random_start, generator, extra_loss, sign))


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int = 1000) -> torch.Tensor:
    """Fast gradient sign method: one step of size eps, no random start."""
    return pgd(model, x, y, eps, alpha=eps, steps=1, random_start=False, batch_size=batch_size)


def adaptive_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, threshold: float,
                 weight: float = 10.0, alpha: float = 0.01, steps: int = 40, batch_size: int = 1000,
                 generator: torch.Generator | None = None, margin: float = 0.9) -> torch.Tensor:
    """An attacker who knows the detector and its threshold.

    Projected gradient ascent on  CE - weight * relu(statistic / threshold - margin): the detector term
    only pushes back once an image nears the threshold. It starts at x (a uniform random start is itself
    the high-frequency noise the detector measures) and takes gradient steps scaled so the largest pixel
    change is `alpha` (sign steps would add +-alpha to every pixel, again noise the detector sees).
    For each image it returns the first iterate that is misclassified and under the threshold, if any,
    else the last iterate. Projection onto the eps-ball and [0, 1] as in PGD.
    """
    if eps <= 0:
        return x.clone()

    def batch(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        lo, hi = (xb - eps).clamp(min=0.0), (xb + eps).clamp(max=1.0)
        adv, best = xb.clone(), xb.clone()
        found = torch.zeros(len(xb), dtype=torch.bool, device=xb.device)
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model(adv)
            stat = statistic(adv)
            loss = F.cross_entropy(logits, yb, reduction="sum") \
                - weight * torch.relu(stat / threshold - margin).sum()
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                scale = grad.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min_(1e-12)
                adv = torch.max(torch.min(adv.detach() + alpha * grad / scale, hi), lo)
                ok = (model(adv).argmax(1) != yb) & (statistic(adv) <= threshold) & ~found
                best[ok] = adv[ok]
                found |= ok
        return torch.where(found[:, None, None, None], best, adv)

    return _in_chunks(model, x, y, batch_size, batch)


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i: i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was)
    return out
