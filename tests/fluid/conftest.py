from pathlib import Path

import numpy as np
import pytest


def _write_mhd(path: Path, arr: np.ndarray) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


@pytest.fixture
def write_mhd():
    """write_mhd(path, array (z, y, x)) -> path: a real MetaImage .mhd + .raw written by SimpleITK."""
    return _write_mhd


@pytest.fixture
def write_png():
    from PIL import Image

    def w(path: Path, arr: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        return path

    return w


@pytest.fixture(scope="session")
def syn_root(tmp_path_factory) -> Path:
    """Four small synthetic volumes (RETOUCH layout), written once per session."""
    from detectlab.fluid.synthetic import generate

    return generate(tmp_path_factory.mktemp("fluid_syn"), volumes=4, slices=8, height=48, width=48, seed=1)
