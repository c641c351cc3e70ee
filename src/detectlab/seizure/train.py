"""The paper's two-stage training, and `detectlab seizure train` (one model on all patients).

Stage 1 (II-C): G_f + G_y + G_d, Adam (lr 0.005), batches of 32 windows drawn across patients, class-
weighted BCE (Eqs. 1-3) + cross-entropy of the domain classifier behind a GRL whose coefficient follows
lambda = 2/(1+exp(-10p)) - 1 over all stage-1 steps (Eq. 8). Without adversarial training the domain
classifier is still trained as a *probe* behind a GRL with lambda = 0: it cannot change the features
(zero gradient), it only measures how patient-identifiable they are, so Fig. 2 can compare both.
Stage 2 (II-D): the CNN initialised from stage 1 + BiLSTM + FC over each patient's whole window
sequence, Adam (lr 0.001), batches of 2 patients, weighted BCE (Eq. 6), 6 epochs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.core import progress
from detectlab.core.checkpoints import load_into, read_header, save_checkpoint
from detectlab.core.metrics import f1_optimal_threshold
from detectlab.core.runtime import seed_everything
from detectlab.seizure.model import CNNBiLSTM, DANN, dann_lambda

SYSTEM = "seizure"


@dataclass
class Stage1Config:
    lr: float = 0.005
    batch_size: int = 32
    epochs: int = 20
    gamma: float = 10.0  # lambda schedule steepness (Eq. 8)


@dataclass
class Stage2Config:
    enabled: bool = True
    lr: float = 0.001
    batch_patients: int = 2
    epochs: int = 6


def class_weights(y: Any) -> tuple[float, float]:
    """(w0, w1) = (N / (2 sum(1-y)), N / (2 sum y)) (Eqs. 2-3); a missing class gets weight 1."""
    y = np.asarray(y).reshape(-1).astype(np.float64)
    n, pos = y.size, y.sum()
    neg = n - pos
    return (n / (2 * neg) if neg else 1.0, n / (2 * pos) if pos else 1.0)


def weighted_bce(logits: torch.Tensor, y: torch.Tensor, w: tuple[float, float]) -> torch.Tensor:
    """Mean over the batch of w_{y_i} * BCE(sigmoid(logit_i), y_i) (Eq. 1 / Eq. 6)."""
    yf = y.float()
    weight = w[0] + (w[1] - w[0]) * yf
    return F.binary_cross_entropy_with_logits(logits, yf, weight=weight)


def train_stage1(X: np.ndarray, y: np.ndarray, d: np.ndarray, n_domains: int, sc: Stage1Config,
                 adversarial: bool, seed: int, device: torch.device | str = "cpu",
                 desc: str = "stage 1") -> tuple[DANN, dict[str, list[float]]]:
    """Train the DANN on windows X (N, C, L), labels y, domain ids d in [0, n_domains)."""
    g = seed_everything(seed)
    device = torch.device(device)
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)
    dt = torch.from_numpy(np.asarray(d).astype(np.int64)).to(device)
    model = DANN(n_domains, Xt.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=sc.lr)
    w = class_weights(y)
    n = len(yt)
    per_epoch = max(1, n // sc.batch_size + (1 if n % sc.batch_size >= 2 else 0))
    total = sc.epochs * per_epoch
    hist: dict[str, list[float]] = {"label_loss": [], "domain_loss": [], "domain_acc": [], "lambda": []}
    step = 0
    for _ in range(sc.epochs):
        model.train()
        perm = torch.randperm(n, generator=g).to(device)
        sums = torch.zeros(3, device=device)
        count = 0
        for b in range(per_epoch):
            idx = perm[b * sc.batch_size: (b + 1) * sc.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            lam = dann_lambda(step / total, sc.gamma) if adversarial else 0.0
            ylog, dlog = model(Xt[idx], lam)
            ly = weighted_bce(ylog, yt[idx], w)
            ld = F.cross_entropy(dlog, dt[idx])
            opt.zero_grad(set_to_none=True)
            (ly + ld).backward()
            opt.step()
            step += 1
            with torch.no_grad():
                sums += torch.stack([ly.detach() * len(idx), ld.detach() * len(idx),
                                     (dlog.argmax(1) == dt[idx]).sum().float()])
            count += len(idx)
        s = (sums / max(1, count)).tolist()
        hist["label_loss"].append(s[0])
        hist["domain_loss"].append(s[1])
        hist["domain_acc"].append(s[2])
        hist["lambda"].append(dann_lambda(step / total, sc.gamma) if adversarial else 0.0)
    return model.eval(), hist


def train_stage2(seqs: list[np.ndarray], labels: list[np.ndarray], init: DANN | None, sc: Stage2Config,
                 seed: int, device: torch.device | str = "cpu") -> tuple[CNNBiLSTM, dict[str, list[float]]]:
    """Fine-tune CNN + BiLSTM + FC on whole patient sequences, batches of `batch_patients` patients."""
    g = seed_everything(seed + 7919)
    device = torch.device(device)
    model = CNNBiLSTM(seqs[0].shape[1]).to(device)
    if init is not None:
        model.features.load_state_dict(init.features.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=sc.lr)
    w = class_weights(np.concatenate(labels))
    Xs = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)).to(device) for s in seqs]
    Ys = [torch.from_numpy(np.asarray(v).astype(np.int64)).to(device) for v in labels]
    hist: dict[str, list[float]] = {"loss": []}
    for _ in range(sc.epochs):
        model.train()
        perm = torch.randperm(len(Xs), generator=g).tolist()
        tot, cnt = 0.0, 0
        for b in range(0, len(perm), sc.batch_patients):
            ids = perm[b: b + sc.batch_patients]
            logits = model([Xs[i] for i in ids])
            lengths = [len(Ys[i]) for i in ids]
            mask = torch.arange(logits.shape[1], device=device)[None] < torch.tensor(lengths, device=device)[:, None]
            yb = torch.nn.utils.rnn.pad_sequence([Ys[i] for i in ids], batch_first=True)
            loss = weighted_bce(logits[mask], yb[mask], w)  # Eq. 6: sum over all windows / sum T^k
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * sum(lengths)
            cnt += sum(lengths)
        hist["loss"].append(tot / max(1, cnt))
    return model.eval(), hist


def stage2_probs(model: CNNBiLSTM, seqs: list[np.ndarray], device: torch.device | str = "cpu") -> list[np.ndarray]:
    return [model.predict_proba(torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)).to(device)).cpu().numpy()
            for s in seqs]


def stage1_probs(model: DANN, X: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    return model.predict_proba(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)).cpu().numpy()


def threshold_from_training(y: np.ndarray, probs: np.ndarray) -> float:
    """tau maximising F1 on the training precision-recall curve (III-C)."""
    return f1_optimal_threshold(y, probs)


# ----------------------------------------------------------------------------- checkpoints and loading
def save_model(path: Path, model: torch.nn.Module, kind: str, threshold: float, n_domains: int, fs: float,
               window: int, preprocess: dict, **extra: Any) -> Path:
    return save_checkpoint(path, model, SYSTEM, {"kind": kind, "n_domains": n_domains, "n_chans": 18,
                                                 "fs": fs, "window": window}, threshold=threshold,
                           preprocess=preprocess, **extra)


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    header = read_header(path)
    mc = header.get("model_config", {})
    model: torch.nn.Module
    if mc.get("kind") == "cnn_bilstm":
        model = CNNBiLSTM(mc.get("n_chans", 18))
    else:
        model = DANN(mc.get("n_domains", 1), mc.get("n_chans", 18))
    load_into(model, path, SYSTEM)
    return model.eval(), header


def predict_sequence(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    """Per-window seizure probabilities of one recording's windows (T, C, L)."""
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    if isinstance(model, CNNBiLSTM):
        return model.predict_proba(xt).numpy()
    return model.predict_proba(xt).numpy()


