"""The Flower ServerApp: runs the strategies of one experiment over the connected nodes.

Two ways in, one body (:func:`run_federation`):
- simulation engine (default): :func:`simulate` builds a ServerApp around a job dict and runs it with
  ``flwr.simulation.run_simulation`` on Ray (one virtual SuperNode per client, 1 CPU each);
- deployment engine: the module-level ``app`` is the ServerApp of the Flower app that
  ``detectlab violence app`` writes; it reads ``preset``, ``overrides`` and ``out`` from the run config,
  prepares the data/partition (:func:`detectlab.violence.experiment.prepare`) and runs the experiment
  against the real SuperNodes, writing a normal run folder.

Each (experiment, strategy) result is written as ``units/<experiment>-<strategy>.json`` (the format of
``core.units``) when it finishes and is skipped when the run is resumed; every round is appended to
``rounds/<experiment>-<strategy>.jsonl`` and logged.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from detectlab.core import progress  # noqa: E402
from detectlab.core.checkpoints import save_checkpoint  # noqa: E402
from detectlab.core.runs import write_json  # noqa: E402
from detectlab.violence.model import build_model, param_counts, split_state  # noqa: E402
from detectlab.violence.strategy import RobustFedAvg  # noqa: E402

SYSTEM = "violence"
PERSONAL = ("fedper", "fedmetaper")
STRATEGIES = ("fedavg", "fedper", "perfedavg", "fedmetaper")


def unit_key(experiment: str, strategy: str) -> str:
    return f"{experiment}-{strategy}"


def unit_path(out: Path, experiment: str, strategy: str) -> Path:
    return Path(out) / "units" / f"{unit_key(experiment, strategy)}.json"


def initial_arrays(job: dict, strategy: str) -> ArrayRecord:
    torch.manual_seed(int(job["seed"]))
    sd = build_model(job["model"]).state_dict()
    if strategy in PERSONAL:
        sd, _ = split_state(sd)
    return ArrayRecord(sd)


def run_strategy(grid: Grid, job: dict, strategy: str) -> dict[str, Any]:
    """One strategy of one experiment: R rounds on the grid; returns the JSON-able result."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    out = Path(job["out"])
    exp = job.get("key", job["experiment"])  # experiment, split and seed of the unit
    rounds_log = out / "rounds" / f"{unit_key(exp, strategy)}.jsonl"
    rounds_log.parent.mkdir(parents=True, exist_ok=True)
    rounds_log.write_text("")

    def on_round(rec: dict) -> None:
        with open(rounds_log, "a") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")
        per = ", ".join(f"c{k}: acc {v.get('accuracy', float('nan')):.3f} loss {v.get('loss', float('nan')):.3f}"
                        for k, v in sorted(rec["clients"].items()))
        progress.log(f"{exp} {strategy} round {rec['round']}/{job['rounds']}: acc {rec['accuracy']:.3f} "
                     f"loss {rec['loss']:.4f} bytes up {rec['bytes']['up']} down {rec['bytes']['down']} "
                     f"[{per}]" + (f" rejected {rec['rejected']}" if rec["rejected"] else ""))

    spec = dict(job["client"], strategy=strategy, partition_file=str(job["partition_file"]), model=job["model"],
                seed=int(job["seed"]))
    strat = RobustFedAvg(int(job["n_clients"]), int(job["rounds"]), export=bool(job.get("export", True)),
                         on_round=on_round)
    t0 = time.perf_counter()
    result = strat.start(grid=grid, initial_arrays=initial_arrays(job, strategy), num_rounds=int(job["rounds"]),
                         timeout=float(job.get("timeout", 3600)),
                         train_config=ConfigRecord({"spec": json.dumps(spec)}),
                         evaluate_config=ConfigRecord({"spec": json.dumps(spec)}))
    seconds = time.perf_counter() - t0
    if not strat.history:
        raise RuntimeError(f"{exp} {strategy}: no round finished (no client answered)")
    ck = out / "checkpoints"
    model_cfg = dict(job["model"])
    glob = {k: v for k, v in result.arrays.to_torch_state_dict().items()}
    save_checkpoint(ck / f"{unit_key(exp, strategy)}-global.safetensors", glob, SYSTEM, model_cfg,
                    experiment=exp, strategy=strategy, part="base" if strategy in PERSONAL else "full")
    for pid, arr in sorted(strat.exports.items()):
        save_checkpoint(ck / f"{unit_key(exp, strategy)}-client{pid}.safetensors", arr.to_torch_state_dict(), SYSTEM,
                        model_cfg, experiment=exp, strategy=strategy, client=pid, part="personal")
    last = strat.history[-1]
    n_rounds = len(strat.history)
    mean = lambda key: sum(h["bytes"][key] for h in strat.history) / n_rounds  # noqa: E731
    counts = param_counts(build_model(job["model"]))
    res = {
        "accuracy": last["accuracy"], "loss": last["loss"],
        "per_client": {str(k): dict(v) for k, v in sorted(last["clients"].items())},
        "bytes_per_round": {"up": mean("up"), "down": mean("down"), "total": mean("total"),
                            "payload_up": mean("payload_up"), "payload_down": mean("payload_down")},
        "params_sent": counts["base"] if strategy in PERSONAL else counts["total"],
        "history": [{"round": h["round"], "accuracy": h["accuracy"], "loss": h["loss"],
                     "clients": {str(k): {kk: v.get(kk) for kk in ("accuracy", "loss", "train_loss", "val-loss",
                                                                   "val-acc", "val-bacc", "test-clip-bacc")}
                                 for k, v in sorted(h["clients"].items())}} for h in strat.history],
        "rejected": strat.rejected, "seconds": seconds, "rounds": n_rounds,
        "personal_checkpoints": sorted(int(k) for k in strat.exports),
    }
    write_json(unit_path(out, exp, strategy), {"key": unit_key(exp, strategy), "result": res})
    progress.log(f"{exp} {strategy}: accuracy {res['accuracy']:.4f} loss {res['loss']:.4f} in {seconds:.0f} s")
    return res


