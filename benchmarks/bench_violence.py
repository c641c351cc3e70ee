"""Benchmark of the violence system against its peers (Flower's stock FedAvg app, OpenCV decoding).

    python benchmarks/bench_violence.py --size smoke|full      (or: detectlab bench violence --size full)

1. Bytes per round, FedPer over FedAvg, counted from the messages of a round (both directions; float32 data
   bytes of the arrays, and Flower's ``count_bytes()`` payload of every record). FedPer's train replies carry
   the base only, so their data bytes follow base/total parameters.
2. Round time, our FedPer app over a plain Flower FedAvg app (stock ``flwr.serverapp.strategy.FedAvg`` and a
   minimal ClientApp) with the same model, data and local training, interleaved (ours, plain, ...), median and
   spread. ``full``: the deployment engine (a SuperLink and 2 SuperNodes on 127.0.0.1 with TLS and SuperNode
   authentication, each node reading its own site folder; :func:`deploy_round_time`). ``smoke``: one round
   in-process with real Messages and ClientApp handlers, no transport (:func:`federation_inprocess`).
3. Chunk decoding throughput (chunks/s) of our PyAV reader (FFmpeg's area scaling straight from the decoder's
   planes, one reused scaler per clip; decoder threads from ``DETECTLAB_THREADS``) against OpenCV in a bare loop
   (VideoCapture.read + cvtColor + INTER_AREA resize + 16-frame chunks, OpenCV's defaults: FFmpeg decoder
   threads = CPU count, cv2 threads = CPU count) on the same files, and against the same loop held to one
   thread (``CAP_PROP_N_THREADS=1``, ``cv2.setNumThreads(1)``), interleaved (ours, OpenCV, OpenCV 1 thread,
   ...), median speed-up of 5 repetitions and its spread; frames compared clip by clip on every file.
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


def _opencv_chunks(f: Path, size: int, threads: int = 0) -> np.ndarray:
    """The peer: a bare OpenCV loop (VideoCapture.read + cvtColor + INTER_AREA resize), cut into 16-frame chunks.

    ``threads=0``: OpenCV's defaults (its FFmpeg decoder and cv2 use all cores); ``threads=n``: the decoder
    opened with ``CAP_PROP_N_THREADS=n`` and ``cv2.setNumThreads(n)`` around the loop (equal-thread peer)."""
    import cv2

    from detectlab.violence.data import CHUNK, chunk_frames

    before = cv2.getNumThreads()
    if threads:  # the default peer is left exactly as it was (no setNumThreads call)
        cv2.setNumThreads(threads)
        cap = cv2.VideoCapture(str(f), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    else:
        cap = cv2.VideoCapture(str(f))
    frames = []
    try:
        while True:
            ok, fr = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
        if threads:
            cv2.setNumThreads(before)
    return chunk_frames(np.stack(frames)) if len(frames) >= CHUNK else np.zeros((0, CHUNK, size, size, 3), np.uint8)


def _speedup(times: dict, ours: str, peer: str) -> dict:
    per = sorted(p / o for o, p in zip(times[ours], times[peer]))
    return {"median": float(np.median(per)), "min": per[0], "max": per[-1], "per_rep": per}


def decode_throughput(files: list[Path], size: int, reps: int = 5) -> dict:
    """Chunks/s of our reader (PyAV, FFmpeg's area scaling straight from the decoder's planes) against the bare
    OpenCV loop on the same files, interleaved (ours, OpenCV, OpenCV one thread, ours, ...), median of `reps`
    and the spread of the per-repetition speed-up (OpenCV time / our time, same repetition). Also how close the
    frames are: mean |difference| over every frame of every file (from the last timed repetition's output)."""
    import cv2

    from detectlab.core.bench import interleaved
    from detectlab.violence.data import chunk_frames, decoder_threads, read_frames

    count: dict = {}
    last: dict = {}

    def ours():
        last["ours"] = [chunk_frames(read_frames(f, size)) for f in files]
        count["ours"] = sum(len(c) for c in last["ours"])

    def peer():
        last["peer"] = [_opencv_chunks(f, size) for f in files]
        count["peer"] = sum(len(c) for c in last["peer"])

    def peer_1thread():
        count["peer_1thread"] = sum(len(_opencv_chunks(f, size, threads=1)) for f in files)

    res = interleaved({"ours": ours, "peer": peer, "peer_1thread": peer_1thread}, reps=reps, warmup=1)
    diffs, mismatched = [], 0
    for a, b in zip(last["ours"], last["peer"]):
        if a.shape != b.shape:
            mismatched += 1
            n = min(len(a), len(b))
            a, b = a[:n], b[:n]
        if len(a):
            diffs.append(float(np.abs(a.astype(np.int16) - b).mean()))
    return {"clips": len(files), "chunks_ours": count["ours"], "chunks_opencv": count["peer"],
            "chunks_opencv_1thread": count["peer_1thread"],
            "ours_chunks_per_s": count["ours"] / res["median"]["ours"],
            "opencv_chunks_per_s": count["peer"] / res["median"]["peer"],
            "opencv_1thread_chunks_per_s": count["peer_1thread"] / res["median"]["peer_1thread"],
            "speedup": _speedup(res["times"], "ours", "peer"),
            "speedup_1thread": _speedup(res["times"], "ours", "peer_1thread"),
            "threads": {"ours_decoder": decoder_threads(), "opencv_default_decoder": _opencv_threads(files[0]),
                        "opencv_default_cv2": cv2.getNumThreads()},
            "times": res["times"], "mean_abs_pixel_difference": float(np.mean(diffs)) if diffs else float("nan"),
            "max_clip_pixel_difference": max(diffs) if diffs else float("nan"),
            "clips_with_other_chunk_count": mismatched, "reps": reps}


def _opencv_threads(f: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(f))
    try:
        return int(cap.get(cv2.CAP_PROP_N_THREADS))
    finally:
        cap.release()


def _plain_client_inprocess():
    """The plain ClientApp of the in-process round: same partition file, model and local training as ours."""
    import torch
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from detectlab.violence import task
    from detectlab.violence.model import build_model
    from detectlab.violence.partition import load_client

    app = ClientApp()

    @app.train()
    def _train(msg, context):
        spec = json.loads(str(msg.content["config"]["spec"]))
        pid = int(context.node_config["partition-id"])
        data = load_client(spec["partition_file"], pid)
        m = build_model(spec["model"])
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.Adam(m.parameters(), lr=float(spec["lr"]))
        for _ in range(int(spec["epochs"])):
            task.fit_epoch(m, data.train, opt, int(spec["batch"]), task.Augment.from_spec(spec),
                           np.random.default_rng(pid))
        return Message(RecordDict({"arrays": ArrayRecord(m.state_dict()),
                                   "metrics": MetricRecord({"num-examples": task.n_examples(data)})}), reply_to=msg)

    @app.evaluate()
    def _evaluate(msg, context):
        spec = json.loads(str(msg.content["config"]["spec"]))
        data = load_client(spec["partition_file"], int(context.node_config["partition-id"]))
        m = build_model(spec["model"])
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        r = task.evaluate(m, data.test)
        yt = data.test.label
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": max(1, len(yt)),
                                                            "acc": float(r["accuracy"] if r["n"] else 0.0)})}),
                       reply_to=msg)

    return app


