import json
from dataclasses import dataclass, field

import pytest
import torch

from detectlab.core import checkpoints, config
from detectlab.core.config import BaseConfig
from detectlab.core.errors import InputError
from detectlab.core.runs import Run
from detectlab.core.units import Unit, UnitError, run_units


@dataclass
class Train:
    lr: float = 0.1
    epochs: int = 2


@dataclass
class Cfg(BaseConfig):
    eps: list[float] = field(default_factory=lambda: [0.1])
    name: str = "x"
    train: Train = field(default_factory=Train)


def test_overrides_are_typed_and_nested(tmp_path):
    """Fault caught: overrides applied to the wrong level, untyped (a string where an int belongs), an
    unknown key accepted silently, or a config that does not survive its own TOML round trip."""
    preset = tmp_path / "p.toml"
    preset.write_text("eps = [0.2, 0.3]\n[train]\nepochs = 5\n")
    cfg = config.load_config(Cfg, "none", str(preset), ["train.lr=1e-3", "name=abc", "eps=[0.5]"])
    assert cfg.train.epochs == 5 and cfg.train.lr == 1e-3 and cfg.name == "abc" and cfg.eps == [0.5]
    assert cfg.preset == "p"
    with pytest.raises(InputError, match="unknown setting"):
        config.load_config(Cfg, "none", str(preset), ["train.nope=1"])
    with pytest.raises(InputError, match="not of type int"):
        config.load_config(Cfg, "none", str(preset), ["train.epochs=abc"])
    assert config.from_dict(Cfg, config.to_dict(cfg)) == cfg


_calls = []


def _unit(x, fail=False):
    _calls.append(x)
    if fail:
        raise RuntimeError("boom")
    return {"sq": x * x}


def test_units_resume_and_keep_finished(tmp_path):
    """Fault caught: a failing unit losing the finished ones, or a rerun recomputing finished units."""
    cfg = Cfg()
    run = Run(tmp_path / "r", cfg, "t")
    units = [Unit(f"x={i}", _unit, {"x": i, "fail": i == 2}) for i in range(4)]
    with pytest.raises(UnitError, match="1 of 4 units failed"):
        run_units(run, units)
    assert sorted(p.name for p in (tmp_path / "r" / "units").glob("*.json")) == ["x=0.json", "x=1.json", "x=3.json"]
    _calls.clear()
    units[2] = Unit("x=2", _unit, {"x": 2})
    res = run_units(Run(tmp_path / "r", cfg, "t"), units)
    assert _calls == [2]  # only the missing unit ran again
    assert [r["sq"] for r in res.values()] == [0, 1, 4, 9]


def test_run_refuses_resume_with_other_config(tmp_path):
    """Fault caught: a resume with another setting mixing two configs, or one with another runtime field
    (workers, device) refused."""
    Run(tmp_path / "r", Cfg(), "t").close()
    Run(tmp_path / "r", Cfg(workers=4), "t").close()  # runtime fields may differ
    with pytest.raises(InputError, match="different config"):
        Run(tmp_path / "r", Cfg(name="other"), "t")


def test_tables_and_metrics(tmp_path):
    """Fault caught: tables without their CSV twin, NaN written as invalid JSON, tensors not converted."""
    run = Run(tmp_path / "r", Cfg(), "t")
    run.write_table("t1", [{"a": 1, "b": 0.123456}, {"a": 2, "b": float("nan")}], title="T")
    assert "| 1 | 0.1235 |" in (tmp_path / "r/tables/t1.md").read_text()
    assert (tmp_path / "r/tables/t1.csv").read_text().splitlines()[0] == "a,b"
    run.write_metrics({"x": float("nan"), "y": torch.tensor(2.0)})
    assert json.loads((tmp_path / "r/metrics.json").read_text()) == {"x": None, "y": 2.0}


def test_checkpoint_roundtrip_and_errors(tmp_path):
    """Fault caught: weights not restored exactly, a checkpoint of another system or shape accepted, or a
    corrupt file raising a deep safetensors error instead of one line."""
    m = torch.nn.Linear(3, 2)
    p = checkpoints.save_checkpoint(tmp_path / "m.safetensors", m, "sys", {"n": 3})
    m2 = torch.nn.Linear(3, 2)
    header = checkpoints.load_into(m2, p, "sys")
    assert header["model_config"] == {"n": 3}
    assert torch.equal(m.weight, m2.weight)
    with pytest.raises(InputError, match="for system 'sys'"):
        checkpoints.load_checkpoint(p, "other")
    with pytest.raises(InputError, match="do not fit"):
        checkpoints.load_into(torch.nn.Linear(4, 2), p)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="not a readable"):
        checkpoints.read_header(bad)
