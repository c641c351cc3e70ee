"""The Flower ServerApp: runs the strategies of one experiment over the connected nodes, resumably.

One ServerApp (``app``), two engines:

- **simulation** (default): :func:`simulate` writes the job (data already partitioned by
  :func:`detectlab.violence.train.prepare`) to a file, writes a Flower app whose run config names it,
  and runs it with ``flwr run`` on a local simulation SuperLink (:class:`.flower_app.LocalSimulation`: one
  virtual SuperNode per client on Ray, 1 CPU each). ``flwr.simulation.run_simulation`` is not used (Flower
  1.42 deprecates it in favour of ``flwr run``).
- **deployment**: the app written by ``detectlab violence app|deploy`` carries ``preset``, ``overrides``,
  ``out`` and ``nodes``. The ServerApp never opens a video: each SuperNode reads its own ``data-dir`` and
  reports its counts in the census (a QUERY round); the ServerApp writes the federation's results
  (units/, rounds/, state/, checkpoints/, metrics.json); ``detectlab violence deploy`` adds the tables
  and figures.

Every (experiment, strategy) result is written as ``units/<experiment>-<strategy>.json`` (the format of
``core.units``) when it finishes and is read back when the run is resumed. Inside a strategy, the server
state (global arrays, history, which round's head each client continues from, census) is saved after every
finished round in ``state/<experiment>-<strategy>/``; an interrupted run continues from its last finished
round, and the clients continue from the heads they kept for that round. ``status.json`` holds the run's
state and, when it stopped, the one line that says why.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from detectlab.core import progress  # noqa: E402
from detectlab.core.checkpoints import save_checkpoint  # noqa: E402
from detectlab.core.runs import write_json  # noqa: E402
from detectlab.violence.model import build_model, param_counts, split_state  # noqa: E402
from detectlab.violence.strategy import FederationError, RobustFedAvg  # noqa: E402

SYSTEM = "violence"
PERSONAL = ("fedper", "fedmetaper")
STRATEGIES = ("fedavg", "fedper", "perfedavg", "fedmetaper")
#: defaults of the federation settings a job may carry in job["fl"]
FL_DEFAULTS = {"aggregation": "fedavg", "trim_beta": 0.25, "krum_malicious": 1, "clip_norm": 0.0, "max_weight": 0.0,
               "fraction": 1.0, "min_clients": 1, "round_timeout": 3600.0}


def unit_key(experiment: str, strategy: str) -> str:
    return f"{experiment}-{strategy}"


def unit_path(out: Path, experiment: str, strategy: str) -> Path:
    return Path(out) / "units" / f"{unit_key(experiment, strategy)}.json"


def initial_arrays(job: dict, strategy: str) -> ArrayRecord:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(job["seed"]))
        sd = build_model(job["model"]).state_dict()
    if strategy in PERSONAL:
        sd, _ = split_state(sd)
    return ArrayRecord(sd)


def fl_settings(job: dict) -> dict:
    fl = dict(FL_DEFAULTS)
    fl.update({k: v for k, v in job.get("fl", {}).items() if k in FL_DEFAULTS})
    if "timeout" in job and "round_timeout" not in job.get("fl", {}):
        fl["round_timeout"] = float(job["timeout"])
    return fl


def run_key(out: Path) -> str:
    """A random id for this run folder (made once): the clients keep their heads under it."""
    p = Path(out) / "federation.json"
    if p.exists():
        return str(json.loads(p.read_text())["run_key"])
    key = uuid.uuid4().hex[:16]
    write_json(p, {"run_key": key})
    return key


def client_spec(job: dict, strategy: str) -> dict:
    spec = dict(job["client"], strategy=strategy, experiment=job.get("key", job["experiment"]), model=job["model"],
                seed=int(job["seed"]), run_key=run_key(Path(job["out"])), device=str(job.get("device", "cpu")))
    if job.get("partition_file"):  # simulation: the data are partitioned on this machine
        spec["partition_file"] = str(job["partition_file"])
        spec["state_dir"] = str(Path(job["out"]) / "node-state")
    if job.get("data_opts"):
        spec["data"] = dict(job["data_opts"])
    return spec


# ---- server state, saved after every finished round
def save_state(folder: Path, rnd: int, arrays: ArrayRecord, state: dict) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"global-{rnd:04d}.safetensors"
    tmp = f.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(a.numpy()) for k, a in arrays.items()}, str(tmp))
    tmp.replace(f)
    write_json(folder / "server.json.tmp", dict(state, arrays=f.name))
    (folder / "server.json.tmp").replace(folder / "server.json")
    for old in folder.glob("global-*.safetensors"):
        if old.name != f.name:
            old.unlink(missing_ok=True)


def load_state(folder: Path) -> tuple[ArrayRecord, dict] | None:
    p = folder / "server.json"
    if not p.exists():
        return None
    from safetensors.numpy import load_file

    st = json.loads(p.read_text())
    arrays = ArrayRecord({k: Array(v) for k, v in load_file(str(folder / st["arrays"])).items()})
    return arrays, st


def run_strategy(grid: Grid, job: dict, strategy: str) -> dict[str, Any]:
    """One strategy of one experiment: the rounds not finished yet; returns the JSON-able result."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    out = Path(job["out"])
    exp = job.get("key", job["experiment"])  # experiment, split and seed of the unit (violence)
    key = unit_key(exp, strategy)
    rounds = int(job["rounds"])
    fl = fl_settings(job)
    rounds_log = out / "rounds" / f"{key}.jsonl"
    rounds_log.parent.mkdir(parents=True, exist_ok=True)
    sdir = out / "state" / key

    def on_round(rec: dict) -> None:
        with open(rounds_log, "a") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")
        per = ", ".join(f"c{k}: acc {v.get('accuracy', float('nan')):.3f} loss {v.get('loss', float('nan')):.3f}"
                        for k, v in sorted(rec["clients"].items()))
        progress.log(f"{exp} {strategy} round {rec['round']}/{rounds}: acc {rec['accuracy']:.3f} "
                     f"loss {rec['loss']:.4f} bytes up {rec['bytes']['up']} down {rec['bytes']['down']} "
                     f"[{per}]" + (f" rejected {rec['rejected']}" if rec["rejected"] else ""))

    spec = client_spec(job, strategy)
    strat = RobustFedAvg(int(job["n_clients"]), rounds, export=bool(job.get("export", True)), on_round=on_round,
                         aggregation=fl["aggregation"], trim_beta=float(fl["trim_beta"]),
                         krum_malicious=int(fl["krum_malicious"]), clip_norm=float(fl["clip_norm"]),
                         max_weight=float(fl["max_weight"]), fraction=float(fl["fraction"]),
                         min_clients=int(fl["min_clients"]), round_timeout=float(fl["round_timeout"]),
                         seed=int(job["seed"]))
    arrays, start, spent = initial_arrays(job, strategy), 1, 0.0
    saved = load_state(sdir)
    if saved is not None:
        arrays, st = saved
        start = strat.load_state_dict(st) + 1
        spent = float(st.get("seconds", 0.0))
        rounds_log.write_text("".join(json.dumps(h, default=float) + "\n" for h in strat.history))
        progress.log(f"{exp} {strategy}: rounds 1-{start - 1} finished earlier, resuming at round {start}/{rounds}")
    else:
        rounds_log.write_text("")
    ck = out / "checkpoints"
    model_cfg = dict(job["model"])
    t0 = time.perf_counter()

    def on_round_end(rnd: int, arr: ArrayRecord) -> None:
        for pid, rec in sorted(strat.exports.items()):
            save_checkpoint(ck / f"{key}-client{pid}.safetensors", rec.to_torch_state_dict(), SYSTEM, model_cfg,
                            experiment=exp, strategy=strategy, client=pid, part="personal")
        st = strat.state_dict()
        st["seconds"] = spent + time.perf_counter() - t0
        st["personal_checkpoints"] = sorted(int(k) for k in strat.exports)
        save_state(sdir, rnd, arr, st)

    train_cfg = ConfigRecord({"spec": json.dumps(spec)})
    arrays = strat.run(grid, arrays, train_cfg, ConfigRecord({"spec": json.dumps(spec)}), start_round=start,
                       on_round_end=on_round_end)
    seconds = spent + time.perf_counter() - t0
    if not strat.history:
        raise FederationError(f"{exp} {strategy}: no round finished")
    save_checkpoint(ck / f"{key}-global.safetensors", arrays.to_torch_state_dict(), SYSTEM, model_cfg,
                    experiment=exp, strategy=strategy, part="base" if strategy in PERSONAL else "full")
    personal = sorted(int(k) for k in strat.exports) or (saved[1].get("personal_checkpoints", []) if saved else [])
    last = strat.history[-1]
    n_rounds = len(strat.history)
    mean = lambda key_: sum(h["bytes"][key_] for h in strat.history) / n_rounds  # noqa: E731
    counts = param_counts(build_model(job["model"]))
    res = {
        "accuracy": last["accuracy"], "loss": last["loss"],
        "per_client": {str(k): {**{kk: v.get(kk) for kk in ("accuracy", "loss", "n_train", "n_test")}, **v}
                       for k, v in sorted(last["clients"].items())},  # incl. the test scores (violence)
        "bytes_per_round": {"up": mean("up"), "down": mean("down"), "total": mean("total"),
                            "payload_up": mean("payload_up"), "payload_down": mean("payload_down")},
        "bytes_total": {k: int(sum(h["bytes"][k] for h in strat.history))
                        for k in ("up", "down", "total", "payload_up", "payload_down")},
        "params_sent": counts["base"] if strategy in PERSONAL else counts["total"],
        "history": [{"round": h["round"], "accuracy": h["accuracy"], "loss": h["loss"], "bytes": h["bytes"],
                     "sampled": h.get("sampled", []), "missing": h.get("missing", []),
                     "t_start": h.get("t_start"), "t_end": h.get("t_end"),
                     "clients": {str(k): {kk: v.get(kk) for kk in ("accuracy", "loss", "train_loss", "n_train",
                                                                    "claimed", "head_from", "val-loss", "val-acc",
                                                                    "val-bacc", "test-clip-bacc")}
                                 for k, v in sorted(h["clients"].items())}} for h in strat.history],
        "rejected": strat.rejected, "bounded": strat.bounded, "seconds": seconds, "rounds": n_rounds,
        "aggregation": fl["aggregation"], "fraction": fl["fraction"],
        "census": {str(k): v for k, v in sorted(strat.census.items())},
        "personal_checkpoints": personal,
    }
    write_json(unit_path(out, exp, strategy), {"key": key, "result": res})
    progress.log(f"{exp} {strategy}: accuracy {res['accuracy']:.4f} loss {res['loss']:.4f} in {seconds:.0f} s")
    return res


