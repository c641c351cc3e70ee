"""The deployment engine survives failures (issue 15, tests 5-7; issue 17, faults 2-4 and 6) on 127.0.0.1.

One FedPer run of 3 rounds on a SuperLink (TLS + SuperNode authentication) and two SuperNodes, each reading
only its own site folder, while the SuperLink and its ServerApp cannot read any site folder or the source
clips (an audit hook turns every open/list of them into PermissionError and writes it down):

1. SuperNode 1 is killed (SIGKILL) as soon as round 1 has finished, i.e. while round 2 trains. With every
   client required (fl.min_clients=0) the run stops after fl.round_timeout with one line;
2. SuperNode 1 is started again (same node config: same site and state folder, its memory is gone) and the
   run is submitted again: it resumes at round 2; once round 2 is saved, the SuperLink is restarted;
3. the run is submitted a third time: it resumes at round 3 and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0 or
                                subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode != 0,
                                reason="needs openssl and ssh-keygen")
TIMEOUT = float(os.environ.get("DETECTLAB_TEST_ROUND_TIMEOUT", 45))
#: tiny and fast; fl.select=last: each client exports its last-round model (global base + the head it kept)
OVERRIDES = ['strategies=["fedper"]', "fl.rounds=3", "fl.epochs=1", "data_opts.size=16", "model.width=4",
             "fl.batch=8", "aug.crop=0", "aug.stride=16", "aug.jitter=0", 'data="nodes"', "fl.select=last",
             "fl.min_clients=0", f"fl.round_timeout={TIMEOUT}"]


def _wait_until(cond, timeout: float, what: str, poll: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def _rounds(out: Path) -> list[dict]:
    p = out / "rounds" / "balanced2-fedper.jsonl"
    try:
        return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def _state_round(out: Path) -> int:
    try:
        return int(json.loads((out / "state" / "balanced2-fedper" / "server.json").read_text())["round"])
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


@pytest.fixture(scope="module")
def faulted(syn_root, tmp_path_factory):
    from detectlab.violence.flower_app import LocalDeployment, make_sites, write_app
    from detectlab.violence.server_app import read_status

    base = tmp_path_factory.mktemp("faulted")
    sites = make_sites(syn_root, base / "sites", "balanced2")
    out = base / "run"
    deny = Path(__file__).with_name("deny_read")
    link_env = {"PYTHONPATH": os.pathsep.join([str(deny), os.environ.get("PYTHONPATH", "")]),
                "DETECTLAB_DENY_READ": os.pathsep.join([str(base / "sites"), str(Path(syn_root).resolve())]),
                "DETECTLAB_DENY_LOG": str(base / "denied.log")}
    app = write_app(base / "app", "smoke", OVERRIDES, out, extra={"nodes": "2"})
    nc = {i: f'data-dir="{s}" state-dir="{s}/flower"' for i, s in enumerate(sites)}
    dep = LocalDeployment(base / "dep", 2, tls=True, auth=True, node_config=nc, link_env=link_env)
    r: dict = {"out": out, "sites": sites, "base": base, "link_env": link_env, "dep": dep}
    try:
        dep.start()
        # 1. SuperNode 1 dies while round 2 trains
        h = dep.submit(app)
        _wait_until(lambda: len(_rounds(out)) >= 1 or h.proc.poll() is not None, 600, "round 1")
        r["round1"] = _rounds(out)[0]
        dep.kill_node(1, signal.SIGKILL)
        t_kill = time.monotonic()
        h.wait(TIMEOUT + 120)
        r["stop_after_kill_s"] = time.monotonic() - t_kill
        r["status1"] = read_status(out)
        r["state1"] = _state_round(out)
        # 2. node 1 back; the run resumes; the SuperLink restarts once round 2 is saved
        dep.restart_node(1)
        h = dep.submit(app)
        _wait_until(lambda: _state_round(out) >= 2 or h.proc.poll() is not None, 600, "round 2 saved")
        dep.restart_superlink()
        try:
            h.wait(60)
        except TimeoutError:
            pass
        r["status2"] = read_status(out)
        r["state2"] = _state_round(out)
        r["rounds2"] = _rounds(out)
        # 3. the run resumes at round 3 and finishes
        h = dep.submit(app)
        h.wait(600)
        r["status3"] = read_status(out)
        r["output3"] = h.output()
        r["logs"] = {f.name: f.read_text(errors="replace") for f in dep.dir.glob("*.log")}
        dep.stop()
        r["left"] = dep.alive()
        yield r
    finally:
        dep.stop()


def test_supernode_killed_mid_round(faulted):
    """Issue 15 test 5. Catches: a round waiting forever for a killed SuperNode, a failure without a clear
    line, finished rounds lost, or a rerun that starts again from round 1. The run stops within
    fl.round_timeout (+ slack) with one line naming round 2 and partition 1; round 1 stays as it was; the
    rerun continues at round 2."""
    st = faulted["status1"]
    assert st["status"] == "failed" and "\n" not in st["line"], st
    assert st["line"].startswith("round 2: 1 usable update(s), 2 needed") and "partition 1" in st["line"], st
    assert "round 1 is kept, rerun to resume" in st["line"]
    assert faulted["stop_after_kill_s"] < TIMEOUT + 60
    assert faulted["state1"] == 1
    assert [h["round"] for h in faulted["rounds2"]] == [1, 2]
    assert faulted["rounds2"][0]["clients"] == faulted["round1"]["clients"]  # finished results kept as they were
    log = (faulted["out"] / "log.txt").read_text()
    assert "rounds 1-1 finished earlier, resuming at round 2/3" in log


def test_superlink_restart_between_rounds(faulted):
    """Issue 15 test 6. Catches: a SuperLink restart losing finished rounds or the server state. Round 2 was
    saved before the restart; the third submission resumes at round 3, and rounds 1-2 are the same records."""
    assert faulted["state2"] == 2 and faulted["status2"]["status"] == "running"  # the ServerApp died with it
    st = faulted["status3"]
    assert st["status"] == "finished", (st, faulted["output3"][-3000:])
    res = json.loads((faulted["out"] / "units" / "balanced2-fedper.json").read_text())["result"]
    assert [h["round"] for h in res["history"]] == [1, 2, 3]
    for a, b in zip(res["history"][:2], faulted["rounds2"]):
        assert a["clients"] == {k: {kk: v.get(kk) for kk in a["clients"][k]} for k, v in b["clients"].items()}
    assert "rounds 1-2 finished earlier, resuming at round 3/3" in (faulted["out"] / "log.txt").read_text()


def test_head_survives_supernode_restart(faulted):
    """Issue 17 fault 2, on real processes. Catches: a head kept only in the SuperNode's memory (lost on the
    restart, silently rebuilt from the seed) or keyed without experiment/strategy, and the weak old check that
    passed with an empty state. Node 1 trained round 2 from its round-1 head (read from its state folder
    after the restart); every client's exported model is the global base plus the head kept on its node."""
    from safetensors.numpy import load_file

    from detectlab.violence.client_app import head_file

    out = faulted["out"]
    res = json.loads((out / "units" / "balanced2-fedper.json").read_text())["result"]
    assert [h["clients"]["1"]["head_from"] for h in res["history"]] == [0, 1, 2]
    assert [h["clients"]["0"]["head_from"] for h in res["history"]] == [0, 1, 2]
    spec = {"run_key": json.loads((out / "federation.json").read_text())["run_key"], "experiment": "balanced2",
            "strategy": "fedper"}
    glob = load_file(str(out / "checkpoints" / "balanced2-fedper-global.safetensors"))
    heads = []
    for c, site in enumerate(faulted["sites"]):
        kept = load_file(str(head_file(site / "flower", spec, 3)))
        model = load_file(str(out / "checkpoints" / f"balanced2-fedper-client{c}.safetensors"))
        assert kept and all(np.array_equal(model[k], v) for k, v in kept.items())
        assert all(np.array_equal(model[k], v) for k, v in glob.items())
        heads.append(kept)
    assert any(not np.allclose(heads[0][k], heads[1][k]) for k in heads[0])


