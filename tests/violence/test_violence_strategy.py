"""The federation's server side and client side in-process (real Flower Messages, real ClientApp handlers,
an in-process Grid): update checks, count bounds, robust aggregation under a scaled-update attack,
partial participation, bounded rounds with a silent node, bytes counted from the messages, per-message
seeds, heads that survive a restart (and are an error when missing), and resume inside a strategy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict


from detectlab.violence.flower_app import InProcessGrid as FedGrid  # noqa: E402
MODEL = {"arch": "DiffGated", "width": 2, "hidden": [16, 8], "dropout": 0.3, "size": 16}
CLIENT = {"lr": 0.003, "weight_decay": 0.0, "epochs": 4, "batch": 8, "alpha": 0.03, "beta": 0.1, "delta": 1e-3,
          "variant": "fo", "meta_steps": 0, "adapt_steps": 1, "threads": 1, "fault": "",
          "aug": {"stride": 16, "jitter": 0, "crop": 0, "flip": False}, "eval_stride": 16}


def chunks(rng: np.random.Generator, n: int, motion: bool) -> np.ndarray:
    """(n, 16, 16, 16, 3) uint8: a bright square that jumps around (motion) or stands still."""
    x = rng.integers(40, 80, size=(n, 16, 16, 16, 3), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(0, 12, 2)
        for t in range(16):
            if motion:
                r, c = rng.integers(0, 12, 2)
            x[i, t, r:r + 4, c:c + 4] = 230
    return x


@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    """4 clients x (24 train + 12 test) chunks, half with motion (label 1), as a real partition file."""
    from detectlab.violence.partition import save_partition

    d = tmp_path_factory.mktemp("fedpart")
    rng = np.random.default_rng(0)
    k, ntr, nte = 4, 24, 12
    per = ntr + nte
    x = np.concatenate([chunks(rng, per // 2, True) if j % 2 == 0 else chunks(rng, per // 2, False)
                        for _ in range(k) for j in range(2)])
    y = np.concatenate([np.full(per // 2, 1 - j % 2) for _ in range(k) for j in range(2)])
    np.save(d / "frames.npy", x.reshape(-1, *x.shape[2:]))  # every chunk's 16 frames, in order
    clip = np.arange(len(y)) // 2  # two chunks per "clip": a clip is 32 frames (violence's clip table)
    n_clips = int(clip.max()) + 1
    table = {"start": np.arange(n_clips) * 32, "length": np.full(n_clips, 32), "label": y[::2],
             "group": [f"g{c}" for c in range(n_clips)], "parent": np.arange(n_clips)}
    train, test = [], []
    for i in range(k):
        idx = np.arange(i * per, (i + 1) * per)
        cl = np.unique(clip[idx])
        rng.shuffle(cl)
        te = np.sort(cl[: nte // 2])
        train.append(np.sort(np.setdiff1d(cl, te)))
        test.append(te)
    return save_partition(d / "partition.npz", str(d / "frames.npy"), table, train, [t[:0] for t in train], test)


def make_job(out: Path, pfile: Path, strategies=("fedavg",), rounds=3, n=4, experiment="iid", **fl) -> dict:
    return {"experiment": experiment, "n_clients": n, "rounds": rounds, "seed": 0, "model": dict(MODEL),
            "partition_file": str(pfile), "out": str(out), "export": True, "timeout": 60,
            "strategies": list(strategies), "client": dict(CLIENT, fault=fl.pop("fault", "")),
            "fl": dict({"round_timeout": 60.0}, **fl)}


def grid_for(n: int, faulty: bool = False):
    from detectlab.violence import client_app, faults

    return FedGrid(faults.app if faulty else client_app.app, [{"partition-id": i} for i in range(n)])


def arrays_equal(a: ArrayRecord, b: ArrayRecord) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


# ---- checks and bounds by hand
def _reply_content(arrays: dict, **metrics) -> RecordDict:
    mr = {"num-examples": 10, "partition-id": 0, "train-loss": 0.5, "train-acc": 0.5, "head-from": 0}
    mr.update(metrics)
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": MetricRecord(mr)})


def test_check_update_by_hand():
    """Catches: NaN/Inf, wrong shape/dtype/keys, a second ArrayRecord, odd metric keys (which would crash
    Flower's consistency check) and an impossible num-examples all reaching the average."""
    from detectlab.violence.strategy import check_update, content_bytes, data_bytes

    exp = {"w": ((2, 3), "float32"), "b": ((3,), "float32")}
    w, b = np.zeros((2, 3), np.float32), np.ones(3, np.float32)
    ok = _reply_content({"w": w, "b": b})
    assert check_update(ok, exp) is None
    assert "non-finite" in check_update(_reply_content({"w": np.full((2, 3), np.inf, np.float32), "b": b}), exp)
    assert "non-finite" in check_update(_reply_content({"w": w, "b": np.full(3, np.nan, np.float32)}), exp)
    assert "wrong shape" in check_update(_reply_content({"w": np.zeros((3, 2), np.float32), "b": b}), exp)
    assert "wrong dtype" in check_update(_reply_content({"w": w.astype(np.float64), "b": b}), exp)
    assert "wrong keys" in check_update(_reply_content({"w": w}), exp)
    two = _reply_content({"w": w, "b": b})
    two["more"] = ArrayRecord({"w": Array(w)})
    assert "2 ArrayRecords" in check_update(two, exp)
    assert "metric keys" in check_update(_reply_content({"w": w, "b": b}, extra=1.0), exp)
    none = _reply_content({"w": w, "b": b})
    del none["metrics"]
    assert check_update(none, exp) == "0 MetricRecords instead of 1"
    for bad in (0, -5, 2 * 10**9, 1.5):
        assert "num-examples" in check_update(_reply_content({"w": w, "b": b}, **{"num-examples": bad}), exp), bad
    assert data_bytes(ok["arrays"]) == (6 + 3) * 4
    sizes = content_bytes(ok)
    assert sizes["data"] == 36 and sizes["payload"] == ok["arrays"].count_bytes() + ok["metrics"].count_bytes()


def test_bound_counts_by_hand():
    """Catches: a claimed num-examples above the census count, or far above the others', weighting the mean."""
    from detectlab.violence.strategy import bound_counts

    claims = {0: 20, 1: 22, 2: 24, 3: 2400}
    assert bound_counts(claims, {}) == claims  # nothing known, no cap: trusted as is
    assert bound_counts(claims, {0: 20, 1: 22, 2: 24, 3: 24}) == {0: 20, 1: 22, 2: 24, 3: 24}
    assert bound_counts(claims, {3: 30}) == {0: 20, 1: 22, 2: 24, 3: 30}
    assert bound_counts({0: 5, 1: 3}, {0: 4, 1: 9}) == {0: 4, 1: 3}  # a claim below the census count stays
    # median of (20, 22, 24, 2400) = 23; cap 2 x 23 = 46
    assert bound_counts(claims, {}, max_weight=2.0) == {0: 20, 1: 22, 2: 24, 3: 46}
    assert bound_counts({0: 10, 1: 30}, {}, max_weight=1.5) == {0: 10, 1: 30}  # median 20 -> cap 30
    assert bound_counts({0: 10, 1: 31}, {}, max_weight=1.5) == {0: 10, 1: 30}
    assert bound_counts({0: 1, 1: 1}, {}, max_weight=0.5) == {0: 1, 1: 1}  # the cap never falls below 1


def _train_reply(strat_msg: Message, arrays: dict, n: int) -> Message:
    r = Message(_reply_content(arrays, **{"num-examples": n}), reply_to=strat_msg)
    r.metadata.__dict__["_message_id"] = f"r{id(r)}"
    return r


@pytest.mark.parametrize("aggregation,close", [("fedavg", False), ("median", True), ("trimmed", True),
                                               ("krum", True)])
def test_robust_aggregators_by_hand(aggregation, close):
    """Catches: one of four clients (-1000 x its update, 100 x its count) moving the aggregate. The robust
    options (Flower's FedMedian, FedTrimmedAvg, Krum) stay within the honest updates; FedAvg does not."""
    from detectlab.violence.strategy import RobustFedAvg

    g = FedGrid(lambda m, c: None, [{"partition-id": i} for i in range(4)])
    s = RobustFedAvg(4, 1, aggregation=aggregation, trim_beta=0.25, krum_malicious=1)
    s.node_pid = {n: i for i, n in enumerate(sorted(g.nodes))}
    base = np.zeros(5, np.float32)
    msgs = s.configure_train(1, ArrayRecord({"w": Array(base)}), ConfigRecord({"spec": "{}"}), g)
    g.push_messages(msgs)
    honest = [np.full(5, v, np.float32) for v in (1.0, 1.1, 0.9)]
    ups = honest + [base - 1000 * (np.full(5, 1.0, np.float32) - base)]
    replies = [_train_reply(m, {"w": u}, 20 if i < 3 else 2000) for i, (m, u) in enumerate(zip(msgs, ups))]
    arrays, _ = s.aggregate_train(1, replies)
    w = arrays["w"].numpy()
    assert bool(np.all((w >= 0.9 - 1e-6) & (w <= 1.1 + 1e-6))) == close, w


def test_norm_clipping_bounds_each_update():
    """Catches: clip_norm not reaching Flower's DifferentialPrivacyServerSideFixedClipping (the -1000x
    update would then enter the mean unclipped)."""
    from detectlab.violence.strategy import RobustFedAvg

    g = FedGrid(lambda m, c: None, [{"partition-id": i} for i in range(2)])
    s = RobustFedAvg(2, 1, clip_norm=1.0)
    s.node_pid = {n: i for i, n in enumerate(sorted(g.nodes))}
    base = np.zeros(4, np.float32)
    msgs = s.configure_train(1, ArrayRecord({"w": Array(base)}), ConfigRecord({"spec": "{}"}), g)
    g.push_messages(msgs)
    replies = [_train_reply(msgs[0], {"w": np.full(4, 0.1, np.float32)}, 10),
               _train_reply(msgs[1], {"w": np.full(4, -1000.0, np.float32)}, 10)]
    w = s.aggregate_train(1, replies)[0]["w"].numpy()
    # update 1 (norm 0.2) passes unchanged, update 2 (norm 2000) is scaled to norm 1: -0.5 per coordinate
    assert np.allclose(w, (0.1 + -0.5) / 2, atol=1e-6)


def test_short_reason_by_hand():
    """Catches: a ClientApp traceback from Ray (many lines) pasted whole into the one-line stop message."""
    from detectlab.violence.strategy import short_reason

    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() File x\n  line 3"
           "\nflwr.clientapp.client_app.ClientAppException: Exception ClientAppException occurred. Message: "
           "HeadMissing: partition 1: head   gone'>")
    assert short_reason(ray) == "HeadMissing: partition 1: head gone"
    assert short_reason("a\n b\t c") == "a b c"
    assert short_reason("x" * 300) == "x" * 237 + "..." and len(short_reason("y" * 240)) == 240
    assert short_reason("z" * 50, limit=10) == "zzzzzzz..."


