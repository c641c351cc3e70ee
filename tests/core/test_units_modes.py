"""How core.units runs a grid: in the parent or in spawned worker processes, with how many threads and
workers, what it writes, logs and shows as progress, and how it names failures (found by mutation testing:
these faults left the other unit tests green)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from detectlab.core import progress
from detectlab.core import units as U
from detectlab.core.errors import InputError
from detectlab.core.runs import Run
from detectlab.core.units import Unit, UnitError, run_units, wants_gpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _unitfns  # noqa: E402


class Bars:
    """A stand-in for progress.make_progress: records every bar's description, total and advances."""

    def __init__(self):
        self.tasks: list[dict] = []

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, total=None):
        self.tasks.append({"description": description, "total": total, "advanced": 0})
        return len(self.tasks) - 1

    def advance(self, task, n=1):
        self.tasks[task]["advanced"] += n


@pytest.fixture
def bars(monkeypatch):
    b = Bars()
    monkeypatch.setattr(progress, "make_progress", b)
    return b


def _log(run_dir: Path) -> str:
    return (run_dir / "log.txt").read_text()


def test_grid_runs_in_the_parent_unless_workers_and_units_are_several(tmp_path, bars):
    """Fault caught: a grid sent to worker processes by default, with --workers 1, or for a single unit left
    to run (a process start for nothing; and state a unit keeps in the parent, such as a feature cache, lost),
    or one kept in the parent when two units and two workers are there; a progress bar without its
    description or total; a result file without its key; a resume without its log line."""
    me = os.getpid()
    two = [Unit("a", _unitfns.probe, {"x": 1}), Unit("b", _unitfns.probe, {"x": 2})]
    with Run(tmp_path / "r1", {"k": 1}, "t") as run:
        res = run_units(run, two)
    assert [r["pid"] for r in res.values()] == [me, me]
    assert bars.tasks == [{"description": "units", "total": 2, "advanced": 2}]
    assert json.loads((tmp_path / "r1" / "units" / "a.json").read_text()) == {"key": "a", "result": res["a"]}
    with Run(tmp_path / "r1", {"k": 1}, "t") as run:  # resume with one more unit and two workers: in the parent
        more = run_units(run, two + [Unit("c", _unitfns.probe, {"x": 3})], workers=2, description="grid")
    assert more["c"]["pid"] == me and bars.tasks[-1] == {"description": "grid", "total": 1, "advanced": 1}
    assert "grid: 2 of 3 already finished, read back" in _log(tmp_path / "r1")
    with Run(tmp_path / "r2", {"k": 1}, "t") as run:
        res = run_units(run, two, workers=2, description="pool")
    assert me not in [r["pid"] for r in res.values()]
    assert bars.tasks[-1] == {"description": "pool", "total": 2, "advanced": 2}
    log = _log(tmp_path / "r2")
    assert "pool: finished a" in log and "pool: finished b" in log


def test_workers_are_spawned_with_their_share_of_threads_and_results_written_as_they_finish(tmp_path, monkeypatch,
                                                                                           bars):
    """Fault caught: worker processes forked instead of spawned (a fork copies the parent's state, and a CUDA
    context does not survive one), each given more or fewer threads than cores // workers (8 cores, 2 workers:
    4), or a unit's result written only when every running unit has finished (a crash then loses finished
    work: here the slow unit waits for the fast one's result file)."""
    monkeypatch.setattr(_unitfns, "MARKER", "changed in the parent")
    monkeypatch.setattr(U.os, "cpu_count", lambda: 8)
    fast_file = tmp_path / "r" / "units" / "fast.json"
    units = [Unit("fast", _unitfns.probe, {"x": 1}),
             Unit("slow", _unitfns.probe, {"x": 2, "wait_for": str(fast_file), "timeout": 60.0})]
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        res = run_units(run, units, workers=2)
    assert [r["marker"] for r in res.values()] == ["as imported", "as imported"]
    assert [r["threads"] for r in res.values()] == [4, 4]
    assert res["slow"]["saw"] is True


