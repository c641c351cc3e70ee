"""The shared facilities of issue 11: validated configs, data-pinned resume, grid fields, baselines,
units in worker processes and on Ray (with resume and bad input), interleaved timing, the device of
generators, the evaluate command's run folder."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from detectlab.core import baselines, bench, config, metrics, runtime
from detectlab.core.config import BaseConfig, ConfigError, param
from detectlab.core.errors import InputError
from detectlab.core.runs import Run, evaluation_run, fingerprint
from detectlab.core.units import Unit, UnitError, ray_options, run_units, wants_gpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _unitfns  # noqa: E402


@dataclass
class Attack:
    steps: int = param(40, ge=1)
    step_size: float = param(0.01, gt=0, le=1)
    batch_size: int = param(100, ge=1)

    def validate(self) -> None:
        if self.step_size * self.steps > 100:
            raise ConfigError("attack.step_size", self.step_size, "step_size * steps <= 100")


@dataclass
class Cfg(BaseConfig):
    models: list[str] = param(["natural", "secret"], choices=("natural", "secret"), nonempty=True)
    seeds: list[int] = param([0], ge=0, nonempty=True)
    arch: str = param("a", choices=("a", "b"))
    attack: Attack = field(default_factory=Attack)
    note: str = "x"
    GRID_FIELDS = ("seeds", "models")


def _preset(tmp_path: Path) -> str:
    p = tmp_path / "p.toml"
    p.write_text("note = 'y'\n")
    return str(p)


@pytest.mark.parametrize("override, key", [
    ("attack.steps=-1", "attack.steps"),
    ("attack.batch_size=0", "attack.batch_size"),
    ('models=["foo"]', "models"),
    ("models=[]", "models"),
    ("attack.step_size=0", "attack.step_size"),
    ("attack.step_size=nan", "attack.step_size"),
    ('arch="c"', "arch"),
    ("seeds=[0,-3]", "seeds"),
    ("workers=0", "workers"),
    ("device=gpu", "device"),
])
def test_bad_values_are_refused_with_the_key_the_value_and_what_is_allowed(tmp_path, override, key):
    """Fault caught: a value outside its field's range or choices accepted at load time (steps=-1 ran
    noise and exited 0; batch_size=0 and an unknown model ended in tracebacks after minutes of training)."""
    with pytest.raises(ConfigError) as e:
        config.load_config(Cfg, "none", _preset(tmp_path), [override])
    line = e.value.line()
    assert f"config key '{key}'" in line and "is not allowed" in line and "expected" in line
    assert "\n" not in line


def test_cross_field_rules_and_defaults(tmp_path):
    """Fault caught: a dataclass's own validate() never called (rules across fields silently skipped),
    or list defaults shared between instances."""
    with pytest.raises(ConfigError, match="step_size \\* steps <= 100"):
        config.load_config(Cfg, "none", _preset(tmp_path), ["attack.steps=1000", "attack.step_size=0.5"])
    with pytest.raises(ConfigError, match="'attack.steps'"):
        config.from_dict(Cfg, {"attack": {"steps": 0}})
    a, b = Cfg(), Cfg()
    a.models.append("secret")
    assert b.models == ["natural", "secret"]
    ok = config.load_config(Cfg, "none", _preset(tmp_path), ["attack.steps=5", 'models=["secret"]'])
    assert (ok.attack.steps, ok.models, ok.note) == (5, ["secret"], "y")


def test_config_error_crosses_processes_intact():
    """Fault caught: InputError/ConfigError that cannot be unpickled (its __init__ takes 3 arguments),
    so an error in a worker process became a pickling traceback instead of one line."""
    import pickle

    for err in (InputError("a.edf", "flat channel T3", "a signal"), ConfigError("k", 3, ">= 5")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and back.line() == err.line()


def _data(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    d = tmp_path / name
    for rel, content in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(content)
    return d


def test_fingerprint_sees_names_sizes_and_index_content(tmp_path):
    """Fault caught: a fingerprint blind to a changed label file of the same size, a renamed file or an
    added file (a resume would then mix two data sets)."""
    base = {"labels.csv": b"id,y\n1,0\n", "img/a.png": b"x" * 5000}
    a = fingerprint(_data(tmp_path, "a", base))
    assert fingerprint(_data(tmp_path, "a2", base))["sha256"] == a["sha256"]  # same content elsewhere
    assert fingerprint(_data(tmp_path, "b", {**base, "labels.csv": b"id,y\n1,1\n"}))["sha256"] != a["sha256"]
    assert fingerprint(_data(tmp_path, "c", {"labels.csv": base["labels.csv"], "img/b.png": base["img/a.png"]}))["sha256"] != a["sha256"]
    assert fingerprint(_data(tmp_path, "d", {**base, "img/c.png": b"y"}))["files"] == 3
    assert fingerprint(None) == {"kind": "builtin"}


def test_resume_on_other_data_is_refused(tmp_path):
    """Fault caught: config.toml storing only the unresolved `data` setting, so a rerun with another
    DETECTLAB_DATA read the old checkpoints back and relabelled the metrics (exit 0)."""
    d1 = _data(tmp_path, "d1", {"train.csv": b"1,0\n", "x.bin": b"0" * 100})
    d2 = _data(tmp_path, "d2", {"train.csv": b"1,1\n", "x.bin": b"0" * 100})
    Run(tmp_path / "r", Cfg(), "t", data=d1).close()
    Run(tmp_path / "r", Cfg(), "t", data=d1).close()  # same data: resumes
    with pytest.raises(InputError, match="other data"):
        Run(tmp_path / "r", Cfg(), "t", data=d2)
    with pytest.raises(InputError, match="other data"):
        Run(tmp_path / "r", Cfg(), "t", data=None)  # built-in data instead of the files
    rec = json.loads((tmp_path / "r" / "data.json").read_text())["data"]
    assert rec["resolved"] == str(d1.resolve()) and rec["files"] == 2


def test_same_files_other_data_settings_names_the_setting(tmp_path):
    """Fault caught: a resume refused because only a data setting pinned as `extra` (a subset's size, the
    models of a source run) changed, with a message whose old and new descriptions read the same."""
    d = _data(tmp_path, "d", {"train.csv": b"1,0\n"})
    with Run(tmp_path / "r", Cfg(), "t") as run:
        run.pin_data(d, extra={"n_test": 500})
    with Run(tmp_path / "r", Cfg(), "t") as run:
        with pytest.raises(InputError) as e:
            run.pin_data(d, extra={"n_test": 100})
    assert "n_test: 500 -> 100" in str(e.value) and "same files" in str(e.value)


def test_run_folder_is_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    """Fault caught: a relative --out kept relative, so a unit that runs in another working directory
    (Flower's simulation engine, a Ray worker) looks for the run's files beside the wrong folder (the
    violence real run died with 'runs/violence-real/data/partition-*.npz: No such file')."""
    monkeypatch.chdir(tmp_path)
    run = Run("rel/run", Cfg(), "t")
    monkeypatch.chdir(tmp_path.parent)
    assert run.dir == tmp_path / "rel" / "run"
    assert (run.dir / "config.toml").is_file()
    run.close()


def test_resume_may_add_units_but_not_change_settings(tmp_path):
    """Fault caught: a resume that adds seeds or models refused (all finished work must be redone), or
    one that changes a real setting accepted (results of two configs mixed)."""
    with Run(tmp_path / "r", Cfg(seeds=[0]), "t") as r:
        run_units(r, [Unit("seed=0", _unitfns.square, {"x": 0})])
    log = tmp_path / "calls.txt"
    with Run(tmp_path / "r", Cfg(seeds=[0, 1], models=["natural"]), "t") as r2:
        res = run_units(r2, [Unit(f"seed={s}", _unitfns.square, {"x": s, "log": str(log)}) for s in (0, 1)])
    assert _unitfns.calls(str(log)) == [1] and res["seed=1"] == {"sq": 1}
    with pytest.raises(InputError, match="different config.*note"):
        Run(tmp_path / "r", Cfg(seeds=[0, 1], note="other"), "t")


def test_units_in_two_worker_processes_resume(tmp_path):
    """Fault caught: --workers N losing finished units, recomputing them on a rerun, or running them in
    the parent (the log records each call's process)."""
    log = str(tmp_path / "calls.txt")
    units = [Unit(f"x={i}", _unitfns.square, {"x": i, "log": log}) for i in range(4)]
    run = Run(tmp_path / "r", Cfg(), "t")
    with pytest.raises(UnitError, match="1 of 5 units failed"):
        run_units(run, units + [Unit("x=crash", _unitfns.crash, {"x": 9})], workers=2)
    pids = {line.split()[1] for line in Path(log).read_text().splitlines()}
    assert _unitfns.calls(log) == [0, 1, 2, 3] and str(__import__("os").getpid()) not in pids
    res = run_units(Run(tmp_path / "r", Cfg(), "t"), units + [Unit("x=4", _unitfns.square, {"x": 4, "log": log})],
                    workers=2)
    assert _unitfns.calls(log) == [0, 1, 2, 3, 4]  # only the new unit ran
    assert [v["sq"] for v in res.values()] == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("fn", [_unitfns.bad_input, _unitfns.bad_config])
def test_bad_input_in_a_worker_process_is_one_input_error(tmp_path, fn):
    """Fault caught: an InputError raised inside a worker ending the command as a UnitError traceback
    (exit 1) instead of its one line (exit 2)."""
    kw = {"path": "rec.edf"} if fn is _unitfns.bad_input else {}
    units = [Unit("bad", fn, kw), Unit("ok", _unitfns.square, {"x": 2})]
    with pytest.raises(InputError) as e:
        run_units(Run(tmp_path / "r", Cfg(), "t"), units, workers=2)
    assert ("rec.edf: is not a recording" in e.value.line()) or ("attack.steps" in e.value.line())


def test_units_on_local_ray_resume_and_bad_input(tmp_path, monkeypatch):
    """Fault caught: Ray units not written back (no resume), an InputError in a Ray task surfacing as a
    RayTaskError/UnitError, or workers unable to import the unit functions."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="dlray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    log = str(tmp_path / "calls.txt")
    try:
        units = [Unit(f"x={i}", _unitfns.square, {"x": i, "log": log}) for i in range(3)]
        res = run_units(Run(tmp_path / "r", Cfg(), "t"), units, ray_address="local")
        assert [v["sq"] for v in res.values()] == [0, 1, 4] and _unitfns.calls(log) == [0, 1, 2]
        more = units + [Unit("x=3", _unitfns.square, {"x": 3, "log": log})]
        run_units(Run(tmp_path / "r", Cfg(), "t"), more, ray_address="local")
        assert _unitfns.calls(log) == [0, 1, 2, 3]
        assert ray_options(more[:1], "cpu") == [{"num_cpus": 1.0, "num_gpus": 0.0}]
        with pytest.raises(InputError, match="rec.edf: is not a recording"):
            run_units(Run(tmp_path / "r2", Cfg(), "t"), [Unit("bad", _unitfns.bad_input, {"path": "rec.edf"})],
                      ray_address="local")
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_requests_gpus_when_the_units_run_on_cuda():
    """Fault caught: Ray tasks submitted without resource requests, so on a GPU cluster Ray hides the
    GPUs from every unit and all of them run on the CPU."""
    assert wants_gpu("cuda") and wants_gpu("cuda:1") and wants_gpu("auto", ray_cluster_gpus=4)
    assert not wants_gpu("cpu", ray_cluster_gpus=4) and not wants_gpu("auto", ray_cluster_gpus=0)
    opts = ray_options([Unit("a", _unitfns.square, {}), Unit("b", _unitfns.square, {}, num_cpus=4, num_gpus=0.5)],
                       "cuda")
    assert opts == [{"num_cpus": 1.0, "num_gpus": 1.0}, {"num_cpus": 4.0, "num_gpus": 0.5}]


def test_majority_baseline_predicts_the_training_majority():
    """Fault caught: a majority baseline fitted on the test labels (it would know the test prevalence) or
    predicting the minority class."""
    m = baselines.majority_metrics([0, 0, 0, 1], [1, 1, 1, 0])  # training majority 0, test mostly 1
    assert m["accuracy"] == 0.25 and m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    assert m["balanced_accuracy"] == 0.5 and m["mcc"] == 0.0
    np.testing.assert_allclose(baselines.majority_scores([1, 1, 0, 1], 3), [0.75] * 3)


def test_rows_that_do_not_beat_the_best_baseline_are_marked():
    """Fault caught: a learned row compared with the worst (or another split's) baseline, a tie counted as
    beating it, or lower-is-better metrics compared the wrong way round."""
    rows = [
        {"split": "a", "model": "cnn", "mcc": 0.50},
        {"split": "a", "model": "majority", "kind": "baseline", "mcc": 0.0},
        {"split": "a", "model": "logrms", "kind": "baseline", "mcc": 0.51},
        {"split": "b", "model": "cnn", "mcc": 0.30},
        {"split": "b", "model": "logrms", "kind": "baseline", "mcc": 0.30},
        {"split": "c", "model": "cnn", "mcc": 0.9},
        {"split": "c", "model": "logrms", "kind": "baseline", "mcc": 0.2},
        {"split": "d", "model": "cnn", "mcc": float("nan")},
        {"split": "d", "model": "logrms", "kind": "baseline", "mcc": 0.2},
    ]
    baselines.mark_below_baseline(rows, "mcc", group_by=("split",))
    got = {r["split"]: r["below_baseline"] for r in rows if r.get("kind") == "model"}
    assert got == {"a": True, "b": True, "c": False, "d": True}
    assert rows[0]["best_baseline"] == "logrms (mcc 0.51)"
    fa = [{"model": "m", "fa": 3.0}, {"model": "b", "kind": "baseline", "fa": 5.0}]
    baselines.mark_below_baseline(fa, "fa", higher_is_better=False)
    assert fa[0]["below_baseline"] is False
    assert baselines.below_baseline_summary(rows, group_by=("split",))["a/cnn"]["below_baseline"] is True


def test_balanced_accuracy():
    """Fault caught: balanced accuracy computed as plain accuracy (it hides a majority-class predictor)."""
    assert metrics.balanced_accuracy([1, 0, 0, 0], [0, 0, 0, 0]) == 0.5
    assert metrics.balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 1]) == 0.5
    assert metrics.binary_metrics([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.8])["balanced_accuracy"] == pytest.approx(5 / 6)


def test_interleaved_alternates_and_pairs_the_ratios():
    """Fault caught: ours timed in one block and the peer in another (load drifts into the ratio), or a
    ratio of medians taken from unpaired repetitions."""
    order: list[str] = []
    clock = iter(range(10_000))
    durations = {"ours": 1.0, "peer": 2.0}
    t = [0.0]

    def timer() -> float:
        next(clock)
        return t[0]

    def case(name: str):
        def f():
            order.append(name)
            t[0] += durations[name] * (1 + len(order))  # load grows: later calls are slower
        return f

    res = bench.interleaved({"ours": case("ours"), "peer": case("peer")}, reps=5, warmup=1,
                            ratio=("ours", "peer"), timer=timer)
    assert order == ["ours", "peer"] * 6
    per = res["ratio"]["per_rep"]
    assert len(per) == 5 and per[0] == pytest.approx((1 * 4) / (2 * 5))
    assert res["ratio"]["median"] == pytest.approx(float(np.median(per)))
    assert res["ratio"]["min"] <= res["ratio"]["median"] <= res["ratio"]["max"]
    assert "ours/peer" in bench.format_interleaved(res)


def test_generator_follows_the_device_of_the_data():
    """Fault caught: a CPU generator used for random draws into tensors on another device (PGD's random
    start crashed on CUDA)."""
    x = torch.zeros(3)
    assert runtime.generator(x, 1).device == x.device
    assert runtime.generator("cpu", 1).initial_seed() == 1
    a = torch.rand(3, generator=runtime.generator(x, 5))
    b = torch.rand(3, generator=runtime.generator(x, 5))
    assert torch.equal(a, b)


def test_evaluation_run_pins_its_inputs(tmp_path):
    """Fault caught: an evaluate folder reused for another model run or another data set, silently
    mixing two evaluations."""
    model = tmp_path / "model"
    (model / "checkpoints").mkdir(parents=True)
    (model / "checkpoints" / "m.safetensors").write_bytes(b"123")
    d1 = _data(tmp_path, "site1", {"labels.csv": b"a,0\n"})
    d2 = _data(tmp_path, "site2", {"labels.csv": b"a,1\n"})
    evaluation_run(tmp_path / "ev", "t", model, d1, {"client": 1}).close()
    cfg = (tmp_path / "ev" / "config.toml").read_text()
    assert "evaluate" in cfg and str(d1.resolve()) in cfg
    with pytest.raises(InputError, match="different config"):
        evaluation_run(tmp_path / "ev", "t", model, d2, {"client": 1})
    (model / "checkpoints" / "m.safetensors").write_bytes(b"456")
    with pytest.raises(InputError, match="other data"):
        evaluation_run(tmp_path / "ev", "t", model, d1, {"client": 1})


def test_a_vanished_log_file_never_fails_a_unit(tmp_path):
    """Fault caught: progress.log raising when an earlier run folder (a Run never closed) was deleted, which
    turned every later unit's 'finished' log line into a unit failure."""
    import shutil

    from detectlab.core import progress

    Run(tmp_path / "gone", Cfg(), "t")  # left open on purpose
    shutil.rmtree(tmp_path / "gone")
    with Run(tmp_path / "r", Cfg(), "t") as run:
        res = run_units(run, [Unit("x=3", _unitfns.square, {"x": 3})])
        progress.log("still here")
    assert res == {"x=3": {"sq": 9}}
    assert "still here" in (tmp_path / "r" / "log.txt").read_text()
