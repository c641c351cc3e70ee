"""`detectlab violence predict RUN --client K video.mp4 ...`: per-chunk fight probability and the verdict.

Uses client K's personalised model of the run (FedPer: its best-validation base + own head; Per-FedAvg /
FedMeta-Per: the model after K's personalisation step; FedAvg: the global model of K's best-validation round),
saved by the last evaluation round as ``checkpoints/<experiment>-seed<s>-<strategy>-client<K>.safetensors``.
Chunks are the fixed non-overlapping 16-frame chunks at the run's frame size (central crop as in training);
the clip verdict is FIGHT when the mean chunk probability is at least ``--threshold``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")
    p.add_argument("--client", type=int, default=None,
                   help="whose personalised model to use (0-based) [0 for predict; the global model for evaluate]")
    p.add_argument("--strategy", default="", help="fedper, fedavg, perfedavg or fedmetaper [fedper if in the run]")
    p.add_argument("--experiment", default="", help="experiment of the run [the first one]")
    p.add_argument("--seed", type=int, default=None, help="which seed's models [the run's first seed]")
    p.add_argument("--threshold", type=float, default=0.5, help="fight when mean chunk probability >= this [0.5]")


def _candidates(cfg: dict, strategy: str, experiment: str, seed: int | None) -> tuple[list[str], list[str], list[int]]:
    exps = [experiment] if experiment else list(dict.fromkeys(
        [*cfg.get("experiments", []), cfg.get("train_experiment", "")])) or [""]
    strats = [strategy] if strategy else list(dict.fromkeys(["fedper", *cfg.get("strategies", []),
                                                             cfg.get("train_strategy", "fedper")]))
    base = int(cfg.get("seed", 0))
    seeds = [seed] if seed is not None else [base + int(s) for s in cfg.get("seeds", [0])]
    return [e for e in exps if e], strats, seeds


def find_checkpoint(folder: Path, cfg: dict, client: int | None, strategy: str = "", experiment: str = "",
                    seed: int | None = None) -> Path:
    """Client `client`'s personalised model, or (client None) the strategy's global model."""
    from detectlab.core.errors import InputError

    ck = folder / "checkpoints"
    exps, strats, seeds = _candidates(cfg, strategy, experiment, seed)
    for e in exps:
        for s in seeds:
            for st in strats:
                name = f"{e}-seed{s}-{st}-" + ("global" if client is None else f"client{client}")
                p = ck / f"{name}.safetensors"
                if p.exists():
                    return p
    pat = "*-global.safetensors" if client is None else "*-client*.safetensors"
    have = sorted(q.name for q in ck.glob(pat)) if ck.is_dir() else []
    what = "no global model" if client is None else f"no personalised model for client {client}"
    raise InputError(folder, what + (f" (strategy {strategy})" if strategy else "")
                     + (f" (experiment {experiment})" if experiment else "") + (f" (seed {seed})" if seed is not None else ""),
                     "one of: " + (", ".join(have[:8]) if have else "a finished `detectlab violence run` or `train` folder"))


def load_model(model_run: Path, args: argparse.Namespace, default_client: int | None):
    """(model, header, checkpoint path, run config) of the model the arguments name."""
    from detectlab.core.checkpoints import load_checkpoint
    from detectlab.core.errors import InputError
    from detectlab.core.runs import open_run
    from detectlab.core.runtime import choose_device
    from detectlab.violence.model import build_model

    folder, cfg = open_run(model_run)
    client = getattr(args, "client", None)
    client = default_client if client is None else int(client)
    ck = find_checkpoint(folder, cfg, client, getattr(args, "strategy", "") or "", getattr(args, "experiment", "") or "",
                         getattr(args, "seed", None))
    state, header = load_checkpoint(ck, "violence")
    if header.get("part") == "base":
        raise InputError(ck, f"the global model of {header.get('strategy')} is only the shared base (each client keeps "
                             "its own head)", "--client K for that client's personalised model, or --strategy fedavg")
    model = build_model(header.get("model_config", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(ck, f"weights do not fit the model ({str(e).splitlines()[0]})") from None
    device = choose_device(getattr(args, "device", None) or "auto")
    return model.to(device), header, ck, cfg


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import numpy as np

    from detectlab.core.runs import write_json
    from detectlab.violence.data import read_clip_chunks
    from detectlab.violence.task import predict_proba

    model, header, ck, cfg = load_model(model_run, args, default_client=0)
    mc = header.get("model_config", {})
    size = int(mc.get("size", cfg.get("data_opts", {}).get("size", 64)))
    crop = int(mc.get("crop", 0))
    thr = float(getattr(args, "threshold", 0.5))
    clips = [(p, read_clip_chunks(p, size, 16)) for p in inputs]  # validate every input first
    rows = []
    print(f"model: {ck.name} (client {header.get('client', 'global')}, strategy {header.get('strategy')}, "
          f"experiment {header.get('experiment')})")
    for p, chunks in clips:
        prob = predict_proba(model, chunks, crop=crop)
        verdict = "FIGHT" if float(prob.mean()) >= thr else "no fight"
        print(f"{p}: {len(prob)} chunks, p(fight) per chunk: " + " ".join(f"{v:.2f}" for v in prob)
              + f" -> mean {prob.mean():.3f}: {verdict}")
        rows.append({"video": str(p), "chunk_prob": prob.tolist(), "mean_prob": float(np.mean(prob)),
                     "max_prob": float(np.max(prob)), "verdict": verdict, "client": header.get("client"),
                     "checkpoint": ck.name})
    if out is not None:
        write_json(Path(out) / "predictions.json", rows)
    return 0