def run_federation(grid: Grid, job: dict) -> dict[str, Any]:
    """Every strategy of the job not already finished (a unit file exists) -> {strategy: result}."""
    out = {}
    name = job.get("key", job["experiment"])
    for s in job["strategies"]:
        p = unit_path(Path(job["out"]), name, s)
        if p.exists():
            progress.log(f"{name} {s}: finished earlier, read back")
            out[s] = json.loads(p.read_text())["result"]
            continue
        out[s] = run_strategy(grid, job, s)
    return out


def write_status(out: Path, status: str, line: str = "") -> None:
    write_json(Path(out) / "status.json", {"status": status, "line": line, "time": time.time()})


def read_status(out: Path) -> dict:
    p = Path(out) / "status.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def ray_env(tmp: str | None = None) -> None:
    """Environment for a quiet, offline, local Ray: no dashboard, no usage stats, a short temp dir."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if tmp:
        os.environ.setdefault("RAY_TMPDIR", tmp)


def quiet_flower() -> None:
    """Flower logs every round at INFO; our own per-round lines say the same, so keep Flower's to warnings."""
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)


def _relay(text: str, seen: int) -> int:
    """Print our own log lines from a `flwr run --stream` output (from character `seen` on)."""
    import re

    new = text[seen:]
    cut = new.rfind("\n") + 1
    for line in new[:cut].splitlines():
        m = re.search(r"(\d\d:\d\d:\d\d) (.*)$", line)
        if m and not re.search(r"\b(INFO|DEBUG|WARNING|ERROR)\s*:", line):
            progress.console.print(f"[dim]{m.group(1)}[/dim] {m.group(2)}", highlight=False, markup=True)
    return seen + cut