def test_server_state_round_trip():
    """Catches: a resumed strategy that loses its history, the rejected/bounded records, which round's head
    each client continues from, the census or the node map (JSON turns the partition keys into strings)."""
    from detectlab.violence.strategy import RobustFedAvg

    a = RobustFedAvg(2, 5)
    a.history = [{"round": 1, "clients": {0: {"loss": 0.5}, 1: {"loss": 0.7}}, "accuracy": 0.5},
                 {"round": 2, "clients": {0: {"loss": 0.4}}, "accuracy": 0.6}]
    a.rejected, a.bounded = [{"round": 2, "partition": 1, "reason": "nan"}], [{"round": 1, "partition": 0}]
    a.head_rounds, a.census, a.node_pid = {0: 2, 1: 1}, {0: {"n_train": 3}, 1: {"n_train": 4}}, {101: 0, 102: 1}
    st = json.loads(json.dumps(a.state_dict()))
    assert st["round"] == 2
    b = RobustFedAvg(2, 5)
    assert b.load_state_dict(st) == 2
    assert b.history == a.history and b.rejected == a.rejected and b.bounded == a.bounded
    assert b.head_rounds == a.head_rounds and b.census == a.census and b.node_pid == a.node_pid
    assert RobustFedAvg(2, 5).state_dict()["round"] == 0


def _census_app(msg, ctx):
    """A ClientApp that only answers the census, with what its node config says."""
    nc = ctx.node_config
    info = {"partition": int(nc["partition-id"]), "n_train": int(nc.get("n", 10)), "fingerprint": nc.get("fp", "a")}
    r = Message(RecordDict({"census": ConfigRecord({"info": json.dumps(info)})}), reply_to=msg)
    return r


def test_census_knows_each_partition_once():
    """Catches: an impostor claiming a partition that is already taken being silently accepted, a node that
    does not answer (killed, not yet offline) blocking the census, and a resumed run over changed data (the
    line names both fingerprints)."""
    from detectlab.violence.strategy import FederationError, RobustFedAvg

    cfg = ConfigRecord({"spec": "{}"})
    g = FedGrid(_census_app, [{"partition-id": 0}, {"partition-id": 1}, {"partition-id": 1}])
    with pytest.raises(FederationError, match="two SuperNodes .* say they are partition 1"):
        RobustFedAvg(2, 1, round_timeout=0.3, poll=0.05).run_census(g, cfg)
    g = FedGrid(_census_app, [{"partition-id": 0}, {"partition-id": 1}, {"partition-id": 1}])
    ghost = sorted(g.nodes)[2]
    g.silent.add(ghost)
    s = RobustFedAvg(2, 1, round_timeout=0.3, poll=0.05)
    found = s.run_census(g, cfg)
    assert sorted(found) == [0, 1] and ghost not in s.node_pid and sorted(s.node_pid.values()) == [0, 1]
    g2 = FedGrid(_census_app, [{"partition-id": 0}])  # only one of the two SuperNodes ever connects
    with pytest.raises(FederationError, match="census: only 1 of the 2 SuperNodes needed connected within 0.3 s"):
        RobustFedAvg(2, 1, round_timeout=0.3, poll=0.05).run_census(g2, cfg)
    g2 = FedGrid(_census_app, [{"partition-id": 0}, {"partition-id": 1}])
    g2.silent.add(sorted(g2.nodes)[1])  # connected, never answers
    with pytest.raises(FederationError, match=r"^census: partition\(s\) \[1\] did not answer within 0.3 s "
                                              r"\(fl.round_timeout\)$"):
        RobustFedAvg(2, 1, round_timeout=0.3, poll=0.05).run_census(g2, cfg)
    changed = FedGrid(_census_app, [{"partition-id": 0}, {"partition-id": 1, "fp": "b"}])
    with pytest.raises(FederationError, match=r"^census: the data of partition 1 changed since the run started "
                                              r"\(fingerprint a -> b\)$"):
        s.run_census(changed, cfg)


# ---- the federation in-process
def run_job(job, grid, strategy="fedavg", start_fresh=True):
    from detectlab.violence.server_app import run_strategy

    return run_strategy(grid, job, strategy)


@pytest.fixture
def logged(monkeypatch):
    """The progress.log lines (what the user sees and log.txt keeps) of the test."""
    from detectlab.core import progress

    lines: list[str] = []
    monkeypatch.setattr(progress, "log", lambda msg: lines.append(str(msg)))
    return lines


def test_rejections_and_bounds_are_reported(partition, tmp_path, logged):
    """Catches: a rejected update or a cut count that leaves no trace for the user (log line and record),
    and a trimmed mean that silently trims nothing."""
    from detectlab.violence.strategy import RobustFedAvg

    job = make_job(tmp_path / "run", partition, rounds=1, n=3, fault="nan:1,count:2:100")
    res = run_job(job, grid_for(3, faulty=True))
    assert "round 1: rejected the update of partition 1: non-finite values in base.rgb.0.weight" in logged
    assert "round 1: partition 2 claimed 2400 examples, weighted as 24" in logged
    assert res["rejected"] == [{"round": 1, "partition": 1, "reason": "non-finite values in base.rgb.0.weight"}]
    assert res["bounded"] == [{"round": 1, "partition": 2, "claimed": 2400, "weight": 24}]
    assert res["history"][0]["clients"]["2"]["n_train"] == 24 and res["history"][0]["clients"]["2"]["claimed"] == 2400
    logged.clear()
    RobustFedAvg(4, 1, aggregation="trimmed", trim_beta=0.25)
    assert logged == []
    RobustFedAvg(3, 1, aggregation="trimmed", trim_beta=0.25)
    assert logged == ["warning: a trimmed mean with fl.trim_beta=0.25 over 3 clients trims nothing"]


