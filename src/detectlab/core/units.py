"""A grid of keyed units of work, each run once: in-process, in parallel processes, or on Ray.

Each unit has a stable key; when it finishes its JSON-able result is written to
``<run>/units/<key>.json``. On a rerun with the same run folder, finished units are read back and
not recomputed: that is the resume. A failing unit does not lose the finished ones.

    units = [Unit(f"fold={k}-seed={s}", train_fold, dict(fold=k, seed=s, cfg=cfg)) for ...]
    results = run_units(run, units, workers=cfg.workers, ray_address=cfg.ray_address)
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
from detectlab.core.runs import Run, write_json

_SAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")


@dataclass
class Unit:
    key: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

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


def run_units(
    run: Run,
    units: Sequence[Unit],
    workers: int = 1,
    ray_address: str = "",
    description: str = "units",
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
        _run_ray(todo, ray_address, finish, errors, description)
    elif workers > 1 and len(todo) > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, progress.make_progress() as bar:
            task = bar.add_task(description, total=len(todo))
            futs = {pool.submit(_call, u.fn, u.kwargs, threads): u for u in todo}
            pending = set(futs)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    u = futs[f]
                    try:
                        finish(u, f.result())
                        progress.log(f"{description}: finished {u.key}")
                    except Exception as e:  # noqa: BLE001 - keep the other units going
                        errors.append(f"{u.key}: {e!r}")
                        progress.log(f"{description}: unit {u.key} failed: {e!r}")
                    bar.advance(task)
    else:
        with progress.make_progress() as bar:
            task = bar.add_task(description, total=len(todo))
            for u in todo:
                try:
                    finish(u, u.fn(**u.kwargs))
                except Exception as e:
                    # Input errors and interrupts are not unit failures: surface them at once.
                    from detectlab.core.errors import InputError

                    if isinstance(e, InputError):
                        raise
                    errors.append(f"{u.key}: {e!r}")
                    progress.log(f"{description}: unit {u.key} failed:\n{traceback.format_exc()}")
                bar.advance(task)
    if errors:
        raise UnitError(f"{len(errors)} of {len(units)} units failed (finished ones are kept): " + "; ".join(errors))
    return {k: results[k] for k in keys}


def _run_ray(todo: Sequence[Unit], address: str, finish, errors: list[str], description: str) -> None:
    import ray

    if address == "local":  # a Ray cluster of this machine only
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    else:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(_call)
    refs = {remote.remote(u.fn, u.kwargs, 1): u for u in todo}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        u = refs[done[0]]
        try:
            finish(u, ray.get(done[0]))
            progress.log(f"{description}: finished {u.key} on ray")
        except Exception as e:  # noqa: BLE001
            errors.append(f"{u.key}: {e!r}")
