"""The server-side strategy of every violence strategy: checks, robust aggregation, bounded rounds, resume.

FedAvg, FedPer, Per-FedAvg and FedMeta-Per differ in what travels (whole model or base only) and in what
the ClientApp does; on the server they share :class:`RobustFedAvg`, a ``flwr.serverapp.strategy.FedAvg``
that

- **checks every update** (:func:`check_update`): exactly one ArrayRecord with the keys, shapes and dtypes
  that were sent, finite values, one MetricRecord whose ``num-examples`` is a positive integer. A bad reply
  is rejected, logged and recorded (stock FedAvg averages a NaN in, or crashes on a wrong shape);
- **bounds the claimed counts** (:func:`bound_counts`): a client's ``num-examples`` is cut to the count it
  reported in the census (the QUERY round before round 1), and with ``max_weight > 0`` to ``max_weight`` x
  the median claim, so one client cannot buy the average with a made-up count;
- **aggregates robustly** when asked (:func:`make_aggregator`): Flower's own ``FedMedian``,
  ``FedTrimmedAvg``, ``Krum``, and norm clipping of each update by Flower's
  ``DifferentialPrivacyServerSideFixedClipping`` (noise multiplier 0);
- **samples** a fraction of the clients per round (partial participation), reproducibly from the seed,
  and **waits a bounded time** for nodes and replies: a round that gets fewer usable updates than
  ``min_clients`` ends the run with one :class:`FederationError` line (finished rounds are kept);
- **counts bytes from the real messages**, both directions, every record (arrays, config, metrics),
  including the personal models uploaded on the last round: ``data`` = float bytes of the arrays,
  ``payload`` = ``count_bytes()`` of every record (what ``flwr.clientapp.mod.message_size_mod`` logs);
- **resumes**: :meth:`RobustFedAvg.run` starts at any round, calls ``on_round_end`` after every finished
  round, and :meth:`state_dict` / :meth:`load_state_dict` hold everything the next round needs besides the
  global arrays (history, which round's head each client must continue from, census, node map).

Personal heads: the server never holds them; it tells each client which round's head to continue from
(``head-rounds``: the last round whose update of that client was accepted), so a client restarted
mid-run continues from the right head, and a head that is missing where one must exist is an error.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from statistics import median

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
)

from detectlab.core import progress

AGGREGATIONS = ("fedavg", "median", "trimmed", "krum")
#: metric keys every train reply carries (Flower checks that all replies have the same keys)
TRAIN_KEYS = frozenset({"num-examples", "partition-id", "train-loss", "train-acc", "head-from"})
MAX_EXAMPLES = 10**9


class FederationError(RuntimeError):
    """A federation that cannot go on; the message is one line that says why and what is kept."""


def data_bytes(arrays: ArrayRecord) -> int:
    """Bytes of the array data alone (no .npy headers or keys): sum of numel x itemsize."""
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays.values()))


def content_bytes(content: RecordDict) -> dict[str, int]:
    """Bytes of one message's content: ``data`` (array floats) and ``payload`` (count_bytes of every record)."""
    return {"data": int(sum(data_bytes(a) for a in content.array_records.values())),
            "payload": int(sum(rec.count_bytes() for rec in content.values()))}


def check_update(content: RecordDict, expected: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    """None when a train reply is usable, else the reason it is not (one line)."""
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
    mrs = content.metric_records
    if len(mrs) != 1:
        return f"{len(mrs)} MetricRecords instead of 1"
    mr = next(iter(mrs.values()))
    if set(mr.keys()) != TRAIN_KEYS:
        return f"metric keys {sorted(mr.keys())} instead of {sorted(TRAIN_KEYS)}"
    n = mr["num-examples"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EXAMPLES:
        return f"num-examples {n!r} is not an integer in 1..{MAX_EXAMPLES}"
    return None


def short_reason(reason: str, limit: int = 240) -> str:
    """One short line from an error reply's reason (a ClientApp traceback on Ray is many lines long)."""
    text = " ".join(str(reason).split())
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1].rstrip("'>")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bound_counts(claims: dict[int, int], known: dict[int, int], max_weight: float = 0.0) -> dict[int, int]:
    """Aggregation weights from claimed example counts.

    A claim above the count the client reported in the census (``known``) is cut to that count; with
    ``max_weight > 0`` no weight exceeds ``max_weight`` x the median of the (cut) claims.
    """
    out = {p: (min(int(c), int(known[p])) if p in known else int(c)) for p, c in claims.items()}
    if max_weight > 0 and out:
        cap = max(1, int(max_weight * median(out.values())))
        out = {p: min(w, cap) for p, w in out.items()}
    return out


def make_aggregator(name: str, trim_beta: float = 0.25, krum_malicious: int = 1, clip_norm: float = 0.0,
                    n_clients: int = 2):
    """The Flower strategy whose ``aggregate_train`` combines the kept updates."""
    kw = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1}
    if name == "fedavg":
        agg = FedAvg(**kw)
    elif name == "median":
        agg = FedMedian(**kw)
    elif name == "trimmed":
        agg = FedTrimmedAvg(beta=trim_beta, **kw)
    elif name == "krum":
        agg = Krum(num_malicious_nodes=krum_malicious, **kw)
    else:
        raise ValueError(f"unknown aggregation {name!r} (one of {', '.join(AGGREGATIONS)})")
    if clip_norm > 0:
        agg = DifferentialPrivacyServerSideFixedClipping(agg, noise_multiplier=0.0, clipping_norm=clip_norm,
                                                          num_sampled_clients=max(1, n_clients))
    return agg


