"""The fine-tuning loop, early stopping, BatchNorm re-estimation, the largest-batch finder, and
`detectlab fluid train`.

The paper's loop: SGD (momentum 0.9, lr 1e-4), cross-entropy, shuffled each epoch (the last partial
mini-batch dropped, as MATLAB does); the validation loss is checked ``checks_per_epoch`` (2) times per epoch,
or every ``val_every`` iterations, and training stops once it failed to improve for more than ``patience``
(5) consecutive checks, or after ``max_epochs`` (10). The weights of the best check (``select_by``:
validation accuracy in the paper) are kept; its iteration is the "iterations to best".

Beyond the paper: before every check the BatchNorm running statistics are re-estimated on the training
images (``bn_recalibrate``): with few images and iterations the running averages have seen too few
updates, and eval-mode outputs collapse to a constant while train-mode outputs still separate the classes.
Also: Adam, class-weighted cross-entropy, augmentation, and the auxiliary fluid-mask loss.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.core import progress
from detectlab.core.errors import InputError
from detectlab.core.metrics import roc_auc
from detectlab.fluid.data import Prepared, augment as augment_fn
from detectlab.fluid.model import build, has_batchnorm

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
    best_loss: float
    iterations_to_best: int
    iterations: int
    epochs: float
    stopped_early: bool
    batch: int
    checks: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    images_per_s: float = 0.0


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A torch.Generator on `device`, for random draws into that device's tensors."""
    from detectlab.core.runtime import generator

    return generator(device, seed)