def test_partial_participation_samples_a_fraction(partition, tmp_path):
    """Catches: fl.fraction ignored (every client trains every round), or a sampling that is not reproducible
    from the seed; evaluation still covers every client."""
    job = make_job(tmp_path / "run", partition, rounds=3, fraction=0.5)
    res = run_job(job, grid_for(4))
    sampled = [h["sampled"] for h in res["history"]]
    assert all(len(s) == 2 for s in sampled) and len({tuple(s) for s in sampled}) > 1, sampled
    for h in res["history"]:
        trained = {int(p) for p, c in h["clients"].items() if c.get("train_loss") is not None}
        assert trained == set(h["sampled"])
    assert set(res["per_client"]) == {"0", "1", "2", "3"}
    again = run_job(make_job(tmp_path / "again", partition, rounds=3, fraction=0.5), grid_for(4))
    assert [h["sampled"] for h in again["history"]] == sampled


def test_silent_node_ends_the_round_after_the_timeout(partition, tmp_path):
    """Catches: a round that waits forever for a SuperNode that died mid-round. With every client required
    (fl.min_clients=0) the run stops with one line naming the partition and the timeout; with the default
    (fl.min_clients=1) the round completes with the others."""
    from detectlab.violence.server_app import run_strategy
    from detectlab.violence.strategy import FederationError

    g = grid_for(2)
    g.mute[sorted(g.nodes)[1]] = {MessageType.TRAIN}  # answers the census, then dies before training
    job = make_job(tmp_path / "strict", partition, rounds=1, n=2, round_timeout=0.5, min_clients=0)
    with pytest.raises(FederationError) as e:
        run_strategy(g, job, "fedavg")
    line = str(e.value)
    assert "\n" not in line and "round 1: 1 usable update(s), 2 needed" in line
    assert "partition 1: no reply within 0.5 s" in line and "no round finished" in line
    g2 = grid_for(2)
    g2.mute[sorted(g2.nodes)[1]] = {MessageType.TRAIN, MessageType.EVALUATE}
    res = run_strategy(g2, make_job(tmp_path / "lenient", partition, rounds=1, n=2, round_timeout=0.5,
                                    min_clients=1), "fedavg")
    assert res["rounds"] == 1 and res["history"][0]["missing"][0]["partition"] == 1
    assert set(res["history"][0]["clients"]) == {"0", "1"} and res["per_client"]["1"]["accuracy"] is None


def test_unavailable_node_is_named_by_partition(partition, tmp_path):
    """Catches: an error reply that the SuperLink sends for a dead node (it comes from node 0, not from the
    node) being put on the wrong client, or dropped without a word."""
    from detectlab.violence.server_app import run_strategy
    from detectlab.violence.strategy import FederationError

    g = grid_for(2)
    real = g.pull_messages

    def pull(ids):  # node 1 missed its heartbeats once training was sent
        if any(m.metadata.message_type == MessageType.TRAIN for m in g.sent):
            g.unavailable.add(sorted(g.nodes)[1])
        return real(ids)

    g.pull_messages = pull
    with pytest.raises(FederationError, match=r"round 1: 1 usable update\(s\), 2 needed \(fl.min_clients\): "
                                              r"partition 1: Error: Node Unavailable"):
        run_strategy(g, make_job(tmp_path / "run", partition, rounds=1, n=2, min_clients=0), "fedavg")


def test_strategy_settings_by_hand():
    """Catches: a sample size that truncates instead of rounding or reaches 0, min_clients read the wrong way,
    and unknown settings accepted."""
    from detectlab.violence.strategy import RobustFedAvg, make_aggregator

    assert [RobustFedAvg(4, 1, fraction=f).sample_size() for f in (1.0, 0.5, 0.4, 0.3, 0.1)] == [4, 2, 2, 1, 1]
    assert RobustFedAvg(10, 1, fraction=0.25).sample_size() == 2  # round(2.5) = 2 (banker's rounding)
    assert [RobustFedAvg(4, 1, min_clients=m).needed() for m in (0, 1, 3, 9)] == [4, 1, 3, 4]
    assert [RobustFedAvg(4, 1, fraction=0.5, min_clients=m).needed() for m in (0, 1, 3)] == [2, 1, 2]
    with pytest.raises(ValueError, match="fraction must be in"):
        RobustFedAvg(4, 1, fraction=0.0)
    with pytest.raises(ValueError, match="fraction must be in"):
        RobustFedAvg(4, 1, fraction=1.5)
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        make_aggregator("mean")
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedMedian, Krum

    assert type(make_aggregator("median")) is FedMedian and make_aggregator("krum").num_malicious_nodes == 1
    assert make_aggregator("krum", krum_malicious=2).num_malicious_nodes == 2
    assert make_aggregator("trimmed", trim_beta=0.3).beta == 0.3
    clip = make_aggregator("fedavg", clip_norm=2.5, n_clients=3)
    assert isinstance(clip, DifferentialPrivacyServerSideFixedClipping) and clip.clipping_norm == 2.5
    assert clip.noise_multiplier == 0.0 and clip.num_sampled_clients == 3


def test_bytes_are_counted_from_the_messages(partition, tmp_path):
    """Catches: bytes taken from a fresh state_dict instead of the messages, the evaluate direction left
    out, or the last round's personal-model upload not counted."""
    from detectlab.violence.model import build_model
    from detectlab.violence.strategy import content_bytes, data_bytes

    g = grid_for(2)
    res = run_job(make_job(tmp_path / "run", partition, rounds=2, n=2), g, "fedper")
    sd = build_model(MODEL).state_dict()
    base = sum(v.numel() * 4 for k, v in sd.items() if k.startswith("base."))
    full = sum(v.numel() * 4 for v in sd.values())
    h1, h2 = (h["bytes"] for h in res["history"])
    assert h1["up"] == 2 * base and h1["down"] == 2 * 2 * base  # up: train replies; down: train + evaluate
    assert h2["up"] == 2 * base + 2 * full  # the last round's evaluate replies carry the personal models
    assert h2["down"] == h1["down"]
    sent = [m for m in g.sent if m.metadata.message_type in (MessageType.TRAIN, MessageType.EVALUATE)]
    assert sum(content_bytes(m.content)["payload"] for m in sent) == h1["payload_down"] + h2["payload_down"]
    assert sum(data_bytes(m.content["arrays"]) for m in sent) == h1["down"] + h2["down"]
    assert res["bytes_total"]["up"] == h1["up"] + h2["up"]


def _call(app, mtype, arrays, spec, ctx, rnd, head_rounds=None):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    cfg = ConfigRecord({"spec": json.dumps(spec), "server-round": rnd,
                        "head-rounds": json.dumps(head_rounds or {})})
    m = Message(RecordDict({"arrays": arrays, "config": cfg}), message_type=mtype, dst_node_id=ctx.node_id)
    m.metadata.__dict__["_message_id"] = f"x{rnd}"
    return app(m, ctx)


def _ctx(pid, **nc):
    from flwr.app import Context

    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, **nc}, state=RecordDict(),
                   run_config={})


def _spec(partition, tmp, strategy="fedavg", **kw):
    return dict(CLIENT, strategy=strategy, experiment="iid", model=MODEL, seed=0, run_key="k",
                partition_file=str(partition), state_dir=str(tmp), epochs=1, batch=100, **kw)


