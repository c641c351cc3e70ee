"""train.prepare on the built-in clips: combined4 pools two datasets, the chunk split is leaky and the source-video
split is not, node folders (partition.client_from_folder)."""

from __future__ import annotations

import numpy as np


def test_prepare_combined4_pools_two_builtin_datasets(tmp_path):
    """Fault caught: combined4 (Table III) reading one dataset only, or its clients' shares ignoring Table III."""
    from detectlab.core.config import load_config
    from detectlab.core.runs import Run
    from detectlab.violence import train
    from detectlab.violence.config import Config

    cfg = load_config(Config, "violence", "smoke", ["data=builtin", "data_opts.size=16", "aug.crop=0",
                                                    "data_opts.syn_size=32", "data_opts.syn_sources_per_site=3",
                                                    "data_opts.syn_clips_per_source=4"])  # the count below, by hand
    with Run(tmp_path / "run", cfg, "violence") as run:
        job = train.prepare(cfg, run, "combined4", seed=0)
    clients = job["clients"]
    assert job["n_clients"] == 4 and len(clients) == 4 and job["key"] == "combined4-seed0"
    total = sum(c[f"{p}_{k}"] for c in clients for p in ("train", "val", "test") for k in ("fight", "nonfight"))
    assert total == 2 * 2 * 3 * 4 * 2  # two datasets x 2 sites x 3 sources x 4 clips x 2 chunks
    size = [c["train_fight"] + c["train_nonfight"] + c["val_fight"] + c["val_nonfight"] for c in clients]
    assert size[1] < size[3]  # Table III: client 2 is the smallest, client 4 among the largest
    with np.load(job["partition_file"]) as z:
        assert int(z["n_clients"]) == 4 and any(str(g).startswith("ds2:") for g in z["clip_group"])


def test_chunk_split_is_leaky_and_source_split_is_not(tmp_path):
    """Fault caught: the 'chunk split' column computed on the source-video split (it would not show the leak),
    or the source split letting a clip's chunks (or a source video) into both train and test."""
    from detectlab.core.config import load_config
    from detectlab.core.runs import Run
    from detectlab.violence import train
    from detectlab.violence.config import Config

    cfg = load_config(Config, "violence", "smoke", ["data=builtin", "data_opts.size=16", "aug.crop=0",
                                                    "data_opts.syn_size=32", "data_opts.syn_frames=48"])
    with Run(tmp_path / "run", cfg, "violence") as run:
        sides = {}
        for split in ("source", "chunk"):
            job = train.prepare(cfg, run, "balanced2", seed=0, split=split)
            with np.load(job["partition_file"]) as z:
                parent, group = z["clip_parent"], z["clip_group"]
                tr = np.concatenate([z[f"{p}_{i}"] for i in range(2) for p in ("train", "val")])
                te = np.concatenate([z[f"test_{i}"] for i in range(2)])
            sides[split] = (set(parent[tr]) & set(parent[te]), set(group[tr]) & set(group[te]))
            assert job["key"] == ("balanced2-seed0" if split == "source" else "balanced2-chunksplit-seed0")
    assert sides["source"] == (set(), set())
    assert len(sides["chunk"][0]) >= 3 and sides["chunk"][1] == set()  # clips on both sides, no shared item



def test_job_paths_are_absolute_with_a_relative_out(tmp_path, monkeypatch):
    """Fault caught: a relative `--out` (the documented `--out runs/violence-real`) written into the job as a
    relative path; the ClientApps and the ServerApp run in other working directories, so every client's census
    failed with "No such file or directory: 'runs/.../partition-....npz'"."""
    from pathlib import Path

    from detectlab.core.config import load_config
    from detectlab.core.runs import Run
    from detectlab.violence import train
    from detectlab.violence.config import Config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(Config, "violence", "smoke", ["data=builtin", "data_opts.size=16", "aug.crop=0",
                                                    "data_opts.syn_size=32"])
    with Run(Path("runs") / "rel", cfg, "violence") as run:
        job = train.prepare(cfg, run, "balanced2", seed=0)
    monkeypatch.chdir(tmp_path.parent)  # another working directory, as a ClientApp has
    assert Path(job["out"]).is_absolute() and Path(job["out"]) == (tmp_path / "runs" / "rel").resolve()
    assert Path(job["partition_file"]).is_absolute() and Path(job["partition_file"]).exists()
