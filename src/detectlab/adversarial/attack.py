"""Batched L∞ attacks on images in [0, 1]: PGD with random start (Madry et al.), FGSM, APGD-CE and CW-L2
(torchattacks), and the adaptive attacker who knows the detector.

PGD, FGSM and APGD keep ||x_adv - x||∞ <= eps and x_adv in [0, 1]; CW-L2 is unbounded in L∞ (it
minimises the L2 distortion). All attacks run in chunks of `batch_size` on the model's device with
the model's parameters frozen; results come back on the device of x.

Random starts are drawn from a `torch.Generator` on the generator's own device (a CPU generator by
default) and then moved to the data, so a run is reproducible whatever the device and a CPU generator
never meets a CUDA tensor. Without a generator the global RNG of x's device is used (as torchattacks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detectlab.adversarial.config import ADAPTIVE_VARIANTS
from detectlab.adversarial.detector import statistic, statistic_fast, to_uint8

LOSSES = ("ce", "margin")
STEPS = ("sign", "maxnorm")


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


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _in_chunks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
               attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run `attack(xb, yb)` on the model's device chunk by chunk, parameters frozen; results on x's device."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} < 1")
    dev = model_device(model)
    out = torch.empty_like(x)
    with _frozen(model):
        for i in range(0, len(x), batch_size):
            out[i: i + batch_size] = attack(x[i: i + batch_size].to(dev), y[i: i + batch_size].to(dev)).to(out.device)
    return out


def uniform_noise(like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """U(-eps, eps) noise shaped like `like`, on like's device.

    With a generator, the noise is drawn on the generator's device (wherever that is) and moved:
    the same seed gives the same start on a CPU and on a GPU.
    """
    if generator is None:
        return torch.empty_like(like).uniform_(-eps, eps)
    noise = torch.empty(like.shape, dtype=like.dtype, device=generator.device)
    return noise.uniform_(-eps, eps, generator=generator).to(like.device)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-image CW margin as in MadryLab's attack: -relu(z_y - max_{j≠y} z_j + kappa) (maximised)."""
    correct = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return -torch.relu(correct - other + kappa)


def _loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "margin":
        return margin_loss(logits, y)
    raise ValueError(f"unknown loss '{kind}' (one of {', '.join(LOSSES)})")


def _step(grad: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "sign":  # L∞ steepest ascent
        return grad.sign()
    if rule == "maxnorm":  # the gradient scaled so that its largest pixel moves by alpha
        return grad / grad.abs().amax(dim=tuple(range(1, grad.dim())), keepdim=True).clamp_min(1e-12)
    raise ValueError(f"unknown step rule '{rule}' (one of {', '.join(STEPS)})")


def _pgd_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
               random_start: bool, generator: torch.Generator | None,
               extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None, step: str = "sign",
               loss: str = "ce") -> torch.Tensor:
    lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    adv = torch.max(torch.min(x + uniform_noise(x, eps, generator), hi), lo) if random_start else x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        obj = _loss(loss, model(adv), y).sum()
        if extra_loss is not None:
            obj = obj + extra_loss(adv)
        (grad,) = torch.autograd.grad(obj, adv)
        with torch.no_grad():
            adv = adv.detach().add_(_step(grad, step), alpha=alpha)
            adv = torch.max(torch.min(adv, hi), lo)
    return adv.detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float = 0.01, steps: int = 40,
        random_start: bool = True, batch_size: int = 1000, generator: torch.Generator | None = None,
        extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None, step: str = "sign",
        loss: str = "ce") -> torch.Tensor:
    """Untargeted L∞ PGD maximising the summed loss ('ce' or 'margin', plus `extra_loss`).

    Same algorithm as MadryLab's attack and torchattacks.PGD: uniform random start in the eps-ball
    (clipped to [0, 1]), then `steps` signed-gradient steps of `alpha`, each projected back onto the
    ball and onto [0, 1].
    """
    if eps <= 0:
        return x.clone()
    return _in_chunks(model, x, y, batch_size, lambda xb, yb: _pgd_batch(
        model, xb, yb, eps, alpha, steps, random_start, generator, extra_loss, step, loss))


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int = 1000) -> torch.Tensor:
    """Fast gradient sign method: one step of size eps, no random start."""
    return pgd(model, x, y, eps, alpha=eps, steps=1, random_start=False, batch_size=batch_size)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40, n_restarts: int = 1,
         seed: int = 0, batch_size: int = 1000, loss: str = "ce") -> torch.Tensor:
    """APGD (Croce & Hein 2020) from torchattacks, L∞, cross-entropy ('ce') or DLR loss ('dlr').

    torchattacks reseeds the global RNG with `seed`; the caller's RNG state is restored afterwards.
    """
    import torchattacks

    if eps <= 0:
        return x.clone()
    with torch.random.fork_rng(devices=_cuda_devices()):
        atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts, seed=seed,
                                loss=loss)
        return _in_chunks(model, x, y, batch_size, lambda xb, yb: atk(xb, yb))