def test_dropout_masks_change_between_rounds(partition, tmp_path):
    """Catches fault 7: the global seed reset on every message, so every round repeats the same dropout masks.
    One full batch (no order effect), same weights, rounds 1 and 2: the updates must differ; the same
    round twice must give the same update."""
    from detectlab.violence import client_app
    from detectlab.violence.server_app import initial_arrays

    arrays = initial_arrays({"seed": 0, "model": MODEL}, "fedavg")
    spec = _spec(partition, tmp_path)
    out = [_call(client_app.app, MessageType.TRAIN, arrays, spec, _ctx(0), r).content["arrays"] for r in (1, 2, 1)]
    assert not arrays_equal(out[0], out[1]) and arrays_equal(out[0], out[2])


def test_production_client_ignores_the_fault_setting(partition, tmp_path):
    """Catches fault 7's second half: the fault-injection hook running in the production ClientApp."""
    from detectlab.violence import client_app, faults
    from detectlab.violence.server_app import initial_arrays

    arrays = initial_arrays({"seed": 0, "model": MODEL}, "fedavg")
    spec = _spec(partition, tmp_path, fault="nan:0,count:0:100")
    prod = _call(client_app.app, MessageType.TRAIN, arrays, spec, _ctx(0), 1)
    bad = _call(faults.app, MessageType.TRAIN, arrays, spec, _ctx(0), 1)
    assert all(np.isfinite(a.numpy()).all() for a in prod.content["arrays"].values())
    assert int(prod.content["metrics"]["num-examples"]) == 24
    assert not np.isfinite(next(iter(bad.content["arrays"].values())).numpy()).all()
    assert int(bad.content["metrics"]["num-examples"]) == 2400
    with pytest.raises(ValueError, match="cannot read"):
        faults.parse("explode:1")


def test_heads_are_keyed_by_run_experiment_and_strategy(partition, tmp_path):
    """Catches fault 2: a head key without the experiment, so a client starts imbalanced3 with its balanced2
    head; and a head missing mid-run silently rebuilt from the seed."""
    from detectlab.violence import client_app
    from detectlab.violence.server_app import initial_arrays

    base = initial_arrays({"seed": 0, "model": MODEL}, "fedper")
    ctx = _ctx(0)
    a = _spec(partition, tmp_path, "fedper")
    r1 = _call(client_app.app, MessageType.TRAIN, base, a, ctx, 1)
    assert int(r1.content["metrics"]["head-from"]) == 0
    f1 = client_app.head_file(tmp_path / "partition0", a, 1)
    assert f1.exists() and "iid-fedper" in str(f1) and "/k/" in str(f1)
    b = dict(a, experiment="other")  # same node, same strategy, another experiment: its own (new) head
    with pytest.raises(client_app.HeadMissing):
        client_app.load_head(ctx, b, 1)
    r = _call(client_app.app, MessageType.TRAIN, base, b, ctx, 1)
    assert int(r.content["metrics"]["head-from"]) == 0
    assert client_app.head_file(tmp_path / "partition0", b, 1).exists()
    # round 2 of the first experiment continues from its round-1 head, read back from disk after a restart
    fresh = _ctx(0)
    head1 = client_app.load_head(fresh, a, 1)
    from safetensors.torch import load_file

    assert all(np.array_equal(head1[k].numpy(), v.numpy()) for k, v in load_file(str(f1)).items())
    r2 = _call(client_app.app, MessageType.TRAIN, base, a, fresh, 2, {"0": 1})
    assert not r2.has_error() and int(r2.content["metrics"]["head-from"]) == 1
    # the head file gone: an error naming the head and round, never a fresh head
    f1.unlink()
    with pytest.raises(client_app.HeadMissing, match="from round 1 is missing"):
        _call(client_app.app, MessageType.TRAIN, base, a, _ctx(0), 2, {"0": 1})


def test_fedper_heads_are_personal_and_bases_shared(partition, tmp_path):
    """Catches: the server averaging or holding heads, or clients evaluating without their own head. After
    FedPer, every client's exported model has the global base and a head that is its own (and equal to the
    head it kept), different from every other client's."""
    from safetensors.numpy import load_file

    from detectlab.violence import client_app

    job = make_job(tmp_path / "run", partition, rounds=2, n=3)
    res = run_job(job, grid_for(3), "fedper")
    ck = Path(job["out"]) / "checkpoints"
    glob = load_file(str(ck / "iid-fedper-global.safetensors"))
    assert glob and all(k.startswith("base.") for k in glob)
    spec = {"run_key": json.loads((Path(job["out"]) / "federation.json").read_text())["run_key"],
            "experiment": "iid", "strategy": "fedper"}
    heads = []
    for c in range(3):
        m = load_file(str(ck / f"iid-fedper-client{c}.safetensors"))
        assert all(np.array_equal(m[k], v) for k, v in glob.items())
        kept = load_file(str(client_app.head_file(Path(job["out"]) / "node-state" / f"partition{c}", spec, 2)))
        assert set(kept) == {k for k in m if k.startswith("head.")}
        assert all(np.array_equal(m[k], kept[k]) for k in kept)
        heads.append(np.concatenate([kept[k].ravel() for k in sorted(kept)]))
    assert all(not np.allclose(heads[i], heads[j]) for i in range(3) for j in range(i + 1, 3))
    assert [res["history"][1]["clients"][str(c)]["head_from"] for c in range(3)] == [1, 1, 1]