def simulate(job: dict, num_cpus: int = 2) -> dict[str, Any]:
    """Run the job on Flower's simulation engine: `flwr run` on a local simulation SuperLink (Ray)."""
    import shutil
    import tempfile

    from detectlab.violence.flower_app import CLIENTAPP, FAULTY_CLIENTAPP, LocalSimulation, write_app

    out = Path(job["out"])
    fed = out / "federation"
    fed.mkdir(parents=True, exist_ok=True)
    name = job.get("key", job["experiment"])
    jobfile = fed / f"{name}.job.json"
    write_json(jobfile, job)
    faulty = bool(str(job.get("client", {}).get("fault", "")).strip())
    app_dir = write_app(fed / f"app-{name}", out=out, extra={"job": str(jobfile.resolve())},
                        clientapp=FAULTY_CLIENTAPP if faulty else CLIENTAPP)
    work = Path(tempfile.mkdtemp(prefix="dl-sim-"))
    from detectlab.core.runtime import choose_device

    cuda = choose_device(str(job.get("device", "auto"))).type == "cuda"
    ok = False
    try:
        with LocalSimulation(work) as sim:
            h = sim.submit(app_dir, int(job["n_clients"]), num_cpus=num_cpus, num_gpus=1 if cuda else 0,
                           client_gpus=round(1 / max(1, num_cpus), 3) if cuda else 0.0)
            seen, t0 = 0, time.monotonic()
            while h.proc.poll() is None:
                time.sleep(0.5)
                seen = _relay(h.output(), seen)
                if time.monotonic() - t0 > float(job.get("timeout", 3600)) * max(1, len(job["strategies"])) + 300:
                    h.proc.kill()
                    break
            _relay(h.output() + "\n", seen)
            ok = all(unit_path(out, name, s).exists() for s in job["strategies"])
            if not ok:
                st = read_status(out)
                line = st.get("line") or _last_error(h.output()) or "see the simulation logs"
                (fed / "simulation.log").write_text(sim.logs(20000) + "\n--- flwr run\n" + h.output()[-20000:])
                raise RuntimeError(f"simulation of {name} stopped: {line} "
                                   f"(logs: {fed / 'simulation.log'})")
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
    return {s: json.loads(unit_path(out, name, s).read_text())["result"] for s in job["strategies"]}


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ("Error" in ln or "error" in ln) and ln.strip()]
    return lines[-1][-300:] if lines else ""