def federation_inprocess(partition_file: Path, model: dict, work: Path, clients: int = 2, reps: int = 5) -> dict:
    """One round, in this process (real Messages and ClientApp handlers, no transport), interleaved: our FedPer
    (RobustFedAvg, checks, census, heads) against stock FedAvg with a plain ClientApp, same model and data.
    Bytes are counted from the messages of each round (both directions), not from a fresh state_dict."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from detectlab.violence import client_app
    from detectlab.violence.flower_app import InProcessGrid
    from detectlab.violence.model import build_model, param_counts
    from detectlab.violence.server_app import run_strategy
    from detectlab.violence.strategy import content_bytes

    client = {"lr": 1e-3, "weight_decay": 0.0, "epochs": 1, "batch": 16, "alpha": 0.03, "beta": 0.1,
              "delta": 1e-3, "variant": "fo", "meta_steps": 0, "adapt_steps": 1, "threads": 1, "fault": ""}
    nodes = [{"partition-id": i} for i in range(clients)]
    plain_app = _plain_client_inprocess()
    n = {"ours": 0, "peer": 0}
    seen: dict = {}

    def ours() -> float:
        n["ours"] += 1
        job = {"experiment": "iid", "n_clients": clients, "rounds": 1, "seed": 0, "model": model,
               "partition_file": str(partition_file), "out": str(work / f"ours-{n['ours']}"), "export": False,
               "timeout": 600, "strategies": ["fedper"], "client": client}
        h = run_strategy(InProcessGrid(client_app.app, nodes), job, "fedper")["history"][0]
        seen["ours"] = h["bytes"]
        return h["t_end"] - h["t_start"]

    def peer() -> float:
        n["peer"] += 1
        grid = InProcessGrid(plain_app, nodes)
        replies = []
        pull = grid.pull_messages
        grid.pull_messages = lambda ids: [replies.append(m) or m for m in pull(ids)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            arrays = ArrayRecord(build_model(model).state_dict())
        spec = {"partition_file": str(partition_file), "model": model, **client}
        cfg = ConfigRecord({"spec": json.dumps(spec)})
        t0 = time.perf_counter()
        FedAvg(min_available_nodes=clients, min_train_nodes=clients, min_evaluate_nodes=clients).start(
            grid=grid, initial_arrays=arrays, num_rounds=1, train_config=cfg, evaluate_config=ConfigRecord(dict(cfg)))
        dt = time.perf_counter() - t0
        if any(m.has_error() for m in replies):
            raise RuntimeError(f"the plain clients failed: {next(m for m in replies if m.has_error()).error.reason}")
        up = [content_bytes(m.content) for m in replies if not m.has_error()]
        down = [content_bytes(m.content) for m in grid.sent]
        seen["peer"] = {"up": sum(u["data"] for u in up), "down": sum(d["data"] for d in down),
                        "payload_up": sum(u["payload"] for u in up), "payload_down": sum(d["payload"] for d in down)}
        return dt

    res = _interleaved({"ours": ours, "peer": peer}, reps=reps, warmup=1)
    c = param_counts(build_model(model))
    o, p = seen["ours"], seen["peer"]
    return {"round": {"ours_round_s": res["median"]["ours"], "plain_round_s": res["median"]["peer"],
                      "ratio": res["ratio"], "times": res["times"],
                      "mode": f"in-process, {clients} clients, real Messages, no transport"},
            "bytes": {"fedper_bytes": o["up"] // clients, "fedavg_bytes": p["up"] // clients,
                      "fedper_payload": o["payload_up"] // clients, "fedavg_payload": p["payload_up"] // clients,
                      "ratio": o["up"] / p["up"], "param_ratio": c["base"] / c["total"],
                      "payload_ratio": o["payload_up"] / p["payload_up"],
                      "round_total_ours": o["up"] + o["down"], "round_total_peer": p["up"] + p["down"],
                      "source": "counted from the round's messages (train replies per client; both directions "
                                "in round_total)"}}


# ---- round time on the deployment engine (fed): our FedPer app vs a plain Flower FedAvg app ---------------
PLAIN_SERVER = '''"""A plain Flower FedAvg app (stock strategy, no checks): the peer of the deployment benchmark."""
import json, time
from pathlib import Path
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from detectlab.violence.model import build_model
from detectlab.violence.strategy import content_bytes

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    spec, n, rounds = json.loads(str(rc["spec"])), int(rc["nodes"]), int(rc["rounds"])
    stamps, sizes = {}, {}

    def count(r, key, msgs):
        b = sizes.setdefault(str(r), {"up": 0, "down": 0, "payload_up": 0, "payload_down": 0, "errors": []})
        for m in msgs:
            if m.has_error():
                b["errors"].append(m.error.reason[-300:])
            else:
                c = content_bytes(m.content)
                b[key] += c["data"]
                b["payload_" + key] += c["payload"]

    class Timed(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            stamps.setdefault(server_round, [time.time()])
            msgs = list(super().configure_train(server_round, arrays, config, grid))
            count(server_round, "down", msgs)
            return msgs

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            count(server_round, "up", replies)
            return super().aggregate_train(server_round, replies)

        def configure_evaluate(self, server_round, arrays, config, grid):
            msgs = list(super().configure_evaluate(server_round, arrays, config, grid))
            count(server_round, "down", msgs)
            return msgs

        def aggregate_evaluate(self, server_round, replies):
            replies = list(replies)
            count(server_round, "up", replies)
            out = super().aggregate_evaluate(server_round, replies)
            stamps[server_round].append(time.time())
            return out

    torch.manual_seed(0)
    cfg = ConfigRecord({"spec": json.dumps(spec)})
    Timed(min_available_nodes=n, min_train_nodes=n, min_evaluate_nodes=n).start(
        grid=grid, initial_arrays=ArrayRecord(build_model(spec["model"]).state_dict()), num_rounds=rounds,
        train_config=cfg, evaluate_config=ConfigRecord(dict(cfg)))
    Path(str(rc["stamps"])).write_text(json.dumps({"stamps": stamps, "bytes": sizes}))
'''
PLAIN_CLIENT = '''"""The plain ClientApp: the same node data, model and local training as ours, whole model both ways."""
import json
from pathlib import Path
import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from detectlab.violence import task
from detectlab.violence.client_app import node_data
from detectlab.violence.model import build_model

app = ClientApp()


def _data(msg, context):
    spec = json.loads(str(msg.content["config"]["spec"]))
    root = Path(str(context.node_config["state-dir"]))
    return spec, node_data(Path(str(context.node_config["data-dir"])), spec, root / "cache")


@app.train()
def train(msg: Message, context: Context) -> Message:
    spec, (data, _) = _data(msg, context)
    torch.set_num_threads(1)
    m = build_model(spec["model"])
    m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.Adam(m.parameters(), lr=float(spec["lr"]))
    for _ in range(int(spec["epochs"])):
        task.fit_epoch(m, data.train, opt, int(spec["batch"]), task.Augment.from_spec(spec),
                       np.random.default_rng(int(context.node_config["partition-id"])))
    return Message(RecordDict({"arrays": ArrayRecord(m.state_dict()),
                               "metrics": MetricRecord({"num-examples": task.n_examples(data)})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    spec, (data, _) = _data(msg, context)
    m = build_model(spec["model"])
    m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    if spec.get("peer_validation") and len(data.val):  # the same evaluation work as ours: validation + test
        task.evaluate(m, data.val)
    r = task.evaluate(m, data.test)
    yt = data.test.label
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": max(1, len(yt)),
                                                        "acc": float(r["accuracy"] if r["n"] else 0.0)})}), reply_to=msg)
'''


def _plain_app(folder: Path, spec: dict, nodes: int, rounds: int, stamps: Path) -> Path:
    pkg = folder / "plain_fedavg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "server_app.py").write_text(PLAIN_SERVER)
    (pkg / "client_app.py").write_text(PLAIN_CLIENT)
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "plain-fedavg"
version = "1.0.0"
description = "plain Flower FedAvg app (benchmark peer)"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "plain_fedavg.server_app:app"
clientapp = "plain_fedavg.client_app:app"

[tool.flwr.app.config]
spec = {json.dumps(json.dumps(spec))}
nodes = "{nodes}"
rounds = "{rounds}"
stamps = {json.dumps(str(stamps))}
""")
    return folder


