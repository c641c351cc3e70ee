"""A fault-injecting ClientApp for the tests: the production app (detectlab.violence.client_app.app) with a
Flower mod that corrupts chosen clients' training replies. The production client has no such hook."""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict


def faulty_app(faults: str):
    """faults: "nan:K,shape:J,scale:K:factor" -> a ClientApp whose client K sends NaN, J a wrong shape, ..."""
    from flwr.clientapp import ClientApp

    from detectlab.violence.client_app import evaluate, train

    plan = []
    for f in filter(None, faults.split(",")):
        kind, who, *rest = f.split(":")
        plan.append((kind, int(who), float(rest[0]) if rest else 1.0))

    def corrupt(msg: Message, context, call_next) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        pid = int(context.node_config["partition-id"])
        for kind, who, factor in plan:
            if who != pid:
                continue
            arrays = reply.content["arrays"].to_torch_state_dict()
            k0 = next(iter(arrays))
            if kind == "nan":
                arrays[k0] = torch.full_like(arrays[k0], float("nan"))
            elif kind == "shape":
                arrays[k0] = torch.zeros(3, 3)
            elif kind == "scale":
                arrays = {k: v * factor for k, v in arrays.items()}
            content = RecordDict({"arrays": ArrayRecord({k: Array(v.numpy()) for k, v in arrays.items()}),
                                  "metrics": reply.content["metrics"]})
            return Message(content, reply_to=msg)
        return reply

    app = ClientApp(mods=[corrupt])
    app.train()(train)
    app.evaluate()(evaluate)
    return app
