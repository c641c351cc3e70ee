"""A misbehaving ClientApp for tests and attack experiments, kept out of the production ClientApp.

``faults:app`` is :data:`detectlab.violence.client_app.app`'s handlers behind one Flower mod that changes the
train replies of chosen clients. The run asks for it with ``fl.fault`` (the ServerApp then writes the
Flower app with this module as its ClientApp; ``client_app:app`` itself never reads the setting):

- ``nan:K``: client K's first array is NaN;
- ``shape:K``: client K's first array has shape (3, 3);
- ``scale:K:S``: client K sends the global arrays plus S times its real update (``scale:3:-1000``);
- ``count:K:M``: client K claims M times its real ``num-examples`` (``count:3:100``).

Several faults are separated by commas: ``"scale:3:-1000,count:3:100"``.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp

from detectlab.violence import client_app as _prod


def parse(spec: str) -> list[tuple[str, int, float]]:
    """'scale:3:-1000,nan:1' -> [('scale', 3, -1000.0), ('nan', 1, 0.0)]"""
    out = []
    for part in filter(None, (p.strip() for p in str(spec or "").split(","))):
        kind, _, rest = part.partition(":")
        who, _, val = rest.partition(":")
        if kind not in ("nan", "shape", "scale", "count") or not who.strip().lstrip("-").isdigit():
            raise ValueError(f"fl.fault: cannot read {part!r} (expected nan:K, shape:K, scale:K:S or count:K:M)")
        out.append((kind, int(who), float(val) if val else 0.0))
    return out


def corrupt(reply: Message, sent: ArrayRecord, pid: int, faults: list[tuple[str, int, float]]) -> Message:
    """Apply the faults aimed at partition `pid` to a train reply (in place) and return it."""
    mine = [f for f in faults if f[1] == pid]
    if not mine or reply.has_error():
        return reply
    arrays = reply.content["arrays"]
    metrics = reply.content["metrics"]
    for kind, _, val in mine:
        k0 = next(iter(arrays.keys()))
        if kind == "nan":
            a = arrays[k0].numpy()
            arrays[k0] = Array(np.full_like(a, np.nan))
        elif kind == "shape":
            arrays[k0] = Array(np.zeros((3, 3), np.float32))
        elif kind == "scale":
            for k in list(arrays.keys()):
                new, old = arrays[k].numpy(), sent[k].numpy()
                arrays[k] = Array((old + val * (new - old)).astype(new.dtype))
        elif kind == "count":
            metrics["num-examples"] = int(round(int(metrics["num-examples"]) * val))
    return reply


def fault_mod(msg: Message, context: Context, call_next) -> Message:
    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN:
        return reply
    faults = parse(json.loads(str(msg.content["config"]["spec"])).get("fault", ""))
    return corrupt(reply, msg.content["arrays"], int(context.node_config["partition-id"]), faults)


app = ClientApp(mods=[fault_mod])
app.train()(_prod.train)
app.evaluate()(_prod.evaluate)
app.query()(_prod.query)