def test_interrupted_run_resumes_to_the_same_result(partition, tmp_path):
    """Catches fault 6 (and 2): an interrupted FedPer run that restarts from round 1, loses the server state,
    or continues a restarted client from a fresh head. A SuperNode dies in round 3 of 4 (the run stops with
    one line); it restarts (its in-memory state is gone, its disk is not); the rerun continues at round 3 and
    ends exactly where an uninterrupted run ends."""
    from safetensors.numpy import load_file

    from detectlab.violence.server_app import run_strategy
    from detectlab.violence.strategy import FederationError

    straight = make_job(tmp_path / "straight", partition, rounds=4, n=2)
    run_strategy(grid_for(2), straight, "fedper")

    job = make_job(tmp_path / "broken", partition, rounds=4, n=2, round_timeout=0.5, min_clients=0)
    g = grid_for(2)
    node1 = sorted(g.nodes)[1]
    real_pull = g.pull_messages

    def pull(ids):  # node 1 dies when round 3's training messages go out
        if any(m.metadata.message_type == MessageType.TRAIN and int(m.content["config"]["server-round"]) == 3
               for m in g.sent[-2:]):
            g.silent.add(node1)
        return real_pull(ids)

    g.pull_messages = pull
    with pytest.raises(FederationError, match="round 3: 1 usable update.*rounds 1-2 are kept, rerun to resume"):
        run_strategy(g, job, "fedper")
    st = json.loads((tmp_path / "broken" / "state" / "iid-fedper" / "server.json").read_text())
    assert st["round"] == 2 and st["head_rounds"] == {"0": 2, "1": 2}
    g.restart(node1)  # fresh Context: the head lives on only in node 1's state folder
    g.pull_messages = real_pull
    before = len(g.sent)
    res = run_strategy(g, job, "fedper")
    assert [h["round"] for h in res["history"]] == [1, 2, 3, 4]
    trained = sorted({int(m.content["config"]["server-round"]) for m in g.sent[before:]
                      if m.metadata.message_type == MessageType.TRAIN})
    assert trained == [3, 4]  # rounds 1-2 are read back, not trained again
    assert res["history"][2]["clients"]["1"]["head_from"] == 2
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "iid-fedper-global.safetensors"))
    b = load_file(str(tmp_path / "broken" / "checkpoints" / "iid-fedper-global.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for c in (0, 1):
        pa = load_file(str(tmp_path / "straight" / "checkpoints" / f"iid-fedper-client{c}.safetensors"))
        pb = load_file(str(tmp_path / "broken" / "checkpoints" / f"iid-fedper-client{c}.safetensors"))
        assert all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_restarted_node_without_its_head_is_an_error(partition, tmp_path, logged):
    """Catches fault 2's silent rebuild: a client whose node lost its storage mid-run gets a fresh head.
    The error reply names the missing head and the run stops with one line."""
    import shutil

    from detectlab.violence.server_app import run_strategy
    from detectlab.violence.strategy import FederationError

    job = make_job(tmp_path / "run", partition, rounds=2, n=2, round_timeout=2, min_clients=0)
    g = grid_for(2)
    node1 = sorted(g.nodes)[1]
    real, done = g.pull_messages, []

    def pull(ids):  # node 1 loses its storage and restarts just before round 2's training reaches it
        last = g.sent[-1]
        if last.metadata.message_type == MessageType.TRAIN and int(last.content["config"]["server-round"]) == 2 \
                and not done:
            shutil.rmtree(tmp_path / "run" / "node-state" / "partition1")
            g.restart(node1)
            done.append(1)
        return real(ids)

    g.pull_messages = pull
    with pytest.raises(FederationError) as e:
        run_strategy(g, job, "fedper")
    assert "partition 1: HeadMissing" in str(e.value) and "from round 1 is missing" in str(e.value)
    assert any(ln.startswith("round 2: partition 1 failed: HeadMissing: partition 1: the personal head") for ln in logged)


def test_robust_option_holds_accuracy_under_attack(partition, tmp_path):
    """Catches: one of four clients sending -1000 x its update with 100 x its count taking over the model.
    With fl.aggregation=median the held-out accuracy stays within 0.05 of the clean run; plain FedAvg under
    the same attack collapses (so the attack is real)."""
    attack = "scale:3:-1000,count:3:100"
    clean = run_job(make_job(tmp_path / "clean", partition, rounds=6), grid_for(4))
    robust = run_job(make_job(tmp_path / "robust", partition, rounds=6, aggregation="median", fault=attack),
                     grid_for(4, faulty=True))
    naive = run_job(make_job(tmp_path / "naive", partition, rounds=6, fault=attack), grid_for(4, faulty=True))
    assert clean["accuracy"] >= 0.75, clean["accuracy"]  # the clean federation learns the motion cue
    assert abs(robust["accuracy"] - clean["accuracy"]) <= 0.05, (robust["accuracy"], clean["accuracy"])
    assert naive["accuracy"] < clean["accuracy"] - 0.2 or not math.isfinite(naive["loss"])
    # the 100x claim was cut to the census count of client 3 every round
    assert [(b["partition"], b["claimed"], b["weight"]) for b in robust["bounded"]] == [(3, 2400, 24)] * 6


# ---- the server side by hand, with a toy ClientApp (no model, no training: each test well under 2 s)
def _toy_app(msg, ctx):
    """A ClientApp without a model. Census: partition-id, ``known`` (n_train), fingerprint. Train: w + ``step``
    with ``claim`` examples (``mode=nan``: NaN weights). Evaluate: ``n_test``/``loss``/``acc`` plus a
    validation score and a list, and the personal model when asked to export (``mode=nometrics``: an empty
    evaluate reply). ``mode=raise`` fails every train/evaluate message, ``mode=qraise`` the census too."""
    nc = ctx.node_config
    pid, mode = int(nc["partition-id"]), nc.get("mode", "")
    mtype = msg.metadata.message_type
    if mtype == MessageType.QUERY:
        if mode == "qraise":
            raise RuntimeError("census broke")
        info = {"partition": pid, "n_train": int(nc.get("known", 10)), "fingerprint": "a"}
        return Message(RecordDict({"census": ConfigRecord({"info": json.dumps(info)})}), reply_to=msg)
    if mode == "raise":
        raise RuntimeError(f"boom on {pid}\n  second line")
    w = msg.content["arrays"]["w"].numpy()
    if mtype == MessageType.TRAIN:
        new = w + np.float32(nc.get("step", 1.0))
        if mode == "nan":
            new = new * np.float32(np.nan)
        return Message(_reply_content({"w": new}, **{"num-examples": int(nc.get("claim", 10)), "partition-id": pid}),
                       reply_to=msg)
    if mode == "nometrics":
        return Message(RecordDict({}), reply_to=msg)
    mr = MetricRecord({"num-examples": int(nc.get("n_test", 10)), "eval-loss": float(nc.get("loss", 1.0)),
                       "eval-acc": float(nc.get("acc", 0.5)), "partition-id": pid, "val-auc": 0.7,
                       "scores": [0.1, 0.2]})
    content = RecordDict({"metrics": mr})
    if bool(msg.content["config"]["export"]):
        content["personal"] = ArrayRecord({"w": Array(w.copy())})
    return Message(content, reply_to=msg)


def _toy(nodes: list[dict], **kw):
    from detectlab.violence.strategy import RobustFedAvg

    g = FedGrid(_toy_app, [dict(nc, **{"partition-id": nc.get("partition-id", i)}) for i, nc in enumerate(nodes)])
    s = RobustFedAvg(len(nodes), kw.pop("rounds", 1), round_timeout=kw.pop("round_timeout", 0.3), poll=0.02, **kw)
    return g, s


W0 = ArrayRecord({"w": Array(np.zeros(5, np.float32))})


def test_check_update_reasons_are_exact():
    """Catches: a reason that names the wrong keys, shapes or dtypes (or lists too many), a zero-record reply
    taken for one, and num-examples bounds off by one (1 and 10**9 are allowed, 0 and 10**9 + 1 are not)."""
    from detectlab.violence.strategy import check_update

    exp = {"w": ((2, 3), "float32"), "b": ((3,), "float32")}
    w, b = np.zeros((2, 3), np.float32), np.ones(3, np.float32)
    assert check_update(_reply_content({"w": w}), exp) == "wrong keys (missing ['b'], unexpected [])"
    many = {k: b for k in "wbcdef"}
    many["w"] = w
    assert check_update(_reply_content(many), exp) == "wrong keys (missing [], unexpected ['c', 'd', 'e'])"
    five = {k: ((3,), "float32") for k in "pqrst"}
    assert check_update(_reply_content({"z": b}), five) == "wrong keys (missing ['p', 'q', 'r'], unexpected ['z'])"
    assert check_update(_reply_content({"w": np.zeros((3, 2), np.float32), "b": b}), exp) == \
        "wrong shape for w: (3, 2) instead of (2, 3)"
    assert check_update(_reply_content({"w": w, "b": b.astype(np.float64)}), exp) == \
        "wrong dtype for b: float64 instead of float32"
    assert check_update(_reply_content({"w": w, "b": np.array([1, np.nan, 1], np.float32)}), exp) == \
        "non-finite values in b"
    ints = {"i": ((3,), "int64")}
    assert check_update(_reply_content({"i": np.arange(3)}), ints) is None  # integer arrays: nothing to check
    bare = RecordDict({"metrics": _reply_content({"w": w})["metrics"]})
    assert check_update(bare, exp) == "0 ArrayRecords instead of 1"
    two = _reply_content({"w": w, "b": b})
    two["m2"] = MetricRecord({"x": 1})
    assert check_update(two, exp) == "2 MetricRecords instead of 1"
    assert check_update(_reply_content({"w": w, "b": b}, extra=1.0), exp) == (
        "metric keys ['extra', 'head-from', 'num-examples', 'partition-id', 'train-acc', 'train-loss'] instead of "
        "['head-from', 'num-examples', 'partition-id', 'train-acc', 'train-loss']")
    for good in (1, 10**9):
        assert check_update(_reply_content({"w": w, "b": b}, **{"num-examples": good}), exp) is None, good
    assert check_update(_reply_content({"w": w, "b": b}, **{"num-examples": 10**9 + 1}), exp) == \
        "num-examples 1000000001 is not an integer in 1..1000000000"
    assert check_update(_reply_content({"w": w, "b": b}, **{"num-examples": 0}), exp) == \
        "num-examples 0 is not an integer in 1..1000000000"


def test_bound_counts_edges():
    """Catches: a cap floor other than 1 (three clients claiming 1, 1 and 5 with max_weight 0.5 all weigh 1),
    a census count of an absent client inventing a claim, and no claims at all crashing the median."""
    from detectlab.violence.strategy import bound_counts

    assert bound_counts({0: 1, 1: 1, 2: 5}, {}, max_weight=0.5) == {0: 1, 1: 1, 2: 1}
    assert bound_counts({0: 7}, {0: 9, 1: 4}) == {0: 7}
    assert bound_counts({}, {0: 3}, max_weight=2.0) == {}
    assert bound_counts({0: 4, 1: 8, 2: 100}, {2: 50}, max_weight=3.0) == {0: 4, 1: 8, 2: 24}  # cut, then cap 3 x 8


def test_short_reason_takes_the_last_message():
    """Catches: the first of two nested 'Message: ' parts kept (Ray wraps the ClientApp's message twice),
    stripping more than the closing quote and bracket, and a reason of exactly `limit` characters cut."""
    from detectlab.violence.strategy import short_reason

    assert short_reason("outer Message: middle Message: HeadMissing: MAX'>") == "HeadMissing: MAX"
    assert short_reason("no marker here'>") == "no marker here'>"
    assert short_reason(ValueError("a\nb")) == "a b"
    assert short_reason("y" * 240) == "y" * 240 and short_reason("y" * 241) == "y" * 237 + "..."


def test_sampling_is_pinned_to_the_seed():
    """Catches: a changed per-round sampling formula (seed x 1_000_003 + round): a rerun or a resumed run
    would then train other clients than the run it continues; and a sample that ignores the seed."""
    from detectlab.violence.strategy import RobustFedAvg

    got = {seed: [RobustFedAvg(6, 1, fraction=0.5, seed=seed)._sample(r, list(range(6))) for r in (1, 2, 3)]
           for seed in (0, 1, 7)}
    assert got == {0: [[0, 1, 4], [0, 4, 5], [1, 4, 5]], 1: [[1, 3, 4], [0, 2, 4], [1, 2, 4]],
                   7: [[1, 2, 5], [2, 3, 5], [1, 3, 4]]}
    assert RobustFedAvg(6, 1, fraction=0.5)._sample(1, list(range(6))) == [0, 1, 4]  # the default seed is 0
    assert RobustFedAvg(6, 1, fraction=0.5)._sample(1, [2, 5]) == [2, 5]  # fewer online than the sample size


def test_census_by_hand_errors_and_takeover():
    """Catches: a failed census reply in the first census passed over (or a later one stopping the run), a
    partition id outside 0..n-1 accepted, a restarted node (new id) not taking over its partition, a
    silent node kept in the node map, the round's spec not sent to a newcomer's census, and the round record
    clobbered by a mid-run census."""
    from detectlab.violence.strategy import FederationError

    cfg = ConfigRecord({"spec": "{}"})
    g, s = _toy([{}, {"mode": "qraise"}])
    n1 = sorted(g.nodes)[1]
    with pytest.raises(FederationError, match=rf"^census: node {n1} failed: RuntimeError: census broke$"):
        s.run_census(g, cfg)
    g, s = _toy([{}, {"partition-id": 2}])
    with pytest.raises(FederationError, match=rf"^census: node {sorted(g.nodes)[1]} says partition-id 2, "
                                              r"expected 0\.\.1$"):
        s.run_census(g, cfg)
    g, s = _toy([{}, {"partition-id": -1}])
    with pytest.raises(FederationError, match="says partition-id -1"):
        s.run_census(g, cfg)
    g, s = _toy([{"known": 11}, {"known": 12}])
    n0, n1 = sorted(g.nodes)
    assert s.run_census(g, cfg) == {0: {"partition": 0, "n_train": 11, "fingerprint": "a"},
                                    1: {"partition": 1, "n_train": 12, "fingerprint": "a"}}
    assert s.node_pid == {n0: 0, n1: 1}
    new = g.restart(n1, same_id=False)  # the old id goes offline, a new one serves partition 1
    msgs = s.configure_train(2, W0, ConfigRecord({"spec": '{"k": 1}'}), g)
    assert [m.metadata.dst_node_id for m in msgs] == [n0, new] and s.node_pid == {n0: 0, new: 1}
    query = [m for m in g.sent if m.metadata.message_type == MessageType.QUERY][-1]
    assert query.metadata.dst_node_id == new and str(query.content["config"]["spec"]) == '{"k": 1}'
    new1 = g.restart(new, same_id=False)
    s.configure_train(3, W0, ConfigRecord({}), g)  # no spec in the train config: an empty one, "{}"
    query = [m for m in g.sent if m.metadata.message_type == MessageType.QUERY][-1]
    assert query.metadata.dst_node_id == new1 and str(query.content["config"]["spec"]) == "{}"
    new2 = g.restart(new1, same_id=False)
    s._cur = {"round": 7, "missing": []}
    assert s._nodes_for_round(g, 3) == {0: n0, 1: new2}
    assert s.node_pid == {n0: 0, new2: 1} and s._cur == {"round": 7, "missing": []}
    bad = g.add_node({"partition-id": 1, "mode": "qraise"})  # a failing newcomer mid-run is left out, no stop
    assert s.run_census(g, cfg, [bad]) == {} and bad not in s.node_pid
    good = g.add_node({"partition-id": 1, "known": 12})
    real = g.pull_messages
    g.pull_messages = lambda ids: sorted(real(ids), key=lambda m: not m.has_error())  # the failure comes first
    assert s.run_census(g, cfg, [bad, good]) == {1: {"partition": 1, "n_train": 12, "fingerprint": "a"}}
    assert s.node_pid == {n0: 0, good: 1}
    g.pull_messages = real
    g.offline.update({bad, new2})
    # a newcomer for partition 1 while its old node still answers: only the newcomer is asked, and takes over
    late = g.add_node({"partition-id": 1})
    queries = sum(m.metadata.message_type == MessageType.QUERY for m in g.sent)
    assert s._nodes_for_round(g, 4) == {0: n0, 1: late} and s.node_pid == {n0: 0, late: 1}
    assert sum(m.metadata.message_type == MessageType.QUERY for m in g.sent) == queries + 1
    g.silent.add(late)
    assert s.run_census(g, cfg, [late]) == {} and s.node_pid == {n0: 0}


def test_two_newcomers_for_one_partition_are_both_refused(monkeypatch):
    """Catches: two new SuperNodes that say the same partition mid-run, of which the last to reply silently
    took the partition over (its data may not be that partition's; the first census refuses the same case),
    a refusal that is not named in the run's log, one that drops the other newcomers of the same census, or
    one that keeps the partition from a single newcomer later."""
    from detectlab.core import progress

    said = []
    monkeypatch.setattr(progress, "log", lambda msg: said.append(str(msg)))
    cfg = ConfigRecord({"spec": "{}"})
    g, s = _toy([{}, {}])
    s.run_census(g, cfg)
    n0, n1 = sorted(g.nodes)
    a, b = g.add_node({"partition-id": 1}), g.add_node({"partition-id": 1})
    c = g.add_node({"partition-id": 0})  # replies after the doubled pair: still takes partition 0 over
    real = g.pull_messages
    g.pull_messages = lambda ids: sorted(real(ids), key=lambda m: s.node_of(m))  # replies in node order: a, b, c
    assert s._nodes_for_round(g, 2) == {0: c, 1: n1} and s.node_pid == {c: 0, n1: 1}
    assert (f"census: SuperNodes {a}, {b} all say they are partition 1; none is used" in said
            or f"census: SuperNodes {b}, {a} all say they are partition 1; none is used" in said)
    assert s.run_census(g, cfg, [a, b, g.add_node({"partition-id": 1})]) == {}  # three: still none
    for n in list(g.nodes):
        if n not in (c, a):
            g.offline.add(n)
    assert s._nodes_for_round(g, 3) == {0: c, 1: a} and s.node_pid == {c: 0, a: 1}


def test_round_waits_for_enough_nodes():
    """Catches: a round that starts with fewer SuperNodes online than it needs (or gives up before the timeout
    while they are still connecting), or whose stop line names the wrong round."""
    from detectlab.violence.strategy import FederationError

    g, s = _toy([{}, {}], min_clients=0)
    s.run_census(g, ConfigRecord({"spec": "{}"}))
    g.offline.add(sorted(g.nodes)[1])
    with pytest.raises(FederationError, match=r"^round 2: only 1 of the 2 SuperNodes needed connected within 0.3 s "
                                              r"\(fl.round_timeout\)$"):
        s.configure_train(2, W0, ConfigRecord({}), g)
    calls, real = [], g.get_node_ids

    def late(**kw):  # node 1 comes back after the third look
        calls.append(1)
        if len(calls) > 3:
            g.offline.clear()
        return real(**kw)

    g.get_node_ids = late
    s.round_timeout = 30.0  # the fourth look must come before the timeout on a loaded CI machine too
    assert len(s.configure_train(2, W0, ConfigRecord({}), g)) == 2 and len(calls) >= 4


def test_exchange_by_hand():
    """Catches: an empty exchange that pushes or waits, a missing reply recorded without its phase, node and
    partition, replies that come after the first look not waited for, and the SuperLink's error reply for a
    dead node (from node 0) not traced to that node."""
    g, s = _toy([{}, {}])
    n0, n1 = sorted(g.nodes)
    s.node_pid = {n0: 0, n1: 1}
    assert s.exchange(g, [], "train") == [] and g.sent == []
    g.silent.add(n1)
    s._cur = {}  # exchange starts the record's missing list itself
    msgs = s._messages([n0, n1], W0, ConfigRecord({"export": False}), MessageType.EVALUATE, "eval")
    got = s.exchange(g, msgs, "evaluate")
    assert [s.node_of(m) for m in got] == [n0]
    assert s._cur["missing"] == [{"phase": "evaluate", "node": n1, "partition": 1, "reason": "no reply within 0.3 s"}]
    g.silent.clear()
    real, pulls = g.pull_messages, []

    def slow(ids):  # the replies are not there yet at the first look
        pulls.append(1)
        return [] if len(pulls) == 1 else real(ids)

    g.pull_messages = slow
    s.round_timeout = 30.0  # the second look must come before the timeout on a loaded CI machine too
    got = s.exchange(g, s._messages([n0, n1], W0, ConfigRecord({"export": False}), MessageType.EVALUATE, "eval"), "x")
    assert sorted(s.node_of(m) for m in got) == [n0, n1] and len(pulls) == 2
    g.pull_messages = real
    g.unavailable.add(n1)  # the SuperLink answers for it, from node 0
    got = s.exchange(g, s._messages([n1], W0, ConfigRecord({"export": False}), MessageType.EVALUATE, "eval"), "x")
    assert got[0].metadata.src_node_id == 0 and s.node_of(got[0]) == n1


def _round_one(g, s, rnd=1):
    s.run_census(g, ConfigRecord({"spec": "{}"}))
    msgs = s.configure_train(rnd, W0, ConfigRecord({"spec": "{}"}), g)
    return s.exchange(g, msgs, "train")


def test_aggregate_train_by_hand():
    """Catches: census-bounded counts not reaching the weighted mean (partition 1 claims 1000, the census
    says 20: the mean must be (10 x 1 + 20 x 4) / 30 = 3), a failed client recorded wrongly, the per-client
    record (claimed, loss, head-from, weight, bytes) wrong, head rounds moved for a client not kept, a second
    update of the same partition averaged in, the round number missing from the messages, and fl.max_weight
    not reaching the weights."""
    g, s = _toy([{"known": 10, "claim": 10}, {"known": 20, "claim": 1000, "step": 4.0}, {"mode": "raise"}],
                min_clients=2)  # exactly two usable updates: enough
    n0, n1, n2 = sorted(g.nodes)
    replies = _round_one(g, s)
    assert [int(m.content["config"]["server-round"]) for m in g.sent[-3:]] == [1, 1, 1]
    assert s._cur["sampled"] == [0, 1, 2]
    arrays, _ = s.aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), 3.0)
    assert s._cur["missing"] == [{"phase": "train", "node": n2, "partition": 2,
                                  "reason": "RuntimeError: boom on 2 second line"}]
    ev = {"round": 1, "partition": 1, "claimed": 1000, "weight": 20}
    assert s._cur["bounded"] == [ev] and s.bounded == [ev] and s.head_rounds == {0: 1, 1: 1}
    c0 = s._cur["clients"][0]
    assert {k: c0[k] for k in ("claimed", "train_loss", "head_from", "n_train")} == \
        {"claimed": 10, "train_loss": 0.5, "head_from": 0, "n_train": 10}
    assert s._cur["clients"][1]["claimed"] == 1000 and s._cur["clients"][1]["n_train"] == 20
    assert c0["train_down"] == 20 and c0["train_up"] == 20 and "train_up" not in s._cur["clients"][2]
    train = next(m for m in g.sent if m.metadata.message_type == MessageType.TRAIN)
    assert c0["train_down_payload"] == W0.count_bytes() + train.content["config"].count_bytes()
    # the same reply twice: the second is rejected, the mean is that of the first alone
    g, s = _toy([{"step": 2.0}, {"step": 6.0}])
    replies = _round_one(g, s)
    first = next(m for m in replies if s.node_pid[s.node_of(m)] == 0)
    arrays, _ = s.aggregate_train(1, [first, first])
    assert np.allclose(arrays["w"].numpy(), 2.0)
    assert s.rejected == [{"round": 1, "partition": 0, "reason": "a second update for partition 0 in the same round"}]
    # fl.max_weight: no weight above 2 x the median claim (10), whatever the census allows
    g, s = _toy([{"known": 1000}, {"known": 1000}, {"known": 1000, "claim": 100, "step": 4.0}], max_weight=2.0)
    arrays, _ = s.aggregate_train(1, _round_one(g, s))
    assert s.bounded == [{"round": 1, "partition": 2, "claimed": 100, "weight": 20}]
    assert np.allclose(arrays["w"].numpy(), (10 + 10 + 20 * 4) / 40)