def class_weights(y: torch.Tensor, n_classes: int = 2) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced set gets weight 1 per class."""
    counts = torch.bincount(y.cpu(), minlength=n_classes).float()
    return torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp_min(1)), torch.zeros_like(counts))


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, data: Prepared, device: torch.device, max_images: int = 256,
                   batch: int = 64) -> int:
    """Re-estimate every BatchNorm's running mean/variance on (up to max_images of) `data`, evenly spaced,
    as a cumulative average over batches in training mode. Returns the number of images used."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or len(data) == 0:
        return 0
    n = min(len(data), max_images)
    idx = torch.linspace(0, len(data) - 1, n).round().long().unique()
    saved = [(m.momentum, m.training) for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.train()
    try:
        for i in range(0, len(idx), batch):
            x, _, _ = data.batch(idx[i:i + batch], device)
            if len(x) > 1:
                model(x)
    finally:
        for m, (mom, _) in zip(bns, saved):
            m.momentum = mom
        model.train(was)
    return int(len(idx))


@torch.no_grad()
def predict_probs(model: torch.nn.Module, data: Prepared, device: torch.device, batch: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a whole set in eval mode, on the CPU."""
    model.eval()
    logits, ys = [], []
    for i in range(0, len(data), batch):
        x, y, _ = data.batch(torch.arange(i, min(i + batch, len(data))), device)
        logits.append(model(x).float().cpu())
        ys.append(y.cpu())
    return torch.cat(logits), torch.cat(ys)


def evaluate(model: torch.nn.Module, data: Prepared, device: torch.device, batch: int = 64,
             weight: torch.Tensor | None = None) -> tuple[float, float, float, np.ndarray]:
    """(loss, accuracy, auc, fluid probabilities) on a whole set, in eval mode."""
    logits, y = predict_probs(model, data, device, batch)
    loss = float(F.cross_entropy(logits, y, weight=weight))
    prob = torch.softmax(logits, 1)[:, 1].numpy()
    acc = float((logits.argmax(1) == y).float().mean())
    return loss, acc, roc_auc(y.numpy(), prob), prob


def heldout_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The protocol's metrics of fluid probabilities: accuracy, AUC, balanced accuracy, sensitivity,
    specificity (threshold 0.5)."""
    from detectlab.core.metrics import accuracy, sensitivity, specificity

    y = np.asarray(y).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    sens, spec = sensitivity(y, pred), specificity(y, pred)
    bal = np.nanmean([sens, spec]) if np.isfinite([sens, spec]).any() else float("nan")
    return {"accuracy": accuracy(y, pred), "auc": roc_auc(y, prob), "balanced_accuracy": float(bal),
            "sensitivity": sens, "specificity": spec, "n": int(len(y)), "n_fluid": int(y.sum())}


def threshold_arg(args: Any) -> float | None:
    """``--threshold`` of evaluate/predict: None when not given (each checkpoint's own), else a probability."""
    from detectlab.core.errors import InputError

    given = getattr(args, "threshold", None)
    if given is not None and not 0.0 <= float(given) <= 1.0:
        raise InputError(f"--threshold {given}", "is not a probability", "a number from 0 to 1")
    return given


def stored_threshold(header: dict[str, Any], given: float | None) -> tuple[float, str]:
    """(threshold, where it came from) for one checkpoint: --threshold when given, else the checkpoint's."""
    if given is not None:
        return float(given), "--threshold"
    if header.get("threshold") is not None:
        return float(header["threshold"]), str(header.get("threshold_from", "stored in the checkpoint"))
    return 0.5, "0.5 (checkpoint stores no threshold)"


def youden_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The probability threshold (predict fluid at or above it) that maximises sensitivity + specificity on
    (y, prob), half-way to the next lower score; 0.5 when y has one class only."""
    y, prob = np.asarray(y).astype(int), np.asarray(prob, dtype=float)
    if np.unique(y).size < 2:
        return 0.5
    cand = np.unique(prob)[::-1]  # descending
    best_j, best_i = -np.inf, 0
    for i, t in enumerate(cand):
        pred = prob >= t
        j = pred[y == 1].mean() + (~pred[y == 0]).mean()
        if j > best_j + 1e-12:
            best_j, best_i = j, i
    t = cand[best_i]
    below = cand[best_i + 1] if best_i + 1 < len(cand) else max(t - 1e-3, 0.0)
    return float((t + below) / 2)


def pocket_baseline(f: np.ndarray, y: np.ndarray, sp: dict[str, Any], selection: str, seed: int
                    ) -> tuple[dict[str, Any], float]:
    """The dark-pocket LR of one fold, (parameters, decision threshold), from the features `f` and labels `y` of
    every B-scan and the fold's index arrays `sp`: with selection "inner" fitted on sp["fit"], its threshold
    chosen on sp["val"] (Youden's J), as the networks'; otherwise fitted on sp["train"], threshold 0.5."""
    from detectlab.fluid import baseline as B

    if selection == "inner":
        params = B.fit_pocket_lr(f[sp["fit"]], y[sp["fit"]], seed)
        return params, youden_threshold(y[sp["val"]], B.apply_pocket_lr(params, f[sp["val"]]))
    return B.fit_pocket_lr(f[sp["train"]], y[sp["train"]], seed), 0.5


def _better(select_by: str, va: float, vauc: float, vl: float, best: dict) -> bool:
    if not best:
        return True
    if select_by == "loss":
        return vl < best["val_loss"]
    if select_by == "auc":
        a, b = (vauc if np.isfinite(vauc) else -1.0), (best["val_auc"] if np.isfinite(best["val_auc"]) else -1.0)
        return a > b or (a == b and vl < best["val_loss"])
    return va > best["val_accuracy"]  # the paper: the best validation accuracy, first one kept


def make_optimizer(params, tc: Any) -> torch.optim.Optimizer:
    """SGD (the paper) or AdamW, with the fused update (one kernel over all parameters) on CPU and CUDA:
    the default per-parameter loop costs as much as the backward pass of a small network on a CPU."""
    wd = getattr(tc, "weight_decay", 0.0)
    params = list(params)
    kw = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in params) else {"foreach": True}
    if getattr(tc, "optimizer", "sgd") == "adam":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=wd, **kw)
    return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=wd, **kw)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
               mb: torch.Tensor | None, tc: Any, weight: torch.Tensor | None = None, mask_weight: float = 0.0
               ) -> torch.Tensor:
    """One optimisation step: cross-entropy (class-weighted), aux heads, the auxiliary fluid-mask loss."""
    need_all = bool(getattr(model, "aux_logits", False)) or (mask_weight > 0 and getattr(model, "seg", None) is not None)
    if need_all:
        out = model.forward_all(xb)
        logits = out["logits"]
    else:
        out, logits = None, model(xb)
    loss = F.cross_entropy(logits, yb, weight=weight)
    if out is not None:
        for a in out["aux"]:
            loss = loss + tc.aux_weight * F.cross_entropy(a, yb, weight=weight)
        if mask_weight > 0 and out["seg"] is not None and mb is not None:
            target = (F.adaptive_max_pool2d(mb, out["seg"].shape[-2:]) > 0).float()
            pos = target.sum()
            pw = ((target.numel() - pos) / pos.clamp_min(1.0)).clamp(1.0, 20.0)
            loss = loss + mask_weight * F.binary_cross_entropy_with_logits(out["seg"], target, pos_weight=pw)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def check_iterations(steps: int, tc: Any) -> set[int] | None:
    """Within-epoch positions (1..steps) of the checks, or None when checks come every `val_every` iterations."""
    if getattr(tc, "val_every", 0) > 0:
        return None
    n_checks = max(1, min(tc.checks_per_epoch, steps))
    return {int(round(steps * (c + 1) / n_checks)) for c in range(n_checks)}


def fit(model: torch.nn.Module, train: Prepared, val: Prepared, tc: Any, batch_size: int, device: torch.device,
        seed: int = 0, augment: bool = False, mask_weight: float = 0.0, log_prefix: str = "",
        check_at_end: bool = True) -> FitResult:
    """Train `model` (fresh optimizer and early stopping here) and return the best check's state.

    Batches larger than the training part are refused (InputError); the caller skips such batch sizes.
    When no check fell within the iterations (val_every larger than them), the final state is checked
    (``check_at_end``) or, without it, returned unchecked (the benchmark: the training loop alone).
    """
    model.to(device)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], tc)
    stopper = EarlyStopping(tc.patience)
    n = len(train)
    if batch_size > n:
        raise InputError(f"batch size {batch_size}", f"larger than the {n} training images",
                         "a batch size at most the number of training images")
    bs = batch_size
    steps = max(1, n // bs)  # the last partial mini-batch is dropped (MATLAB's default)
    within = check_iterations(steps, tc)
    every = int(getattr(tc, "val_every", 0))
    w = class_weights(train.y).to(device) if getattr(tc, "class_weights", False) else None
    w_cpu = None if w is None else w.cpu()
    recal = bool(getattr(tc, "bn_recalibrate", False)) and has_batchnorm(model)
    g_perm = torch.Generator().manual_seed(int(seed))  # indexes the (CPU-held) prepared set
    g_aug = make_generator(device, int(seed) + 1) if augment else None
    aug = {"shift": getattr(tc, "aug_shift", 0.08), "speckle": getattr(tc, "aug_speckle", 0.15),
           "gamma": tuple(getattr(tc, "aug_gamma", (0.75, 1.35)))}
    best: dict[str, Any] = {}
    best_state = None
    checks: list[dict[str, float]] = []
    it, stopped, seen = 0, False, 0
    t0 = time.perf_counter()
    train_time = 0.0
    model.train()
    for epoch in range(tc.max_epochs):
        perm = torch.randperm(n, generator=g_perm)
        for b in range(steps):
            tb = time.perf_counter()
            xb, yb, mb = train.batch(perm[b * bs:(b + 1) * bs], device)
            if g_aug is not None:
                xb, mb = augment_fn(xb, mb, g_aug, **aug)
            loss = train_step(model, opt, xb, yb, mb, tc, w, mask_weight)
            it += 1
            seen += bs
            train_time += time.perf_counter() - tb
            if (every > 0 and it % every == 0) or (within is not None and (b + 1) in within):
                if recal:
                    recalibrate_bn(model, train, device, getattr(tc, "bn_images", 256), tc.eval_batch)
                vl, va, vauc, _ = evaluate(model, val, device, tc.eval_batch, w_cpu)
                row = {"iteration": it, "epoch": epoch + (b + 1) / steps, "train_loss": float(loss.detach()),
                       "val_loss": vl, "val_accuracy": va, "val_auc": vauc}
                checks.append(row)
                if _better(getattr(tc, "select_by", "accuracy"), va, vauc, vl, best):
                    best = row
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                model.train()
                if stopper.step(vl):
                    stopped = True
                    break
        if stopped:
            break
    if best_state is None and not check_at_end:
        nan = float("nan")
        best = {"iteration": it, "val_loss": nan, "val_accuracy": nan, "val_auc": nan}
        best_state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}  # training is over: no copy
    if best_state is None:  # no check ran (fewer iterations than val_every): check the final state
        if recal:
            recalibrate_bn(model, train, device, getattr(tc, "bn_images", 256), tc.eval_batch)
        vl, va, vauc, _ = evaluate(model, val, device, tc.eval_batch, w_cpu)
        best = {"iteration": it, "epoch": it / steps, "train_loss": float("nan"), "val_loss": vl, "val_accuracy": va,
                "val_auc": vauc}
        checks.append(best)
        best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    secs = time.perf_counter() - t0
    if log_prefix:
        progress.log(f"{log_prefix}: best check at iteration {best['iteration']} of {it} (val acc "
                     f"{best['val_accuracy']:.3f}, AUC {best['val_auc']:.3f}, loss {best['val_loss']:.3f})"
                     f"{' (early stop)' if stopped else ''}, {secs:.1f} s")
    return FitResult(best_state, best["val_accuracy"], best["val_auc"], best["val_loss"], int(best["iteration"]), it,
                     it / steps, stopped, bs, checks, secs, train_time, seen / max(train_time, 1e-9))


# ------------------------------------------------------------- largest batch
def _candidates(start: int, cap: int) -> list[int]:
    out, b = [], start
    while b <= cap:
        out.append(b)
        b *= 2
    return out or [start]


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, b: int, size: tuple[int, int], device) -> None:
    x = torch.zeros(b, 1, *size, device=device)
    y = torch.zeros(b, dtype=torch.long, device=device)
    model.train()
    out = model.forward_all(x)
    loss = F.cross_entropy(out["logits"], y) + sum(F.cross_entropy(a, y) for a in out["aux"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _proc_bytes(path: str, key: str) -> int | None:
    """The `key:` line of a /proc file given in kB (e.g. VmHWM of /proc/self/status), in bytes; None when absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM (per address space, so it starts afresh after
    exec), else ru_maxrss (which Linux carries over from the parent across fork and exec)."""
    hwm = _proc_bytes("/proc/self/status", "VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def step_memory(arch: str, size: tuple[int, int], batches: tuple[int, ...], aux_logits: bool = False,
                threads: int = 1) -> dict[int, int]:
    """Peak resident-memory growth (bytes) of one training step at each batch size, measured in THIS
    process: call it in a fresh one (freed memory an earlier model left in the allocator hides growth)."""
    torch.set_num_threads(max(1, threads))
    model = build(arch, aux_logits=aux_logits)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    base = _peak_rss()
    out = {}
    for b in sorted(batches):
        _step(model, opt, b, size, torch.device("cpu"))
        out[b] = _peak_rss() - base
    return out


def available_memory() -> int:
    """MemAvailable (bytes) from /proc/meminfo, else the free physical pages."""
    avail = _proc_bytes("/proc/meminfo", "MemAvailable")
    if avail is not None:
        return avail
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def find_max_batch(arch: str, size: int | tuple[int, int], device: torch.device, cap: int = 64, start: int = 8,
                   aux_logits: bool = False, budget_bytes: int | None = None) -> tuple[int, float, dict[str, Any]]:
    """The largest batch (start, 2 start, ... <= cap) whose training step fits in memory on `device`.

    CUDA: one real step per candidate until out-of-memory, peak memory reset for each architecture.
    CPU: steps at `start` and 2 x `start` in a fresh subprocess (so no earlier model's peak is counted)
    give a fixed cost and a cost per image; the largest candidate whose extrapolation fits the budget
    (`budget_bytes`, default half the available memory) is taken. Returns (batch, seconds, details).
    """
    t0 = time.perf_counter()
    hw = (size, size) if isinstance(size, int) else tuple(size)
    cands = _candidates(start, cap)
    if device.type == "cuda":
        model = build(arch, aux_logits=aux_logits).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        best, peaks = cands[0], {}
        for b in cands:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            try:
                _step(model, opt, b, hw, device)
                torch.cuda.synchronize(device)
                best = b
                peaks[b] = int(torch.cuda.max_memory_allocated(device))
            except torch.OutOfMemoryError:
                break
        del model, opt
        torch.cuda.empty_cache()
        return best, time.perf_counter() - t0, {"method": "cuda steps until out-of-memory", "peak_bytes": peaks}
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        grown = pool.submit(step_memory, arch, hw, (start, 2 * start), aux_logits).result()
    per_image = max((grown[2 * start] - grown[start]) / start, 1.0)
    fixed = max(grown[start] - start * per_image, 0.0)
    budget = int(budget_bytes) if budget_bytes else available_memory() // 2
    best = cands[0]
    for b in cands:
        if fixed + b * per_image <= budget:
            best = b
    return best, time.perf_counter() - t0, {"method": "two steps in a fresh subprocess, linear extrapolation",
                                            "per_image_bytes": per_image, "fixed_bytes": fixed,
                                            "budget_bytes": budget}


# ------------------------------------------------------------- `detectlab fluid train`
def model_config(cfg: Any, arch: str, prep: Any, mask_head: bool = False) -> dict[str, Any]:
    return {"arch": arch, "prep": prep.as_dict(), "input_size": list(prep.size), "aux_logits": bool(cfg.train.aux_logits),
            "norm": cfg.train.norm, "mask_head": bool(mask_head), "n_classes": 2, "weights": cfg.train.weights}


def run(cfg: Any, run: Any) -> dict[str, Any]:
    """Train one model (cfg.archs[0], the first batch size): early stopping on a validation split by subject
    (whenever subjects are known), the model saved for predict and evaluate."""
    from detectlab.core.checkpoints import save_checkpoint
    from detectlab.core.runtime import choose_device, seed_everything
    from detectlab.fluid.data import holdout, load_data, prep_for, prepared, subjects_for
    from detectlab.fluid.model import check_weights, count_params

    ds = load_data(cfg, run)
    arch = cfg.archs[0]
    check_weights(arch, cfg.train.weights)
    prep = prep_for(cfg, arch)
    device = choose_device(cfg.device)
    seed_everything(cfg.seed)
    batch = cfg.batch_sizes[0] if cfg.batch_sizes else 8
    subj = subjects_for(cfg, ds)
    allp = prepared(ds, prep)
    tr, va, grouped = holdout(np.arange(len(ds)), allp.y.numpy(), subj, 0.1, cfg.seed)
    mask = "mask" in cfg.variants
    model = build(arch, cfg.train.weights, cfg.train.aux_logits, norm=cfg.train.norm, mask_head=mask)
    res = fit(model, allp.take(tr), allp.take(va), cfg.train, min(batch, len(tr)), device, cfg.seed,
              cfg.augment or "augment" in cfg.variants, cfg.train.mask_weight if mask else 0.0,
              log_prefix=f"train {arch} bs={batch}")
    model.load_state_dict(res.state)
    from detectlab.fluid import baseline as B

    # the decision thresholds (model and dark-pocket LR) by Youden's J on the validation split, as the protocol's
    # "inner" selection does; evaluate and predict apply them unless told --threshold
    yall = allp.y.numpy()
    vlog, vy = predict_probs(model, allp.take(va), device, cfg.train.eval_batch)
    thr = youden_threshold(vy.numpy(), torch.softmax(vlog, 1)[:, 1].numpy())
    lr, lr_thr = pocket_baseline(B.features_of(allp), yall, {"fit": tr, "val": va}, "inner", cfg.seed)
    stored = {"train_fluid_share": float(yall[tr].mean()), "dark_pockets_lr": lr,
              "dark_pockets_lr_threshold": float(lr_thr)}
    ck = save_checkpoint(run.checkpoints / "model.safetensors", model, SYSTEM, model_config(cfg, arch, prep, mask),
                         val_accuracy=res.best_accuracy, threshold=thr,
                         threshold_from="Youden's J on the validation split of `fluid train`", baselines=stored)
    metrics = {"arch": arch, "batch": batch, "batch_ran": res.batch, "input_size": list(prep.size),
               "n_train": len(tr), "n_val": len(va), "grouped_by_subject": grouped,
               "train_subjects": sorted(set(ds.subjects[tr].tolist())), "val_subjects": sorted(set(ds.subjects[va].tolist())),
               "params": count_params(model), "accuracy": res.best_accuracy, "auc": res.best_auc,
               "threshold": thr, "dark_pockets_lr_threshold": float(lr_thr),
               "iterations_to_best": res.iterations_to_best, "iterations": res.iterations,
               "seconds": res.seconds, "checkpoint": str(ck), "data": ds.source, "relabelled": allp.relabelled}
    run.write_metrics(metrics)
    return metrics


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    from detectlab.core.checkpoints import load_into, read_header

    header = read_header(path)
    mc = header.get("model_config", {})
    if header.get("system") != SYSTEM or "arch" not in mc:
        raise InputError(path, f"checkpoint is for system '{header.get('system')}'", "a fluid checkpoint")
    if "prep" not in mc:
        raise InputError(path, "checkpoint written by an older fluid version (no preprocessing record)",
                         "a checkpoint from this version: rerun `fluid train` or `fluid run`")
    model = build(mc["arch"], aux_logits=mc.get("aux_logits", False), norm=mc.get("norm", "batch"),
                  mask_head=mc.get("mask_head", False))
    load_into(model, path, SYSTEM)
    return model.to(device).eval(), mc
