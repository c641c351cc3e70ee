"""`detectlab adversarial predict RUN IMAGE...`: per image the statistic, the flag and the class."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detectlab.adversarial.config import MODELS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="secret", choices=list(MODELS),
                   help="which classifier of the run classifies the images [secret]")
    if not any("--device" in a.option_strings for a in p._actions):  # unless the shared CLI adds it
        p.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")


def detector_of(folder: Path):
    """The run's fitted steganalysis detector (threshold and conventions from its metrics.json)."""
    from detectlab.adversarial.detector import SteganalysisDetector
    from detectlab.core.errors import InputError

    mpath = folder / "metrics.json"
    if not mpath.exists():
        raise InputError(folder, "run has no metrics.json (unfinished?)", "a finished `adversarial run` or `train`")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise InputError(mpath, f"not valid JSON ({e})") from None
    thr = m.get("threshold")
    if not isinstance(thr, (int, float)):
        raise InputError(mpath, "no detector threshold", "a run of `detectlab adversarial run` or `train`")
    d = m.get("detector") or {}
    # runs written before the conventions were recorded used the 4-neighbour variance / 4
    return SteganalysisDetector(threshold=float(thr), c=float(d.get("constant", 5.0)), divisor=int(d.get("divisor", 4)),
                                rule=m.get("threshold_rule", "max"), thresholds=m.get("thresholds", {}))


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import torch

    from detectlab.adversarial.attack import predict_labels
    from detectlab.adversarial.data import load_images
    from detectlab.adversarial.detector import to_uint8
    from detectlab.adversarial.train import load_model
    from detectlab.core.runs import open_run, write_json
    from detectlab.core.runtime import choose_device

    folder, _ = open_run(model_run)
    det = detector_of(folder)
    thr = float(det.threshold)
    device = choose_device(getattr(args, "device", None) or "auto")
    model = load_model(folder / "checkpoints" / f"{getattr(args, 'model', 'secret')}.safetensors", device)
    x, names = load_images(inputs)
    stat = det.score(to_uint8(x, "round"))
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x[i: i + 2000].to(device)), 1).cpu() for i in range(0, len(x), 2000)])
    pred = predict_labels(model, x)
    rows = []
    print(f"{'image':<32} {'statistic':>10} {'ratio':>6} {'flag':>11} {'class':>5} {'p':>5}")
    for n, s, c, pr in zip(names, stat.tolist(), pred.tolist(), probs.max(1).values.tolist()):
        flag = s > thr
        print(f"{n:<32} {s:>10.6f} {s / thr:>6.2f} {'ADVERSARIAL' if flag else 'benign':>11} {c:>5} {pr:>5.2f}")
        rows.append({"image": n, "statistic": s, "threshold": thr, "adversarial": flag, "class": c, "p": pr})
    if out is not None:
        write_json(Path(out) / "predictions.json", rows)
    return 0
