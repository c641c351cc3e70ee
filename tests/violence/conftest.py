"""Fixtures for the violence tests: a small synthetic dataset in the real file format, a private chunk
cache, and helpers to write clips and call the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _violence_env(tmp_path_factory):
    """A private chunk cache and a quiet, offline Flower/Ray for every test of this folder."""
    old = {k: os.environ.get(k) for k in ("DETECTLAB_CACHE", "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK",
                                          "RAY_USAGE_STATS_ENABLED")}
    os.environ["DETECTLAB_CACHE"] = str(tmp_path_factory.mktemp("violence_cache"))
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def syn_root(tmp_path_factory) -> Path:
    """2 sites x 3 sources x 4 clips (half fight) of 32 frames at 32x32, in the fight/ + noFight/ layout."""
    from detectlab.violence.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("violence_syn") / "video", n_sites=2, sources_per_site=3,
                        clips_per_source=4, size=32, n_frames=32, seed=3)


@pytest.fixture(scope="session")
def syn_clips(syn_root):
    from detectlab.violence.data import load_clips

    return load_clips(syn_root, size=32)


@pytest.fixture
def write_clip():
    """write_clip(path, frames (T,H,W,3) uint8 or None, n_frames, size, color) -> path (a real H.264 mp4)."""
    from detectlab.violence.synthetic import _write_mp4

    def _w(path: Path, frames: np.ndarray | None = None, n_frames: int = 20, size: int = 32,
           color=(200, 30, 30)) -> Path:
        if frames is None:
            frames = np.broadcast_to(np.asarray(color, np.uint8), (n_frames, size, size, 3)).copy()
        _write_mp4(Path(path), frames)
        return Path(path)

    return _w


@pytest.fixture
def cli(capsys):
    """cli([...]) -> (exit code, stdout, stderr) of detectlab.cli.main."""
    from detectlab.cli import main

    def _run(argv: list[str]):
        rc = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    return _run


#: overrides that keep a federated run to seconds on 2 cores
TINY = ["data_opts.size=32", "aug.crop=0", "model.width=4", "fl.batch=8", "fl.lr=0.003"]


@pytest.fixture(scope="session")
def tiny_overrides():
    return list(TINY)

