"""Validated configuration: bad values exit 2 with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest

BAD = [
    ("data_opts.size=30", "data_opts.size", "multiple of 4"),
    ("aug.crop=80", "aug.crop", "at most data_opts.size"),
    ('strategies=["fedsgd"]', "strategies", "fedavg"),
    ("seeds=[]", "seeds", "empty"),
    ("seeds=[1,1]", "seeds", "distinct"),
    ('model.norm="batch"', "model.norm", "group"),
    ("fl.fraction=0", "fl.fraction", "> 0"),
    ('splits=["random"]', "splits", "chunk"),
    ("fl.lr=-1", "fl.lr", "> 0"),
    ("model.hidden=[8]", "model.hidden", "two hidden"),
]


@pytest.mark.parametrize("override,key,allowed", BAD)
def test_bad_values_exit_2_with_one_line(override, key, allowed, cli, tmp_path):
    """Fault caught: a bad setting accepted (and failing deep in a run, or silently running something else)."""
    rc, out, err = cli(["violence", "run", "--data", "builtin", "--out", tmp_path / "run", override])
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert key in lines[0] and allowed in lines[0]
    assert not (tmp_path / "run" / "units").exists()  # nothing ran


def test_presets_load_and_differ_where_the_recipe_does():
    """Fault caught: the real preset losing the learning recipe, or the paper preset silently using it."""
    from detectlab.core.config import load_config
    from detectlab.violence.config import Config

    real, paper = load_config(Config, "violence", "real"), load_config(Config, "violence", "paper")
    assert real.model.norm == "group" and real.model.input_norm == "chunk" and real.aug.flip and real.aug.stride == 8
    assert real.seeds == [0, 1, 2] and "chunk" in real.splits and real.fl.select == "best_val"
    assert paper.model.norm == "none" and paper.model.input_norm == "fixed" and paper.aug.crop == 0
    assert paper.fl.select == "last" and not paper.fl.keep_optimizer and paper.aug.stride == 16