def test_no_more_workers_than_asked_and_at_least_one_thread(tmp_path, monkeypatch, bars):
    """Fault caught: a pool as large as the machine instead of --workers (3 cores, 2 workers: never 3 units at
    once), or a worker given 2 threads where its share is 1 (3 cores // 2 workers)."""
    monkeypatch.setattr(U.os, "cpu_count", lambda: 3)
    started = tmp_path / "started"
    started.mkdir()
    units = [Unit(f"u{i}", _unitfns.probe, {"x": i, "started": str(started), "together": 3, "timeout": 2.5})
             for i in range(3)]
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        res = run_units(run, units, workers=2)
    assert max(r["peers"] for r in res.values()) <= 2  # each waited 2.5 s for a third to run beside it
    assert [r["threads"] for r in res.values()] == [1, 1, 1]


def test_failures_are_logged_and_named_together(tmp_path, bars):
    """Fault caught: a failing unit not logged (in the parent with its traceback, in a worker with its error),
    a UnitError that does not list every failure, or a log without the unreadable result file it recomputes."""
    units = [Unit("a", _unitfns.crash, {"x": 1}), Unit("ok", _unitfns.square, {"x": 2}),
             Unit("b", _unitfns.crash, {"x": 2})]
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        with pytest.raises(UnitError) as e:
            run_units(run, units, description="here")
    assert str(e.value) == ("2 of 3 units failed (finished ones are kept): a: RuntimeError('boom 1'); "
                            "b: RuntimeError('boom 2')")
    log = _log(tmp_path / "r")
    assert "here: unit a failed:\nTraceback (most recent call last)" in log and "RuntimeError: boom 2" in log
    assert bars.tasks == [{"description": "here", "total": 3, "advanced": 3}]
    with Run(tmp_path / "r2", {"k": 1}, "t") as run:
        with pytest.raises(UnitError, match=r"^1 of 2 units failed \(finished ones are kept\): a: RuntimeError"):
            run_units(run, units[:2], workers=2, description="pool")
    assert "pool: unit a failed: RuntimeError('boom 1')" in _log(tmp_path / "r2")
    (tmp_path / "r" / "units" / "ok.json").write_text("{cut")
    with Run(tmp_path / "r", {"k": 1}, "t") as run:
        assert run_units(run, units[1:2]) == {"ok": {"sq": 4}}
    assert f"unit ok: unreadable result file {tmp_path / 'r' / 'units' / 'ok.json'}, recomputing" in _log(tmp_path / "r")
    with pytest.raises(ValueError, match=r"^unit keys must be unique$"):
        run_units(Run(tmp_path / "r3", {"k": 1}, "t"), [units[1], units[1]])


def test_input_error_is_looked_for_five_wrappers_deep():
    """Fault caught: the search for an InputError behind wrapped task errors stopping early (four wrappers
    deep it is found) or going on without a bound (five deep it is not; a cycle of causes must not hang the
    grid)."""
    from test_units_ray_glue import TaskError

    def wrapped(n):
        e = InputError("a", "b")
        for _ in range(n):
            e = TaskError(e)
        return e

    for n in range(5):
        assert isinstance(U._input_error(wrapped(n)), InputError), n
    assert U._input_error(wrapped(5)) is None


def test_wants_gpu_by_hand():
    """Fault caught: 'auto' (or no device) asking for GPUs on a cluster without any, or not asking on a
    cluster with one; cuda devices in any case not asking; cpu asking."""
    assert wants_gpu("auto") is False and wants_gpu("") is False and wants_gpu(None) is False
    assert wants_gpu("auto", 1.0) is True and wants_gpu("", 1.0) is True and wants_gpu(None, 2.0) is True
    assert wants_gpu("AUTO", 1.0) is True and wants_gpu("CUDA:1") is True and wants_gpu("cuda") is True
    assert wants_gpu("cpu", 4.0) is False and wants_gpu("auto", 0.0) is False
