"""The Ray glue of core.units, in-process: a stand-in `ray` module records what detectlab asks of Ray
(init arguments, per-task resources, cancellations) and runs each task on the spot. The real Ray is
exercised end to end in test_core_facilities.py; this file pins down the requests themselves."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from detectlab.core.errors import InputError
from detectlab.core.runs import Run
from detectlab.core.units import Unit, UnitError, _call, _input_error, ray_init, run_units

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _unitfns  # noqa: E402


class TaskError(Exception):
    """Like ray.exceptions.RayTaskError: the original exception is in `.cause`."""

    def __init__(self, cause):
        super().__init__(f"task failed: {cause!r}")
        self.cause = cause


class FakeRay(types.ModuleType):
    def __init__(self, gpus: float = 0.0):
        super().__init__("ray")
        self.inits: list[dict] = []
        self.options_seen: list[dict] = []
        self.cancelled: list[int] = []
        self.cancel_kwargs: list[dict] = []
        self.threads_seen: list[int] = []
        self.gpus = gpus
        self._init = False
        self.results: dict[int, tuple[bool, object]] = {}

    def is_initialized(self):
        return self._init

    def init(self, **kw):
        self.inits.append(kw)
        self._init = True

    def cluster_resources(self):
        return {"CPU": 8.0, "GPU": self.gpus} if self.gpus else {"CPU": 8.0}

    def remote(self, fn):
        ray = self

        class Remote:
            def options(self, **opts):
                ray.options_seen.append(opts)
                return self

            def remote(self, f, kwargs, threads):
                ray.threads_seen.append(threads)
                ref = len(ray.results)
                try:
                    ray.results[ref] = (True, fn(f, kwargs, threads))
                except Exception as e:  # noqa: BLE001
                    ray.results[ref] = (False, TaskError(e))
                return ref

        return Remote()

    def wait(self, pending, num_returns=1):
        return pending[:num_returns], pending[num_returns:]

    def get(self, ref):
        ok, v = self.results[ref]
        if not ok:
            raise v
        return v

    def cancel(self, ref, **kw):
        self.cancelled.append(ref)
        self.cancel_kwargs.append(kw)


@pytest.fixture
def fake_ray(monkeypatch):
    r = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", r)
    return r


def test_ray_units_request_resources_and_are_written_back(tmp_path, fake_ray, monkeypatch):
    """Fault caught: tasks submitted without num_cpus/num_gpus (a GPU cluster then runs every unit on the
    CPU), a unit's own request overridden, results not written back (no resume), or the DETECTLAB_*
    settings and this checkout's src/ not passed to the workers."""
    monkeypatch.setenv("DETECTLAB_DATA", "/data/x")
    fake_ray.gpus = 2.0
    units = [Unit("a", _unitfns.square, {"x": 2}), Unit("b", _unitfns.square, {"x": 3}, num_cpus=4, num_gpus=0.25)]
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        res = run_units(run, units, ray_address="10.0.0.1:6379", device="auto")
    assert res == {"a": {"sq": 4}, "b": {"sq": 9}}
    assert fake_ray.options_seen == [{"num_cpus": 1.0, "num_gpus": 1.0}, {"num_cpus": 4.0, "num_gpus": 0.25}]
    (init,) = fake_ray.inits
    assert init["address"] == "10.0.0.1:6379"
    env = init["runtime_env"]["env_vars"]
    assert env["DETECTLAB_DATA"] == "/data/x"
    assert env["PYTHONPATH"].split(":")[0] == str(Path(__file__).resolve().parents[2] / "src")
    assert sorted(p.name for p in (tmp_path / "r" / "units").glob("*.json")) == ["a.json", "b.json"]
    with Run(tmp_path / "r", {"k": 1}, "t") as run:  # resume: nothing resubmitted
        run_units(run, units, ray_address="10.0.0.1:6379", device="auto")
    assert len(fake_ray.options_seen) == 2 and len(fake_ray.inits) == 1