# ------------------------------------------------------------------------------- `seizure train`
def fit_all(ws: Any, cfg: Any, seed: int, adversarial: bool, train_ids: list[int], device: torch.device
            ) -> dict[str, Any]:
    """Stage 1 (+ stage 2) on the patients `train_ids` of a WindowSet; returns models, thresholds, history."""
    mask = np.isin(ws.pid, train_ids)
    lut = np.full(int(ws.pid.max()) + 1, -1)
    lut[train_ids] = np.arange(len(train_ids))
    d = lut[ws.pid[mask]]
    X = np.asarray(ws.X[mask])
    y = ws.y[mask]
    t0 = time.perf_counter()
    m1, h1 = train_stage1(X, y, d, len(train_ids), cfg.stage1, adversarial, seed, device)
    tau1 = threshold_from_training(y, stage1_probs(m1, X, device))
    out: dict[str, Any] = {"cnn": m1, "tau_cnn": tau1, "history": h1, "stage1_seconds": time.perf_counter() - t0}
    if cfg.stage2.enabled:
        t1 = time.perf_counter()
        seqs = [np.asarray(ws.X[ws.pid == p]) for p in train_ids]
        labs = [ws.y[ws.pid == p] for p in train_ids]
        m2, h2 = train_stage2(seqs, labs, m1, cfg.stage2, seed, device)
        tau2 = threshold_from_training(np.concatenate(labs), np.concatenate(stage2_probs(m2, seqs, device)))
        out.update(cnn_bilstm=m2, tau_cnn_bilstm=tau2, history2=h2, stage2_seconds=time.perf_counter() - t1)
    return out