def _cw_class():
    import torchattacks

    class CW(torchattacks.CW):
        """torchattacks.CW with two fixes: its margin is built on the logits' device (3.3.0 indexes a CPU
        identity matrix with the labels, which fails on CUDA), and the tanh change of variables is taken
        of x·0.999999 as in Carlini & Wagner's own code (torchattacks maps the pixels at exactly 0 or 1, most
        of an MNIST image, to ±inf, where they can never move)."""

        def inverse_tanh_space(self, x):
            return self.atanh(torch.clamp(x * 2 - 1, -0.999999, 0.999999))

        def f(self, outputs, labels):
            one_hot = F.one_hot(labels, outputs.shape[1]).to(outputs.dtype)
            i, _ = torch.max((1 - one_hot) * outputs, dim=1)
            j = torch.masked_select(outputs, one_hot.bool())
            if self.targeted:
                return torch.clamp(i - j, min=-self.kappa)
            return torch.clamp(j - i, min=-self.kappa)

    return CW


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float = 1.0, kappa: float = 0.0,
          steps: int = 100, lr: float = 0.01, batch_size: int = 1000) -> torch.Tensor:
    """Carlini-Wagner L2 (torchattacks): per image the smallest-L2 misclassified iterate, else the clean image."""
    atk = _cw_class()(model, c=c, kappa=kappa, steps=steps, lr=lr)
    return _in_chunks(model, x, y, batch_size, lambda xb, yb: atk(xb, yb))


def deliver(adv: torch.Tensor, x: torch.Tensor, eps: float | None, mode: str = "round") -> torch.Tensor:
    """The 8-bit image an attacker hands over: uint8 levels of `adv`.

    'round': nearest level, then clipped into the eps-ball around x's levels (a rounded pixel could
    otherwise exceed the budget by half a level); 'floor': the authors' `(adv * 255).astype(int)`, not
    clipped; 'none' is 'round' without the clip (a uint8 image must hold integers). eps=None: no ball.
    """
    u8 = to_uint8(adv, "floor" if mode == "floor" else "round")
    if mode == "round" and eps is not None:
        x8 = to_uint8(x, "round").to(torch.int16)
        r = int(eps * 255.0 + 1e-6)
        u8 = torch.max(torch.min(u8.to(torch.int16), x8 + r), x8 - r).to(torch.uint8)
    return u8


# ----------------------------------------------------------------------------------- adaptive attack


@dataclass
class AdaptiveResult:
    """Delivered 8-bit images (as [0, 1] floats on exact levels) and, per image, the first variant that
    produced a misclassified, unflagged image (-1: none did)."""

    x: torch.Tensor
    variant: torch.Tensor


