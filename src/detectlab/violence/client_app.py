"""The Flower ClientApp: local training/evaluation for FedAvg, FedPer, Per-FedAvg and FedMeta-Per.

Everything a client needs arrives in the message's ConfigRecord under ``"spec"`` (a JSON string written by
the ServerApp): the strategy, the partition file and hyper-parameters. The node's ``partition-id`` comes
from ``context.node_config`` (set automatically on the simulation engine, by ``--node-config`` on a
SuperNode).

- fedavg / perfedavg: the whole model is received and sent back;
- fedper / fedmetaper: only the base (the five convolutional layers) is received and sent; the head (the
  three FC layers) is this client's own and lives in ``context.state["head-<strategy>"]`` between rounds;
- perfedavg / fedmetaper evaluate after the personalisation step (SGD with alpha on local batches);
- all training and evaluation is :mod:`detectlab.violence.task` (``train_round`` / ``evaluate_round``); what it
  keeps between rounds (Adam moments, the best-validation model) lives in ``context.state["task-<exp>-<strategy>"]``.
- every message seeds torch and numpy from (seed, experiment, strategy, client, round, kind): dropout masks and
  training windows change from round to round (the head's initialisation has its own fixed seed).

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

import torch  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from detectlab.violence import task  # noqa: E402
from detectlab.violence.model import BASE_PREFIX, HEAD_PREFIX, build_model, split_state  # noqa: E402
from detectlab.violence.partition import load_client  # noqa: E402

PERSONAL = ("fedper", "fedmetaper")
META = ("perfedavg", "fedmetaper")

app = ClientApp()


def _setup(msg: Message, context: Context, kind: str):
    spec = json.loads(str(msg.content["config"]["spec"]))
    if "partition-file" in context.node_config:  # a SuperNode with its own local partition file
        spec["partition_file"] = str(context.node_config["partition-file"])
    rnd = int(msg.content["config"].get("server-round", 0))
    pid = int(context.node_config["partition-id"])
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    strategy = spec["strategy"]
    dev = task.client_device(spec)
    with torch.random.fork_rng(devices=[]):  # the personal head's initialisation: per client, the same every round
        torch.manual_seed(int(spec["seed"]) * 7919 + pid)
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
    model.to(dev)
    rng = task.seed_message(task.message_seed(spec, pid, rnd, kind))  # fresh masks/windows every message
    return spec, pid, strategy, model, received.count_bytes(), rng, rnd


def _state_key(spec: dict, strategy: str) -> str:
    return f"task-{spec.get('experiment', '')}-{strategy}"


def _load_state(context: Context, spec: dict, strategy: str) -> dict[str, torch.Tensor]:
    key = _state_key(spec, strategy)
    if key in context.state.array_records:
        return dict(context.state.array_records[key].to_torch_state_dict())
    return {}


def _save_state(context: Context, spec: dict, strategy: str, state: dict[str, torch.Tensor]) -> None:
    context.state[_state_key(spec, strategy)] = ArrayRecord({k: v.detach().cpu() for k, v in state.items()})


@app.train()
def train(msg: Message, context: Context) -> Message:
    spec, pid, strategy, model, bytes_down, rng, rnd = _setup(msg, context, "train")
    data = load_client(spec["partition_file"], pid)
    stats, state = task.train_round(model, data, spec, _load_state(context, spec, strategy), rng)
    _save_state(context, spec, strategy, state)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if strategy in PERSONAL:
        base, head = split_state(sd)
        context.state[f"head-{strategy}"] = ArrayRecord(head)
        sd = base
    out = ArrayRecord(sd)
    metrics = MetricRecord({**stats, "partition-id": pid, "bytes-down": int(bytes_down),
                            "bytes-up": int(out.count_bytes())})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    spec, pid, strategy, model, bytes_down, rng, rnd = _setup(msg, context, "evaluate")
    data = load_client(spec["partition_file"], pid)
    final = bool(msg.content["config"].get("export", False))
    res, state = task.evaluate_round(model, data, spec, _load_state(context, spec, strategy), rnd, final, rng)
    _save_state(context, spec, strategy, state)
    metrics = MetricRecord({
        **res, "num-examples": int(res.get("n-test", 0)), "partition-id": pid,
        "eval-loss": float(res.get("test-loss", res.get("val-loss", float("nan")))),
        "eval-acc": float(res.get("test-acc", res.get("val-acc", float("nan")))),
        "bytes-down": int(bytes_down),
    })
    content = {"metrics": metrics}
    if final:  # the reported model (best on validation), for predict/evaluate --client K
        content["personal"] = ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return Message(RecordDict(content), reply_to=msg)


__all__ = ["app", "HEAD_PREFIX"]
