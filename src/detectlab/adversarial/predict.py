"""`detectlab adversarial predict RUN IMAGE...`: per image the statistic, the flag and the class."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="secret", choices=["natural", "secret"],
                   help="which classifier of the run classifies the images [secret]")


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import json

    from detectlab.adversarial.attack import predict_labels
    from detectlab.adversarial.data import load_images
    from detectlab.adversarial.detector import statistic_batched
    from detectlab.adversarial.train import load_model
    from detectlab.core.errors import InputError
    from detectlab.core.runs import open_run, write_json

    folder, _ = open_run(model_run)
    mpath = folder / "metrics.json"
    if not mpath.exists():
        raise InputError(folder, "run has no metrics.json (unfinished?)", "a finished `adversarial run` or `train`")
    thr = json.loads(mpath.read_text()).get("threshold")
    if thr is None:
        raise InputError(mpath, "no detector threshold", "a run of `detectlab adversarial run` or `train`")
    ck = folder / "checkpoints" / f"{getattr(args, 'model', 'secret')}.safetensors"
    model = load_model(ck)
    x, names = load_images(inputs)
    stat = statistic_batched(x)
    probs = None
    import torch

    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
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
