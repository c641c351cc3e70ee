"""Local training and evaluation used by the ClientApp (and by centralised training).

- :func:`train_epochs`: plain local training (Adam, cross-entropy) for FedAvg and FedPer;
- :func:`perfedavg_steps`: Per-FedAvg local meta-steps (Fallah et al. 2020), first-order (``fo``) or
  Hessian-free (``hf``). One step with batches D, D', D'':
      w_tmp = w - alpha * grad f(w; D)                      (inner step, temporary)
      g     = grad f(w_tmp; D')
      restore w (the pre-step parameters), then
      fo:  w <- w - beta * g
      hf:  w <- w - beta * (g - alpha * H(w; D'') g),  H g ~ (grad f(w + d g) - grad f(w - d g)) / (2 d)
- :func:`adapt`: the personalisation step of Per-FedAvg / FedMeta-Per at evaluation (SGD with alpha);
- :func:`evaluate`: loss, accuracy and fight probabilities on chunks.

Chunks stay uint8 (N, 16, H, W, 3) in memory and are converted per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectlab.violence.data import to_tensor


def _batches(n: int, batch: int, gen: torch.Generator, shuffle: bool = True):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch):
        yield order[i:i + batch].numpy()


def _xy(x: np.ndarray, y: np.ndarray, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(x[np.sort(idx)]).to(device), torch.as_tensor(y[np.sort(idx)], dtype=torch.long, device=device)


def train_epochs(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float,
                 gen: torch.Generator, device: torch.device, params: Sequence[nn.Parameter] | None = None,
                 weight_decay: float = 0.0) -> dict[str, float]:
    """Adam on cross-entropy; returns the mean training loss/accuracy of the last epoch."""
    model.train()
    opt = torch.optim.Adam(list(params) if params is not None else model.parameters(), lr=lr,
                           weight_decay=weight_decay)
    loss_sum = correct = seen = 0.0
    for _ in range(max(1, epochs)):
        loss_sum = correct = seen = 0.0
        for idx in _batches(len(y), batch, gen):
            xb, yb = _xy(x, y, idx, device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def _grads(model: nn.Module, params: list[nn.Parameter], xb: torch.Tensor, yb: torch.Tensor
           ) -> tuple[list[torch.Tensor], float]:
    loss = F.cross_entropy(model(xb), yb)
    g = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)], loss.item()


def perfedavg_steps(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, batch: int, alpha: float,
                    beta: float, gen: torch.Generator, device: torch.device, variant: str = "fo",
                    delta: float = 1e-3, params: Sequence[nn.Parameter] | None = None) -> dict[str, float]:
    """Per-FedAvg local meta-steps on `params` (default all); returns the mean outer loss."""
    if variant not in ("fo", "hf"):
        raise ValueError(f"Per-FedAvg variant must be 'fo' or 'hf', got {variant!r}")
    model.train()
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    n = len(y)
    losses = []

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, n, (min(batch, n),), generator=gen).numpy()
        return _xy(x, y, idx, device)

    for _ in range(max(1, steps)):
        w0 = [p.detach().clone() for p in params]
        g1, _ = _grads(model, params, *sample())
        with torch.no_grad():
            for p, w, g in zip(params, w0, g1):
                p.copy_(w - alpha * g)
        g2, loss = _grads(model, params, *sample())
        losses.append(loss)
        if variant == "hf":
            xb, yb = sample()
            with torch.no_grad():
                for p, w, g in zip(params, w0, g2):
                    p.copy_(w + delta * g)
            gp, _ = _grads(model, params, xb, yb)
            with torch.no_grad():
                for p, w, g in zip(params, w0, g2):
                    p.copy_(w - delta * g)
            gm, _ = _grads(model, params, xb, yb)
            update = [g - alpha * (a - b) / (2 * delta) for g, a, b in zip(g2, gp, gm)]
        else:
            update = g2
        with torch.no_grad():  # restore the pre-step parameters, then apply the outer update
            for p, w, u in zip(params, w0, update):
                p.copy_(w - beta * u)
    return {"train_loss": float(np.mean(losses)), "train_acc": float("nan")}


def adapt(model: nn.Module, x: np.ndarray, y: np.ndarray, alpha: float, steps: int, batch: int,
          gen: torch.Generator, device: torch.device, params: Sequence[nn.Parameter] | None = None) -> None:
    """The personalisation step(s): plain SGD with step `alpha` on local training batches."""
    if steps <= 0 or len(y) == 0:
        return
    model.train()
    params = list(params) if params is not None else list(model.parameters())
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(batch, len(y)),), generator=gen).numpy()
        g, _ = _grads(model, params, *_xy(x, y, idx, device))
        with torch.no_grad():
            for p, gi in zip(params, g):
                p.sub_(alpha * gi)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """Fight probability per chunk."""
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        out.append(torch.softmax(model(to_tensor(x[i:i + batch]).to(device)), 1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 64, device: torch.device | str = "cpu"
             ) -> dict[str, float]:
    """Mean cross-entropy and accuracy (argmax) on chunks; NaN when there is no chunk."""
    if len(y) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "n": 0}
    model.eval()
    loss = correct = 0.0
    for i in range(0, len(y), batch):
        xb = to_tensor(x[i:i + batch]).to(device)
        yb = torch.as_tensor(y[i:i + batch], dtype=torch.long, device=device)
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return {"loss": loss / len(y), "accuracy": correct / len(y), "n": int(len(y))}


def finite_state(sd: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())


def safe_lr(v: float) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"learning rate must be a positive number, got {v!r}")
    return float(v)
