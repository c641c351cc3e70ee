"""Benchmark of the seizure system (CPU).

1. Inference: seconds to score one hour of 18-channel 500 Hz EEG after reading (8-30 Hz band-pass,
   standardisation, windowing, CNN-BiLSTM over 3600 windows); goal < 2 s.
2. Training: one leave-one-patient-out fold at paper settings on 20 synthetic patients (stage 1 with
   AT, 20 epochs, then stage 2, 6 epochs); and the stage-1 step time of detectlab's training loop against
   a bare PyTorch loop on the same model, data and batches (goal: ratio <= 1.1).

    python benchmarks/bench_seizure.py --size smoke|full     (or: detectlab bench seizure --size full)
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.seizure.data import PreprocessConfig, interval_labels, make_windows, standardise, bandpass_resample
from detectlab.seizure.model import CNNBiLSTM, DANN, dann_lambda
from detectlab.seizure.synthetic import SyntheticConfig, generate_patient, patient_params
from detectlab.seizure.train import Stage1Config, Stage2Config, class_weights, train_stage1, train_stage2, weighted_bce

SIZES = {
    "smoke": dict(hours=1 / 60, patients=4, duration=60.0, epochs=1, stage2_epochs=1, step_batches=20),
    "full": dict(hours=1.0, patients=20, duration=320.0, epochs=20, stage2_epochs=6, step_batches=200),
}


def inference(hours: float, fs: float = 500.0) -> dict[str, float]:
    n = int(hours * 3600 * fs)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 20e-6, (18, n))
    model = CNNBiLSTM(18).eval()
    # warm-up on 60 s (MNE's filter design, FFT plans, torch's first LSTM call): a scoring service pays
    # these once, not per recording; the cold first call is reported separately
    w0 = time.perf_counter()
    xw, _ = bandpass_resample(x[:, : int(60 * fs)], fs, PreprocessConfig(fs=fs))
    model.predict_proba(torch.from_numpy(make_windows(standardise(xw), np.zeros(xw.shape[1], np.int8), int(fs))[0]))
    warmup_s = time.perf_counter() - w0
    c0, t0 = time.process_time(), time.perf_counter()
    xf, out_fs = bandpass_resample(x, fs, PreprocessConfig(fs=fs))
    X, _ = make_windows(standardise(xf), np.zeros(n, np.int8), int(fs))
    t1 = time.perf_counter()
    p = model.predict_proba(torch.from_numpy(X))
    t2, c2 = time.perf_counter(), time.process_time()
    assert p.shape == (len(X),)
    return {"preprocess_s": t1 - t0, "model_s": t2 - t1, "total_s": t2 - t0, "cpu_s": c2 - c0, "windows": len(X),
            "warmup_60s_s": warmup_s}


def cohort(n_patients: int, duration: float, fs: float = 500.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    cfg = SyntheticConfig(n_patients=n_patients, duration_s=duration, duration_sd=0.1 * duration,
                          seizure_min_s=min(20.0, duration / 4), seizure_max_s=min(80.0, duration / 3), fs=fs)
    Xs, ys = [], []
    pre = PreprocessConfig(fs=fs)
    for i in range(n_patients):
        rng = np.random.default_rng([0, i])
        p = patient_params(rng, cfg)
        x = generate_patient(rng, p, fs)
        xf, _ = bandpass_resample(x, fs, pre)
        X, y = make_windows(standardise(xf), interval_labels([(p["onset"], p["offset"])], x.shape[1], fs), int(fs))
        Xs.append(X)
        ys.append(y)
    return Xs, ys


def bare_stage1(X: np.ndarray, y: np.ndarray, d: np.ndarray, k: int, batch: int = 32) -> int:
    """A minimal DANN epoch (same model, losses, optimiser, batch size, lambda schedule); returns steps."""
    torch.manual_seed(0)
    Xt, yt, dt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(d.astype(np.int64))
    model = DANN(k, 18)
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    w = class_weights(y)
    model.train()
    perm = torch.randperm(len(Xt))
    steps = len(Xt) // batch
    for s in range(steps):
        idx = perm[s * batch:(s + 1) * batch]
        a, b = model(Xt[idx], dann_lambda(s / steps))
        loss = weighted_bce(a, yt[idx], w) + F.cross_entropy(b, dt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="smoke")
    ap.add_argument("--parts", default="inference,training", help="comma-separated: inference, training")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("DETECTLAB_THREADS", 0)) or None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    s = SIZES[a.size]
    res: dict = {"size": a.size, "threads": torch.get_num_threads(), "machine": f"{platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} cores"}
    parts = set(a.parts.split(","))
    print(f"\nseizure benchmark ({a.size}; {res['machine']}; torch threads {res['threads']})\n")
    print("| measure | detectlab | reference | ratio |\n|---|---|---|---|")
    if "inference" in parts:
        inf = inference(s["hours"])
        res["inference"] = inf
        res["inference_per_hour_s"] = inf["total_s"] / s["hours"]
        print(f"| score 1 h of 18-ch 500 Hz EEG (s, wall) | {res['inference_per_hour_s']:.2f} | goal 2.00 | "
              f"{res['inference_per_hour_s'] / 2:.2f} |")
        print(f"|   CPU time of this process (s per hour; load-independent) | {inf['cpu_s'] / s['hours']:.2f} | | |")
        print(f"|   of which preprocessing / model (s, wall) | {inf['preprocess_s'] / s['hours']:.2f} / "
              f"{inf['model_s'] / s['hours']:.2f} | | |")
    if "training" in parts:
        training(s, res)
    return res


def training(s: dict, res: dict) -> None:

    Xs, ys = cohort(s["patients"], s["duration"])
    train_X = np.concatenate(Xs[1:])
    train_y = np.concatenate(ys[1:])
    train_d = np.concatenate([np.full(len(v), i) for i, v in enumerate(ys[1:])])
    k = len(Xs) - 1
    # stage-1 step time: detectlab's loop vs a bare loop, the same number of steps
    n_steps = s["step_batches"]
    sub = slice(0, min(len(train_y), 32 * n_steps))
    xs, ys_, ds = np.ascontiguousarray(train_X[sub]), train_y[sub], train_d[sub]
    steps = len(ys_) // 32
    # both timed as whole calls (model creation included), alternating, best of 3 (the machine is shared)
    ours_t, bare_t = [], []
    for _ in range(3):
        ours_t.append(_best_of(lambda: train_stage1(xs, ys_, ds, k, Stage1Config(epochs=1), True, 0), 1))
        bare_t.append(_best_of(lambda: bare_stage1(xs, ys_, ds, k), 1))
    ours, bare = min(ours_t) / steps, min(bare_t) / steps
    res["stage1_step_ms"] = {"detectlab": 1000 * ours, "bare_pytorch": 1000 * bare, "ratio": ours / bare}
    # one LOPO fold at the given size: stage 1 (AT) + stage 2
    t0 = time.perf_counter()
    m1, _ = train_stage1(train_X, train_y, train_d, k, Stage1Config(epochs=s["epochs"]), True, 0)
    t1 = time.perf_counter()
    train_stage2(Xs[1:], ys[1:], m1, Stage2Config(epochs=s["stage2_epochs"]), 0)
    t2 = time.perf_counter()
    res["fold"] = {"patients": s["patients"], "train_windows": int(len(train_y)), "stage1_s": t1 - t0,
                   "stage2_s": t2 - t1, "total_s": t2 - t0, "stage1_epochs": s["epochs"],
                   "stage2_epochs": s["stage2_epochs"]}

    st = res["stage1_step_ms"]
    print(f"| stage-1 step (ms), batch 32 | {st['detectlab']:.1f} | bare PyTorch {st['bare_pytorch']:.1f} | "
          f"{st['ratio']:.2f} (goal <= 1.1) |")
    f = res["fold"]
    print(f"| one LOPO fold, {f['patients']} patients, {f['train_windows']} training windows (s) | "
          f"{f['total_s']:.1f} (stage 1 {f['stage1_s']:.1f}, stage 2 {f['stage2_s']:.1f}) | | |")


if __name__ == "__main__":
    main()
