"""Benchmark of the seizure system (CPU), every comparison interleaved (ours, peer, ours, peer, ...).

1. inference: score one hour (smoke: one minute) of 18-channel 500 Hz EEG after reading: 8-30 Hz band-pass,
   robust standardisation, 1-s windows, CNN-BiLSTM. Ours: one FFT band-pass with MNE's FIR response and
   BatchNorm folded into the convolutions; peer: MNE's FIR filter (``mne.filter.filter_data``) and the
   un-fused network, otherwise the same. Goal: < 1 s per hour on 2 cores. Also checks that our filter
   equals MNE's and that both pipelines give the same probabilities.
2. stage1: the stage-1 training step of detectlab's loop (train.train_stage1) against a bare PyTorch loop
   on the same model, losses, optimiser, batches and permutation (goal: ratio <= 1.1); checks that both
   train the same model (equal losses).
3. memory (full size, or --parts memory): peak resident memory of `detectlab seizure predict` on a
   24-hour synthetic EDF+ recording (18 channels, 256 Hz, written in chunks), against predict on a
   1-minute recording (the import and model overhead).

    python benchmarks/bench_seizure.py --size smoke|full [--parts inference,stage1,memory]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.core.bench import interleaved
from detectlab.seizure.config import PreprocessConfig, Stage1Config
from detectlab.seizure.data import ArrayRecording, _to_windows, fft_filter, recording_windows, robust_stats, window_stats
from detectlab.seizure.model import CNNBiLSTM, DANN, dann_lambda
from detectlab.seizure.train import class_weights, lstm_blocks, predict_stream, train_stage1, weighted_bce

SIZES = {
    "smoke": dict(hours=1 / 60, reps=5, step_batches=12, stage1_n=32 * 12, mem_hours=0.0),
    "full": dict(hours=1.0, reps=7, step_batches=60, stage1_n=32 * 60, mem_hours=24.0),
}


# ------------------------------------------------------------------------------------------- inference
def _ours(x: np.ndarray, fs: float, model: CNNBiLSTM) -> np.ndarray:
    rec = ArrayRecording("bench", "bench", x, fs, [])
    return predict_stream(model, recording_windows(rec, PreprocessConfig(fs=fs), workers=2), "cpu", 300)


def _peer(x: np.ndarray, fs: float, model: CNNBiLSTM) -> np.ndarray:
    import mne

    y = mne.filter.filter_data(x.astype(np.float64), fs, 8.0, 30.0, method="fir", verbose="error").astype(np.float32)
    m, s = window_stats(y, int(fs))
    c, sc = robust_stats(m, s)
    X = torch.from_numpy(_to_windows(y, int(fs), c, sc))
    with torch.no_grad():
        f = torch.cat([model.features(X[i: i + 1024]) for i in range(0, len(X), 1024)])
        return lstm_blocks(model, f, 300).numpy()


def inference(hours: float, reps: int, fs: float = 500.0) -> dict:
    n = int(hours * 3600 * fs)
    x = np.random.default_rng(0).normal(0, 20e-6, (18, n)).astype(np.float32)
    model = CNNBiLSTM(18).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is exercised
        model.train()(list(torch.randn(2, 64, 18, int(fs))))
    model.eval()
    import mne

    ref = mne.filter.filter_data(x[:, : int(120 * fs)].astype(np.float64), fs, 8.0, 30.0, method="fir", verbose="error")
    ours_f = fft_filter(x[:, : int(120 * fs)], fs, fs, 8.0, 30.0)
    pa, pb = _ours(x, fs, model), _peer(x, fs, model)
    cpu: dict[str, list[float]] = {"ours": [], "peer": []}

    def timed(name, fn):
        def call():
            c0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
        return call

    res = interleaved({"ours": timed("ours", lambda: _ours(x, fs, model)),
                       "peer": timed("peer", lambda: _peer(x, fs, model))}, reps=reps, ratio=("ours", "peer"))
    cpu_med = {k: float(np.median(v[-reps:])) for k, v in cpu.items()}
    return {"windows": int(len(pa)), "hours": hours, "median_s": res["median"], "ratio": res["ratio"],
            "times": res["times"], "cpu_s_median": cpu_med,
            "filter_max_rel_diff_vs_mne": float(np.abs(ours_f - ref).max() / np.abs(ref).max()),
            "prob_max_diff_vs_peer": float(np.abs(pa - pb).max())}


# ---------------------------------------------------------------------------------------------- stage 1
def bare_stage1(X: np.ndarray, y: np.ndarray, d: np.ndarray, k: int, seed: int = 0, batch: int = 32) -> list[float]:
    """A minimal DANN epoch: the same model, losses, optimiser, batch size, lambda schedule and permutation."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    Xt, yt, dt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(d.astype(np.int64))
    model = DANN(k, 18)
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    w = class_weights(y)
    model.train()
    n = len(Xt)
    steps = n // batch + (1 if n % batch >= 2 else 0)
    perm = torch.randperm(n, generator=g)
    tot, cnt = 0.0, 0
    for s in range(steps):
        idx = perm[s * batch:(s + 1) * batch]
        a, b = model(Xt[idx], dann_lambda(s / steps))
        ly = weighted_bce(a, yt[idx], w)
        loss = ly + F.cross_entropy(b, dt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += float(ly.detach()) * len(idx)
        cnt += len(idx)
    return [tot / cnt]


def stage1(n_windows: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (n_windows, 18, 500)).astype(np.float32)
    y = (rng.random(n_windows) < 0.2).astype(np.int64)
    d = rng.integers(0, 5, n_windows)
    X[y == 1] *= 2
    steps = n_windows // 32
    ours_loss = train_stage1(X, y, d, 5, Stage1Config(epochs=1), True, 0)[1]["label_loss"]
    bare_loss = bare_stage1(X, y, d, 5)
    res = interleaved({"ours": lambda: train_stage1(X, y, d, 5, Stage1Config(epochs=1), True, 0),
                       "peer": lambda: bare_stage1(X, y, d, 5)}, reps=reps, ratio=("ours", "peer"))
    return {"steps": steps, "times": res["times"], "ratio": res["ratio"],
            "ms_per_step": {k: 1000 * v / steps for k, v in res["median"].items()},
            "same_losses": bool(np.allclose(ours_loss, bare_loss, rtol=1e-4))}


# ----------------------------------------------------------------------------------------------- memory
def _peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS MB, wall s) of a child process (its own ru_maxrss, read by /usr/bin/time-free means)."""
    code = ("import resource, subprocess, sys, time; t=time.perf_counter(); r=subprocess.run(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter()-t, r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("PEAK")][-1].split()
    if line[3] != "0":
        raise RuntimeError(f"predict failed: {out[-2000:]}")
    return float(line[1]), float(line[2])


def memory(hours: float) -> dict:
    from detectlab.core.runs import Run
    from detectlab.seizure.config import Config
    from detectlab.seizure.synthetic import write_long_recording
    from detectlab.seizure.train import save_model

    fs = 256
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Run(tmp / "model", Config(), "seizure"):
            pass
        save_model(tmp / "model" / "checkpoints" / "cnn_bilstm_at.safetensors", CNNBiLSTM(), "cnn_bilstm", 0.5, 3,
                   float(fs), fs, {"l_freq": 8.0, "h_freq": 30.0, "fs": float(fs), "window_s": 1.0}, None, 300)
        t0 = time.perf_counter()
        long = write_long_recording(tmp / "day.edf", hours, fs, [(3600.0, 3660.0), (50000.0, 50090.0)])
        write_s = time.perf_counter() - t0
        short = write_long_recording(tmp / "minute.edf", 1 / 60, fs)
        cli = [sys.executable, "-m", "detectlab.cli", "seizure", "predict", str(tmp / "model")]
        env_threads = os.environ.get("DETECTLAB_THREADS", "")
        base, _ = _peak_rss_mb(cli + [str(short), "--out", str(tmp / "p1"), "--device", "cpu"])
        peak, wall = _peak_rss_mb(cli + [str(long), "--out", str(tmp / "p2"), "--device", "cpu"])
        size = long.stat().st_size
    return {"hours": hours, "fs": fs, "edf_bytes": size, "write_s": write_s, "peak_rss_mb": peak,
            "peak_rss_1min_mb": base, "predict_wall_s": wall, "threads": env_threads or "default"}


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="smoke")
    ap.add_argument("--parts", default=None, help="comma-separated: inference, stage1, memory (default: all of the size)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("DETECTLAB_THREADS", 0)) or None)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    s = SIZES[a.size]
    parts = set((a.parts or ("inference,stage1,memory" if s["mem_hours"] else "inference,stage1")).split(","))
    res: dict = {"size": a.size, "threads": torch.get_num_threads(),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
                            f"{os.getloadavg()[0]:.1f}"}
    print(f"\nseizure benchmark ({a.size}; {res['machine']}; torch threads {res['threads']})\n")
    print("| measure | ours (median) | peer (median) | ratio median [min, max] |\n|---|---|---|---|")
    if "inference" in parts:
        inf = inference(s["hours"], s["reps"])
        res["inference"] = inf
        r, per_h = inf["ratio"], 1 / s["hours"]
        print(f"| score 1 h of 18-ch 500 Hz EEG (s per hour; goal < 1) | {inf['median_s']['ours'] * per_h:.2f} | "
              f"MNE FIR + un-fused CNN {inf['median_s']['peer'] * per_h:.2f} | {r['median']:.2f} [{r['min']:.2f}, "
              f"{r['max']:.2f}] |")
        print(f"|   CPU seconds per hour (process time, all threads) | {inf['cpu_s_median']['ours'] * per_h:.2f} | "
              f"{inf['cpu_s_median']['peer'] * per_h:.2f} | {inf['cpu_s_median']['ours'] / inf['cpu_s_median']['peer']:.2f} |")
        print(f"|   filter vs MNE max rel. diff {inf['filter_max_rel_diff_vs_mne']:.1e}; probabilities vs peer max "
              f"diff {inf['prob_max_diff_vs_peer']:.1e} | | | |")
    if "stage1" in parts:
        st = stage1(s["stage1_n"], s["reps"])
        res["stage1_step"] = st
        r = st["ratio"]
        print(f"| stage-1 step (ms), batch 32, L = 500 | {st['ms_per_step']['ours']:.1f} | bare PyTorch "
              f"{st['ms_per_step']['peer']:.1f} | {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] (goal <= 1.1) |")
        print(f"|   same losses as the bare loop: {st['same_losses']} | | | |")
    if "memory" in parts:
        hours = s["mem_hours"] or 24.0
        mem = memory(hours)
        res["memory"] = mem
        print(f"| predict a {hours:g}-h 256 Hz EDF ({mem['edf_bytes'] / 2**30:.2f} GiB): peak RSS MB | "
              f"{mem['peak_rss_mb']:.0f} | 1-min file {mem['peak_rss_1min_mb']:.0f} | wall {mem['predict_wall_s']:.0f} s |")
    if a.json:
        import json

        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