def run_federation(grid: Grid, job: dict) -> dict[str, Any]:
    """Every strategy of the job not already finished (a unit file exists) -> {strategy: result}."""
    out = {}
    for s in job["strategies"]:
        p = unit_path(Path(job["out"]), job.get("key", job["experiment"]), s)
        if p.exists():
            progress.log(f"{job.get('key', job['experiment'])} {s}: finished earlier, read back")
            out[s] = json.loads(p.read_text())["result"]
            continue
        out[s] = run_strategy(grid, job, s)
    return out


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


def simulate(job: dict, num_cpus: int = 2, client_app: Any = None) -> dict[str, Any]:
    """Run the job on Flower's simulation engine (Ray), one virtual SuperNode per client (`client_app`: another
    ClientApp, e.g. the tests' fault-injecting one; default the production app)."""
    from flwr.simulation import run_simulation

    if client_app is None:
        from detectlab.violence.client_app import app as client_app

    ray_env()
    quiet_flower()
    box: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        box["result"] = run_federation(grid, job)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": max(1, num_cpus), "num_gpus": 0, "include_dashboard": False,
                             "logging_level": "ERROR", "log_to_driver": False}}
    try:
        run_simulation(server_app=server, client_app=client_app, num_supernodes=int(job["n_clients"]),
                       backend_config=backend)
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
    if "result" not in box:
        raise RuntimeError(f"simulation of {job['experiment']} ended without a result (see the log above)")
    return box["result"]


# ---- deployment engine: the ServerApp of the Flower app written by `detectlab violence app`
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from detectlab.core.config import load_config
    from detectlab.core.runs import Run
    from detectlab.violence import experiment

    rc = context.run_config
    preset = str(rc.get("preset", "smoke"))
    overrides = [s.strip() for s in str(rc.get("overrides", "")).split(";") if s.strip()]
    out = Path(str(rc.get("out", "runs/violence-deploy"))).expanduser()
    cfg = load_config(experiment.Config, SYSTEM, preset, overrides)
    with Run(out, cfg, SYSTEM) as run:
        experiment.run(cfg, run, grid=grid)
