"""`detectlab seizure predict RUN recording.edf ...`: per-window seizure probabilities (CSV), detected
seizure intervals (onset, offset, peak probability; CSV) and a trace PNG per recording.

Every input is checked first (header, montage, annotations: no work is done when one is bad), then the
files are processed one at a time, each streamed in chunks of ``preprocess.chunk_s`` seconds: the CNN runs
chunk by chunk and only the 40-d features of each window are kept for the BiLSTM, so memory does not grow
with the recording's length (a 24-hour recording is measured in docs/seizure.md). An EDF+D file gives one
output per continuous segment.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PREFERENCE = ("cnn_bilstm_at", "cnn_bilstm", "cnn_at", "cnn")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint name in the run's checkpoints/ (default: the proposed CNN-BiLSTM w/ AT, "
                        "else the best available; in an experiment run, the first fold's)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's tau)")
    p.add_argument("--merge-gap", type=float, default=0.0, help="join detections closer than this many seconds")
    if not any("--device" in a.option_strings for a in p._actions):
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def find_checkpoint(folder: Path, name: str | None) -> Path:
    from detectlab.core.errors import InputError

    ck = folder / "checkpoints"
    if name:
        p = ck / (name if name.endswith(".safetensors") else f"{name}.safetensors")
        if not p.exists():
            raise InputError(p, "checkpoint not found", "a name from " + ", ".join(sorted(q.stem for q in ck.glob("*.safetensors"))))
        return p
    for v in PREFERENCE:
        if (ck / f"{v}.safetensors").exists():
            return ck / f"{v}.safetensors"
    for v in PREFERENCE:
        cands = sorted(ck.glob(f"*-{v}.safetensors"))
        if cands:
            return cands[0]
    raise InputError(folder, "run has no seizure checkpoint", "the --out folder of `seizure train` or `seizure run`")


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import csv

    import numpy as np

    from detectlab.core import progress
    from detectlab.core.runs import open_run
    from detectlab.core.runtime import choose_device
    from detectlab.seizure.data import open_edf, recording_windows
    from detectlab.seizure.events import detect_intervals
    from detectlab.seizure.train import checkpoint_preprocess, header_norm, load_model, predict_stream

    device = choose_device(getattr(args, "device", None) or "auto")
    folder, _ = open_run(model_run)
    ck = find_checkpoint(folder, getattr(args, "model", None))
    model, header = load_model(ck, device)
    mc = header["model_config"]
    pre = checkpoint_preprocess(header)
    norm = header_norm(header)
    seq_len = int(header.get("seq_len", 0))
    thr = getattr(args, "threshold", None)
    thr = float(header["threshold"]) if thr is None else float(thr)
    out = Path(out) if out else folder / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    opened = [open_edf(p) for p in inputs]  # every header, montage and annotation checked before any work
    progress.log(f"seizure predict: model {ck.name} ({mc.get('kind')}), threshold {thr:.4f}, fs {pre.fs:g} Hz, "
                 f"{'training-fold statistics' if norm is not None else pre.standardise + ' standardisation'}")
    for segs in opened:
        for rec in segs:
            rms: list[np.ndarray] = []

            def chunks(rec=rec, rms=rms):
                for k0, w in recording_windows(rec, pre, standardise=norm is None):
                    rms.append(np.sqrt((w.astype(np.float32) ** 2).mean(axis=2)))
                    yield k0, w

            probs = predict_stream(model, chunks(), device, seq_len, norm)
            iv = detect_intervals(probs, thr, pre.window_s, getattr(args, "merge_gap", 0.0))
            stem = Path(rec.source.split("#")[0]).stem + (f"_{rec.source.split('#')[1].split('@')[0]}"
                                                          if "#" in rec.source else "")
            with open(out / f"{stem}_probabilities.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["start_s", "end_s", "probability", "seizure"])
                for k, p in enumerate(probs):
                    t = k * pre.window_s
                    w.writerow([f"{t:.3f}", f"{t + pre.window_s:.3f}", f"{p:.5f}", int(p >= thr)])
            with open(out / f"{stem}_seizures.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["onset_s", "offset_s", "peak_probability"])
                for a, b, pk in iv:
                    w.writerow([f"{a:.3f}", f"{b:.3f}", f"{pk:.5f}"])
            env = np.concatenate(rms) if rms else np.zeros((0, 18))
            _figure(out / f"{stem}.png", env, probs, thr, ck.stem, rec, pre.window_s)
            print(f"{rec.source}: {len(probs) * pre.window_s:.0f} s scored, {len(iv)} seizure interval(s) detected"
                  + "".join(f"; {a:.0f}-{b:.0f} s (peak {pk:.2f})" for a, b, pk in iv[:5])
                  + (f"; annotated: {', '.join(f'{a:.0f}-{b:.0f} s' for a, b in rec.seizures)}" if rec.seizures else ""))
    return 0


def _figure(path: Path, env, probs, thr: float, name: str, rec: Any, window_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from detectlab.seizure.figures import trace_axes

    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 4.5), sharex=True)
    if len(env):
        ch = int(np.argmax(np.median(env, axis=0)))
        t = np.arange(len(env)) * window_s + window_s / 2
        a.plot(t, env[:, ch], lw=0.6, color="k")
        a.set_ylabel("RMS per window")
    trace_axes(None, b, None, 1.0, {name: probs}, {name: thr}, rec.seizures or [], window_s)
    for on, off in rec.seizures or []:
        a.axvspan(on, off, color="0.6", alpha=0.35, lw=0)
    a.set_title(f"{Path(rec.source.split('#')[0]).name}: grey = annotated seizure (when labels exist), dashed = threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
