from pathlib import Path

import numpy as np
import pytest

from detectlab.seizure.config import SyntheticConfig

TINY = SyntheticConfig(n_patients=4, duration_s=100.0, duration_sd=5.0, seizure_min_s=25.0, seizure_max_s=35.0,
                       fs=128.0, seed=3)


@pytest.fixture(scope="session")
def tiny_edf_dir(tmp_path_factory) -> Path:
    """Four synthetic patients written as EDF+ (128 Hz, ~100 s, one 25-35 s seizure each)."""
    from detectlab.seizure.synthetic import write_patients

    d = tmp_path_factory.mktemp("seizure_edf")
    write_patients(d, TINY)
    return d


@pytest.fixture(scope="session")
def tiny_store(tiny_edf_dir, tmp_path_factory):
    """The window store of the four tiny patients (128 Hz, robust standardisation)."""
    from detectlab.core.config import from_dict
    from detectlab.seizure.config import Config
    from detectlab.seizure.data import WindowStore, prepare_data

    cfg = from_dict(Config, {"preprocess": {"fs": 128.0}})
    out = tmp_path_factory.mktemp("tiny_store") / "windows"
    return WindowStore(prepare_data(cfg, out, tiny_edf_dir))


@pytest.fixture
def write_raw():
    """write_raw(path, names, data (n_ch, n) volts, fs, seizures) -> path: an EDF+ via MNE/edfio."""
    from detectlab.seizure.data import write_edf

    def _w(path, names, data=None, fs=128.0, seizures=(), seconds=20.0, seed=0):
        if data is None:
            rng = np.random.default_rng(seed)
            data = rng.normal(0, 20e-6, (len(names), int(seconds * fs)))
        return write_edf(path, data, fs, list(names), list(seizures))

    return _w


@pytest.fixture
def edf_plus():
    """edf_plus(path, seconds, fs, annotations, record_onsets, names) -> path: an EDF+ written record by
    record (zero-duration markers, EDF+D gaps), 18 bipolar channels of noise with a burst at 10-12 s."""
    from detectlab.seizure.synthetic import write_edf_plus

    def _w(path, seconds=30, fs=128, annotations=(), record_onsets=None, names=None, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.normal(0, 20e-6, (18 if names is None else len(names), int(seconds * fs)))
        return write_edf_plus(path, [x], fs, int(seconds), names, list(annotations), record_onsets)

    return _w


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """These models are tiny: one intra-op thread is as fast and avoids OpenMP spin-waits on busy machines
    (the CLI's set_threads reads DETECTLAB_THREADS)."""
    import torch

    monkeypatch.setenv("DETECTLAB_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
