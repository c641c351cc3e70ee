"""The paper's two-stage training, the patient-identity probe, streaming prediction, checkpoints, and
`detectlab seizure train` (one model on all patients).

Stage 1 (II-C): G_f + G_y + G_d, Adam (lr 0.005), batches of 32 windows drawn across patients, class-
weighted BCE (Eqs. 1-3) + cross-entropy of the domain classifier behind a GRL whose coefficient follows
lambda = 2/(1+exp(-10p)) - 1 over all stage-1 steps (Eq. 8). Without adversarial training the domain
classifier is still trained as a *probe* behind a GRL with lambda = 0: it cannot change the features
(zero gradient), it only measures how patient-identifiable they are, so Fig. 2 can compare both.
Training windows up to ``stage1.in_memory_mb`` are held as one tensor; larger sets are read per batch
from the memory-mapped window store.

Stage 2 (II-D): the CNN initialised from stage 1 + BiLSTM + FC, Adam (lr 0.001), weighted BCE (Eq. 6),
on fixed-length sub-sequences of ``stage2.seq_len`` windows cut from each recording at a random offset
per epoch (``seq_len = 0``: whole recordings, the paper's choice for 5-minute recordings), batches of
``stage2.batch_size`` sub-sequences. A recording is its own sequence: nothing runs across a file gap,
and only a batch's windows are in memory.

Prediction streams: the CNN runs over a recording's windows chunk by chunk (its 40-d features are all that
is kept, 160 bytes per window), then the BiLSTM runs over overlapping blocks of ``seq_len`` windows (the
context it was trained on), each window taking the output of the block where it is most central.

The identity probe: a multinomial logistic regression predicting the source patient from the frozen
stage-1 features of the training windows, fitted on alternate blocks of ``probe.block`` consecutive
windows of each patient and class and scored on the others: the measured (not assumed) patient invariance.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.core import progress
from detectlab.core.checkpoints import load_into, read_header, save_checkpoint
from detectlab.core.errors import InputError
from detectlab.core.metrics import f1_optimal_threshold
from detectlab.core.runtime import generator as core_generator
from detectlab.core.runtime import seed_everything
from detectlab.seizure.baseline import LogRMSBaseline, log_rms, save_baselines
from detectlab.seizure.config import PreprocessConfig, ProbeConfig, Stage1Config, Stage2Config
from detectlab.seizure.data import WindowStore, apply_norm, fold_norm
from detectlab.seizure.model import CNNBiLSTM, DANN, dann_lambda

SYSTEM = "seizure"
CHUNK = 1024  # windows per CNN forward at inference


def generator(device: torch.device | str, seed: int) -> torch.Generator | None:
    """A torch.Generator on `device` (core.runtime.generator: random draws live where the data they index
    live); None on the `meta` device (a dry run without data, which the device tests use)."""
    if torch.device(device).type == "meta":
        return None
    return core_generator(device, seed)


def randperm(n: int, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A permutation drawn on `device` by a generator on the same device (the seam the device tests use:
    a CPU generator drawing for CUDA data fails here, on any machine)."""
    device = torch.device(device)
    if (g is None) != (device.type == "meta") or (g is not None and g.device.type != device.type):
        raise RuntimeError(f"generator on {None if g is None else g.device} drawing for data on {device}")
    return torch.randperm(n, generator=g, device=device)


def _item(t: torch.Tensor) -> float:
    return float("nan") if t.device.type == "meta" else float(t)


def small_model_threads() -> None:
    """The CNN has 10k parameters: one intra-op thread is as fast, and 2+ OpenMP threads spin-wait badly on a
    busy machine (measured: a smoke unit took 278 s with 2 threads vs ~3 s with 1 under load 6). Honour an
    explicit DETECTLAB_THREADS."""
    import os

    if not os.environ.get("DETECTLAB_THREADS"):
        torch.set_num_threads(1)


def class_weights(y: Any) -> tuple[float, float]:
    """(w0, w1) = (N / (2 sum(1-y)), N / (2 sum y)) (Eqs. 2-3); a missing class gets weight 1."""
    y = np.asarray(y).reshape(-1).astype(np.float64)
    n, pos = y.size, y.sum()
    neg = n - pos
    return (n / (2 * neg) if neg else 1.0, n / (2 * pos) if pos else 1.0)