def test_too_few_updates_stop_with_one_line():
    """Catches: a round with too few usable updates that goes on, or whose stop line misnames the failures,
    the rounds that are kept (none / round 1 / rounds 1-2) or lists more than four problems."""
    from detectlab.violence.strategy import FederationError

    for rnd, kept in ((1, "no round finished"), (2, "round 1 is kept"), (3, "rounds 1-2 are kept")):
        g, s = _toy([{}, {"mode": "nan"}, {"mode": "raise"}], min_clients=0)
        replies = _round_one(g, s, rnd)
        with pytest.raises(FederationError) as e:
            s.aggregate_train(rnd, replies)
        assert str(e.value) == (f"round {rnd}: 1 usable update(s), 3 needed (fl.min_clients): partition 2: "
                                "RuntimeError: boom on 2 second line; partition 1: rejected (non-finite values in w); "
                                f"{kept}, rerun to resume")
        assert s.head_rounds == {} and s.rejected == [{"round": rnd, "partition": 1,
                                                       "reason": "non-finite values in w"}]
    g, s = _toy([{}] + [{"mode": "raise"}] * 5, min_clients=2)
    with pytest.raises(FederationError) as e:
        s.aggregate_train(1, _round_one(g, s))
    assert str(e.value).count("RuntimeError") == 4 and "1 usable update(s), 2 needed" in str(e.value)