# ---- deployment: the job comes from the preset + overrides; the data stay on the SuperNodes
def _config_module():
    from detectlab.violence import config as cfgmod  # the config module of issue 11 (no import of experiment)

    return cfgmod


def model_dict(cfg) -> dict:
    cfgmod = _config_module()
    if hasattr(cfgmod, "model_dict"):
        return cfgmod.model_dict(cfg)
    return {"arch": "DiffGated", "width": cfg.model.width, "hidden": list(cfg.model.hidden),
            "dropout": cfg.model.dropout, "size": cfg.data_opts.size}


def deployment_job(cfg, out: Path, n_nodes: int) -> dict:
    """The job of a deployment: one experiment over `n_nodes` SuperNodes that hold their own data."""
    from dataclasses import asdict

    cfgmod = _config_module()
    fl = cfg.fl
    client = cfgmod.client_spec(cfg) if hasattr(cfgmod, "client_spec") else {
        "lr": fl.lr, "weight_decay": fl.weight_decay, "epochs": fl.epochs, "batch": fl.batch, "alpha": fl.alpha,
        "beta": fl.beta, "delta": fl.delta, "variant": fl.variant, "meta_steps": fl.meta_steps,
        "adapt_steps": fl.adapt_steps, "threads": fl.client_threads, "fault": fl.fault}
    d = cfg.data_opts
    return {"experiment": cfg.experiments[0], "n_clients": int(n_nodes), "rounds": fl.rounds, "seed": cfg.seed,
            "model": model_dict(cfg), "out": str(out), "export": True, "timeout": fl.timeout,
            "strategies": list(cfg.strategies), "client": client, "fl": asdict(fl),
            "data_opts": {"size": d.size, "max_frames": d.max_frames, "test_fraction": d.test_fraction,
                          "val_fraction": d.val_fraction},
            "device": "cpu" if str(cfg.device) == "auto" else str(cfg.device)}


