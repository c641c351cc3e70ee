"""A FedAvg that rejects bad client updates and records every client's numbers per round.

Used for all four strategies: what differs between FedAvg, FedPer, Per-FedAvg and FedMeta-Per is what the
server sends (whole model or base only) and what the ClientApp does; aggregation is FedAvg's weighted
mean over the parameters that travel.

- :meth:`RobustFedAvg.aggregate_train` drops a reply whose ArrayRecord has NaN/Inf, missing or extra keys,
  or shapes/dtypes unlike the arrays that were sent, logs it, and aggregates the rest (plain FedAvg would
  average in the NaN, or crash on the shapes). If every reply is rejected the global arrays stay as they were.
- Per round it keeps, per client (partition-id): train loss, held-out loss/accuracy, example counts and the
  bytes of the ArrayRecords exchanged (``data`` = float bytes of the parameters, ``payload`` =
  ``ArrayRecord.count_bytes()``), plus the weighted means; ``on_round`` is called with that record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log

from detectlab.core import progress
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


def data_bytes(arrays: ArrayRecord) -> int:
    """Bytes of the array data alone (no .npy headers or keys): sum of numel x itemsize."""
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays.values()))


def check_update(content, expected: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    """None when the reply's arrays are usable, else the reason they are not."""
    recs = content.array_records
    if len(recs) != 1:
        return f"{len(recs)} ArrayRecords instead of 1"
    arrays = next(iter(recs.values()))
    keys = set(arrays.keys())
    if keys != set(expected):
        missing, extra = sorted(set(expected) - keys), sorted(keys - set(expected))
        return f"wrong keys (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, a in arrays.items():
        shape, dtype = expected[k]
        if tuple(a.shape) != shape:
            return f"wrong shape for {k}: {tuple(a.shape)} instead of {shape}"
        if str(a.dtype) != dtype:
            return f"wrong dtype for {k}: {a.dtype} instead of {dtype}"
        v = a.numpy()
        if v.dtype.kind in "fc" and not np.isfinite(v).all():
            return f"non-finite values in {k}"
    return None


class RobustFedAvg(FedAvg):
    def __init__(self, n_clients: int, num_rounds: int, export: bool = False,
                 on_round: Callable[[dict], None] | None = None, **kw):
        super().__init__(min_train_nodes=n_clients, min_evaluate_nodes=n_clients, min_available_nodes=n_clients, **kw)
        self.num_rounds = num_rounds
        self.export = export
        self.on_round = on_round
        self.history: list[dict] = []
        self.exports: dict[int, ArrayRecord] = {}
        self.rejected: list[dict] = []
        self._expected: dict[str, tuple[tuple[int, ...], str]] = {}
        self._sent: dict[str, int] = {}
        self._cur: dict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._expected = {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}
        self._sent = {"data": data_bytes(arrays), "payload": int(arrays.count_bytes())}
        self._cur = {"round": server_round, "clients": {}, "rejected": []}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        kept = []
        for m in replies:
            if m.has_error():
                kept.append(m)  # FedAvg logs and skips error replies
                continue
            reason = check_update(m.content, self._expected)
            mr = next(iter(m.content.metric_records.values()), {})
            pid = int(mr.get("partition-id", -1)) if mr else -1
            if reason is not None:
                log(WARNING, "round %d: rejected the update of node %d (partition %d): %s",
                    server_round, m.metadata.src_node_id, pid, reason)
                progress.log(f"round {server_round}: rejected the update of partition {pid}: {reason}")
                self._cur["rejected"].append({"partition": pid, "reason": reason})
                self.rejected.append({"round": server_round, "partition": pid, "reason": reason})
                continue
            kept.append(m)
            up = next(iter(m.content.array_records.values()))
            self._cur["clients"][pid] = {
                "n_train": int(mr["num-examples"]), "train_loss": float(mr["train-loss"]),
                "up_bytes": data_bytes(up), "down_bytes": self._sent["data"],
                "up_payload": int(up.count_bytes()), "down_payload": self._sent["payload"],
            }
        if not any(not m.has_error() for m in kept):
            log(WARNING, "round %d: no usable update, the global arrays stay as they were", server_round)
            return None, None
        return super().aggregate_train(server_round, kept)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        config["export"] = bool(self.export and server_round == self.num_rounds)
        self._eval_sent = {"data": data_bytes(arrays), "payload": int(arrays.count_bytes())}
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rows = []
        for m in replies:
            if m.has_error():
                log(INFO, "round %d: error in evaluate reply from node %d: %s", server_round,
                    m.metadata.src_node_id, m.error.reason)
                continue
            mr = m.content.metric_records.get("metrics")
            if mr is None:
                continue
            pid = int(mr["partition-id"])
            c = self._cur.setdefault("clients", {}).setdefault(pid, {})
            c.update({"n_test": int(mr["num-examples"]), "loss": float(mr["eval-loss"]),
                      "accuracy": float(mr["eval-acc"]),
                      "eval_down_bytes": self._eval_sent["data"], "eval_down_payload": self._eval_sent["payload"]})
            # everything else the client reported (validation metrics; on the last round its test scores)
            c.update({k: (list(v) if isinstance(v, list) else v) for k, v in mr.items()
                      if k not in ("num-examples", "eval-loss", "eval-acc", "partition-id", "bytes-down")})
            rows.append((int(mr["num-examples"]), float(mr["eval-loss"]), float(mr["eval-acc"])))
            if "personal" in m.content.array_records:
                self.exports[pid] = m.content.array_records["personal"]
        n = sum(r[0] for r in rows)
        rec = self._cur
        rec["accuracy"] = sum(r[0] * r[2] for r in rows) / n if n else float("nan")
        rec["loss"] = sum(r[0] * r[1] for r in rows) / n if n else float("nan")
        cl = rec.get("clients", {}).values()
        rec["bytes"] = {
            "up": int(sum(c.get("up_bytes", 0) for c in cl)),
            "down": int(sum(c.get("down_bytes", 0) + c.get("eval_down_bytes", 0) for c in cl)),
            "payload_up": int(sum(c.get("up_payload", 0) for c in cl)),
            "payload_down": int(sum(c.get("down_payload", 0) + c.get("eval_down_payload", 0) for c in cl)),
        }
        rec["bytes"]["total"] = rec["bytes"]["up"] + rec["bytes"]["down"]
        self.history.append(rec)
        if self.on_round is not None:
            self.on_round(rec)
        if not n:
            return None
        return MetricRecord({"eval-acc": float(rec["accuracy"]), "eval-loss": float(rec["loss"]), "num-examples": n})
