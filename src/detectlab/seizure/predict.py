"""`detectlab seizure predict RUN recording.edf ...`: per-second seizure probabilities (CSV), detected
seizure intervals (onset, offset, peak probability; CSV) and a Fig. 3-style PNG per recording."""

from __future__ import annotations

import argparse
from pathlib import Path

PREFERENCE = ("cnn_bilstm_at", "cnn_bilstm", "cnn_at", "cnn")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint name in the run's checkpoints/ (default: the proposed CNN-BiLSTM w/ AT, "
                        "else the best available; in an experiment run, the first fold's)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's tau)")
    p.add_argument("--merge-gap", type=float, default=0.0, help="join detections closer than this many seconds")


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
    from detectlab.seizure.data import PreprocessConfig, preprocess_recording, read_edf
    from detectlab.seizure.events import detect_intervals
    from detectlab.seizure.train import load_model, predict_sequence

    folder, _ = open_run(model_run)
    ck = find_checkpoint(folder, getattr(args, "model", None))
    model, header = load_model(ck)
    mc = header["model_config"]
    pre = PreprocessConfig(**{k: v for k, v in header.get("preprocess", {}).items()
                              if k in PreprocessConfig.__dataclass_fields__})
    pre.fs = float(mc.get("fs", pre.fs))  # the rate the model was trained at
    thr = getattr(args, "threshold", None)
    thr = float(header["threshold"]) if thr is None else float(thr)
    out = Path(out) if out else folder / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    recs = [read_edf(p) for p in inputs]  # validate every input before any work
    progress.log(f"seizure predict: model {ck.name} ({mc.get('kind')}), threshold {thr:.4f}, fs {pre.fs:g} Hz")
    for rec in recs:
        pw = preprocess_recording(rec, pre)
        probs = predict_sequence(model, pw.X)
        iv = detect_intervals(probs, thr, pre.window_s, getattr(args, "merge_gap", 0.0))
        stem = Path(rec.source).stem
        with open(out / f"{stem}_probabilities.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["start_s", "end_s", "probability", "seizure"])
            for t, p in zip(pw.t0, probs):
                w.writerow([f"{t:.3f}", f"{t + pre.window_s:.3f}", f"{p:.5f}", int(p >= thr)])
        with open(out / f"{stem}_seizures.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["onset_s", "offset_s", "peak_probability"])
            for a, b, pk in iv:
                w.writerow([f"{a:.3f}", f"{b:.3f}", f"{pk:.5f}"])
        _figure(out / f"{stem}.png", pw, probs, thr, ck.stem)
        print(f"{rec.source}: {len(probs)} s scored, {len(iv)} seizure interval(s) detected"
              + "".join(f"; {a:.0f}-{b:.0f} s (peak {pk:.2f})" for a, b, pk in iv[:5])
              + (f"; annotated: {', '.join(f'{a:.0f}-{b:.0f} s' for a, b in rec.seizures)}" if rec.seizures else ""))
    return 0


def _figure(path: Path, pw, probs, thr: float, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from detectlab.seizure.figures import trace_axes

    X = pw.X
    ch = int(np.argmax(X.std(axis=(0, 2))))
    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 4.5), sharex=True)
    trace_axes(a, b, X[:, ch, :].reshape(-1), pw.fs, {name: probs}, {name: thr}, pw.seizures)
    a.set_title(f"{Path(pw.source).name}: grey = annotated seizure (when labels exist), dashed = threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