def run(cfg: Any, run: Any) -> dict[str, Any]:
    """`detectlab seizure train`: the proposed model (AT unless train_adversarial=false) on all patients."""
    from detectlab.core.config import to_dict
    from detectlab.core.runtime import choose_device
    from detectlab.seizure.data import load_windows
    from detectlab.seizure.experiment import prepare_data

    from detectlab.seizure.experiment import small_model_threads

    device = choose_device(cfg.device)
    small_model_threads()
    ws = load_windows(prepare_data(cfg, run))
    ids = list(range(len(ws.patients)))
    progress.log(f"seizure train: {len(ids)} patients, {len(ws.y)} windows ({int(ws.y.sum())} seizure)")
    res = fit_all(ws, cfg, cfg.seed, cfg.train_adversarial, ids, device)
    fs, win = ws.patients[0]["fs"], int(ws.X.shape[2])
    pre = to_dict(cfg.preprocess)
    tag = "_at" if cfg.train_adversarial else ""
    save_model(run.checkpoints / f"cnn{tag}.safetensors", res["cnn"], "cnn", res["tau_cnn"], len(ids), fs, win, pre,
               patients=ws.names)
    metrics: dict[str, Any] = {"patients": ws.names, "windows": int(len(ws.y)), "adversarial": cfg.train_adversarial,
                               "threshold_cnn": res["tau_cnn"], "stage1_seconds": res["stage1_seconds"],
                               "stage1_history": res["history"]}
    if "cnn_bilstm" in res:
        save_model(run.checkpoints / f"cnn_bilstm{tag}.safetensors", res["cnn_bilstm"], "cnn_bilstm",
                   res["tau_cnn_bilstm"], len(ids), fs, win, pre, patients=ws.names)
        metrics.update(threshold_cnn_bilstm=res["tau_cnn_bilstm"], stage2_seconds=res["stage2_seconds"],
                       stage2_history=res["history2"])
    metrics["stage1"] = asdict(cfg.stage1)
    run.write_metrics(metrics)
    progress.log(f"seizure train: done; checkpoints in {run.checkpoints}")
    return metrics