def test_ray_cpu_runs_ask_for_no_gpu_and_local_starts_a_cluster(tmp_path, fake_ray):
    """Fault caught: GPUs requested for CPU runs (the tasks would never be scheduled on a CPU cluster),
    or 'local' passed to ray.init as an address."""
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        run_units(run, [Unit("a", _unitfns.square, {"x": 1})], ray_address="local", device="cpu")
    assert fake_ray.options_seen == [{"num_cpus": 1.0, "num_gpus": 0.0}]
    assert "address" not in fake_ray.inits[0] and fake_ray.inits[0]["include_dashboard"] is False
    ray_init("local")  # already initialised: no second init
    assert len(fake_ray.inits) == 1


def test_ray_bad_input_cancels_the_rest_and_failures_are_kept(tmp_path, fake_ray):
    """Fault caught: an InputError in a Ray task reported as a task failure (UnitError, exit 1) instead of
    its one line, the remaining tasks left running, or one crashing unit losing the finished ones."""
    units = [Unit("bad", _unitfns.bad_input, {"path": "x.edf"}), Unit("ok", _unitfns.square, {"x": 2})]
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        with pytest.raises(InputError) as e:
            run_units(run, units, ray_address="local")
    assert e.value.line() == "x.edf: is not a recording (expected an EDF file)" and fake_ray.cancelled == [1]
    units = [Unit("c", _unitfns.crash, {"x": 1}), Unit("ok", _unitfns.square, {"x": 2})]
    with Run(tmp_path / "r2", {"k": 1}, "t") as run:
        with pytest.raises(UnitError) as e:
            run_units(run, units, ray_address="local")
    assert str(e.value).startswith("1 of 2 units failed (finished ones are kept): c: TaskError(")
    assert [p.name for p in (tmp_path / "r2" / "units").glob("*.json")] == ["ok.json"]


def test_input_error_is_found_behind_wrappers():
    """Fault caught: the InputError inside a Ray task error (`.cause`) or a chained exception not found,
    or any exception taken for one."""
    err = InputError("a", "b")
    assert _input_error(err) is err
    assert _input_error(TaskError(err)) is err
    try:
        try:
            raise err
        except InputError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert _input_error(outer) is err
    assert _input_error(RuntimeError("x")) is None and _input_error(TaskError(ValueError())) is None


def test_call_sets_the_thread_count(monkeypatch):
    """Fault caught: worker processes left at every core's thread count (N workers x N threads
    oversubscribes the machine), or a thread count of 0 passed to torch."""
    import torch

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    assert _call(_unitfns.square, {"x": 3}, 2) == {"sq": 9}
    _call(_unitfns.square, {"x": 1}, 0)
    assert seen == [2, 1]


def test_unit_keys_files_and_unreadable_results(tmp_path):
    """Fault caught: duplicate unit keys accepted (two units would share one result file), keys with
    path characters written outside units/, or a truncated result file crashing the resume instead of
    recomputing that unit."""
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        with pytest.raises(ValueError, match="unique"):
            run_units(run, [Unit("a", _unitfns.square, {"x": 1}), Unit("a", _unitfns.square, {"x": 2})])
        u = Unit("fold=1/seed 2:x", _unitfns.square, {"x": 5})
        assert u.filename == "fold=1_seed_2_x.json"
        run_units(run, [u])
        (tmp_path / "r" / "units" / u.filename).write_text("{truncated")
        log = tmp_path / "calls.txt"
        u2 = Unit(u.key, _unitfns.square, {"x": 5, "log": str(log)})
        assert run_units(run, [u2]) == {u.key: {"sq": 25}}
        assert _unitfns.calls(str(log)) == [5]


