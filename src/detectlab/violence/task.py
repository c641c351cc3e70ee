"""Local training and evaluation: what a client does each round (the ClientApp only calls these), and the
in-process trainings of the baselines (local-only, FedAvg + local fine-tuning).

Recipe (every setting comes from the job's ``spec`` dict; config.py documents them):

- **windows**: a training epoch takes, from every clip, 16-frame windows starting every ``aug.stride`` frames
  (8 = half-overlapping), each shifted by a random ``±aug.jitter`` frames (temporal jitter), randomly cropped
  to ``aug.crop`` pixels (0 = whole frame) and mirrored left-right with probability 1/2 (``aug.flip``).
  Evaluation uses the fixed non-overlapping chunks of each clip (starts 0, 16, 32, ...), the central crop of
  the same size (the network's receptive field and pooling see the size they were trained on), and
  the clip's score is the **mean of its chunk scores** (:func:`clip_scores`).
- **FedAvg / FedPer** local step: Adam for ``epochs`` local epochs; with ``keep_optimizer`` the Adam moments of
  this client are kept across rounds in its ``state`` (so Adam is not reset every round).
- **Per-FedAvg / FedMeta-Per** (Fallah et al. 2020) local meta-steps, first-order (``fo``) or Hessian-free
  (``hf``). One step with batches D, D', D'':
      w_tmp = w - alpha * grad f(w; D)                      (inner step, temporary)
      g     = grad f(w_tmp; D')
      restore w (the pre-step parameters), then
      fo:  u = g
      hf:  u = g - alpha * H(w; D'') g,   H g ~ (grad f(w + d g) - grad f(w - d g)) / (2 d)
      w <- w - beta * u   (``meta_opt="sgd"``, the paper's) or an Adam step on u (``"adam"``)
  The two finite-difference passes of ``hf`` draw **the same dropout masks** (the RNG state is restored
  between them), so their difference measures curvature, not two different masks. The curvature correction
  is bounded: when ``alpha * |H g| > |g|`` it is scaled to ``|g|`` (so ``|u| <= 2 |g|``). Per-FedAvg's analysis
  assumes ``alpha <= 1/L``, under which ``alpha |H g| <= |g|`` holds anyway; on this ReLU/max-pool network the
  curvature along g reached 100-900 x |g| (and the finite differences cross kinks), so with the paper preset's
  SGD steps (alpha 0.03, beta 0.1) an unbounded correction drove an honest client's weights to NaN within
  ~25 meta-steps (measured; ``test_hessian_free_correction_is_bounded``).
- **early stopping / model selection** (``select="best_val"``): every round the client scores its model on
  its *validation* clips (source videos of its own training side, never a held-out one) and keeps the best
  model in ``state``; its test scores come from that model. "Best" (:func:`val_score`): the highest chunk-level
  ROC-AUC, ties (and validation clips of one class, where AUC is undefined) broken by the lower loss;
  ``select="best_val_bacc"`` puts the clip-level balanced accuracy at the reported 0.5 threshold first (AUC
  ignores the threshold, so it can keep a model that calls every clip one class). (The
  validation loss alone chose the untrained round-1 model on the real clips: the models become
  over-confident, so their cross-entropy rose while their held-out accuracy rose too.)
- **seeding**: every message gets its own seed from (seed, experiment, strategy, client, round, kind)
  (:func:`message_seed`), so dropout masks, windows, crops and flips differ from round to round and a rerun
  repeats them.

``state`` is a flat ``dict[str, torch.Tensor]`` the caller keeps between rounds (FedPer's head is kept by the
ClientApp next to it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectlab.core import metrics as M
from detectlab.violence.data import CHUNK, ClientData, ClipSet, chunk_starts

PERSONAL = ("fedper", "fedmetaper")
META = ("perfedavg", "fedmetaper")


# ---------------------------------------------------------------- devices and seeds
def device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters (inputs are moved there)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def client_device(spec: dict) -> torch.device:
    """``spec["device"]``: cpu, cuda[:N] or auto (cuda when available)."""
    want = str(spec.get("device", "cpu") or "cpu").lower()
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(want)


def message_seed(spec: dict, pid: int, rnd: int, kind: str) -> int:
    """A 63-bit seed unique to (seed, experiment, strategy, client, round, message kind)."""
    key = f"{int(spec.get('seed', 0))}|{spec.get('experiment', '')}|{spec.get('strategy', '')}|{int(pid)}|{int(rnd)}|{kind}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def seed_message(seed: int) -> np.random.Generator:
    """Seed torch's global RNG (dropout, on every device) for this message; numpy Generator for the windows."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)



