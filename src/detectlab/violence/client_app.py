"""The Flower ClientApp: a site's (camera's) side of FedAvg, FedPer, Per-FedAvg and FedMeta-Per.

What a client needs arrives in the message's ConfigRecord under ``"spec"`` (JSON written by the ServerApp:
experiment, strategy, run key, model, hyper-parameters, how to cut its clips into chunks). What belongs to
the site comes from its own node config (``flower-supernode --node-config``):

- ``partition-id`` (required): the client's index in the experiment;
- ``data-dir``: the site's own folder of labelled clips (``fight/`` + ``noFight/`` or any layout
  :func:`detectlab.violence.data.find_clips` reads). Its held-out clips are the ones named in
  ``<data-dir>/test.txt`` (one file name per line) when that file exists, else a grouped holdout by
  source video (``videos.txt``) drawn by the client itself. The client decodes and caches its chunks in
  its ``state-dir``; the server never sees a file name, only the counts the client reports;
- ``state-dir``: node-local storage for the chunk cache and the personal heads (below).

On the simulation engine the virtual nodes have only ``partition-id``; the spec then names the partition
file and a state folder inside the run folder.

Messages: QUERY (the census: partition, counts per class, a fingerprint of the data), TRAIN and EVALUATE.
FedAvg / Per-FedAvg receive and return the whole model; FedPer / FedMeta-Per receive and return only the
base (the five convolutional layers); the head (the three FC layers) is the client's own. Heads are kept
per run, experiment and strategy in ``context.state`` and on disk
(``<state-dir>/heads/<run key>/<experiment>-<strategy>/round-NNNN.safetensors``), so a SuperNode restarted
mid-run continues with its head. The server says in ``head-rounds`` which round's head each client
continues from; a head that should exist but does not is an error (:class:`HeadMissing`), never a silent
re-initialisation. Per-FedAvg / FedMeta-Per evaluate after the personalisation step (SGD with alpha).

Training and evaluation are :mod:`detectlab.violence.task` (``train_round`` / ``evaluate_round``); what task keeps
between rounds (each client's Adam moments, its best-validation model) is kept like the heads, in
``context.state`` and in ``<state-dir>/task/<run key>/<experiment>-<strategy>/round-NNNN-<phase>.safetensors``
(a message reads the state the message before it left, so a rerun round repeats exactly).

Randomness: the head's initialisation is drawn from (seed, partition) only; dropout masks, training windows, crops
and flips from (seed, experiment, strategy, partition, round, message type) (:func:`task.message_seed`), so no two
rounds repeat the same masks.

Reply metrics (train): ``num-examples``, ``partition-id``, ``train-loss``, ``train-acc``, ``head-from``
(the round of the head it started from, 0 = initialised now). On the last evaluation round (``export``),
the client also returns its personalised model under ``"personal"`` (for ``predict --client K``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from detectlab.violence import task  # noqa: E402
from detectlab.violence.data import ClientData  # noqa: E402
from detectlab.violence.model import BASE_PREFIX, HEAD_PREFIX, build_model, split_state  # noqa: E402

PERSONAL = ("fedper", "fedmetaper")
META = ("perfedavg", "fedmetaper")
KIND = {"train": 1, "evaluate": 2, "query": 3}

app = ClientApp()


class HeadMissing(RuntimeError):
    """A personal head that must exist (the server continues from it) is not in the node's storage."""


# ---- the site's data
def _spec(msg: Message) -> dict:
    return json.loads(str(msg.content["config"]["spec"]))


