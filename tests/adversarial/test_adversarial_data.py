import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from detectlab.adversarial.data import load_images, load_mnist, read_idx
from detectlab.core.errors import InputError


def write_idx(path, arr, magic, compress=False):
    arr = np.asarray(arr, dtype=np.uint8)
    head = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = head + arr.tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_mnist(folder, n=7, compress=True, labels=None):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labs = np.arange(n) % 10 if labels is None else labels
    suf = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suf}", imgs, 2051, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suf}", labs, 2049, compress)
    return imgs, labs


@pytest.mark.parametrize("compress", [True, False])
def test_reads_idx_gz_and_raw(tmp_path, compress):
    imgs, labs = make_mnist(tmp_path, compress=compress)
    s = load_mnist(tmp_path, "train")
    assert s.x.shape == (7, 1, 28, 28) and s.x.dtype.is_floating_point
    np.testing.assert_allclose(s.x[:, 0].numpy() * 255, imgs, atol=1e-4)
    assert s.y.tolist() == labs.tolist()


def test_bad_magic_truncated_and_mismatch(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    write_idx(p, np.zeros((2, 28, 28)), 2049)
    with pytest.raises(InputError, match="magic number 2049"):
        read_idx(p, 2051)
    write_idx(p, np.zeros((2, 28, 28)), 2051)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(InputError, match="announces 1568"):
        read_idx(p, 2051)
    p.write_bytes(b"\x08\x01\x02\x03garbage")
    with pytest.raises(InputError, match="bad magic"):
        read_idx(p)
    make_mnist(tmp_path, n=5)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4), 2049, True)
    with pytest.raises(InputError, match="5 images but 4 labels"):
        load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="cannot read"):
        load_mnist(tmp_path)


def test_load_png_and_reject_wrong_size(tmp_path):
    a = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(np.stack([a] * 3, -1)).save(tmp_path / "rgb.png")
    x, names = load_images([tmp_path / "a.png", tmp_path / "rgb.png"])
    assert x.shape == (2, 1, 28, 28) and names == ["a.png", "rgb.png"]
    np.testing.assert_allclose(x[0, 0].numpy() * 255, a, atol=1e-4)
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="28x30"):
        load_images([tmp_path / "big.png"])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="not a readable image"):
        load_images([tmp_path / "junk.png"])


def test_real_mnist_counts(real_data):
    folder = real_data / "mnist"
    if not folder.exists():
        pytest.skip(f"{folder} absent")
    tr, te = load_mnist(folder, "train"), load_mnist(folder, "test")
    assert len(tr) == 60000 and len(te) == 10000
    # per-digit counts from shared/data/mnist/SOURCE.md
    assert np.bincount(tr.y.numpy()).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(te.y.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 0.12 < float(tr.x.mean()) < 0.14  # MNIST's well-known mean 0.1307