def weighted_bce(logits: torch.Tensor, y: torch.Tensor, w: tuple[float, float],
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of w_{y_i} * BCE(sigmoid(logit_i), y_i) (Eq. 1 / Eq. 6); with `mask`, the mean
    over the positions where it is true (padded sequences; no boolean indexing, so no host sync)."""
    yf = y.float()
    weight = w[0] + (w[1] - w[0]) * yf
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, yf, weight=weight)
    m = mask.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, yf, weight=weight * m, reduction="sum")
    return loss / m.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------- training data
class StoreWindows:
    """The windows of some store entries as one indexable set, read from the memory maps on demand
    (optionally standardised with fold statistics)."""

    def __init__(self, store: WindowStore, ids: list[int], norm: tuple[np.ndarray, np.ndarray] | None = None):
        self.store, self.ids, self.norm = store, list(ids), norm
        self.sizes = np.array([len(store.y(i)) for i in self.ids], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        return len(self) * 18 * self.store.window * 4

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Windows at global indices `idx` (any order), as float32 (len(idx), C, L)."""
        idx = np.asarray(idx, dtype=np.int64)
        ent = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), 18, self.store.window), np.float32)
        for e in np.unique(ent):
            sel = np.flatnonzero(ent == e)
            loc = idx[sel] - self.offsets[e]
            order = np.argsort(loc)
            out[sel[order]] = np.asarray(self.store.X(self.ids[e])[loc[order]])
        return apply_norm(out, self.norm)

    def all(self) -> np.ndarray:
        return apply_norm(self.store.gather(self.ids), self.norm)