def _pid(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("this SuperNode has no partition-id: start it with --node-config 'partition-id=K ...'")
    return int(context.node_config["partition-id"])


def state_dir(context: Context, spec: dict) -> Path | None:
    """Node-local storage: the node config's ``state-dir``, else the spec's (simulation), else None."""
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"])).expanduser()
    if spec.get("state_dir"):
        return Path(spec["state_dir"]) / f"partition{_pid(context)}"
    return None


def fingerprint(files: list[tuple[str, int]], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for name, size in sorted(files):
        h.update(f"{name}|{size}\n".encode())
    return h.hexdigest()[:16]


_DATA: dict[tuple, tuple] = {}


def node_data(data_dir: Path, spec: dict, cache: Path | None) -> tuple[ClientData, dict]:
    """(ClientData, info) of a site's own folder of clips."""
    from detectlab.violence.partition import client_from_folder

    d = spec.get("data", {})
    key = (str(data_dir), json.dumps(d, sort_keys=True), int(spec.get("seed", 0)))
    if key not in _DATA:
        data, info = client_from_folder(Path(data_dir), d, int(spec.get("seed", 0)), cache)
        _DATA[key] = (data, {"source": "node data-dir", **info})
    return _DATA[key]


def client_data(context: Context, spec: dict) -> tuple[ClientData, dict]:
    """The client's training, validation and held-out clips: its own data-dir (deployment) or the partition file."""
    pid = _pid(context)
    if "data-dir" in context.node_config:
        sd = state_dir(context, spec)
        return node_data(Path(str(context.node_config["data-dir"])).expanduser(), spec,
                         sd / "cache" if sd is not None else None)
    pfile = spec.get("partition_file") or context.node_config.get("partition-file")
    if not pfile:
        raise ValueError(f"partition {pid}: this SuperNode has no data; start it with --node-config "
                         "'partition-id=K data-dir=/path/to/its/clips state-dir=/path/to/its/storage'")
    from detectlab.violence.partition import load_client

    return load_client(str(pfile), pid), {
        "source": "partition file", "split": "partition file",
        "fingerprint": fingerprint([(Path(str(pfile)).name, Path(str(pfile)).stat().st_size)])}


def census_info(pid: int, data: ClientData, info: dict) -> dict:
    c = data.counts()
    return {"partition": pid, "n_train": int(task.n_examples(data)), "n_test": c["test_fight"] + c["test_nonfight"],
            **c, **info}


# ---- what task.py keeps between rounds (Adam moments, the best-validation model): context.state + node storage
# Saved after every message as (round, phase); a message of round r reads the state of the message before it
# (train r: evaluate r-1; evaluate r: train r), so a rerun of a round (resume, restarted node) repeats it exactly.
def _task_key(spec: dict) -> str:
    return f"task-{spec['experiment']}-{spec['strategy']}"


def _task_file(root: Path, spec: dict, rnd: int, phase: str) -> Path:
    return root / "task" / str(spec.get("run_key", "run")) / f"{spec['experiment']}-{spec['strategy']}" / \
        f"round-{rnd:04d}-{phase}.safetensors"


def _previous(rnd: int, phase: str) -> tuple[int, str]:
    return (rnd, "train") if phase == "evaluate" else (rnd - 1, "evaluate")


def load_task_state(context: Context, spec: dict, rnd: int, phase: str) -> dict[str, torch.Tensor]:
    """The state left by the message before (`rnd`, `phase`); empty on round 1 or when the node lost it (a
    restarted node without its state-dir starts Adam and the best-validation choice afresh)."""
    want_r, want_p = _previous(rnd, phase)
    if want_r <= 0:
        return {}
    key = _task_key(spec)
    meta = context.state.config_records.get(key + "-meta")
    if key in context.state.array_records and meta is not None and int(meta["round"]) == want_r \
            and str(meta["phase"]) == want_p and str(meta["run"]) == str(spec.get("run_key", "run")):
        return dict(context.state.array_records[key].to_torch_state_dict())
    root = state_dir(context, spec)
    if root is not None and _task_file(root, spec, want_r, want_p).exists():
        from safetensors.torch import load_file

        return dict(load_file(str(_task_file(root, spec, want_r, want_p))))
    return {}


def save_task_state(context: Context, spec: dict, rnd: int, phase: str, state: dict[str, torch.Tensor]) -> None:
    cpu = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    key = _task_key(spec)
    context.state[key] = ArrayRecord(cpu)
    context.state[key + "-meta"] = ConfigRecord({"round": int(rnd), "phase": phase,
                                                 "run": str(spec.get("run_key", "run"))})
    root = state_dir(context, spec)
    if root is None or not cpu:
        return
    from safetensors.torch import save_file

    f = _task_file(root, spec, rnd, phase)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    save_file(cpu, str(tmp))
    tmp.replace(f)
    keep = {f.name, _task_file(root, spec, *_previous(rnd, phase)).name}
    for old in f.parent.glob("round-*.safetensors"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


# ---- personal heads: context.state and node-local storage
def _head_key(spec: dict) -> str:
    return f"head-{spec['experiment']}-{spec['strategy']}"


def head_file(root: Path, spec: dict, rnd: int) -> Path:
    return root / "heads" / str(spec.get("run_key", "run")) / f"{spec['experiment']}-{spec['strategy']}" / \
        f"round-{rnd:04d}.safetensors"


def load_head(context: Context, spec: dict, rnd: int) -> dict[str, torch.Tensor] | None:
    """The head this client saved on round `rnd` (None for rnd 0: initialise); HeadMissing if it is gone."""
    if rnd <= 0:
        return None
    key = _head_key(spec)
    meta = context.state.config_records.get(key + "-meta")
    if key in context.state.array_records and meta is not None and int(meta["round"]) == rnd \
            and str(meta["run"]) == str(spec.get("run_key", "run")):
        return context.state.array_records[key].to_torch_state_dict()
    root = state_dir(context, spec)
    if root is not None and head_file(root, spec, rnd).exists():
        from safetensors.torch import load_file

        return load_file(str(head_file(root, spec, rnd)))
    where = f"in {head_file(root, spec, rnd)}" if root is not None else \
        "in context.state, and the node has no state-dir to keep it across restarts"
    raise HeadMissing(f"partition {_pid(context)}: the personal head of {spec['experiment']}/{spec['strategy']} "
                      f"from round {rnd} is missing ({where}); a head is never rebuilt mid-run")


def save_head(context: Context, spec: dict, rnd: int, keep: int, head: dict[str, torch.Tensor]) -> None:
    """Keep the head of round `rnd` (and the one of round `keep` the server may still continue from)."""
    key = _head_key(spec)
    context.state[key] = ArrayRecord({k: v.detach().cpu() for k, v in head.items()})
    context.state[key + "-meta"] = ConfigRecord({"round": int(rnd), "run": str(spec.get("run_key", "run"))})
    root = state_dir(context, spec)
    if root is None:
        return
    from safetensors.torch import save_file

    f = head_file(root, spec, rnd)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(tmp))
    tmp.replace(f)
    for old in f.parent.glob("round-*.safetensors"):
        if old.name not in (f.name, head_file(root, spec, keep).name):
            old.unlink(missing_ok=True)


# ---- one message
def _setup(msg: Message, context: Context, kind: str):
    spec = _spec(msg)
    cfg = msg.content["config"]
    rnd = int(cfg.get("server-round", 0))
    pid = _pid(context)
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    strategy = spec["strategy"]
    seed = int(spec["seed"])
    with torch.random.fork_rng(devices=[]):  # the head's initialisation depends on (seed, partition) only
        torch.manual_seed(seed * 7919 + pid)
        model = build_model(spec["model"])
    # dropout masks, windows, crops, flips: new every message (seed, experiment, strategy, client, round, kind)
    rng = task.seed_message(task.message_seed(spec, pid, rnd, kind))
    sd = msg.content["arrays"].to_torch_state_dict()
    head_from = 0
    if strategy in PERSONAL:
        if any(not k.startswith(BASE_PREFIX) for k in sd):
            raise ValueError(f"{strategy}: the server must send only base parameters")
        head_from = int(json.loads(str(cfg.get("head-rounds", "{}"))).get(str(pid), 0))
        head = load_head(context, spec, head_from)
        if head is not None:
            sd.update(head)
    model.load_state_dict(sd, strict=strategy not in PERSONAL)
    from detectlab.core.runtime import choose_device

    dev = choose_device(str(spec.get("device", "auto")))  # this node's own device (cuda when it has one)
    model.to(dev)
    return spec, pid, rnd, strategy, model, head_from, rng, dev


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The census: which partition this node is, how many chunks it holds (per class), its data fingerprint."""
    spec = _spec(msg)
    pid = _pid(context)
    data, info = client_data(context, spec)
    return Message(RecordDict({"census": ConfigRecord({"info": json.dumps(census_info(pid, data, info))})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    spec, pid, rnd, strategy, model, head_from, rng, dev = _setup(msg, context, "train")
    data, _ = client_data(context, spec)
    stats, state = task.train_round(model, data, spec, load_task_state(context, spec, rnd, "train"), rng)
    save_task_state(context, spec, rnd, "train", state)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if strategy in PERSONAL:
        sd, head = split_state(sd)
        save_head(context, spec, rnd, head_from, head)
    metrics = MetricRecord({**stats, "partition-id": pid, "head-from": int(head_from)})
    return Message(RecordDict({"arrays": ArrayRecord(sd), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    spec, pid, rnd, strategy, model, head_from, rng, dev = _setup(msg, context, "evaluate")
    data, _ = client_data(context, spec)
    final = bool(msg.content["config"].get("export", False))
    res, state = task.evaluate_round(model, data, spec, load_task_state(context, spec, rnd, "evaluate"), rnd, final,
                                     rng)
    save_task_state(context, spec, rnd, "evaluate", state)
    n = int(res.get("n-test", 0))  # the per-round curve is on the test chunks (weight 0 when a client has none)
    metrics = MetricRecord({
        **res, "num-examples": n, "partition-id": pid,
        "eval-loss": float(res["test-loss"]) if n else 0.0, "eval-acc": float(res["test-acc"]) if n else 0.0,
        "head-from": int(head_from),
    })
    content = {"metrics": metrics}
    if final:  # the reported model (best validation score with select=best_val/best_val_bacc), for predict/evaluate --client K
        content["personal"] = ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return Message(RecordDict(content), reply_to=msg)


__all__ = ["app", "HEAD_PREFIX", "HeadMissing"]