def test_server_never_reads_the_sites(faulted):
    """Issue 17 fault 3. Catches: the ServerApp decoding videos or building partitions (it would hit the
    audit hook and fail). Nothing under the sites or the source clips was opened or listed by the SuperLink's
    processes; the counts come from the clients' census and match the sites' own folders; the run folder holds
    no partition or chunk cache."""
    from detectlab.violence.data import find_clips

    base = faulted["base"]
    assert not (base / "denied.log").exists() or (base / "denied.log").read_text() == ""
    probe = subprocess.run([sys.executable, "-c", f"import os; os.listdir({str(faulted['sites'][0])!r})"],
                           env=dict(os.environ, **faulted["link_env"]), capture_output=True, text=True)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr  # the hook is really in place
    m = json.loads((faulted["out"] / "metrics.json").read_text())
    clients = m["experiments"]["balanced2"]["clients"]
    for c, site in zip(clients, faulted["sites"]):
        n_clips = len(find_clips(site))
        held = {ln for ln in (site / "test.txt").read_text().split() if ln}
        assert c["clips"] == n_clips and c["split"] == "test.txt"
        assert c["test_fight"] + c["test_nonfight"] == 2 * len(held)  # 32-frame clips: 2 chunks each
    assert not (faulted["out"] / "data").exists()
    assert "per-node data" in m["data"]["source"]