def test_ray_init_arguments_and_environment_exactly(fake_ray, monkeypatch):
    """Fault caught: workers not given this checkout's src/ ahead of the caller's PYTHONPATH (entries split
    on anything but the path separator, or the variable's name mistyped), Ray's accelerator override not set
    to "0" in the workers and the driver (Ray would then hide GPUs from tasks that ask for none; a value the
    user set is kept, and passed on to the workers), Ray's worker logs sent to the driver's terminal, or the runtime environment not
    passed, for 'local' and for a cluster address."""
    import os

    src = str(Path(__file__).resolve().parents[2] / "src")
    for k in [k for k in os.environ if k.startswith("DETECTLAB_")]:  # CI sets DETECTLAB_DATA
        monkeypatch.delenv(k)
    monkeypatch.setenv("PYTHONPATH", "/a b:/c")
    monkeypatch.delenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", raising=False)
    monkeypatch.setenv("DETECTLAB_THREADS", "3")
    monkeypatch.setenv("OTHER_SETTING", "x")
    ray_init("local")
    env = {"DETECTLAB_THREADS": "3", "PYTHONPATH": f"{src}:/a b:/c", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    assert fake_ray.inits == [{"log_to_driver": False, "include_dashboard": False, "runtime_env": {"env_vars": env}}]
    assert os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "0"
    fake_ray._init = False
    monkeypatch.delenv("PYTHONPATH")
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    ray_init("head:6379")
    env = {"DETECTLAB_THREADS": "3", "PYTHONPATH": src, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    assert fake_ray.inits[1] == {"address": "head:6379", "log_to_driver": False, "runtime_env": {"env_vars": env}}
    assert os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"


def test_ray_options_without_a_cluster_or_without_gpus_ask_for_none(fake_ray):
    """Fault caught: device 'auto' asking for a GPU when Ray is not started yet or its cluster lists no GPU
    resource at all (the tasks would wait forever on a CPU cluster)."""
    from detectlab.core.units import ray_options

    u = [Unit("a", _unitfns.square, {"x": 1})]
    assert ray_options(u, "auto") == [{"num_cpus": 1.0, "num_gpus": 0.0}]  # not initialised
    fake_ray._init = True
    assert ray_options(u, "auto") == [{"num_cpus": 1.0, "num_gpus": 0.0}]  # cluster_resources has no "GPU"
    fake_ray.gpus = 1.0
    assert ray_options(u, "auto") == [{"num_cpus": 1.0, "num_gpus": 1.0}]


def test_ray_tasks_threads_device_progress_logs_and_forced_cancel(tmp_path, fake_ray, monkeypatch):
    """Fault caught: a Ray task's thread count not its num_cpus (at least 1), the grid's device not passed to
    the resource requests (cpu runs on a GPU cluster asking for GPUs), no progress bar description or total,
    no log line per finished or failed task, or the tasks left after a bad input cancelled without force
    (a running task would go on to its end)."""
    from detectlab.core import progress

    from test_units_modes import Bars

    bars = Bars()
    monkeypatch.setattr(progress, "make_progress", bars)
    fake_ray.gpus = 4.0
    units = [Unit("a", _unitfns.square, {"x": 1}), Unit("b", _unitfns.square, {"x": 2}, num_cpus=3),
             Unit("c", _unitfns.crash, {"x": 3}, num_cpus=0.5)]
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        with pytest.raises(UnitError):
            run_units(run, units, ray_address="local", device="cpu", description="grid")
    assert fake_ray.threads_seen == [1, 3, 1]
    assert [o["num_gpus"] for o in fake_ray.options_seen] == [0.0, 0.0, 0.0]
    assert bars.tasks == [{"description": "grid", "total": 3, "advanced": 3}]
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "grid: finished a on ray" in log and "grid: unit c failed on ray: TaskError(" in log
    units = [Unit("bad", _unitfns.bad_input, {"path": "x.edf"}), Unit("ok", _unitfns.square, {"x": 2})]
    with Run(tmp_path / "r2", {"k": 1}, "t") as run:
        with pytest.raises(InputError):
            run_units(run, units, ray_address="local")
    assert fake_ray.cancel_kwargs == [{"force": True}]
