"""The Flower ClientApp: local training/evaluation for FedAvg, FedPer, Per-FedAvg and FedMeta-Per.

Everything a client needs arrives in the message's ConfigRecord under ``"spec"`` (a JSON string written by
the ServerApp): the strategy, the partition file and hyper-parameters. The node's ``partition-id`` comes
from ``context.node_config`` (set automatically on the simulation engine, by ``--node-config`` on a
SuperNode).

- fedavg / perfedavg: the whole model is received and sent back;
- fedper / fedmetaper: only the base (the five convolutional layers) is received and sent; the head (the
  three FC layers) is this client's own and lives in ``context.state["head-<strategy>"]`` between rounds;
- perfedavg / fedmetaper evaluate after the personalisation step (SGD with alpha on local batches).

Reply metrics: ``num-examples``, ``partition-id``, loss/accuracy, ``bytes-down`` (received ArrayRecord) and
``bytes-up`` (sent ArrayRecord), both ``ArrayRecord.count_bytes()`` (payload, not wire bytes).
On the last evaluation round (``export``), the client also returns its personalised model under
``"personal"`` so the run folder holds a per-client checkpoint for ``predict --client K``.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from detectlab.violence import task  # noqa: E402
from detectlab.violence.model import BASE_PREFIX, HEAD_PREFIX, build_model, split_state  # noqa: E402
from detectlab.violence.partition import load_client  # noqa: E402

PERSONAL = ("fedper", "fedmetaper")
META = ("perfedavg", "fedmetaper")

app = ClientApp()


def _setup(msg: Message, context: Context):
    spec = json.loads(str(msg.content["config"]["spec"]))
    if "partition-file" in context.node_config:  # a SuperNode with its own local partition file
        spec["partition_file"] = str(context.node_config["partition-file"])
    rnd = int(msg.content["config"].get("server-round", 0))
    pid = int(context.node_config["partition-id"])
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    strategy = spec["strategy"]
    torch.manual_seed(int(spec["seed"]) * 7919 + pid)  # the personal head's initialisation, per client
    model = build_model(spec["model"])
    received = msg.content["arrays"]
    sd = received.to_torch_state_dict()
    if strategy in PERSONAL:
        if any(not k.startswith(BASE_PREFIX) for k in sd):
            raise ValueError(f"{strategy}: the server must send only base parameters")
        key = f"head-{strategy}"
        if key in context.state.array_records:
            sd.update(context.state.array_records[key].to_torch_state_dict())
    model.load_state_dict(sd, strict=strategy not in PERSONAL)
    gen = torch.Generator().manual_seed(int(spec["seed"]) * 100003 + rnd * 101 + pid)
    return spec, pid, strategy, model, received.count_bytes(), gen


def _params(model: torch.nn.Module, which: str) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if which == "all" or n.startswith(which)]


@app.train()
def train(msg: Message, context: Context) -> Message:
    spec, pid, strategy, model, bytes_down, gen = _setup(msg, context)
    x, y, _, _ = load_client(spec["partition_file"], pid)
    dev = torch.device("cpu")
    if strategy in META:
        steps = int(spec["meta_steps"]) or max(1, int(spec["epochs"]) * int(np.ceil(len(y) / spec["batch"])))
        stats = task.perfedavg_steps(model, x, y, steps, int(spec["batch"]), float(spec["alpha"]),
                                     float(spec["beta"]), gen, dev, spec["variant"], float(spec["delta"]))
    else:
        stats = task.train_epochs(model, x, y, int(spec["epochs"]), int(spec["batch"]), float(spec["lr"]), gen, dev,
                                  weight_decay=float(spec.get("weight_decay", 0.0)))
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if strategy in PERSONAL:
        base, head = split_state(sd)
        context.state[f"head-{strategy}"] = ArrayRecord(head)
        sd = base
    for fault in filter(None, str(spec.get("fault", "")).split(",")):  # "nan:K,shape:J": misbehaving clients
        kind, _, who = fault.partition(":")
        if who.strip() and int(who) == pid:
            k0 = next(iter(sd))
            if kind.strip() == "nan":
                sd[k0] = torch.full_like(sd[k0], float("nan"))
            elif kind.strip() == "shape":
                sd[k0] = torch.zeros(3, 3)
    out = ArrayRecord(sd)
    metrics = MetricRecord({
        "num-examples": int(len(y)), "partition-id": pid, "train-loss": float(stats["train_loss"]),
        "train-acc": float(stats["train_acc"]) if np.isfinite(stats["train_acc"]) else -1.0,
        "bytes-down": int(bytes_down), "bytes-up": int(out.count_bytes()),
    })
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    spec, pid, strategy, model, bytes_down, gen = _setup(msg, context)
    x, y, xt, yt = load_client(spec["partition_file"], pid)
    dev = torch.device("cpu")
    if strategy in META:
        task.adapt(model, x, y, float(spec["alpha"]), int(spec["adapt_steps"]), int(spec["batch"]), gen, dev)
    res = task.evaluate(model, xt, yt)
    metrics = MetricRecord({
        "num-examples": int(len(yt)), "partition-id": pid,
        "eval-loss": float(res["loss"]) if res["n"] else 0.0,
        "eval-acc": float(res["accuracy"]) if res["n"] else 0.0,
        "bytes-down": int(bytes_down),
    })
    content = {"metrics": metrics}
    if bool(msg.content["config"].get("export", False)):
        content["personal"] = ArrayRecord({k: v.detach() for k, v in model.state_dict().items()})
    return Message(RecordDict(content), reply_to=msg)


__all__ = ["app", "HEAD_PREFIX"]