def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


# ---------------------------------------------------------------- windows and batches
@dataclass
class Augment:
    stride: int = CHUNK  # training window start spacing (frames)
    jitter: int = 0  # random shift of each window, +- frames
    crop: int = 0  # random square crop (pixels); 0 = the whole frame
    flip: bool = False  # random left-right mirror

    @classmethod
    def from_spec(cls, spec: dict) -> "Augment":
        a = dict(spec.get("aug") or {})
        return cls(int(a.get("stride", CHUNK)), int(a.get("jitter", 0)), int(a.get("crop", 0)), bool(a.get("flip", False)))


def epoch_windows(clips: ClipSet, aug: Augment, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(clip, first frame) of one epoch's training windows, shuffled."""
    cl, st = [], []
    for i, n in enumerate(clips.length):
        s = chunk_starts(int(n), CHUNK, aug.stride)
        if aug.jitter and len(s):
            s = np.clip(s + rng.integers(-aug.jitter, aug.jitter + 1, len(s)), 0, int(n) - CHUNK)
        cl.append(np.full(len(s), i, np.int64))
        st.append(s)
    if not cl:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cl, st = np.concatenate(cl), np.concatenate(st)
    order = rng.permutation(len(cl))
    return cl[order], st[order]


def to_tensor(x: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> float32 (N, 3, T, H, W) in [0, 1] on `device`."""
    x = np.asarray(x)
    t = torch.from_numpy(np.array(x) if not x.flags.writeable else np.ascontiguousarray(x)).to(device)
    return t.permute(0, 4, 1, 2, 3).float().div_(255.0)


def labels_tensor(y: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.long, device=device)


def center_crop(x: np.ndarray, crop: int) -> np.ndarray:
    """(N, T, H, W, 3) -> the central crop x crop pixels (no-op for crop 0 or >= the frame)."""
    if not crop or crop >= x.shape[2]:
        return x
    a, b = (x.shape[2] - crop) // 2, (x.shape[3] - crop) // 2
    return x[:, :, a:a + crop, b:b + crop]


def make_batch(clips: ClipSet, clip: np.ndarray, first: np.ndarray, aug: Augment, rng: np.random.Generator | None,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows -> augmented float batch on `device` and its labels (`rng` None: the evaluation view, the
    central crop)."""
    x = clips.windows(clip, first)
    if rng is None:
        x = center_crop(x, aug.crop)
    elif aug.crop and aug.crop < x.shape[2]:
        c = aug.crop
        oy = rng.integers(0, x.shape[2] - c + 1, len(x))
        ox = rng.integers(0, x.shape[3] - c + 1, len(x))
        x = np.stack([w[:, a:a + c, b:b + c] for w, a, b in zip(x, oy, ox)])
    if rng is not None and aug.flip:
        f = rng.random(len(x)) < 0.5
        if f.any():
            x = x.copy()
            x[f] = x[f][:, :, :, ::-1]
    return to_tensor(x, device), labels_tensor(clips.label[clip], device)


# ---------------------------------------------------------------- metrics
def clip_scores(scores: np.ndarray, labels: np.ndarray, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clip ids, clip score = mean of its chunk scores, clip label)."""
    scores, labels, clips = np.asarray(scores, float), np.asarray(labels, int), np.asarray(clips)
    ids, inv = np.unique(clips, return_inverse=True)
    s = np.bincount(inv, weights=scores, minlength=len(ids)) / np.bincount(inv, minlength=len(ids))
    lab = np.zeros(len(ids), int)
    lab[inv] = labels
    return ids, s, lab


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall of the classes present in `y` (= accuracy when only one class is present); NaN when empty."""
    y, pred = np.asarray(y, int), np.asarray(pred, int)
    rec = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return float(np.mean(rec)) if rec else float("nan")


def binary_scores(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, balanced accuracy, AUC (NaN with one class), sensitivity, specificity, n at `threshold`."""
    y, s = np.asarray(y, int), np.asarray(s, float)
    if len(y) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "auc": float("nan"),
                "sensitivity": float("nan"), "specificity": float("nan"), "n": 0}
    p = (s >= threshold).astype(int)
    return {"accuracy": float((p == y).mean()), "balanced_accuracy": balanced_accuracy(y, p),
            "auc": M.roc_auc(y, s), "sensitivity": M.sensitivity(y, p), "specificity": M.specificity(y, p),
            "n": int(len(y))}


def score_metrics(scores, labels, clips) -> dict[str, dict[str, float]]:
    """{"chunk": binary_scores per chunk, "clip": binary_scores of the clip means}."""
    _, cs, cl = clip_scores(scores, labels, clips)
    return {"chunk": binary_scores(labels, scores), "clip": binary_scores(cl, cs)}


# ---------------------------------------------------------------- forward passes
def _loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(xb), yb)


def _grads(model: nn.Module, params: list[nn.Parameter], xb: torch.Tensor, yb: torch.Tensor
           ) -> tuple[list[torch.Tensor], float]:
    loss = _loss(model, xb, yb)
    g = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)], loss.item()


@torch.no_grad()
def chunk_scores(model: nn.Module, clips: ClipSet, stride: int = CHUNK, batch: int = 32, crop: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fight probability of every fixed chunk (central `crop`, the size the model was trained on):
    (scores, labels, clip index, mean cross-entropy)."""
    model.eval()
    dev = device_of(model)
    cl, st = clips.chunk_index(stride)
    scores, loss = [], 0.0
    for i in range(0, len(cl), batch):
        xb = to_tensor(center_crop(clips.windows(cl[i:i + batch], st[i:i + batch]), crop), dev)
        yb = labels_tensor(clips.label[cl[i:i + batch]], dev)
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        scores.append(torch.softmax(logits, 1)[:, 1].cpu())
    s = torch.cat(scores).numpy().astype(float) if scores else np.zeros(0)
    return s, clips.label[cl], cl, (loss / len(cl) if len(cl) else float("nan"))


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch: int = 32, crop: int = 0) -> np.ndarray:
    """Fight probability per chunk of (N, 16, S, S, 3) uint8 chunks (central `crop`)."""
    model.eval()
    dev = device_of(model)
    out = [torch.softmax(model(to_tensor(center_crop(x[i:i + batch], crop), dev)), 1)[:, 1].cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate(model: nn.Module, clips: ClipSet, stride: int = CHUNK, batch: int = 32, crop: int = 0) -> dict:
    """Loss, chunk- and clip-level metrics on `clips` plus the raw chunk scores."""
    s, y, cl, loss = chunk_scores(model, clips, stride, batch, crop)
    m = score_metrics(s, y, cl)
    return {"loss": loss, "accuracy": m["chunk"]["accuracy"], "n": int(len(y)), "chunk": m["chunk"],
            "clip": m["clip"], "scores": s, "labels": y, "clips": cl}


# ---------------------------------------------------------------- local training
def fit_epoch(model: nn.Module, clips: ClipSet, opt: torch.optim.Optimizer, batch: int, aug: Augment,
              rng: np.random.Generator) -> dict[str, float]:
    """One epoch of windows; returns mean loss and accuracy."""
    model.train()
    dev = device_of(model)
    cl, st = epoch_windows(clips, aug, rng)
    loss_sum = correct = seen = 0.0
    for i in range(0, len(cl), batch):
        xb, yb = make_batch(clips, cl[i:i + batch], st[i:i + batch], aug, rng, dev)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(yb)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(yb)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "windows": int(seen)}


def make_adam(params: Sequence[nn.Parameter], spec: dict, lr: float | None = None) -> torch.optim.Adam:
    return torch.optim.Adam(list(params), lr=safe_lr(float(spec["lr"] if lr is None else lr)),
                            weight_decay=float(spec.get("weight_decay", 0.0)))


def optimizer_to_state(opt: torch.optim.Optimizer, prefix: str = "opt") -> dict[str, torch.Tensor]:
    """Adam's per-parameter moments as flat tensors (``opt/<i>/exp_avg`` ...)."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{prefix}/{i}/{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().clone()
    return out


def optimizer_from_state(opt: torch.optim.Optimizer, state: dict[str, torch.Tensor], prefix: str = "opt") -> bool:
    """Load the moments written by :func:`optimizer_to_state`; False when there are none (first round)."""
    per: dict[int, dict] = {}
    for k, v in state.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == prefix:
            per.setdefault(int(parts[1]), {})[parts[2]] = v
    if not per:
        return False
    sd = opt.state_dict()
    sd["state"] = per
    opt.load_state_dict(sd)
    return True


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def hessian_vector_fd(model: nn.Module, params: list[nn.Parameter], vec: list[torch.Tensor], xb: torch.Tensor,
                      yb: torch.Tensor, delta: float) -> list[torch.Tensor]:
    """(grad f(w + d v) - grad f(w - d v)) / (2 d) with the same dropout masks in both passes; w is restored."""
    dev = device_of(model)
    w0 = [p.detach().clone() for p in params]
    rng = _rng_state(dev)
    with torch.no_grad():
        for p, w, v in zip(params, w0, vec):
            p.copy_(w + delta * v)
    gp, _ = _grads(model, params, xb, yb)
    _set_rng_state(dev, rng)  # the same masks for the second pass
    with torch.no_grad():
        for p, w, v in zip(params, w0, vec):
            p.copy_(w - delta * v)
    gm, _ = _grads(model, params, xb, yb)
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
    return [(a - b) / (2 * delta) for a, b in zip(gp, gm)]


def perfedavg_steps(model: nn.Module, sample: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int,
                    alpha: float, beta: float, variant: str = "fo", delta: float = 1e-3,
                    params: Sequence[nn.Parameter] | None = None, opt: torch.optim.Optimizer | None = None
                    ) -> dict[str, float]:
    """Per-FedAvg local meta-steps on `params` (default all); `sample()` gives one batch. Returns the mean outer
    loss and ``hf_clipped``, the number of steps whose curvature correction was bounded (module docstring)."""
    if variant not in ("fo", "hf"):
        raise ValueError(f"Per-FedAvg variant must be 'fo' or 'hf', got {variant!r}")
    model.train()
    params = list(params) if params is not None else _params(model)
    losses = []
    clipped = 0
    for _ in range(max(1, steps)):
        w0 = [p.detach().clone() for p in params]
        g1, _ = _grads(model, params, *sample())
        with torch.no_grad():
            for p, w, g in zip(params, w0, g1):
                p.copy_(w - alpha * g)
        g2, loss = _grads(model, params, *sample())
        losses.append(loss)
        with torch.no_grad():  # restore the pre-step parameters
            for p, w in zip(params, w0):
                p.copy_(w)
        if variant == "hf":
            hv = hessian_vector_fd(model, params, g2, *sample(), delta)
            g_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in g2))
            c_norm = alpha * math.sqrt(sum(float((h.double() ** 2).sum()) for h in hv))
            scale = 1.0
            if c_norm > g_norm:  # alpha too large for the local curvature: bound the correction by |g|
                scale = g_norm / c_norm
                clipped += 1
            update = [g - (alpha * scale) * h for g, h in zip(g2, hv)]
        else:
            update = g2
        if opt is None:
            with torch.no_grad():
                for p, u in zip(params, update):
                    p.sub_(beta * u)
        else:
            for p, u in zip(params, update):
                p.grad = u.detach().clone()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"train_loss": float(np.mean(losses)), "train_acc": float("nan"), "hf_clipped": clipped}


def window_sampler(clips: ClipSet, batch: int, aug: Augment, rng: np.random.Generator, device: torch.device
                   ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A function that returns one random augmented batch of windows."""
    def sample():
        cl = rng.integers(0, len(clips), min(batch, max(1, len(clips))))
        first = np.asarray([rng.integers(0, int(clips.length[c]) - CHUNK + 1) for c in cl])
        return make_batch(clips, cl, first, aug, rng, device)
    return sample


def adapt(model: nn.Module, clips: ClipSet, alpha: float, steps: int, batch: int, aug: Augment,
          rng: np.random.Generator, params: Sequence[nn.Parameter] | None = None) -> None:
    """The personalisation step(s) of Per-FedAvg / FedMeta-Per: plain SGD with step `alpha` on local batches."""
    if steps <= 0 or len(clips) == 0:
        return
    model.train()
    params = list(params) if params is not None else _params(model)
    sample = window_sampler(clips, batch, aug, rng, device_of(model))
    for _ in range(steps):
        g, _ = _grads(model, params, *sample())
        with torch.no_grad():
            for p, gi in zip(params, g):
                p.sub_(alpha * gi)


def n_examples(data: ClientData) -> int:
    """A client's weight in FedAvg: its fixed training chunks."""
    return int(data.train.n_chunks().sum())


def train_round(model: nn.Module, data: ClientData, spec: dict, state: dict[str, torch.Tensor],
                rng: np.random.Generator) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One round of local training for ``spec["strategy"]``; returns (MetricRecord-ready stats, new state)."""
    strategy = spec["strategy"]
    aug = Augment.from_spec(spec)
    batch = int(spec["batch"])
    dev = device_of(model)
    state = dict(state)
    if strategy in META:
        steps = int(spec.get("meta_steps", 0))
        if not steps:  # as many meta-steps as batches in `epochs` epochs of windows, each step using 2 batches
            n_win = sum(len(chunk_starts(int(n), CHUNK, aug.stride)) for n in data.train.length)
            steps = max(1, int(spec["epochs"]) * math.ceil(n_win / batch) // 2)
        opt = None
        if spec.get("meta_opt", "sgd") == "adam":
            opt = make_adam(_params(model), spec, lr=float(spec["beta"]))
            if spec.get("keep_optimizer", True):
                optimizer_from_state(opt, state)
        stats = perfedavg_steps(model, window_sampler(data.train, batch, aug, rng, dev), steps,
                                float(spec["alpha"]), float(spec["beta"]), spec.get("variant", "fo"),
                                float(spec.get("delta", 1e-3)), opt=opt)
        if opt is not None and spec.get("keep_optimizer", True):
            state.update(optimizer_to_state(opt))
    else:
        opt = make_adam(_params(model), spec)
        if spec.get("keep_optimizer", True):
            optimizer_from_state(opt, state)
        stats = {}
        for _ in range(max(1, int(spec["epochs"]))):
            stats = fit_epoch(model, data.train, opt, batch, aug, rng)
        if spec.get("keep_optimizer", True):
            state.update(optimizer_to_state(opt))
    out = {"num-examples": n_examples(data), "train-loss": float(stats["train_loss"]),
           "train-acc": float(stats["train_acc"]) if np.isfinite(stats["train_acc"]) else -1.0}
    return out, state


def _q(x: float) -> float:
    """A validation figure rounded to 1e-9, so float noise (a 1e-16 AUC difference) cannot decide a choice and
    the tie-break that follows it does."""
    return round(float(x), 9)


def val_score(v: dict, rule: str = "best_val") -> tuple[float, ...]:
    """How good a validation result is (higher is better).

    ``best_val``: (chunk AUC, or -1 when undefined; -loss). ``best_val_bacc`` (threshold-aware): (clip-level
    balanced accuracy at the 0.5 threshold the reported predictions use, or -1 when undefined; then chunk AUC;
    then -loss): AUC alone ignores the threshold, so it can keep a model that calls every clip one class."""
    auc = v["chunk"]["auc"]
    loss = v["loss"]
    score = (_q(auc) if math.isfinite(auc) else -1.0, -_q(loss) if math.isfinite(loss) else -math.inf)
    if rule == "best_val_bacc":
        bacc = v["clip"]["balanced_accuracy"]
        return (_q(bacc) if math.isfinite(bacc) else -1.0, *score)
    return score


def selects_best(spec: dict) -> bool:
    """True when the spec's rule keeps the best-validation model (not the last one)."""
    return spec.get("select", "best_val") != "last"


def _best_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"best/{k}": v.detach().clone() for k, v in model.state_dict().items()}


def _load_best(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    best = {k[5:]: v for k, v in state.items() if k.startswith("best/")}
    if not best:
        return False
    model.load_state_dict(best)
    return True


def evaluate_round(model: nn.Module, data: ClientData, spec: dict, state: dict[str, torch.Tensor], rnd: int,
                   final: bool, rng: np.random.Generator) -> tuple[dict, dict[str, torch.Tensor]]:
    """Validation every round (keeps the best-validation model in `state`); test scores when `final`.

    Returns (MetricRecord-ready metrics, new state). When `final`, `model` is left holding the model whose
    test scores were reported (the best-validation one with ``select="best_val"``): export that one."""
    strategy = spec["strategy"]
    state = dict(state)
    aug = Augment.from_spec(spec)
    stride, crop = int(spec.get("eval_stride", CHUNK)), aug.crop
    if strategy in META:
        adapt(model, data.train, float(spec["alpha"]), int(spec.get("adapt_steps", 1)), int(spec["batch"]), aug, rng)
    out: dict = {"round": int(rnd)}
    if len(data.val):
        v = evaluate(model, data.val, stride, crop=crop)
        out.update({"val-loss": v["loss"], "val-acc": v["accuracy"], "val-bacc": v["clip"]["balanced_accuracy"],
                    "n-val": v["n"]})
        score = val_score(v, spec.get("select", "best_val"))
        best = tuple(float(x) for x in state["best_val_score"]) if "best_val_score" in state else (-math.inf,)
        out["val-auc"] = v["chunk"]["auc"]
        if selects_best(spec) and score > best:
            state.update(_best_state(model))
            state["best_val_score"] = torch.tensor(score, dtype=torch.float64)
            state["best_round"] = torch.tensor(int(rnd))
    t = None
    if spec.get("eval_test_every_round", True) or final:
        t = evaluate(model, data.test, stride, crop=crop)
        out.update({"test-loss": t["loss"], "test-acc": t["accuracy"], "test-clip-bacc": t["clip"]["balanced_accuracy"],
                    "n-test": t["n"]})
    if final:
        if selects_best(spec) and _load_best(model, state):
            out["selected-round"] = int(state["best_round"])
        else:
            out["selected-round"] = int(rnd)
        if t is None or out["selected-round"] != int(rnd):  # this round's model is the reported one: its test
            t = evaluate(model, data.test, stride, crop=crop)  # scores above are already the final ones
        out.update({"final-loss": t["loss"], "final-acc": t["accuracy"],
                    "test-scores": [float(x) for x in t["scores"]], "test-labels": [int(x) for x in t["labels"]],
                    "test-clips": [int(data.test.parent[c]) for c in t["clips"]]})
    return out, state


def train_local(model: nn.Module, data: ClientData, spec: dict, epochs: int, rng: np.random.Generator,
                patience: int = 0, include_start: bool = False) -> dict:
    """In-process training on one client's data (local-only baseline, fine-tuning), early-stopped on its
    validation clips: keeps the weights of the best :func:`val_score` (``include_start``: the starting weights are
    a candidate too, as for fine-tuning). Returns the history; `model` holds the chosen weights."""
    aug = Augment.from_spec(spec)
    stride, crop = int(spec.get("eval_stride", CHUNK)), aug.crop
    opt = make_adam(_params(model), spec)
    rule = spec.get("select", "best_val")
    best, best_score, best_epoch, since = None, (-math.inf,), -1, 0
    hist = []
    if include_start and len(data.val):
        best_score = val_score(evaluate(model, data.val, stride, crop=crop), rule)
        best, best_epoch = {k: v.detach().clone() for k, v in model.state_dict().items()}, 0
    for ep in range(1, max(1, epochs) + 1):
        st = fit_epoch(model, data.train, opt, int(spec["batch"]), aug, rng)
        rec = {"epoch": ep, "train_loss": st["train_loss"]}
        if len(data.val):
            v = evaluate(model, data.val, stride, crop=crop)
            rec["val_loss"], rec["val_auc"] = v["loss"], v["chunk"]["auc"]
            score = val_score(v, rule)
            if score > best_score:
                best_score, best_epoch, since = score, ep, 0
                best = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                since += 1
        hist.append(rec)
        if patience and since >= patience:
            break
    if best is not None and selects_best(spec):
        model.load_state_dict(best)
    return {"history": hist, "selected_epoch": best_epoch if best is not None else len(hist)}


def finite_state(sd: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())


def safe_lr(v: float) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"learning rate must be a positive number, got {v!r}")
    return float(v)