def _interleaved(fns: dict, reps: int, warmup: int = 1) -> dict:
    """detectlab.core.bench.interleaved over durations the cases measure themselves (each returns its seconds,
    e.g. the rounds inside a ServerApp without the process start-up): its timer is a clock that only those
    measured seconds advance. Order: ours, peer, ours, peer, ..."""
    from detectlab.core.bench import interleaved

    clock = [0.0]

    def case(f):
        def run():
            clock[0] += f()
        return run

    return interleaved({k: case(f) for k, f in fns.items()}, reps=reps, warmup=warmup, ratio=("ours", "peer"),
                       timer=lambda: clock[0])


def deploy_round_time(data: Path, work: Path, size: int = 16, width: int = 4, rounds: int = 2, reps: int = 5,
                      max_chunks: int = 0, warmup: int = 1, warm: bool = False, same_eval: bool = True) -> dict:
    """Seconds per round on the deployment engine (a SuperLink + 2 SuperNodes on 127.0.0.1, TLS), our FedPer
    app against a plain Flower FedAvg app with the same model, node data and local training, interleaved
    (ours, plain, ours, plain, ...). A round = train + evaluate on both clients; each repetition is one
    `flwr run` of `rounds` rounds; the time per round is taken inside each ServerApp from the first train
    message to the last evaluate reply (the census before round 1 and process start-up are not in it).
    ``warm=False`` (default): the SuperNodes run Flower's stock subprocess executor for both apps.
    Both apps get the same model dict and training windows (resolved from the smoke preset with the same
    overrides). ``same_eval`` (default): the plain app evaluates on the validation clips as well as the test
    clips each round, as our recipe does, so the ratio is the federation's cost, not the recipe's."""
    from detectlab.core.config import load_config
    from detectlab.violence.config import Config, client_spec, model_dict
    from detectlab.violence.flower_app import LocalDeployment, make_sites, write_app
    from detectlab.violence.model import build_model

    sites = make_sites(data, work / "sites", "balanced2")
    nc = {i: f'data-dir="{s}" state-dir="{s}/flower"' for i, s in enumerate(sites)}
    max_frames = 16 * max_chunks
    ov = ['strategies=["fedper"]', f"fl.rounds={rounds}", "fl.epochs=1", "fl.batch=16", "fl.lr=0.001",
          f"data_opts.size={size}", f"data_opts.max_frames={max_frames}", f"model.width={width}",
          "model.dropout=0.2", "aug.crop=0", 'data="nodes"', "fl.eval_test_every_round=true"]
    # the plain app gets the very model and training windows ours resolves from the same preset and overrides
    # (an earlier version gave it the default model without GroupNorm and stride-16 windows while ours used the
    # smoke preset's stride-8 jittered, flipped windows: 1.5x the training windows on 32-frame clips)
    cfg = load_config(Config, "violence", "smoke", ov)
    model = model_dict(cfg)
    cs = client_spec(cfg)
    client = {**{k: cs[k] for k in ("lr", "weight_decay", "epochs", "batch", "threads", "aug")},
              "data": {"size": size, "max_frames": max_frames, "test_fraction": 0.25, "val_fraction": 0.2}, "seed": 0}
    count = {"ours": 0, "peer": 0}
    seen: dict = {}
    with LocalDeployment(work / "dep", 2, tls=True, auth=True, node_config=nc, warm=warm) as dep:
        def ours() -> float:
            count["ours"] += 1
            out = work / f"ours-{count['ours']}"
            app = write_app(work / f"app-ours-{count['ours']}", "smoke", ov, out, extra={"nodes": "2"})
            dep.submit(app).wait(3600)
            h = json.loads((out / "units" / "balanced2-fedper.json").read_text())["result"]["history"]
            missing = [x for r in h for x in r.get("missing", [])]
            if missing:
                raise RuntimeError(f"our clients failed: {missing[0]}")
            seen.setdefault("ours", h[0]["bytes"])
            return (h[-1]["t_end"] - h[0]["t_start"]) / len(h)

        def plain(name: str, validation: bool):
            def run() -> float:
                count[name] = count.get(name, 0) + 1
                stamps = work / f"{name}-{count[name]}.json"
                spec = {"model": model, **client, "peer_validation": validation}
                app = _plain_app(work / f"app-{name}-{count[name]}", spec, 2, rounds, stamps)
                dep.submit(app).wait(3600)
                st = json.loads(stamps.read_text())
                errors = [e for b in st["bytes"].values() for e in b.get("errors", [])]
                if errors:  # a round whose clients failed is not a round: never time it
                    raise RuntimeError(f"the plain app's clients failed: {errors[0]}")
                seen.setdefault(name, st["bytes"]["1"])
                return (st["stamps"][str(rounds)][1] - st["stamps"]["1"][0]) / rounds
            return run

        # same_eval: the plain app evaluates on the validation clips as well as the test clips each round, as
        # our recipe does, so the ratio measures the federation's cost, not the recipe's
        res = _interleaved({"ours": ours, "peer": plain("peer", same_eval)}, reps=reps, warmup=warmup)
    from detectlab.violence.model import param_counts

    c = param_counts(build_model(model))
    o, p = seen["ours"], seen["peer"]
    res["bytes"] = {"fedper_bytes": o["up"] // 2, "fedavg_bytes": p["up"] // 2, "fedper_payload": o["payload_up"] // 2,
                    "fedavg_payload": p["payload_up"] // 2, "ratio": o["up"] / p["up"],
                    "param_ratio": c["base"] / c["total"], "payload_ratio": o["payload_up"] / p["payload_up"],
                    "round_total_ours": o["up"] + o["down"], "round_total_peer": p["up"] + p["down"],
                    "source": "counted from round 1's messages on the deployment engine"}
    res.update({"mode": f"deployment engine, SuperLink + 2 SuperNodes on 127.0.0.1 (TLS + auth, "
                        f"{'warm' if warm else 'stock'} executor), {rounds} rounds, {size}x{size}, width {width}",
                "rounds": rounds})
    return res


