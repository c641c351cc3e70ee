"""Deployment engine: a real SuperLink and two SuperNodes on loopback complete two FedPer rounds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file


def test_superlink_and_two_supernodes_run_two_rounds(syn_root, tmp_path):
    from detectlab.violence.flower_app import LocalDeployment, write_app

    out = tmp_path / "run"
    overrides = [f"data={str(syn_root)!r}", 'strategies=["fedper"]', "fl.rounds=2", "fl.epochs=1",
                 "data_opts.size=16", "model.width=4", "fl.batch=8"]
    app = write_app(tmp_path / "app", "smoke", overrides, out)
    assert 'serverapp = "detectlab.violence.server_app:app"' in (app / "pyproject.toml").read_text()
    dep = LocalDeployment(tmp_path / "deployment", n_nodes=2)
    procs = []
    try:
        dep.start()
        procs = list(dep.procs)
        assert all(p.poll() is None for p in procs) and len(procs) == 3
        r = dep.run_app(app, timeout=420)
        unit = out / "units" / "balanced2-fedper.json"
        assert r.returncode == 0 and unit.exists(), dep.logs() + r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        dep.stop()
    assert procs and all(p.poll() is not None for p in procs)  # SuperLink and SuperNodes stopped
    res = json.loads(unit.read_text())["result"]
    assert res["rounds"] == 2 and len(res["history"]) == 2 and set(res["per_client"]) == {"0", "1"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["experiments"]["balanced2"]["strategies"]["fedper"]["bytes_per_round"]["up"] == \
        2 * 4 * m["model"]["base"]
    # the heads lived in each SuperNode's context.state across rounds and differ per client
    c0 = load_file(str(out / "checkpoints" / "balanced2-fedper-client0.safetensors"))
    c1 = load_file(str(out / "checkpoints" / "balanced2-fedper-client1.safetensors"))
    assert not np.allclose(c0["head.fc1.weight"], c1["head.fc1.weight"])
    assert np.array_equal(c0["base.merge.0.weight"], c1["base.merge.0.weight"])
