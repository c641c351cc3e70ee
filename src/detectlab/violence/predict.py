"""`detectlab violence predict RUN --client K video.mp4 ...`: per-chunk fight probability and the verdict.

Uses client K's personalised model of the run (FedPer: the global base + K's own head; Per-FedAvg /
FedMeta-Per: the model after K's personalisation step; FedAvg: the global model), saved by the last
evaluation round as ``checkpoints/<experiment>-<strategy>-client<K>.safetensors``.
The clip verdict is FIGHT when the mean chunk probability is at least ``--threshold``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--client", type=int, default=0, help="whose personalised model to use (0-based) [0]")
    p.add_argument("--strategy", default="", help="fedper, fedavg, perfedavg or fedmetaper [fedper if in the run]")
    p.add_argument("--experiment", default="", help="experiment of the run [the first one]")
    p.add_argument("--threshold", type=float, default=0.5, help="fight when mean chunk probability >= this [0.5]")


def find_checkpoint(folder: Path, cfg: dict, client: int, strategy: str = "", experiment: str = "") -> Path:
    from detectlab.core.errors import InputError

    ck = folder / "checkpoints"
    exps = [experiment] if experiment else list(dict.fromkeys(
        [*cfg.get("experiments", []), cfg.get("train_experiment", "")] if cfg.get("train_experiment") else
        cfg.get("experiments", [])))
    strats = [strategy] if strategy else (["fedper"] + [s for s in cfg.get("strategies", []) if s != "fedper"])
    for e in exps:
        for s in strats:
            p = ck / f"{e}-{s}-client{client}.safetensors"
            if p.exists():
                return p
    have = sorted(q.name for q in ck.glob("*-client*.safetensors")) if ck.is_dir() else []
    raise InputError(folder, f"no personalised model for client {client}"
                     + (f" (strategy {strategy})" if strategy else "") + (f" (experiment {experiment})" if experiment else ""),
                     "one of: " + (", ".join(have) if have else "a finished `detectlab violence run` or `train` folder"))


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import numpy as np

    from detectlab.core.checkpoints import load_checkpoint
    from detectlab.core.errors import InputError
    from detectlab.core.runs import open_run, write_json
    from detectlab.violence.data import read_clip_chunks
    from detectlab.violence.model import build_model
    from detectlab.violence.task import predict_proba

    folder, cfg = open_run(model_run)
    client = int(getattr(args, "client", 0))
    ck = find_checkpoint(folder, cfg, client, getattr(args, "strategy", ""), getattr(args, "experiment", ""))
    state, header = load_checkpoint(ck, "violence")
    model = build_model(header.get("model_config", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(ck, f"weights do not fit the model ({str(e).splitlines()[0]})") from None
    size = int(header.get("model_config", {}).get("size", cfg.get("data_opts", {}).get("size", 64)))
    stride = int(cfg.get("data_opts", {}).get("stride", 16))
    thr = float(getattr(args, "threshold", 0.5))
    clips = [(p, read_clip_chunks(p, size, stride)) for p in inputs]  # validate every input first
    rows = []
    print(f"model: {ck.name} (client {client}, strategy {header.get('strategy')}, experiment {header.get('experiment')})")
    for p, chunks in clips:
        prob = predict_proba(model, chunks)
        verdict = "FIGHT" if float(prob.mean()) >= thr else "no fight"
        print(f"{p}: {len(prob)} chunks, p(fight) per chunk: " + " ".join(f"{v:.2f}" for v in prob)
              + f" -> mean {prob.mean():.3f}: {verdict}")
        rows.append({"video": str(p), "chunk_prob": prob.tolist(), "mean_prob": float(np.mean(prob)),
                     "max_prob": float(np.max(prob)), "verdict": verdict, "client": client, "checkpoint": ck.name})
    if out is not None:
        write_json(Path(out) / "predictions.json", rows)
    return 0