def test_aggregate_evaluate_by_hand():
    """Catches: accuracy or loss not weighted by each client's test count, extra client metrics (validation
    scores, lists) dropped, the personal models of the last round not kept, bytes summed wrongly over
    directions and phases, the export flag sent before the last round, an offline node messaged, and the
    round record not handed to on_round, a reply without metrics ending the count of the others, and the
    count, loss or accuracy copied a second time under the client's raw metric names; a reply of a node no
    longer mapped not marked as partition -1, an evaluate-only round crashing without a client table, and a
    round record with other keys than those history.json is read with."""
    seen = []
    g, s = _toy([{"n_test": 10, "loss": 1.0, "acc": 0.5}, {"n_test": 30, "loss": 2.0, "acc": 1.0},
                 {"mode": "raise"}, {"mode": "nometrics"}], rounds=2, export=True, on_round=seen.append)
    n0, n1, n2, n3 = sorted(g.nodes)
    arrays, _ = s.aggregate_train(1, _round_one(g, s))
    msgs = s.configure_evaluate(1, arrays, ConfigRecord({}), g)
    assert [bool(m.content["config"]["export"]) for m in msgs] == [False] * 4
    assert [int(m.content["config"]["server-round"]) for m in msgs] == [1] * 4
    msgs = s.configure_evaluate(2, arrays, ConfigRecord({}), g)  # the last round: the personal models come back
    assert [bool(m.content["config"]["export"]) for m in msgs] == [True] * 4
    assert json.loads(str(msgs[0].content["config"]["head-rounds"])) == {"0": 1, "1": 1, "3": 1}
    replies = sorted(s.exchange(g, msgs, "evaluate"), key=lambda m: m.has_content() and "metrics" in m.content.metric_records)
    res = s.aggregate_evaluate(2, replies)  # the empty reply first: it is passed over, the others still count
    assert dict(res) == {"eval-acc": 0.875, "eval-loss": 1.75, "num-examples": 40}
    rec = s.history[-1]
    assert seen == [rec] and rec["accuracy"] == 0.875 and rec["loss"] == 1.75
    assert sorted(rec) == ["accuracy", "bounded", "bytes", "clients", "head_rounds", "loss", "missing", "rejected",
                           "round", "sampled", "t_end", "t_start"]  # what history.json keeps of a round
    c0 = rec["clients"][0]
    assert c0["val-auc"] == 0.7 and c0["scores"] == [0.1, 0.2] and isinstance(c0["scores"], list)
    assert (c0["n_test"], c0["loss"], c0["accuracy"]) == (10, 1.0, 0.5)
    assert sorted(c0) == sorted(["train_down", "train_down_payload", "train_up", "train_up_payload", "claimed",
                                 "train_loss", "head_from", "n_train", "eval_down", "eval_down_payload", "eval_up",
                                 "eval_up_payload", "n_test", "loss", "accuracy", "val-auc", "scores"])
    assert sorted(s.exports) == [0, 1] and np.allclose(s.exports[0]["w"].numpy(), arrays["w"].numpy())
    assert [x["phase"] for x in rec["missing"]] == ["train", "evaluate"]
    assert rec["missing"][1] == {"phase": "evaluate", "node": n2, "partition": 2,
                                 "reason": "RuntimeError: boom on 2 second line"}
    # down: 4 train + 4 evaluate messages of 20 float bytes; up: 3 train updates + 2 personal models
    payload_down = sum(r.count_bytes() for m in msgs for r in m.content.values()) + sum(
        c.get("train_down_payload", 0) for c in rec["clients"].values())
    assert rec["bytes"]["up"] == 100 and rec["bytes"]["down"] == 160 and rec["bytes"]["total"] == 260
    assert rec["bytes"]["payload_down"] == payload_down and rec["bytes"]["payload_up"] > rec["bytes"]["up"]
    assert rec["head_rounds"] == {"0": 1, "1": 1, "3": 1} and rec["t_end"] >= rec["t_start"]
    assert "n_test" not in rec["clients"][3]
    g.offline.add(n1)
    assert [m.metadata.dst_node_id for m in s.configure_evaluate(2, arrays, ConfigRecord({}), g)] == [n0, n2, n3]
    assert s.aggregate_evaluate(3, []) is None and math.isnan(s.history[-1]["accuracy"])
    assert math.isnan(s.history[-1]["loss"])
    # a reply from a node that is no longer in the node map is recorded under partition -1
    late = s.exchange(g, s._messages([n2], arrays, ConfigRecord({"export": False}), MessageType.EVALUATE, "eval"), "x")
    del s.node_pid[n2]
    s._cur = {"clients": {}, "missing": []}
    s.aggregate_evaluate(4, late)
    assert [(x["node"], x["partition"]) for x in s.history[-1]["missing"]] == [(n2, -1)]
    fresh = type(s)(2, 1)  # an evaluate-only round, before any training round
    assert fresh.aggregate_evaluate(1, []) is None and fresh.history[-1]["bytes"]["total"] == 0