def test_bytes_counted_from_deployment_messages(faulted):
    """Issue 17 fault 4 on the deployment engine. Catches: bytes from a fresh state_dict, one direction only,
    or the last round's personal-model upload missing."""
    from detectlab.violence.model import build_model

    m = json.loads((faulted["out"] / "metrics.json").read_text())
    sd = build_model(m["model"]).state_dict()
    base = sum(v.numel() * 4 for k, v in sd.items() if k.startswith("base."))
    full = sum(v.numel() * 4 for v in sd.values())
    h = m["experiments"]["balanced2"]["strategies"]["fedper"]["history"]
    assert [r["bytes"]["up"] for r in h] == [2 * base, 2 * base, 2 * base + 2 * full]
    assert [r["bytes"]["down"] for r in h] == [4 * base] * 3


def test_every_process_was_stopped(faulted):
    """Catches: SuperLink, SuperNodes or their flower-superexec / flwr-serverapp / flwr-clientapp children
    left running (each carries the deployment's environment tag) after a run with a kill and a restart."""
    assert faulted["left"] == []


def test_bad_run_config_refused_before_any_process_starts(tmp_path, cli, monkeypatch):
    """Issue 15 test 7. Catches: `deploy ... rounds=2` (an unknown key) or other bad settings starting the
    SuperLink and SuperNodes and dying in the ServerApp with Flower's traceback and exit code 201. Each exits 2
    with one line naming the setting, and no process is started."""
    def no_process(*a, **k):
        raise AssertionError(f"a process was started: {a[0] if a else k}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    cases = [(["rounds=2"], "rounds"), (["fl.aggregation=mean"], "fl.aggregation"), (["fl.fraction=0"], "fl.fraction"),
             (['experiments=["balanced2","imbalanced3"]'], "experiments"), (["--nodes", "3"], "--nodes 3")]
    for extra, key in cases:
        out = tmp_path / key.replace(" ", "")
        rc, so, se = cli(["violence", "deploy", "--data", "builtin", "--out", out, *extra])
        assert rc == 2 and len(se.strip().splitlines()) == 1 and key in se, (extra, se)
        assert not (out / "deployment").exists() and not (out / "sites").exists()