def adaptive_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, threshold: float, *,
                    weight: float = 10.0, margin: float = 0.9, alpha: float = 0.01, steps: int = 40,
                    variants: Sequence[str] = ADAPTIVE_VARIANTS, restarts: int = 1, restart_radius: float = 0.02,
                    quantization: str = "round", c: float = 5.0, divisor: int = 3, batch_size: int = 1000,
                    generator: torch.Generator | None = None) -> AdaptiveResult:
    """The strongest attacker we know against the detector + classifier pair.

    Each variant is PGD on  loss - weight * relu(statistic / threshold - margin)  (summed per image), the
    detector term pushing back only as an image nears the threshold:
      'penalty': cross-entropy, sign steps, start at x (the default attacker);
      'margin':  CW margin loss, sign steps, start at x;
      'restart': cross-entropy, sign steps, from x + U(-r, r) noise, r = min(eps, restart_radius),
                 `restarts` times (a full-radius Madry start is itself noise the detector sees);
      'maxnorm': cross-entropy, the gradient scaled so its largest pixel moves by alpha, start at x
                 (small changes where the gradient is small: wins where sign steps are too noisy).
    After every step the iterate is quantised to 8 bits the way the defender will read it (the
    attacker must deliver a valid image) and checked: misclassified and statistic <= threshold means
    done for that image, which leaves the batch. Variants run in turn on the images still undone;
    per image the first success is kept, else the last iterate of the first variant.
    """
    for v in variants:
        if v not in ADAPTIVE_VARIANTS:
            raise ValueError(f"unknown adaptive variant '{v}' (one of {', '.join(ADAPTIVE_VARIANTS)})")
    passes = [(v, "margin" if v == "margin" else "ce", min(eps, restart_radius) if v == "restart" else 0.0,
               "maxnorm" if v == "maxnorm" else "sign")
              for v in variants for _ in range(restarts if v == "restart" else 1)]
    variant_id = {v: i for i, v in enumerate(ADAPTIVE_VARIANTS)}
    record = torch.full((len(x),), -1, dtype=torch.long)

    def delivered(adv: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image the defender reads: ([0, 1] floats, what its statistic is computed from)."""
        if quantization == "none":
            return adv, adv
        u8 = deliver(adv, x0, eps, quantization)
        return u8.to(adv.dtype).div_(255.0), u8

    if eps <= 0 or not passes:
        return AdaptiveResult(delivered(x, x)[0], record)

    def batch(xb: torch.Tensor, yb: torch.Tensor, offset: int) -> torch.Tensor:
        n = len(xb)
        best = torch.empty_like(xb)
        found = torch.zeros(n, dtype=torch.bool, device=xb.device)
        fallback_set = False
        for name, loss, radius, rule in passes:
            idx = (~found).nonzero()[:, 0]
            if len(idx) == 0:
                break
            x0, y0 = xb[idx], yb[idx]
            lo, hi = (x0 - eps).clamp(min=0.0), (x0 + eps).clamp(max=1.0)
            adv = torch.max(torch.min(x0 + uniform_noise(x0, radius, generator), hi), lo) if radius > 0 else x0.clone()
            active = torch.arange(len(idx), device=xb.device)
            for _ in range(steps):
                a = adv[active].requires_grad_(True)
                obj = _loss(loss, model(a), y0[active]).sum() \
                    - weight * torch.relu(statistic(a, c=c, divisor=divisor) / threshold - margin).sum()
                (grad,) = torch.autograd.grad(obj, a)
                with torch.no_grad():
                    a = a.detach().add_(_step(grad, rule), alpha=alpha)
                    a = torch.max(torch.min(a, hi[active]), lo[active])
                    adv[active] = a
                    qf, scored = delivered(a, x0[active])
                    ok = (model(qf).argmax(1) != y0[active]) & (statistic_fast(scored, c=c, divisor=divisor).to(
                        qf.device) <= threshold)
                    if ok.any():
                        done = idx[active[ok]]
                        best[done] = qf[ok]
                        found[done] = True
                        record[offset + done.cpu()] = variant_id[name]
                        active = active[~ok]
                if len(active) == 0:
                    break
            if not fallback_set:  # the first variant's last iterates stand for images no variant breaks
                with torch.no_grad():
                    qf, _ = delivered(adv, x0)
                    keep = ~found[idx]
                    best[idx[keep]] = qf[keep]
                fallback_set = True
        return best

    dev = model_device(model)
    out = torch.empty_like(x)
    with _frozen(model):
        for i in range(0, len(x), batch_size):
            out[i: i + batch_size] = batch(x[i: i + batch_size].to(dev), y[i: i + batch_size].to(dev), i).to(out.device)
    return AdaptiveResult(out, record)


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    was = model.training
    model.eval()
    dev = model_device(model)
    out = torch.cat([model(x[i: i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was)
    return out