def test_run_starts_at_a_round_and_reports_each():
    """Catches: a resumed run that starts over at round 1 (or a fresh one that skips it) or stops one round
    early, the new arrays not carried into the next round, on_round_end not called after every round, the
    head rounds not sent, and a silent client's missing replies recorded under the wrong phase."""
    g, s = _toy([{"step": 1.0}, {"step": 3.0}, {}], rounds=3)
    n2 = sorted(g.nodes)[2]
    g.mute[n2] = {MessageType.TRAIN, MessageType.EVALUATE}  # answers the census, then never again
    ends = []
    out = s.run(g, W0, ConfigRecord({"spec": "{}"}), ConfigRecord({}), start_round=2,
                on_round_end=lambda r, a: ends.append((r, float(a["w"].numpy()[0]))))
    assert ends == [(2, 2.0), (3, 4.0)] and np.allclose(out["w"].numpy(), 4.0)
    assert [h["round"] for h in s.history] == [2, 3]
    train = [m for m in g.sent if m.metadata.message_type == MessageType.TRAIN]
    assert [int(m.content["config"]["server-round"]) for m in train] == [2, 2, 2, 3, 3, 3]
    assert json.loads(str(train[3].content["config"]["head-rounds"])) == {"0": 2, "1": 2}
    assert s.state_dict()["round"] == 3
    assert [(x["phase"], x["partition"]) for x in s.history[0]["missing"]] == [("train", 2), ("evaluate", 2)]
    g, s = _toy([{"step": 1.0}, {"step": 3.0}], rounds=2)
    assert np.allclose(s.run(g, W0, ConfigRecord({"spec": "{}"}), ConfigRecord({}))["w"].numpy(), 4.0)
    assert [h["round"] for h in s.history] == [1, 2]  # by default from round 1


def test_load_state_dict_of_an_older_run():
    """Catches: a state file without the 'bounded' list (written before count bounds existed) or a history
    entry without clients failing to load, and history client keys left as strings after JSON."""
    from detectlab.violence.strategy import RobustFedAvg

    st = {"round": 1, "history": [{"round": 0}, {"round": 1, "clients": {"0": {"loss": 1.0}}}], "rejected": [],
          "head_rounds": {"0": "1"}, "census": {}, "node_pid": {"101": "0"}}
    s = RobustFedAvg(1, 2)
    assert s.load_state_dict(st) == 1
    assert s.bounded == [] and s.history[1]["clients"] == {0: {"loss": 1.0}} and s.history[0]["clients"] == {}
    assert s.head_rounds == {0: 1} and s.node_pid == {101: 0}


def test_aggregator_defaults_by_hand():
    """Catches: a clip of 0 wrapping the aggregator in a zero-norm clipper, n_clients 0 giving the clipper 0
    sampled clients, the unknown-aggregation line not listing the choices, and changed defaults (trim fraction,
    Krum count, clipping, min_clients, export)."""
    from flwr.serverapp.strategy import FedAvg, FedTrimmedAvg

    from detectlab.violence.strategy import make_aggregator

    assert type(make_aggregator("fedavg")) is FedAvg and type(make_aggregator("fedavg", clip_norm=0.0)) is FedAvg
    assert make_aggregator("fedavg", clip_norm=1.0, n_clients=0).num_sampled_clients == 1
    t = make_aggregator("trimmed")
    assert type(t) is FedTrimmedAvg and t.beta == 0.25
    with pytest.raises(ValueError, match=r"^unknown aggregation 'x' \(one of fedavg, median, trimmed, krum\)$"):
        make_aggregator("x")
    # the strategy's defaults: plain FedAvg, no clipping, one usable update per round, the documented trim and
    # Krum counts, and no personal-model export on the last round
    from detectlab.violence.strategy import RobustFedAvg

    s = RobustFedAvg(4, 1)
    assert type(s.aggregator) is FedAvg and s.needed() == 1 and s.max_weight == 0.0
    assert RobustFedAvg(4, 1, aggregation="trimmed").aggregator.beta == 0.25
    assert RobustFedAvg(4, 1, aggregation="krum").aggregator.num_malicious_nodes == 1
    g = FedGrid(lambda m, c: None, [{"partition-id": 0}])
    s = RobustFedAvg(1, 1)
    s.node_pid = {sorted(g.nodes)[0]: 0}
    assert [bool(m.content["config"]["export"]) for m in s.configure_evaluate(1, W0, ConfigRecord({}), g)] == [False]