def train_stage1(X: np.ndarray | StoreWindows, y: np.ndarray, d: np.ndarray, n_domains: int, sc: Stage1Config,
                 adversarial: bool, seed: int, device: torch.device | str = "cpu") -> tuple[DANN, dict[str, list[float]]]:
    """Train the DANN on windows X (N, C, L) (an array, or a StoreWindows read per batch when larger than
    ``sc.in_memory_mb``), labels y, domain ids d in [0, n_domains)."""
    seed_everything(seed)
    device = torch.device(device)
    g = generator(device, seed)
    n = len(y)
    in_memory = not isinstance(X, StoreWindows) or X.nbytes <= sc.in_memory_mb * 2**20
    if in_memory:
        arr = X.all() if isinstance(X, StoreWindows) else X
        Xt = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)
    dt = torch.from_numpy(np.asarray(d).astype(np.int64)).to(device)
    model = DANN(n_domains, 18 if not in_memory else Xt.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=sc.lr)
    w = class_weights(y)
    per_epoch = max(1, n // sc.batch_size + (1 if n % sc.batch_size >= 2 else 0))
    total = sc.epochs * per_epoch
    hist: dict[str, list[float]] = {"label_loss": [], "domain_loss": [], "domain_acc": [], "lambda": []}
    step = 0
    for _ in range(sc.epochs):
        model.train()
        perm = randperm(n, g, device)
        sums = torch.zeros(3, device=device)
        count = 0
        for b in range(per_epoch):
            idx = perm[b * sc.batch_size: (b + 1) * sc.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = Xt[idx] if in_memory else torch.from_numpy(X.take(idx.cpu().numpy())).to(device)
            lam = dann_lambda(step / total, sc.gamma) if adversarial else 0.0
            ylog, dlog = model(xb, lam)
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
        s = [_item(v) for v in sums / max(1, count)]
        hist["label_loss"].append(s[0])
        hist["domain_loss"].append(s[1])
        hist["domain_acc"].append(s[2])
        hist["lambda"].append(dann_lambda(step / total, sc.gamma) if adversarial else 0.0)
    return model.eval(), hist


def subsequences(lengths: list[int], seq_len: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(entry, start, stop) pieces: each recording cut every `seq_len` windows from a random offset
    (0 = whole recordings). Pieces never span two recordings and cover every window once."""
    out = []
    for e, n in enumerate(lengths):
        if seq_len <= 0 or n <= seq_len:
            out.append((e, 0, n))
            continue
        o = int(rng.integers(0, seq_len))
        cuts = [0, *range(o if o else seq_len, n, seq_len), n]
        out += [(e, a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return out


def train_stage2(store: WindowStore, ids: list[int], init: DANN | None, sc: Stage2Config, seed: int,
                 device: torch.device | str = "cpu") -> tuple[CNNBiLSTM, dict[str, list[float]]]:
    """Fine-tune CNN + BiLSTM + FC on sub-sequences of the recordings `ids` of a store."""
    if store.kind != "recordings":
        raise InputError(f"data set '{store.dataset}'", "stage 2 (CNN-BiLSTM) needs continuous recordings, but these "
                         "are isolated windows whose labels follow their position", "stage2.enabled = false, "
                         "or EDF/BDF recordings")
    seed_everything(seed + 7919)
    device = torch.device(device)
    rng = np.random.default_rng(seed + 7919)
    model = CNNBiLSTM(18).to(device)
    if init is not None:
        model.features.load_state_dict(init.features.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=sc.lr)
    w = class_weights(store.labels(ids))
    lengths = [len(store.y(i)) for i in ids]
    hist: dict[str, list[float]] = {"loss": [], "steps": []}
    for _ in range(sc.epochs):
        model.train()
        pieces = subsequences(lengths, sc.seq_len, rng)
        order = rng.permutation(len(pieces))
        tot, cnt, steps = 0.0, 0, 0
        for b in range(0, len(order), sc.batch_size):
            batch = [pieces[k] for k in order[b: b + sc.batch_size]]
            if sum(p[2] - p[1] for p in batch) < 2:
                continue
            xs = [torch.from_numpy(np.array(store.X(ids[e])[a:z], dtype=np.float32)).to(device) for e, a, z in batch]
            ys = [torch.from_numpy(store.y(ids[e])[a:z].astype(np.int64)).to(device) for e, a, z in batch]
            logits = model(xs)
            lens = torch.tensor([len(v) for v in ys], device=device)
            mask = torch.arange(logits.shape[1], device=device)[None] < lens[:, None]
            yb = torch.nn.utils.rnn.pad_sequence(ys, batch_first=True)
            loss = weighted_bce(logits, yb, w, mask)  # Eq. 6: all windows of the batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = sum(len(v) for v in ys)
            tot += _item(loss.detach()) * n
            cnt += n
            steps += 1
        hist["loss"].append(tot / max(1, cnt))
        hist["steps"].append(steps)
    return model.eval(), hist


# ------------------------------------------------------------------------------------------ prediction
@torch.no_grad()
def cnn_features(model: DANN | CNNBiLSTM, X: np.ndarray, device: torch.device | str = "cpu",
                 norm: tuple[np.ndarray, np.ndarray] | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """(T, 40) CNN features of windows X (array or memory map), `chunk` windows at a time, BatchNorm folded."""
    feat = model.features.fused().to(device) if not model.training else model.features
    outs = []
    for i in range(0, len(X), chunk):
        xb = torch.from_numpy(apply_norm(np.asarray(X[i: i + chunk]), norm)).to(device)
        outs.append(feat(xb))
    dev = next(model.parameters()).device
    return torch.cat(outs) if outs else torch.zeros(0, model.features.n_features, device=dev)


@torch.no_grad()
def lstm_blocks(model: CNNBiLSTM, f: torch.Tensor, seq_len: int, batch: int = 256) -> torch.Tensor:
    """Probabilities (T,) from features (T, 40): one BiLSTM pass when seq_len is 0 or covers T, else
    blocks of seq_len windows every seq_len // 2 (the last block ends at T), `batch` blocks per LSTM call;
    each window takes the output of the block where it is most central (the first and last blocks
    also cover the ends)."""
    T = len(f)
    if T == 0:
        return torch.zeros(0, device=f.device)
    if seq_len <= 0 or T <= seq_len:
        return torch.sigmoid(model.sequence_logits([f])[0])
    hop = max(1, seq_len // 2)
    starts = list(range(0, T - seq_len + 1, hop))
    if starts[-1] + seq_len < T:
        starts.append(T - seq_len)
    out = torch.empty(T, device=f.device)
    q = seq_len // 4
    for b0 in range(0, len(starts), batch):
        ss = starts[b0: b0 + batch]
        p = torch.sigmoid(model.sequence_logits([f[s: s + seq_len] for s in ss]))
        for j, s in enumerate(ss):
            k = b0 + j
            lo = s if k == 0 else s + q
            hi = T if k == len(starts) - 1 else min(T, starts[k + 1] + q)
            out[lo:hi] = p[j, lo - s: hi - s]
    return out


def predict_windows(model: DANN | CNNBiLSTM, X: np.ndarray, device: torch.device | str = "cpu",
                    norm: tuple[np.ndarray, np.ndarray] | None = None, seq_len: int = 0) -> np.ndarray:
    """Per-window seizure probabilities of one recording's windows (T, C, L) (array or memory map)."""
    model.eval()
    f = cnn_features(model, X, device, norm)
    if isinstance(model, CNNBiLSTM):
        return lstm_blocks(model, f, seq_len).cpu().numpy()
    with torch.no_grad():
        return torch.sigmoid(model.label(f)).cpu().numpy()


def predict_stream(model: DANN | CNNBiLSTM, chunks: Any, device: torch.device | str = "cpu", seq_len: int = 0,
                   norm: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Probabilities of a recording given as an iterator of (first window, windows) chunks (the
    preprocessor's output): only one chunk of windows and the (T, 40) features are held at a time."""
    model.eval()
    feats = [cnn_features(model, w, device, norm) for _, w in chunks]
    dev = next(model.parameters()).device
    f = torch.cat(feats) if feats else torch.zeros(0, 40, device=dev)
    if isinstance(model, CNNBiLSTM):
        return lstm_blocks(model, f, seq_len).cpu().numpy()
    with torch.no_grad():
        return torch.sigmoid(model.label(f)).cpu().numpy()


def threshold_from_training(y: np.ndarray, probs: np.ndarray) -> float:
    """tau maximising F1 on the training precision-recall curve (III-C)."""
    return f1_optimal_threshold(y, probs)


# ------------------------------------------------------------------------------------- identity probe
def probe_halves(labels: np.ndarray, groups: list[np.ndarray], block: int) -> np.ndarray:
    """True = probe test half: within each entry and class, alternate blocks of `block` windows, so both
    halves hold both classes of every patient."""
    half = np.zeros(len(labels), bool)
    for idx in groups:
        for c in (0, 1):
            ic = idx[labels[idx] == c]
            half[ic] = (np.arange(len(ic)) // block) % 2 == 1
    return half


def probe_identity(feats: np.ndarray, domains: np.ndarray, labels: np.ndarray, groups: list[np.ndarray],
                   pc: ProbeConfig) -> dict[str, float]:
    """Linear probe of patient identity on frozen features.

    `groups`: per entry, the indices of its windows in time order; within each entry and class, windows
    go to the probe's training or test half by alternating blocks of pc.block. Returns accuracy and balanced accuracy with their
    chance levels (majority share; 1/K), and the same within each class (identity beyond the label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    half = probe_halves(labels, groups, pc.block)
    out: dict[str, float] = {}

    def fit(sel_tr: np.ndarray, sel_te: np.ndarray) -> tuple[float, float, float, float]:
        ytr, yte = domains[sel_tr], domains[sel_te]
        if len(np.unique(ytr)) < 2 or len(yte) == 0:
            return float("nan"), float("nan"), float("nan"), float("nan")
        mu, sd = feats[sel_tr].mean(0), feats[sel_tr].std(0) + 1e-8
        clf = LogisticRegression(C=pc.c, max_iter=3000)
        clf.fit((feats[sel_tr] - mu) / sd, ytr)
        pred = clf.predict((feats[sel_te] - mu) / sd)
        counts = np.bincount(yte)
        with warnings.catch_warnings():  # a patient absent from the test half is fine here
            warnings.simplefilter("ignore")
            bacc = balanced_accuracy_score(yte, pred)
        return (float((pred == yte).mean()), float(bacc),
                float(counts.max() / counts.sum()), 1.0 / len(np.unique(yte)))

    acc, bacc, ch_acc, ch_bacc = fit(~half, half)
    out.update(accuracy=acc, balanced_accuracy=bacc, chance_accuracy=ch_acc, chance_balanced=ch_bacc,
               patients=int(len(np.unique(domains))))
    within, chance_w = [], []
    for c in (0, 1):
        m = labels == c
        if len(np.unique(domains[m])) >= 2:
            _, b, _, cb = fit(~half & m, half & m)
            if np.isfinite(b):
                within.append(b)
                chance_w.append(cb)
    out["within_class_balanced"] = float(np.mean(within)) if within else float("nan")
    out["within_class_chance"] = float(np.mean(chance_w)) if chance_w else float("nan")
    return out


# ----------------------------------------------------------------------------- checkpoints and loading
def save_model(path: Path, model: torch.nn.Module, kind: str, threshold: float, n_domains: int, fs: float,
               window: int, preprocess: dict, norm: tuple[np.ndarray, np.ndarray] | None = None,
               seq_len: int = 0, **extra: Any) -> Path:
    """A safetensors checkpoint whose header holds everything prediction needs: the preprocessing, the
    standardisation (or the training fold's statistics for windowed data), the threshold, the context."""
    return save_checkpoint(path, model, SYSTEM, {"kind": kind, "n_domains": n_domains, "n_chans": 18,
                                                 "fs": fs, "window": window}, threshold=threshold,
                           preprocess=preprocess, seq_len=int(seq_len),
                           norm=None if norm is None else [np.asarray(norm[0]).tolist(), np.asarray(norm[1]).tolist()],
                           **extra)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    header = read_header(path)
    mc = header.get("model_config", {})
    model: torch.nn.Module
    if mc.get("kind") == "cnn_bilstm":
        model = CNNBiLSTM(mc.get("n_chans", 18))
    else:
        model = DANN(mc.get("n_domains", 1), mc.get("n_chans", 18))
    load_into(model, path, SYSTEM)
    return model.to(device).eval(), header


def checkpoint_preprocess(header: dict[str, Any]) -> PreprocessConfig:
    """The PreprocessConfig a checkpoint was trained with (its rate from the model config)."""
    pre = PreprocessConfig(**{k: v for k, v in header.get("preprocess", {}).items()
                              if k in PreprocessConfig.__dataclass_fields__})
    pre.fs = float(header["model_config"].get("fs", pre.fs))  # the rate the model was trained at
    return pre


def header_norm(header: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    n = header.get("norm")
    return None if not n else (np.asarray(n[0], np.float32), np.asarray(n[1], np.float32))


# --------------------------------------------------------------------------------------- one fit
def fit(store: WindowStore, cfg: Any, seed: int, adversarial: bool, train_patients: list[str],
        device: torch.device, stage2: bool = True, probe: bool = True) -> dict[str, Any]:
    """Stage 1 (+ the identity probe) (+ stage 2) on the patients `train_patients` of a store; returns
    models, thresholds (F1-optimal on the training predictions), histories, the probe, the fold norm."""
    ids = store.entries_of(train_patients)
    norm = fold_norm(store, ids) if store.kind == "windows" else None
    src = StoreWindows(store, ids, norm)
    pid = {p: k for k, p in enumerate(train_patients)}
    d = np.concatenate([np.full(len(store.y(i)), pid[store.entries[i]["patient"]], np.int64) for i in ids])
    y = store.labels(ids)
    t0 = time.perf_counter()
    m1, h1 = train_stage1(src, y, d, len(train_patients), cfg.stage1, adversarial, seed, device)
    feats = torch.cat([cnn_features(m1, store.X(i), device, norm) for i in ids])
    with torch.no_grad():
        p1 = torch.sigmoid(m1.label(feats)).cpu().numpy()
    out: dict[str, Any] = {"cnn": m1, "tau_cnn": threshold_from_training(y, p1), "history": h1, "norm": norm,
                           "stage1_seconds": time.perf_counter() - t0}
    if probe and cfg.probe.enabled:
        groups = np.split(np.arange(len(y)), np.cumsum([len(store.y(i)) for i in ids])[:-1])
        out["probe"] = probe_identity(feats.cpu().numpy().astype(np.float64), d, y, groups, cfg.probe)
    if stage2 and cfg.stage2.enabled:
        t1 = time.perf_counter()
        m2, h2 = train_stage2(store, ids, m1, cfg.stage2, seed, device)
        p2 = np.concatenate([predict_windows(m2, store.X(i), device, None, cfg.stage2.seq_len) for i in ids])
        out.update(cnn_bilstm=m2, tau_cnn_bilstm=threshold_from_training(y, p2), history2=h2,
                   stage2_seconds=time.perf_counter() - t1)
    return out


def fit_baseline(store: WindowStore, ids: list[int], norm: tuple[np.ndarray, np.ndarray] | None,
                 c: float = 1.0) -> LogRMSBaseline:
    """The log-RMS + LR baseline on the entries `ids` (the same windows and standardisation as the CNN)."""
    Fs = np.concatenate([log_rms(store.X(i), norm=norm) for i in ids])
    return LogRMSBaseline(c).fit(Fs, store.labels(ids))


# ------------------------------------------------------------------------------- `seizure train`
def run(cfg: Any, run: Any) -> dict[str, Any]:
    """`detectlab seizure train`: the proposed model (AT unless train_adversarial=false) on all patients,
    plus the baselines (baselines.json) that `evaluate` scores beside it."""
    from detectlab.core.config import resolve_data, to_dict
    from detectlab.core.runtime import choose_device
    from detectlab.seizure.config import DATA_SUBDIR
    from detectlab.seizure.data import prepare_data
    from detectlab.seizure.synthetic import builtin_data

    device = choose_device(cfg.device)
    small_model_threads()
    data_path = resolve_data(cfg.data, DATA_SUBDIR)
    src = data_path or builtin_data(cfg.synthetic, run.dir / "data" / "edf")
    store = WindowStore(prepare_data(cfg, run.dir / "data" / "windows", src, builtin=data_path is None))
    pats = store.patients
    ids = store.entries_of(pats)
    progress.log(f"seizure train: {len(pats)} patients, {store.n(ids)} windows ({int(store.labels(ids).sum())} seizure)")
    stage2 = cfg.stage2.enabled and store.kind == "recordings"
    if cfg.stage2.enabled and store.kind != "recordings":
        progress.log("seizure train: stage 2 skipped: these are isolated windows, not recordings")
    res = fit(store, cfg, cfg.seed, cfg.train_adversarial, pats, device, stage2=stage2)
    fs, win = store.fs, store.window
    pre = to_dict(cfg.preprocess)
    tag = "_at" if cfg.train_adversarial else ""
    common = dict(patients=pats, dataset=store.dataset, data_kind=store.kind)
    save_model(run.checkpoints / f"cnn{tag}.safetensors", res["cnn"], "cnn", res["tau_cnn"], len(pats), fs, win, pre,
               res["norm"], **common)
    base = fit_baseline(store, ids, res["norm"], cfg.probe.c)
    save_baselines(run.checkpoints / "baselines.json", base, store.labels(ids))
    metrics: dict[str, Any] = {"patients": pats, "windows": store.n(ids), "adversarial": cfg.train_adversarial,
                               "threshold_cnn": res["tau_cnn"], "stage1_seconds": res["stage1_seconds"],
                               "stage1_history": res["history"], "probe": res.get("probe"),
                               "baseline_threshold": base.threshold}
    if "cnn_bilstm" in res:
        save_model(run.checkpoints / f"cnn_bilstm{tag}.safetensors", res["cnn_bilstm"], "cnn_bilstm",
                   res["tau_cnn_bilstm"], len(pats), fs, win, pre, None, cfg.stage2.seq_len, **common)
        metrics.update(threshold_cnn_bilstm=res["tau_cnn_bilstm"], stage2_seconds=res["stage2_seconds"],
                       stage2_history=res["history2"])
    metrics["stage1"] = asdict(cfg.stage1)
    run.write_metrics(metrics)
    progress.log(f"seizure train: done; checkpoints in {run.checkpoints}")
    return metrics