def federation(full: bool, tmp: Path, real: Path | None, size: int, model_cfg: dict) -> dict:
    """Bytes per round and round time, ours (FedPer) against a plain Flower FedAvg app (fed).

    smoke: one round in-process (:func:`federation_inprocess`) on 8 synthetic clips; full: the deployment
    engine (:func:`deploy_round_time`) on the real clips (or synthetic ones), and the bytes of the first
    repetition's messages."""
    from detectlab.violence.data import load_clips
    from detectlab.violence.partition import save_partition
    from detectlab.violence.synthetic import make_dataset

    model = {"arch": "DiffGated", "width": model_cfg["width"], "hidden": [128, 32], "dropout": 0.2, "size": size}
    if not full:  # in-process: both sides get this model dict and the default windows
        syn = make_dataset(tmp / "fedsyn", n_sites=1, sources_per_site=2, clips_per_source=4, size=64, n_frames=32)
        cs = load_clips(syn, size, cache_dir=tmp / "fedcache")
        clips = np.arange(len(cs))
        train = [clips[i::2][: len(clips[i::2]) - 1] for i in range(2)]
        test = [clips[i::2][-1:] for i in range(2)]
        table = {"start": cs.start, "length": cs.length, "label": cs.label, "group": cs.group, "parent": cs.parent}
        pfile = save_partition(tmp / "partition.npz", str(Path(cs.cache) / "frames.npy"), table, train,
                               [t[:0] for t in train], test)
        return federation_inprocess(pfile, model, tmp / "fed")
    data = real if real is not None else make_dataset(tmp / "fedsyn", n_sites=2, sources_per_site=4,
                                                      clips_per_source=4, size=64, n_frames=32)
    r = deploy_round_time(data, tmp / "deploy", size=size, width=model_cfg["width"], rounds=2, reps=5,
                          max_chunks=2)
    return {"round": {"ours_round_s": r["median"]["ours"], "plain_round_s": r["median"]["peer"],
                      "ratio": r["ratio"], "times": r["times"], "mode": r["mode"]}, "bytes": r["bytes"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["smoke", "full"], default="smoke")
    ap.add_argument("--data", default="", help="video folder for the full decode benchmark [DETECTLAB_DATA/video]")
    ap.add_argument("--part", choices=["all", "decode", "round"], default="all",
                    help="decode: only the decoding comparison; round: only bytes and round time (the federation)")
    args = ap.parse_args(argv)
    from detectlab.core.config import real_data_path
    from detectlab.core.runtime import set_threads
    from detectlab.violence.data import find_clips
    from detectlab.violence.synthetic import make_dataset

    set_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_violence_"))
    full = args.size == "full"
    size = 56 if full else 16  # the real preset's frame size
    model_cfg = {"width": 8 if full else 4}
    res: dict = {"size": args.size}
    real = Path(args.data) if args.data else real_data_path("video")
    if full and real is not None:
        files = [c.path for c in find_clips(real)]
    else:
        syn = make_dataset(tmp / "syn", n_sites=1, sources_per_site=2, clips_per_source=4, size=64, n_frames=32)
        files = [c.path for c in find_clips(syn)]
    if args.part == "round":
        res.update(federation(full, tmp, real, size, model_cfg))
        b, r = res["bytes"], res["round"]
        q = r["ratio"]
        print(f"round time, s [{r['mode']}]: our FedPer {r['ours_round_s']:.3f}, plain Flower FedAvg "
              f"{r['plain_round_s']:.3f}; ratio {q['median']:.3f} (median of {len(q['per_rep'])} interleaved, spread "
              f"{q['min']:.3f}-{q['max']:.3f}; goal <= 1.1)")
        print(f"bytes/round per client: FedPer {b['fedper_bytes']}, FedAvg {b['fedavg_bytes']}, ratio {b['ratio']:.6f} "
              f"(base/total params {b['param_ratio']:.6f}); {b['source']}")
        print(json.dumps({"round": r, "bytes": b}))
        return res
    res["decode"] = decode_throughput(files, size, reps=5)
    res["decode"]["source"] = str(real if (full and real is not None) else "synthetic")
    if args.part == "decode":
        d = res["decode"]
        t, q = d["threads"], d["speedup_1thread"]
        print(f"decode chunks/s ({d['clips']} clips, {size}x{size}): ours {d['ours_chunks_per_s']:.1f} "
              f"({t['ours_decoder']} decoder thread(s)), OpenCV loop {d['opencv_chunks_per_s']:.1f} (its defaults: "
              f"{t['opencv_default_decoder']} FFmpeg threads, {t['opencv_default_cv2']} cv2 threads); speed-up "
              f"{d['speedup']['median']:.3f} (median of {d['reps']} interleaved, spread {d['speedup']['min']:.3f}-"
              f"{d['speedup']['max']:.3f})")
        print(f"equal threads: OpenCV loop at 1 thread {d['opencv_1thread_chunks_per_s']:.1f} chunks/s; speed-up "
              f"{q['median']:.3f} (spread {q['min']:.3f}-{q['max']:.3f})")
        print(f"frames differ by {d['mean_abs_pixel_difference']:.2f}/255 on average over all frames of "
              f"{d['clips']} clips (worst clip {d['max_clip_pixel_difference']:.2f}); chunks ours {d['chunks_ours']}, "
              f"OpenCV {d['chunks_opencv']}, clips with another chunk count {d['clips_with_other_chunk_count']}")
        print(json.dumps({"decode_speedup": d["speedup"], "decode_speedup_1thread": q, "threads": t,
                          "times": d["times"]}))
        return res
    res.update(federation(full, tmp, real, size, model_cfg))  # bytes and round time (fed)
    b, d, r = res["bytes"], res["decode"], res["round"]
    q = r["ratio"]
    rows = [
        ("bytes/round per client (float32 data)", f"{b['fedper_bytes']} (FedPer)", f"{b['fedavg_bytes']} (FedAvg)",
         f"{b['ratio']:.6f} (base/total params {b['param_ratio']:.6f})"),
        ("bytes/round per client (Flower payload)", str(b["fedper_payload"]), str(b["fedavg_payload"]),
         f"{b['payload_ratio']:.6f}"),
        (f"round time, s [{r['mode']}]", f"{r['ours_round_s']:.3f} (our FedPer)",
         f"{r['plain_round_s']:.3f} (plain Flower FedAvg)",
         f"{q['median']:.3f} median of {len(q['per_rep'])} interleaved, spread {q['min']:.3f}-{q['max']:.3f} "
         "(goal <= 1.1)"),
        (f"decode chunks/s ({d['clips']} clips, {size}x{size})", f"{d['ours_chunks_per_s']:.1f} (PyAV, area scaling)",
         f"{d['opencv_chunks_per_s']:.1f} (OpenCV loop)",
         f"speed-up {d['speedup']['median']:.3f} median of {d['reps']} interleaved, spread "
         f"{d['speedup']['min']:.3f}-{d['speedup']['max']:.3f} (goal >= 1.2)"),
    ]
    print(_table(rows))
    res["ratios"] = {"bytes": b["ratio"], "round_time": q["median"],
                     "decode_speedup": d["speedup"]["median"]}
    print(json.dumps(res["ratios"]))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