def federation_metrics(job: dict, results: dict[str, dict]) -> dict:
    """metrics.json of a deployment run (same layout as the simulation protocol's)."""
    census = next(iter(results.values()))["census"] if results else {}
    clients = [{"client": int(p), **{k: v.get(k) for k in ("train_fight", "train_nonfight", "test_fight",
                                                             "test_nonfight", "train_clips", "test_clips", "clips",
                                                             "fingerprint", "split")}}
               for p, v in sorted(census.items(), key=lambda kv: int(kv[0]))]
    counts = param_counts(build_model(job["model"]))
    return {"experiments": {job["experiment"]: {"clients": clients, "n_clients": job["n_clients"],
                                                "strategies": results}},
            "model": {**job["model"], **counts},
            "data": {"source": "per-node data (each SuperNode's data-dir; the server never opened a video)",
                     "nodes": {str(c["client"]): c["fingerprint"] for c in clients},
                     "counts": {"chunks": int(sum((v.get("n_train", 0) + v.get("n_test", 0)) for v in census.values())),
                                "clips": int(sum(v.get("clips", 0) or 0 for v in census.values()))}}}


def _deploy(grid: Grid, rc) -> None:
    from detectlab.core.config import load_config
    from detectlab.core.runs import Run

    cfgmod = _config_module()
    preset = str(rc.get("preset", "smoke"))
    overrides = [s.strip() for s in str(rc.get("overrides", "")).split(";") if s.strip()]
    out = Path(str(rc.get("out", "runs/violence-deploy"))).expanduser()
    cfg = load_config(cfgmod.Config, SYSTEM, preset, overrides)
    with Run(out, cfg, SYSTEM) as run:
        job = deployment_job(cfg, out, int(rc.get("nodes", 2)))
        results = run_federation(grid, job)
        run.write_metrics(federation_metrics(job, results))


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    quiet_flower()
    if "job" in rc:  # simulation: the job (and its partition file) was prepared by experiment.run
        job = json.loads(Path(str(rc["job"])).read_text())
        out = Path(job["out"])
    else:
        job, out = None, Path(str(rc.get("out", "runs/violence-deploy"))).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    progress.add_log_file(out / "log.txt")
    write_status(out, "running")
    try:
        if job is not None:
            run_federation(grid, job)
        else:
            _deploy(grid, rc)
    except Exception as e:  # noqa: BLE001 - one line for the user, the traceback for the logs
        line = " ".join(str(e).split()) if isinstance(e, FederationError) else f"{type(e).__name__}: {e}"
        progress.add_log_file(out / "log.txt")  # the Run closed with the exception and let go of its log
        progress.log(f"federation stopped: {line}")
        write_status(out, "failed", line)
        raise
    write_status(out, "finished")
