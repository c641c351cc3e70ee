"""A grid of keyed units of work, each run once: in-process, in parallel processes, or on Ray.

Each unit has a stable key; when it finishes its JSON-able result is written to
``<run>/units/<key>.json``. On a rerun with the same run folder, finished units are read back and
not recomputed: that is the resume. A failing unit does not lose the finished ones.

    units = [Unit(f"fold={k}-seed={s}", train_fold, dict(fold=k, seed=s, cfg=cfg)) for ...]
    results = run_units(run, units, workers=cfg.workers, ray_address=cfg.ray_address, device=cfg.device)

On Ray every unit requests its ``num_cpus`` and, when the units run on CUDA (``device`` cuda, or auto
on a cluster that has GPUs), one GPU unless the unit says otherwise, so a GPU cluster runs the units on
its GPUs. A remote cluster (``--ray-address host:port``) needs the same detectlab install on every node
and a filesystem shared with the driver for the data and the run folder (units write their results
there); ``local`` starts a one-machine cluster. An :class:`InputError` raised in a worker process or a
Ray task ends the whole grid at once with that error (exit 2 in the CLI); any other failure is kept
per unit, the finished ones are kept, and :class:`UnitError` reports them together.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from detectlab.core import progress
from detectlab.core.errors import InputError
from detectlab.core.runs import Run, write_json

_SAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")


@dataclass
class Unit:
    key: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: resources requested per unit on Ray; num_gpus None: 1 when the grid runs on CUDA, else 0
    num_cpus: float = 1
    num_gpus: float | None = None

    @property
    def filename(self) -> str:
        return _SAFE.sub("_", self.key) + ".json"


class UnitError(RuntimeError):
    pass


def _call(fn: Callable[..., Any], kwargs: dict[str, Any], threads: int) -> Any:
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(**kwargs)


def unit_dir(run: Run) -> Path:
    return run.dir / "units"


def load_done(run: Run, units: Sequence[Unit]) -> dict[str, Any]:
    done = {}
    for u in units:
        p = unit_dir(run) / u.filename
        if p.exists():
            try:
                done[u.key] = json.loads(p.read_text())["result"]
            except (json.JSONDecodeError, KeyError):
                progress.log(f"unit {u.key}: unreadable result file {p}, recomputing")
    return done


def _input_error(e: BaseException) -> InputError | None:
    """The InputError behind `e` (itself, a Ray task error's cause, or a chained cause), else None."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, InputError):
            return e
        cause = getattr(e, "cause", None)
        e = cause if isinstance(cause, BaseException) else e.__cause__
        seen += 1
    return None


def wants_gpu(device: str, ray_cluster_gpus: float = 0.0) -> bool:
    d = (device or "auto").lower()
    if d.startswith("cuda"):
        return True
    return d == "auto" and ray_cluster_gpus > 0


def run_units(
    run: Run,
    units: Sequence[Unit],
    workers: int = 1,
    ray_address: str = "",
    description: str = "units",
    device: str = "cpu",
) -> dict[str, Any]:
    """Run every unit not already finished; return {key: result} for all units, in order."""
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise ValueError("unit keys must be unique")
    results = load_done(run, units)
    todo = [u for u in units if u.key not in results]
    if results:
        progress.log(f"{description}: {len(results)} of {len(units)} already finished, read back")
    if not todo:
        return {k: results[k] for k in keys}

    def finish(u: Unit, res: Any) -> None:
        write_json(unit_dir(run) / u.filename, {"key": u.key, "result": res})
        results[u.key] = res

    errors: list[str] = []
    if ray_address:
        _run_ray(todo, ray_address, finish, errors, description, device)
    elif workers > 1 and len(todo) > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, progress.make_progress() as bar:
            task = bar.add_task(description, total=len(todo))
            futs = {pool.submit(_call, u.fn, u.kwargs, threads): u for u in todo}
            pending = set(futs)
            stop: InputError | None = None
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    u = futs[f]
                    if f.cancelled():
                        continue
                    try:
                        finish(u, f.result())
                        progress.log(f"{description}: finished {u.key}")
                    except Exception as e:  # noqa: BLE001 - keep the other units going
                        bad = _input_error(e)
                        if bad is not None:  # bad input: start nothing new, keep what is running, then stop
                            if stop is None:
                                stop = bad
                                for other in pending:
                                    other.cancel()
                        else:
                            errors.append(f"{u.key}: {e!r}")
                            progress.log(f"{description}: unit {u.key} failed: {e!r}")
                    bar.advance(task)
            if stop is not None:
                raise stop from None
    else:
        with progress.make_progress() as bar:
            task = bar.add_task(description, total=len(todo))
            for u in todo:
                try:
                    finish(u, u.fn(**u.kwargs))
                except Exception as e:
                    # Input errors and interrupts are not unit failures: surface them at once.
                    if isinstance(e, InputError):
                        raise
                    errors.append(f"{u.key}: {e!r}")
                    progress.log(f"{description}: unit {u.key} failed:\n{traceback.format_exc()}")
                bar.advance(task)
    if errors:
        raise UnitError(f"{len(errors)} of {len(units)} units failed (finished ones are kept): " + "; ".join(errors))
    return {k: results[k] for k in keys}


def ray_init(address: str) -> None:
    """Connect to a Ray cluster ('local' starts one on this machine), passing DETECTLAB_* settings on."""
    import ray

    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith("DETECTLAB_")}
    src = str(Path(__file__).resolve().parents[2])  # this checkout's src/, for workers on this machine
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    # tasks that ask for no GPU keep seeing the GPUs (Ray would hide them); a value the user set wins, in the
    # driver and in the workers alike
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"]
    runtime_env = {"env_vars": env}
    if address == "local":  # a Ray cluster of this machine only
        ray.init(log_to_driver=False, include_dashboard=False, runtime_env=runtime_env)
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)


def ray_options(units: Sequence[Unit], device: str) -> list[dict[str, float]]:
    """Per unit: {"num_cpus": c, "num_gpus": g} as requested from Ray."""
    import ray

    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0
    gpu = 1.0 if wants_gpu(device, cluster_gpus) else 0.0
    return [{"num_cpus": float(u.num_cpus), "num_gpus": float(u.num_gpus if u.num_gpus is not None else gpu)}
            for u in units]


def _run_ray(todo: Sequence[Unit], address: str, finish, errors: list[str], description: str,
             device: str = "cpu") -> None:
    import ray

    ray_init(address)
    remote = ray.remote(_call)
    refs = {}
    for u, opts in zip(todo, ray_options(todo, device)):
        threads = max(1, int(opts["num_cpus"]))
        refs[remote.options(**opts).remote(u.fn, u.kwargs, threads)] = u
    pending = list(refs)
    with progress.make_progress() as bar:
        task = bar.add_task(description, total=len(todo))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            u = refs[done[0]]
            try:
                finish(u, ray.get(done[0]))
                progress.log(f"{description}: finished {u.key} on ray")
            except Exception as e:  # noqa: BLE001
                bad = _input_error(e)
                if bad is not None:
                    for r in pending:
                        ray.cancel(r, force=True)
                    raise bad from None
                errors.append(f"{u.key}: {e!r}")
                progress.log(f"{description}: unit {u.key} failed on ray: {e!r}")
            bar.advance(task)
