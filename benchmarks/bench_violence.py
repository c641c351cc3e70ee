"""Benchmark of the violence system against its peers (Flower's stock FedAvg app, OpenCV decoding).

    python benchmarks/bench_violence.py --size smoke|full      (or: detectlab bench violence --size full)

1. Bytes per round, FedPer over FedAvg: the ArrayRecords a client sends (float32 data bytes, and Flower's
   ``count_bytes()`` payload). The data-bytes ratio must equal base/total parameters exactly.
2. Round time, our FedPer over a plain Flower FedAvg app (stock ``flwr.serverapp.strategy.FedAvg`` and a
   minimal ClientApp) with the same model, data and local training. ``full``: both on Flower's simulation
   engine (Ray, 2 clients, 3 rounds, mean seconds per round including the evaluate step). ``smoke``: the same
   per-round work in-process without transport (each client: ArrayRecord -> model -> local epoch ->
   ArrayRecord; server: our update checks + FedAvg aggregation vs stock ``aggregate_arrayrecords``).
3. Chunk decoding throughput (chunks/s) of our PyAV reader against OpenCV in a bare loop
   (VideoCapture.read + cvtColor + resize + 16-frame chunks) on the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("measure", "ours", "peer", "ratio ours/peer")
    w = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    fmt = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * x for x in w), *map(fmt, rows)])


def bytes_ratio(model_cfg: dict) -> dict:
    from flwr.app import ArrayRecord

    from detectlab.violence.model import build_model, param_counts, split_state
    from detectlab.violence.strategy import data_bytes

    m = build_model(model_cfg)
    sd = m.state_dict()
    base, _ = split_state(sd)
    full_r, base_r = ArrayRecord(sd), ArrayRecord(base)
    c = param_counts(m)
    return {"fedper_bytes": data_bytes(base_r), "fedavg_bytes": data_bytes(full_r),
            "fedper_payload": base_r.count_bytes(), "fedavg_payload": full_r.count_bytes(),
            "ratio": data_bytes(base_r) / data_bytes(full_r), "param_ratio": c["base"] / c["total"],
            "payload_ratio": base_r.count_bytes() / full_r.count_bytes()}


def decode_throughput(files: list[Path], size: int) -> dict:
    import cv2

    from detectlab.violence.data import CHUNK, chunk_frames, read_frames

    read_frames(files[0], size)  # warm-up of both decoders (imports, codec set-up)
    cv2.VideoCapture(str(files[0])).read()
    t0 = time.perf_counter()
    n_ours = sum(len(chunk_frames(read_frames(f, size))) for f in files)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_cv = 0
    for f in files:
        cap = cv2.VideoCapture(str(f))
        frames = []
        while True:
            ok, fr = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA))
        cap.release()
        if len(frames) >= CHUNK:
            n_cv += len(chunk_frames(np.stack(frames)))
    t_cv = time.perf_counter() - t0
    return {"clips": len(files), "chunks_ours": n_ours, "chunks_opencv": n_cv,
            "ours_chunks_per_s": n_ours / t_ours, "opencv_chunks_per_s": n_cv / t_cv}


def round_inprocess(x: np.ndarray, y: np.ndarray, model_cfg: dict, clients: int = 2, reps: int = 2) -> dict:
    """Per-round work without transport: ours (FedPer) vs plain FedAvg."""
    import torch
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from detectlab.violence import task
    from detectlab.violence.model import build_model, split_state
    from detectlab.violence.strategy import check_update

    parts = np.array_split(np.arange(len(y)), clients)
    gen = torch.Generator().manual_seed(0)

    def one_round(personal: bool) -> float:
        torch.manual_seed(0)
        g = build_model(model_cfg)
        sd = g.state_dict()
        if personal:
            sd, _ = split_state(sd)
        sent = ArrayRecord(sd)
        exp = {k: (tuple(a.shape), str(a.dtype)) for k, a in sent.items()}
        heads = {}
        t0 = time.perf_counter()
        replies = []
        for c, idx in enumerate(parts):
            m = build_model(model_cfg)
            st = sent.to_torch_state_dict()
            if personal and c in heads:
                st.update(heads[c])
            m.load_state_dict(st, strict=not personal)
            task.train_epochs(m, x[idx], y[idx], 1, 16, 1e-3, gen, torch.device("cpu"))
            out = {k: v.detach() for k, v in m.state_dict().items()}
            if personal:
                out, heads[c] = split_state(out)
            replies.append(RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord({"num-examples": len(idx)})}))
        if personal:
            replies = [r for r in replies if check_update(r, exp) is None]
        aggregate_arrayrecords(replies, "num-examples")
        return time.perf_counter() - t0

    one_round(True)  # warm-up
    ours = float(np.median([one_round(True) for _ in range(reps)]))
    plain = float(np.median([one_round(False) for _ in range(reps)]))
    return {"ours_round_s": ours, "plain_round_s": plain, "mode": "in-process (no transport)"}


def round_simulation(job: dict, rounds: int = 3) -> dict:
    """Both apps on Flower's simulation engine with the same partition file, model and local training."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from detectlab.violence import task
    from detectlab.violence.model import build_model
    from detectlab.violence.partition import load_client
    from detectlab.violence.server_app import quiet_flower, ray_env, simulate

    ray_env()
    quiet_flower()
    job = dict(job, rounds=rounds, strategies=["fedper"], export=False)
    ours = simulate(job)["fedper"]
    plain_client = ClientApp()
    spec = dict(job["client"], partition_file=job["partition_file"], model=job["model"])

    @plain_client.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        x, y, _, _ = load_client(spec["partition_file"], pid)
        m = build_model(spec["model"])
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        task.train_epochs(m, x, y, int(spec["epochs"]), int(spec["batch"]), float(spec["lr"]),
                          torch.Generator().manual_seed(pid), torch.device("cpu"))
        return Message(RecordDict({"arrays": ArrayRecord(m.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(y)})}), reply_to=msg)

    @plain_client.evaluate()
    def _eval(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        _, _, xt, yt = load_client(spec["partition_file"], pid)
        m = build_model(spec["model"])
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        r = task.evaluate(m, xt, yt)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": max(1, len(yt)),
                                                            "acc": float(r["accuracy"])})}), reply_to=msg)

    box = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        FedAvg(min_available_nodes=job["n_clients"], min_train_nodes=job["n_clients"],
               min_evaluate_nodes=job["n_clients"]).start(grid=grid, initial_arrays=ArrayRecord(build_model(job["model"]).state_dict()),
                                                          num_rounds=rounds, train_config=ConfigRecord())
        box["seconds"] = time.perf_counter() - t0

    try:
        run_simulation(server_app=server, client_app=plain_client, num_supernodes=job["n_clients"],
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": 2, "include_dashboard": False,
                                                     "logging_level": "ERROR", "log_to_driver": False}})
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    return {"ours_round_s": ours["seconds"] / rounds, "plain_round_s": box["seconds"] / rounds,
            "mode": f"Flower simulation engine, {job['n_clients']} clients, {rounds} rounds"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["smoke", "full"], default="smoke")
    ap.add_argument("--data", default="", help="video folder for the full decode benchmark [DETECTLAB_DATA/video]")
    args = ap.parse_args(argv)
    from detectlab.core.config import real_data_path
    from detectlab.core.runtime import set_threads
    from detectlab.violence.data import find_clips, load_chunks
    from detectlab.violence.synthetic import make_dataset

    set_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_violence_"))
    full = args.size == "full"
    size = 48 if full else 16
    model_cfg = {"width": 8 if full else 4}
    res: dict = {"size": args.size}
    res["bytes"] = bytes_ratio(model_cfg)
    real = Path(args.data) if args.data else real_data_path("video")
    if full and real is not None:
        files = [c.path for c in find_clips(real)]
    else:
        syn = make_dataset(tmp / "syn", n_sites=1, sources_per_site=2, clips_per_source=4, size=64, n_frames=32)
        files = [c.path for c in find_clips(syn)]
    res["decode"] = decode_throughput(files, size)
    res["decode"]["source"] = str(real if (full and real is not None) else "synthetic")
    if full:
        from detectlab.core.config import load_config
        from detectlab.core.runs import Run
        from detectlab.violence import experiment

        cfg = load_config(experiment.Config, "violence", "smoke",
                          [f"data={str(real) if real else 'builtin'!r}", f"data_opts.size={size}", "model.width=8",
                           "data_opts.max_chunks=2", "fl.epochs=1", "fl.batch=16"])
        with Run(tmp / "run", cfg, "violence") as run:
            job = experiment.prepare(cfg, run, "balanced2")["job"]
            res["round"] = round_simulation(job, rounds=3)
    else:
        cs = load_chunks(files[0].parent.parent, size, cache_dir=tmp / "cache")
        res["round"] = round_inprocess(np.asarray(cs.x), cs.y, model_cfg)
    b, d, r = res["bytes"], res["decode"], res["round"]
    rows = [
        ("bytes/round per client (float32 data)", f"{b['fedper_bytes']} (FedPer)", f"{b['fedavg_bytes']} (FedAvg)",
         f"{b['ratio']:.6f} (base/total params {b['param_ratio']:.6f})"),
        ("bytes/round per client (Flower payload)", str(b["fedper_payload"]), str(b["fedavg_payload"]),
         f"{b['payload_ratio']:.6f}"),
        (f"round time, s [{r['mode']}]", f"{r['ours_round_s']:.3f} (our FedPer)",
         f"{r['plain_round_s']:.3f} (plain Flower FedAvg)", f"{r['ours_round_s'] / r['plain_round_s']:.3f} (goal <= 1.1)"),
        (f"decode chunks/s ({d['clips']} clips, {size}x{size})", f"{d['ours_chunks_per_s']:.1f} (PyAV)",
         f"{d['opencv_chunks_per_s']:.1f} (OpenCV loop)", f"{d['ours_chunks_per_s'] / d['opencv_chunks_per_s']:.3f}"),
    ]
    print(_table(rows))
    res["ratios"] = {"bytes": b["ratio"], "round_time": r["ours_round_s"] / r["plain_round_s"],
                     "decode": d["ours_chunks_per_s"] / d["opencv_chunks_per_s"]}
    print(json.dumps(res["ratios"]))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
