import os
from pathlib import Path

import pytest

from detectlab.core.config import data_root


@pytest.fixture(scope="session")
def real_data() -> Path:
    """DETECTLAB_DATA (or ../shared/data); tests that need it skip with a visible reason when absent."""
    root = data_root()
    if root is None or not root.exists():
        pytest.skip("real data not found: set DETECTLAB_DATA to the shared data folder")
    return root


@pytest.fixture(autouse=True)
def _quiet_threads():
    import torch

    n = int(os.environ.get("DETECTLAB_THREADS", 0)) or min(2, os.cpu_count() or 1)
    torch.set_num_threads(n)
    yield


@pytest.fixture(scope="session")
def load_bench():
    """load_bench("fluid") -> the module benchmarks/bench_fluid.py of this checkout (its main(argv) runs it)."""
    import importlib.util

    def load(system: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"bench_{system}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{system}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