class RobustFedAvg(FedAvg):
    """See the module docstring. ``n_clients``: clients of the experiment (= SuperNodes expected)."""

    def __init__(self, n_clients: int, num_rounds: int, export: bool = False,
                 on_round: Callable[[dict], None] | None = None, *, aggregation: str = "fedavg",
                 trim_beta: float = 0.25, krum_malicious: int = 1, clip_norm: float = 0.0, max_weight: float = 0.0,
                 fraction: float = 1.0, min_clients: int = 1, round_timeout: float = 3600.0, seed: int = 0,
                 poll: float = 0.5):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        super().__init__(fraction_train=fraction, fraction_evaluate=1.0, min_train_nodes=1,
                         min_evaluate_nodes=1, min_available_nodes=n_clients)
        self.n_clients, self.num_rounds, self.export, self.on_round = n_clients, num_rounds, export, on_round
        self.aggregation = aggregation
        self.max_weight = max_weight
        self.min_clients = min_clients
        self.round_timeout = round_timeout
        self.seed = seed
        self.poll = poll
        self.aggregator = make_aggregator(aggregation, trim_beta, krum_malicious, clip_norm, n_clients)
        if aggregation == "trimmed" and int(trim_beta * self.sample_size()) < 1:
            progress.log(f"warning: a trimmed mean with fl.trim_beta={trim_beta} over {self.sample_size()} clients "
                         "trims nothing")
        # per run
        self.history: list[dict] = []
        self.exports: dict[int, ArrayRecord] = {}
        self.rejected: list[dict] = []
        self.bounded: list[dict] = []
        self.census: dict[int, dict] = {}  # partition -> what the client reported before round 1
        self.node_pid: dict[int, int] = {}  # node id -> partition
        self.head_rounds: dict[int, int] = {}  # partition -> last round whose update was accepted
        # per round
        self._expected: dict[str, tuple[tuple[int, ...], str]] = {}
        self._cur: dict = {}
        self._dst: dict[str, int] = {}  # message id -> node it was sent to (error replies come from the SuperLink)
        self._current = ArrayRecord()
        self._spec = "{}"

    # ---- nodes
    def sample_size(self) -> int:
        return max(1, int(round(self.fraction_train * self.n_clients)))

    def needed(self) -> int:
        """Usable updates a round needs: min_clients, or every sampled client when min_clients is 0."""
        return min(self.min_clients, self.sample_size()) if self.min_clients > 0 else self.sample_size()

    def wait_for_nodes(self, grid: Grid, need: int, what: str) -> list[int]:
        """Node ids online once `need` are (bounded by round_timeout), else FederationError."""
        t0 = time.monotonic()
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= need:
                return nodes
            if time.monotonic() - t0 > self.round_timeout:
                raise FederationError(f"{what}: only {len(nodes)} of the {need} SuperNodes needed connected within "
                                      f"{self.round_timeout:g} s (fl.round_timeout)")
            time.sleep(self.poll)

    def exchange(self, grid: Grid, messages: list[Message], what: str) -> list[Message]:
        """Push messages, pull replies until all came or round_timeout passed (polling every `poll` s)."""
        if not messages:
            return []
        ids = {i for i in grid.push_messages(messages) if i}
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        self._dst.update(dst)
        replies: list[Message] = []
        t0 = time.monotonic()
        while ids:
            got = list(grid.pull_messages(ids))
            replies += got
            ids -= {m.metadata.reply_to_message_id for m in got}
            if not ids or time.monotonic() - t0 > self.round_timeout:
                break
            time.sleep(self.poll)
        for mid in ids:
            node = dst.get(mid, -1)
            pid = self.node_pid.get(node, -1)
            self._cur.setdefault("missing", []).append(
                {"phase": what, "node": node, "partition": pid,
                 "reason": f"no reply within {self.round_timeout:g} s"})
        return replies

    def node_of(self, m: Message) -> int:
        return self._dst.get(m.metadata.reply_to_message_id, m.metadata.src_node_id)

    def run_census(self, grid: Grid, config: ConfigRecord, nodes: Iterable[int] | None = None) -> dict[int, dict]:
        """QUERY nodes (default: all, waiting for n_clients of them): partition-id, counts, data fingerprint.

        The census before round 1 (and on every resume) must hear from every partition, once; a node that
        does not answer (e.g. a killed SuperNode not yet marked offline) is left out. A later census, for
        nodes that appeared mid-run (a restarted SuperNode with a new id), lets the new node take over its
        partition; two newcomers that say the same partition are both refused (a warning names them; the
        partition's current node, if any, keeps serving it), since which of them holds the right data cannot be
        told."""
        strict = nodes is None
        cur, self._cur = self._cur, {"round": 0, "missing": []}
        if nodes is None:
            nodes = self.wait_for_nodes(grid, self.n_clients, "census")
        msgs = [Message(RecordDict({"config": ConfigRecord(dict(config))}), message_type=MessageType.QUERY,
                        dst_node_id=n) for n in nodes]
        found: dict[int, dict] = {}
        seen: dict[int, int] = {}
        doubled: dict[int, list[int]] = {}  # mid-run: partition -> every newcomer that says it
        for m in self.exchange(grid, msgs, "census"):
            node = self.node_of(m)
            if m.has_error():
                if strict:
                    raise FederationError(f"census: node {node} failed: {short_reason(m.error.reason)}")
                continue
            info = json.loads(str(m.content["census"]["info"]))
            pid = int(info["partition"])
            if not 0 <= pid < self.n_clients:
                raise FederationError(f"census: node {node} says partition-id {pid}, expected 0..{self.n_clients - 1}")
            if pid in seen:
                if strict:
                    raise FederationError(f"census: two SuperNodes ({seen[pid]} and {node}) say they are "
                                          f"partition {pid}")
                doubled.setdefault(pid, [seen[pid]]).append(node)
                continue
            seen[pid] = node
            known = self.census.get(pid)
            if known is not None and known.get("fingerprint") != info.get("fingerprint"):
                raise FederationError(f"census: the data of partition {pid} changed since the run started "
                                      f"(fingerprint {known.get('fingerprint')} -> {info.get('fingerprint')})")
            found[pid] = info
        for pid, nodes_ in doubled.items():
            why = f"census: SuperNodes {', '.join(map(str, nodes_))} all say they are partition {pid}; none is used"
            log(WARNING, why)  # pragma: no mutate
            progress.log(why)
            del seen[pid], found[pid]
        for pid, node in seen.items():
            for old, p in list(self.node_pid.items()):  # a restarted node (new id) replaces the old one
                if p == pid and old != node:
                    del self.node_pid[old]
            self.node_pid[node] = pid
            self.census[pid] = found[pid]
        for x in self._cur.get("missing", []):  # a node that did not answer is not a client of this run
            if x["node"] not in seen.values():
                self.node_pid.pop(x["node"], None)
        self._cur = cur
        absent = sorted(set(range(self.n_clients)) - set(found))
        if strict and absent:
            raise FederationError(f"census: partition(s) {absent} did not answer within {self.round_timeout:g} s "
                                  "(fl.round_timeout)")
        return found

    def _nodes_for_round(self, grid: Grid, server_round: int) -> dict[int, int]:
        """{partition: node id} of the online nodes (one node per partition: the most recently seen)."""
        need = self.needed()
        nodes = self.wait_for_nodes(grid, need, f"round {server_round}")
        unknown = [n for n in nodes if n not in self.node_pid]
        if unknown:
            self.run_census(grid, ConfigRecord({"spec": self._spec}), unknown)
            nodes = sorted(grid.get_node_ids())
        by_pid = {}
        for n in nodes:
            if n in self.node_pid:
                by_pid[self.node_pid[n]] = n
        return by_pid

    def _sample(self, server_round: int, pids: list[int]) -> list[int]:
        k = min(self.sample_size(), len(pids))
        if k >= len(pids):
            return list(pids)
        return sorted(random.Random(self.seed * 1_000_003 + server_round).sample(pids, k))

    # ---- messages
    def _messages(self, nodes: list[int], arrays: ArrayRecord | None, config: ConfigRecord, mtype: str,
                  phase: str) -> list[Message]:
        config["head-rounds"] = json.dumps({str(p): r for p, r in sorted(self.head_rounds.items())})
        content = RecordDict({"config": config} if arrays is None else {"arrays": arrays, "config": config})
        size = content_bytes(content)
        msgs = []
        for n in nodes:
            msgs.append(Message(content=content, message_type=mtype, dst_node_id=n))
            c = self._client(self.node_pid[n])
            c[f"{phase}_down"] = size["data"]
            c[f"{phase}_down_payload"] = size["payload"]
        return msgs

    def _client(self, pid: int) -> dict:
        return self._cur.setdefault("clients", {}).setdefault(pid, {})

    def _count_up(self, m: Message, phase: str) -> int:
        pid = self.node_pid.get(self.node_of(m), -1)
        if not m.has_error():
            size = content_bytes(m.content)
            c = self._client(pid)
            c[f"{phase}_up"] = size["data"]
            c[f"{phase}_up_payload"] = size["payload"]
        return pid

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> list[Message]:
        self._expected = {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}
        self._current = arrays
        self._cur = {"round": server_round, "clients": {}, "rejected": [], "missing": [], "bounded": [],
                     "t_start": time.time()}
        self._spec = str(config.get("spec", "{}"))
        pid_node = self._nodes_for_round(grid, server_round)
        chosen = self._sample(server_round, sorted(pid_node))
        self._cur["sampled"] = chosen
        config["server-round"] = server_round
        return self._messages([pid_node[p] for p in chosen], arrays, config, MessageType.TRAIN, "train")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        kept, claims = [], {}
        for m in replies:
            pid = self._count_up(m, "train")
            if m.has_error():
                reason = short_reason(m.error.reason)
                self._cur["missing"].append({"phase": "train", "node": self.node_of(m), "partition": pid,
                                             "reason": reason})
                log(WARNING, "round %d: partition %d: %s", server_round, pid, m.error.reason)  # pragma: no mutate
                progress.log(f"round {server_round}: partition {pid} failed: {reason}")
                continue
            reason = check_update(m.content, self._expected)
            if reason is None and pid in claims:
                reason = f"a second update for partition {pid} in the same round"
            if reason is not None:
                log(WARNING, "round %d: rejected partition %d: %s", server_round, pid, reason)  # pragma: no mutate
                progress.log(f"round {server_round}: rejected the update of partition {pid}: {reason}")
                self._cur["rejected"].append({"partition": pid, "reason": reason})
                self.rejected.append({"round": server_round, "partition": pid, "reason": reason})
                continue
            mr = next(iter(m.content.metric_records.values()))
            claims[pid] = int(mr["num-examples"])
            kept.append((pid, m))
            c = self._client(pid)
            c.update({"claimed": int(mr["num-examples"]), "train_loss": float(mr["train-loss"]),
                      "head_from": int(mr["head-from"])})
        need = self.needed()
        if len(kept) < need:
            problems = [f"partition {x['partition']}: {x['reason']}" for x in self._cur["missing"]]
            problems += [f"partition {x['partition']}: rejected ({x['reason']})" for x in self._cur["rejected"]]
            kept_rounds = f"rounds 1-{server_round - 1} are kept" if server_round > 2 else (
                "round 1 is kept" if server_round == 2 else "no round finished")
            raise FederationError(f"round {server_round}: {len(kept)} usable update(s), {need} needed "
                                  f"(fl.min_clients): " + "; ".join(problems[:4]) + f"; {kept_rounds}, rerun to resume")
        weights = bound_counts(claims, {p: int(i["n_train"]) for p, i in self.census.items() if "n_train" in i},
                               self.max_weight)
        for pid, m in kept:
            mr = next(iter(m.content.metric_records.values()))
            if weights[pid] != claims[pid]:
                ev = {"round": server_round, "partition": pid, "claimed": claims[pid], "weight": weights[pid]}
                self._cur["bounded"].append(ev)
                self.bounded.append(ev)
                progress.log(f"round {server_round}: partition {pid} claimed {claims[pid]} examples, weighted as "
                             f"{weights[pid]}")
            mr["num-examples"] = int(weights[pid])
            self._client(pid)["n_train"] = int(weights[pid])
            self.head_rounds[pid] = server_round  # this client's head of this round is the one to continue from
        if isinstance(self.aggregator, DifferentialPrivacyServerSideFixedClipping):  # clip around the sent arrays
            self.aggregator.current_arrays = self._current
        arrays, metrics = self.aggregator.aggregate_train(server_round, [m for _, m in kept])
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> list[Message]:
        config["export"] = bool(self.export and server_round == self.num_rounds)
        config["server-round"] = server_round
        online = set(grid.get_node_ids())
        pid_node = {p: n for n, p in self.node_pid.items() if n in online}
        return self._messages([pid_node[p] for p in sorted(pid_node)], arrays, config, MessageType.EVALUATE,
                              "eval")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rows = []
        for m in replies:
            pid = self._count_up(m, "eval")
            if m.has_error():
                log(INFO, "round %d: evaluate: partition %d: %s", server_round, pid, m.error.reason)  # pragma: no mutate
                self._cur["missing"].append({"phase": "evaluate", "node": self.node_of(m), "partition": pid,
                                             "reason": short_reason(m.error.reason)})
                continue
            mr = m.content.metric_records.get("metrics")
            if mr is None:
                continue
            n, loss, acc = int(mr["num-examples"]), float(mr["eval-loss"]), float(mr["eval-acc"])
            self._client(pid).update({"n_test": n, "loss": loss, "accuracy": acc})
            # everything else the client reported (validation metrics; on the last round its test scores) (violence)
            self._client(pid).update({k: (list(v) if isinstance(v, list) else v) for k, v in mr.items()
                                      if k not in ("num-examples", "eval-loss", "eval-acc", "partition-id")})
            rows.append((n, loss, acc))
            if "personal" in m.content.array_records:
                self.exports[pid] = m.content.array_records["personal"]
        n = sum(r[0] for r in rows)
        rec = self._cur
        rec["accuracy"] = sum(r[0] * r[2] for r in rows) / n if n else float("nan")
        rec["loss"] = sum(r[0] * r[1] for r in rows) / n if n else float("nan")
        cl = rec.get("clients", {}).values()
        tot = lambda key: int(sum(c.get(f"train_{key}", 0) + c.get(f"eval_{key}", 0) for c in cl))  # noqa: E731
        rec["bytes"] = {"up": tot("up"), "down": tot("down"), "payload_up": tot("up_payload"),
                        "payload_down": tot("down_payload")}
        rec["bytes"]["total"] = rec["bytes"]["up"] + rec["bytes"]["down"]
        rec["head_rounds"] = {str(p): r for p, r in sorted(self.head_rounds.items())}
        rec["t_end"] = time.time()
        self.history.append(rec)
        if self.on_round is not None:
            self.on_round(rec)
        if not n:
            return None
        return MetricRecord({"eval-acc": float(rec["accuracy"]), "eval-loss": float(rec["loss"]), "num-examples": n})

    # ---- the loop (Strategy.start with a start round, bounded waits and a hook after every round)
    def run(self, grid: Grid, arrays: ArrayRecord, train_config: ConfigRecord, evaluate_config: ConfigRecord,
            start_round: int = 1, on_round_end: Callable[[int, ArrayRecord], None] | None = None) -> ArrayRecord:
        self.run_census(grid, ConfigRecord(dict(train_config)))
        for r in range(start_round, self.num_rounds + 1):
            msgs = self.configure_train(r, arrays, ConfigRecord(dict(train_config)), grid)
            new, _ = self.aggregate_train(r, self.exchange(grid, msgs, "train"))
            if new is not None:
                arrays = new
            msgs = self.configure_evaluate(r, arrays, ConfigRecord(dict(evaluate_config)), grid)
            self.aggregate_evaluate(r, self.exchange(grid, msgs, "evaluate"))
            if on_round_end is not None:
                on_round_end(r, arrays)
        return arrays

    # ---- resume
    def state_dict(self) -> dict:
        return {"round": self.history[-1]["round"] if self.history else 0, "history": self.history,
                "rejected": self.rejected, "bounded": self.bounded,
                "head_rounds": {str(p): r for p, r in self.head_rounds.items()},
                "census": {str(p): v for p, v in self.census.items()},
                "node_pid": {str(n): p for n, p in self.node_pid.items()}}

    def load_state_dict(self, st: dict) -> int:
        """Restore what :meth:`state_dict` saved; returns the last finished round."""
        self.history = list(st["history"])
        for h in self.history:  # JSON turned the partition keys into strings
            h["clients"] = {int(k): v for k, v in h.get("clients", {}).items()}
        self.rejected, self.bounded = list(st["rejected"]), list(st.get("bounded", []))
        self.head_rounds = {int(p): int(r) for p, r in st["head_rounds"].items()}
        self.census = {int(p): v for p, v in st["census"].items()}
        self.node_pid = {int(n): int(p) for n, p in st["node_pid"].items()}
        return int(st["round"])
