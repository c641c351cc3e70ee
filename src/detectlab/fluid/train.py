"""The paper's fine-tuning loop, early stopping, the largest-batch finder, and `detectlab fluid train`.

SGD (momentum 0.9, lr 1e-4), cross-entropy, shuffled each epoch; the validation loss is checked
``checks_per_epoch`` (2) times per epoch and training stops once it failed to improve for more than
``patience`` (5) consecutive checks, or after ``max_epochs`` (10). Accuracy and AUC are computed at every
check and the model of best validation accuracy is kept; its iteration is the "iterations to best".
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.core import progress
from detectlab.core.metrics import roc_auc

SYSTEM = "fluid"


class EarlyStopping:
    """Stop when the monitored loss has not improved for more than `patience` consecutive checks."""

    def __init__(self, patience: int = 5, min_delta: float = 0.0):
        self.patience = patience
        self.min_delta = min_delta
        self.best = float("inf")
        self.bad = 0

    def step(self, loss: float) -> bool:
        """Record a check; True when training should stop."""
        if loss < self.best - self.min_delta:
            self.best = loss
            self.bad = 0
        else:
            self.bad += 1
        return self.bad > self.patience


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]
    best_accuracy: float
    best_auc: float
    iterations_to_best: int
    iterations: int
    epochs: float
    stopped_early: bool
    checks: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch: int = 64) -> tuple[float, float, float, np.ndarray]:
    """(loss, accuracy, auc, fluid probabilities) on a whole set, in eval mode."""
    model.eval()
    logits = torch.cat([model(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
    loss = float(F.cross_entropy(logits, y))
    prob = torch.softmax(logits, 1)[:, 1].numpy()
    acc = float((logits.argmax(1) == y).float().mean())
    return loss, acc, roc_auc(y.numpy(), prob), prob


def fit(model: torch.nn.Module, xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor,
        tc: Any, batch_size: int, device: torch.device, g: torch.Generator, augment: bool = False,
        log_prefix: str = "") -> FitResult:
    """Fine-tune `model` (fresh optimizer and early stopping here) and return the best-accuracy state."""
    from detectlab.fluid.data import augment as augment_fn
    from detectlab.fluid.model import logits_and_aux

    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum)
    stopper = EarlyStopping(tc.patience)
    n = len(xtr)
    bs = min(batch_size, n)
    steps = max(1, n // bs)  # the last partial mini-batch is dropped (MATLAB's default)
    n_checks = max(1, min(tc.checks_per_epoch, steps))
    check_at = {int(round(steps * (c + 1) / n_checks)) for c in range(n_checks)}
    best_acc, best_auc, best_it, best_state = -1.0, float("nan"), 0, None
    checks: list[dict[str, float]] = []
    it, stopped, seen = 0, False, 0
    t0 = time.perf_counter()
    train_time = 0.0
    for epoch in range(tc.max_epochs):
        perm = torch.randperm(n, generator=g)
        for b in range(steps):
            tb = time.perf_counter()
            idx = perm[b * bs:(b + 1) * bs]
            xb, yb = xtr[idx], ytr[idx]
            if augment:
                xb = augment_fn(xb, g)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            model.train()
            logits, aux = logits_and_aux(model(xb))
            loss = F.cross_entropy(logits, yb)
            for a in aux:
                loss = loss + tc.aux_weight * F.cross_entropy(a, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            seen += len(idx)
            train_time += time.perf_counter() - tb
            if (b + 1) in check_at:
                vl, va, vauc, _ = evaluate(model, xva, yva, device, tc.eval_batch)
                checks.append({"iteration": it, "epoch": epoch + (b + 1) / steps, "train_loss": float(loss.detach()),
                               "val_loss": vl, "val_accuracy": va, "val_auc": vauc})
                if va > best_acc:
                    best_acc, best_auc, best_it = va, vauc, it
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if stopper.step(vl):
                    stopped = True
                    break
        if stopped:
            break
    if log_prefix:
        progress.log(f"{log_prefix}: best val acc {best_acc:.3f} (AUC {best_auc:.3f}) at iteration {best_it} "
                     f"of {it}{' (early stop)' if stopped else ''}, {time.perf_counter() - t0:.1f} s")
    return FitResult(best_state or copy.deepcopy(model.state_dict()), best_acc, best_auc, best_it, it,
                     it / steps, stopped, checks, time.perf_counter() - t0, seen / max(train_time, 1e-9))


# ------------------------------------------------------------- largest batch
def find_max_batch(arch: str, input_size: int, device: torch.device, cap: int = 64, start: int = 8,
                   aux_logits: bool = False) -> tuple[int, float]:
    """The largest batch (8, 16, 32, ... <= cap) for which a training step fits in memory on `device`.

    On CUDA each candidate runs one forward/backward/SGD step and an out-of-memory error ends the search.
    On a CPU, host memory is the limit: a step at `start` is measured (peak RSS growth) and the largest
    candidate whose linear extrapolation stays under half the available memory is taken, capped at `cap`.
    Returns (batch, seconds spent).
    """
    import os

    from detectlab.fluid.model import build, logits_and_aux

    t0 = time.perf_counter()
    model = build(arch, aux_logits=aux_logits).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(b: int) -> None:
        x = torch.zeros(b, 1, input_size, input_size, device=device)
        y = torch.zeros(b, dtype=torch.long, device=device)
        model.train()
        logits, aux = logits_and_aux(model(x))
        loss = F.cross_entropy(logits, y) + sum(F.cross_entropy(a, y) for a in aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cands = []
    b = start
    while b <= cap:
        cands.append(b)
        b *= 2
    best = start
    if device.type == "cuda":
        for b in cands:
            try:
                step(b)
                torch.cuda.synchronize(device)
                best = b
            except torch.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
    else:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step(start)
        grown = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, 1)
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 8 << 30
        per_image = grown / start
        for b in cands:
            if b * per_image <= avail / 2:
                best = b
    del model, opt
    return best, time.perf_counter() - t0


# ------------------------------------------------------------- `detectlab fluid train`
def run(cfg: Any, run: Any) -> dict[str, Any]:
    """Train one model (cfg.archs[0], the first batch size) on a stratified 90/10 split; save it for predict."""
    from detectlab.core.checkpoints import save_checkpoint
    from detectlab.core.runtime import choose_device, seed_everything
    from detectlab.core.splits import stratified_holdout
    from detectlab.fluid.experiment import input_size_for, load_data
    from detectlab.fluid.data import to_tensor
    from detectlab.fluid.model import build, count_params

    ds = load_data(cfg, run)
    arch = cfg.archs[0]
    size = input_size_for(cfg, arch)
    device = choose_device(cfg.device)
    g = seed_everything(cfg.seed)
    batch = cfg.batch_sizes[0] if cfg.batch_sizes else 8
    groups = ds.subjects if (cfg.group_by_subject and ds.groups_known and len(set(ds.subjects)) >= 10) else None
    tr, va = stratified_holdout(ds.labels, 0.1, cfg.seed, groups)
    x = to_tensor(ds.images, size, cfg.resize, cfg.denoise)
    y = torch.from_numpy(ds.labels)
    model = build(arch, cfg.train.weights, cfg.train.aux_logits)
    res = fit(model, x[tr], y[tr], x[va], y[va], cfg.train, batch, device, g, cfg.augment,
              log_prefix=f"train {arch} bs={batch}")
    model.load_state_dict(res.state)
    ck = save_checkpoint(run.checkpoints / "model.safetensors", model, SYSTEM, model_config(cfg, arch),
                         val_accuracy=res.best_accuracy)
    metrics = {"arch": arch, "batch": batch, "input_size": size, "n_train": len(tr), "n_val": len(va),
               "params": count_params(model), "accuracy": res.best_accuracy, "auc": res.best_auc,
               "iterations_to_best": res.iterations_to_best, "iterations": res.iterations,
               "seconds": res.seconds, "checkpoint": str(ck), "data": ds.source}
    run.write_metrics(metrics)
    return metrics


def model_config(cfg: Any, arch: str) -> dict[str, Any]:
    from detectlab.fluid.experiment import input_size_for

    return {"arch": arch, "input_size": input_size_for(cfg, arch), "resize": cfg.resize,
            "denoise": bool(cfg.denoise), "aux_logits": bool(cfg.train.aux_logits), "n_classes": 2}


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    from detectlab.core.checkpoints import load_into, read_header
    from detectlab.core.errors import InputError
    from detectlab.fluid.model import build

    header = read_header(path)
    mc = header.get("model_config", {})
    if header.get("system") != SYSTEM or "arch" not in mc:
        raise InputError(path, f"checkpoint is for system '{header.get('system')}'", "a fluid checkpoint")
    model = build(mc["arch"], aux_logits=mc.get("aux_logits", False))
    load_into(model, path, SYSTEM)
    return model.to(device).eval(), mc
