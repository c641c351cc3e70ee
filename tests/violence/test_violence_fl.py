"""Federated runs on Flower's simulation engine: metrics keys, FedPer sends only the base and keeps heads per
client, bad updates are rejected, Per-FedAvg/FedMeta-Per run, resume, predict through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file


@pytest.fixture(scope="session")
def fl_run(syn_root, tmp_path_factory, tiny_overrides):
    """`detectlab violence run` on the synthetic clips: balanced2, FedAvg + FedPer, 3 rounds (simulation)."""
    from detectlab.cli import main

    out = tmp_path_factory.mktemp("violence_fl") / "run"
    argv = ["violence", "run", "--data", str(syn_root), "--out", str(out), 'strategies=["fedavg","fedper"]',
            "fl.rounds=3", "fl.epochs=8", *tiny_overrides]
    assert main(argv) == 0
    return out, argv


def test_metrics_keys_and_tables(fl_run):
    out, _ = fl_run
    m = json.loads((out / "metrics.json").read_text())
    e = m["experiments"]["balanced2"]
    assert set(e["strategies"]) == {"fedavg", "fedper"} and e["n_clients"] == 2
    for s, r in e["strategies"].items():
        assert {"accuracy", "loss", "per_client", "bytes_per_round"} <= set(r)
        assert set(r["per_client"]) == {"0", "1"} and 0 <= r["accuracy"] <= 1 and math.isfinite(r["loss"])
        assert len(r["history"]) == 3 and r["rejected"] == []
        # the weighted mean is the per-client accuracies weighted by their held-out chunk counts
        pc = r["per_client"].values()
        assert r["accuracy"] == pytest.approx(sum(c["accuracy"] * c["n_test"] for c in pc) / sum(c["n_test"] for c in pc))
    for t in ("table4", "clients_balanced2", "per_client_balanced2", "bytes", "model_layers"):
        assert (out / "tables" / f"{t}.md").exists() and (out / "tables" / f"{t}.csv").exists()
    assert (out / "figures" / "accuracy_per_round.png").stat().st_size > 1000
    assert len((out / "rounds" / "balanced2-fedper.jsonl").read_text().splitlines()) == 3


def test_fedper_sends_only_the_base(fl_run):
    from detectlab.violence.model import build_model, param_counts

    out, _ = fl_run
    m = json.loads((out / "metrics.json").read_text())
    counts = param_counts(build_model(m["model"]))
    s = m["experiments"]["balanced2"]["strategies"]
    # per round (counted from the messages), 2 clients each send their float32 parameters up; down = train +
    # evaluate messages; the last round's evaluate replies also carry the 2 personal models (fed)
    for name, sent in (("fedper", counts["base"]), ("fedavg", counts["total"])):
        h = s[name]["history"]
        assert [r["bytes"]["up"] for r in h] == [2 * 4 * sent] * 2 + [2 * 4 * (sent + counts["total"])]
        assert [r["bytes"]["down"] for r in h] == [2 * 2 * 4 * sent] * 3
    glob = load_file(str(out / "checkpoints" / "balanced2-fedper-global.safetensors"))
    assert glob and all(k.startswith("base.") for k in glob)  # the server never held a head


def test_fedper_heads_are_personal(fl_run):
    """Catches: heads averaged or held by the server, clients evaluating without their own head, and (unlike
    the old check, which passed with an empty state) heads not carried across rounds: each client's last
    round started from its head of the round before, and its exported model is the global base plus exactly
    the head it kept in its node-local storage; FedAvg clients all evaluate the global model."""
    from detectlab.violence.client_app import head_file

    out, _ = fl_run
    m = json.loads((out / "metrics.json").read_text())
    hist = m["experiments"]["balanced2"]["strategies"]["fedper"]["history"]
    assert [[h["clients"][c]["head_from"] for c in ("0", "1")] for h in hist] == [[0, 0], [1, 1], [2, 2]]
    glob = load_file(str(out / "checkpoints" / "balanced2-fedper-global.safetensors"))
    spec = {"run_key": json.loads((out / "federation.json").read_text())["run_key"], "experiment": "balanced2",
            "strategy": "fedper"}
    heads = []
    for c in (0, 1):
        model = load_file(str(out / "checkpoints" / f"balanced2-fedper-client{c}.safetensors"))
        kept = load_file(str(head_file(out / "node-state" / f"partition{c}", spec, 3)))
        assert all(np.array_equal(model[k], v) for k, v in glob.items())  # the same aggregated base ...
        assert set(kept) == {k for k in model if k.startswith("head.")}
        assert all(np.array_equal(model[k], v) for k, v in kept.items())  # ... and the head it kept
        heads.append(kept)
    assert all(not np.allclose(heads[0][k], heads[1][k]) for k in heads[0] if k.endswith("weight"))
    a0 = load_file(str(out / "checkpoints" / "balanced2-fedavg-client0.safetensors"))
    ag = load_file(str(out / "checkpoints" / "balanced2-fedavg-global.safetensors"))
    assert all(np.array_equal(a0[k], ag[k]) for k in ag)


def test_simulation_runs_through_flwr_run(fl_run):
    """Issue 17 fault 8. Catches: the simulation going through the deprecated flwr.simulation.run_simulation.
    It runs as a Flower app (the ServerApp and ClientApp of this package, its job in the run config) with
    `flwr run` on a local simulation SuperLink."""
    out, _ = fl_run
    app = (out / "federation" / "app-balanced2" / "pyproject.toml").read_text()
    assert 'serverapp = "detectlab.violence.server_app:app"' in app
    assert 'clientapp = "detectlab.violence.client_app:app"' in app
    assert 'job = "' in app and (out / "federation" / "balanced2.job.json").exists()
    import detectlab.violence.server_app as sa

    src = Path(sa.__file__).read_text()
    assert "run_simulation(" not in src and "LocalSimulation" in src


def test_the_federation_learns(fl_run):
    out, _ = fl_run
    m = json.loads((out / "metrics.json").read_text())
    best = max(r["accuracy"] for r in m["experiments"]["balanced2"]["strategies"].values())
    first = [r["history"][0]["loss"] for r in m["experiments"]["balanced2"]["strategies"].values()]
    last = [r["loss"] for r in m["experiments"]["balanced2"]["strategies"].values()]
    assert best > 0.6 and min(last) < min(first)


def test_resume_reads_back_without_training(fl_run, capsys):
    from detectlab.cli import main

    out, argv = fl_run
    before = (out / "metrics.json").read_text()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "2 of 2 already finished" in err and "round 1/3" not in err
    assert json.loads((out / "metrics.json").read_text()) == json.loads(before)


def test_predict_with_a_clients_model(fl_run, tmp_path, cli, write_clip):
    from detectlab.violence.synthetic import write_clip as syn_clip

    out, _ = fl_run
    clip = syn_clip(tmp_path / "fight.mp4", fight=True, size=64, n_frames=40, seed=5)
    rc, so, se = cli(["violence", "predict", out, clip, "--client", "1", "--out", tmp_path / "pred"])
    assert rc == 0 and "balanced2-fedper-client1" in so and "p(fight) per chunk" in so
    rows = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(rows[0]["chunk_prob"]) == 2 and rows[0]["verdict"] in ("FIGHT", "no fight")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    rc, so, se = cli(["violence", "predict", out, bad])
    assert rc == 2 and len(se.strip().splitlines()) == 1 and str(bad) in se
    short = write_clip(tmp_path / "short.mp4", n_frames=8)
    rc, so, se = cli(["violence", "predict", out, short])
    assert rc == 2 and "fewer than one 16-frame chunk" in se
    rc, so, se = cli(["violence", "predict", out, clip, "--client", "7"])
    assert rc == 2 and "no personalised model for client 7" in se


def test_bad_updates_rejected_and_meta_strategies_run(syn_root, tmp_path, tiny_overrides):
    """3 clients; client 1 sends NaN, client 2 a wrong shape, every round: the server keeps client 0's update.
    Runs Per-FedAvg (Hessian-free) and FedMeta-Per on the simulation engine."""
    from detectlab.core.config import load_config
    from detectlab.core.runs import Run
    from detectlab.violence import experiment

    cfg = load_config(experiment.Config, "violence", "smoke",
                      ["experiments=[\"iid\"]", "clients=3", 'strategies=["perfedavg","fedmetaper"]', "fl.rounds=2",
                       "fl.meta_steps=3", "fl.variant=hf", 'fl.fault="nan:1,shape:2"', f"data={str(syn_root)!r}",
                       *tiny_overrides])
    with Run(tmp_path / "run", cfg, "violence") as run:
        m = experiment.run(cfg, run)
    for s in ("perfedavg", "fedmetaper"):
        r = m["experiments"]["iid"]["strategies"][s]
        assert len(r["rejected"]) == 4 and {x["partition"] for x in r["rejected"]} == {1, 2}
        reasons = " ".join(x["reason"] for x in r["rejected"])
        assert "non-finite" in reasons and "wrong shape" in reasons
        assert math.isfinite(r["loss"]) and set(r["per_client"]) == {"0", "1", "2"}
        glob = load_file(str(tmp_path / "run" / "checkpoints" / f"iid-{s}-global.safetensors"))
        assert all(np.isfinite(v).all() for v in glob.values())
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "rejected the update of partition 1: non-finite" in log and "rejected the update of partition 2: wrong shape" in log
