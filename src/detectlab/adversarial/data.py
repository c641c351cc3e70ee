"""MNIST idx files (raw or .gz) and PNG images, validated, as float tensors in [0, 1] of shape (N, 1, 28, 28)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detectlab.core.errors import InputError

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Split:
    """Images (N,1,H,W) float32 in [0,1] and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """A class-stratified random subset of n items (all items when n is None or >= len)."""
        if n is None or n <= 0 or n >= len(self):
            return self
        from detectlab.core.splits import stratified_holdout

        _, idx = stratified_holdout(self.y.numpy(), test_size=n / len(self), seed=seed)
        idx = torch.as_tensor(np.sort(idx))
        return Split(self.x[idx], self.y[idx], self.source)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(path, f"cannot read ({e})", "an idx file, raw or gzip-compressed") from None


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read an idx file (the MNIST format): big-endian magic, dimension sizes, then the data.

    Only unsigned-byte data (type code 0x08) is accepted, as in MNIST. Checks the magic number,
    the number of dimensions and that the file holds exactly the announced number of bytes.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    buf = _read_bytes(path)
    if len(buf) < 8:
        raise InputError(path, f"only {len(buf)} bytes, too short for an idx header")
    magic = int.from_bytes(buf[0:4], "big")
    if buf[0] != 0 or buf[1] != 0:
        raise InputError(path, f"bad magic number {magic}", "2051 for images or 2049 for labels")
    dtype_code, ndim = buf[2], buf[3]
    if dtype_code != 0x08:
        raise InputError(path, f"idx data type 0x{dtype_code:02x} is not supported", "unsigned bytes (0x08)")
    if expect_magic is not None and magic != expect_magic:
        raise InputError(path, f"magic number {magic}", f"{expect_magic}")
    if ndim == 0 or len(buf) < 4 + 4 * ndim:
        raise InputError(path, f"truncated header ({ndim} dimensions)")
    dims = [int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(buf) - start != n:
        raise InputError(path, f"holds {len(buf) - start} data bytes but the header announces {n} "
                               f"for shape {tuple(dims)}", "a complete, uncorrupted file")
    return np.frombuffer(buf, dtype=np.uint8, offset=start).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for cand in (folder / f"{stem}.gz", folder / stem, folder / stem.replace("-idx", ".idx")):
        if cand.exists():
            return cand
    raise InputError(folder / f"{stem}.gz", "MNIST file not found", f"{stem}[.gz] in {folder}")


def load_mnist(folder: str | Path, split: str = "train") -> Split:
    """Load an MNIST split ('train' or 't10k'/'test') from a folder of idx files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "MNIST folder does not exist")
    img_stem, lab_stem = _NAMES["test" if split in ("test", "t10k") else "train"]
    ip, lp = _find(folder, img_stem), _find(folder, lab_stem)
    images = read_idx(ip, IMAGE_MAGIC)
    labels = read_idx(lp, LABEL_MAGIC)
    if images.ndim != 3:
        raise InputError(ip, f"image file has {images.ndim} dimensions", "3 (count, rows, cols)")
    if labels.ndim != 1:
        raise InputError(lp, f"label file has {labels.ndim} dimensions", "1")
    if images.shape[0] != labels.shape[0]:
        raise InputError(ip, f"{images.shape[0]} images but {labels.shape[0]} labels in {lp.name}")
    if labels.max(initial=0) > 9:
        raise InputError(lp, f"label {int(labels.max())} out of range", "digits 0-9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Split(x, y, str(ip))


def load_images(paths: list[Path]) -> tuple[torch.Tensor, list[str]]:
    """Load PNG/JPEG images or idx image files for prediction: returns ((N,1,28,28) in [0,1], names).

    Colour images are converted to grayscale; images that are not 28x28 are rejected (the
    classifier and the detector threshold are defined at MNIST's size and scale).
    """
    from PIL import Image, UnidentifiedImageError

    xs, names = [], []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputError(p, "file does not exist")
        if ".idx" in p.name or "idx3" in p.name or p.name.endswith("-ubyte") or p.suffix == ".gz":
            arr = read_idx(p, IMAGE_MAGIC)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.shape[1:] != (28, 28):
                raise InputError(p, f"images are {arr.shape[1]}x{arr.shape[2]}", "28x28")
            xs.append(arr.astype(np.float32) / 255.0)
            names += [f"{p.name}[{i}]" for i in range(arr.shape[0])]
            continue
        try:
            with Image.open(p) as im:
                im.load()
                mode = im.mode
                arr = np.asarray(im.convert("L"), dtype=np.float32)
                if mode in ("I", "I;16", "F"):
                    raise InputError(p, f"image mode {mode} is not 8-bit", "an 8-bit grayscale or RGB image")
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(p, f"not a readable image ({e.__class__.__name__})", "PNG or JPEG") from None
        if arr.shape != (28, 28):
            raise InputError(p, f"image is {arr.shape[1]}x{arr.shape[0]}", "28x28 pixels, as MNIST")
        xs.append(arr[None] / 255.0)
        names.append(p.name)
    x = torch.from_numpy(np.concatenate(xs)).unsqueeze(1)
    if not torch.isfinite(x).all():
        raise InputError(paths[0], "image contains NaN or infinite values")
    return x, names


# ------------------------------------------------------------------------------- data preparation

BUILTIN = "sklearn-digits"


def builtin_digits(seed: int = 0, test_fraction: float = 0.25) -> tuple[Split, Split]:
    """(train, test) of the built-in MNIST-like digits (see synthetic.py)."""
    from detectlab.adversarial.synthetic import builtin_arrays

    xtr, ytr, xte, yte = builtin_arrays(seed, test_fraction)
    return Split(xtr, ytr, BUILTIN), Split(xte, yte, BUILTIN)


def load_data(cfg) -> tuple[Split, Split]:
    """(train, test) for a config: MNIST from its data path, or the built-in digits.

    The training split is cut to `train.n_train` images (class-stratified, seeded); the test split is
    returned whole (the protocol takes its attacked subset and its benign negatives from it).
    """
    from detectlab.adversarial.config import DATA_SUBDIR
    from detectlab.core.config import resolve_data

    path = resolve_data(cfg.data, DATA_SUBDIR)
    if path is None:
        train, test = builtin_digits(seed=0)
    else:
        train, test = load_mnist(path, "train"), load_mnist(path, "test")
    return train.subset(cfg.train.n_train, cfg.seed), test


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff")


def _labels_for(images: Path) -> Path:
    name = images.name
    for a, b in (("images", "labels"), ("idx3", "idx1")):
        name = name.replace(a, b)
    cand = [images.with_name(name)]
    cand += [c.with_name(c.name + ".gz") for c in cand] + [c.with_name(c.name[:-3]) for c in cand if c.name.endswith(".gz")]
    for c in cand:
        if c != images and c.exists():
            return c
    raise InputError(images, "no label file beside the image file",
                     f"{name} (idx labels, magic 2049) in {images.parent}")


def _idx_pair(folder: Path) -> tuple[Path, Path] | None:
    for split in ("test", "train"):
        img_stem, lab_stem = _NAMES[split]
        try:
            return _find(folder, img_stem), _find(folder, lab_stem)
        except InputError:
            continue
    imgs = sorted(p for p in folder.iterdir() if "idx3" in p.name)
    if len(imgs) == 1:
        return imgs[0], _labels_for(imgs[0])
    if len(imgs) > 1:
        raise InputError(folder, f"{len(imgs)} idx image files and no MNIST names",
                         "one images file (idx3) with its labels (idx1), or t10k-/train- MNIST names")
    return None


def _read_pair(ip: Path, lp: Path) -> Split:
    images, labels = read_idx(ip, IMAGE_MAGIC), read_idx(lp, LABEL_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(ip, f"images of shape {images.shape[1:]}", "28x28 images (count, 28, 28)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InputError(ip, f"{images.shape[0]} images but {labels.shape[0] if labels.ndim else 0} labels "
                             f"in {lp.name}")
    if labels.max(initial=0) > 9:
        raise InputError(lp, f"label {int(labels.max())} out of range", "digits 0-9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)), str(ip))


def _png_folder(folder: Path) -> Split | None:
    """A folder of class subfolders 0..9 holding images, or images listed in labels.csv (file,label)."""
    import csv

    items: list[tuple[Path, int]] = []
    csv_path = folder / "labels.csv"
    if csv_path.exists():
        with open(csv_path, newline="") as fh:
            rows = list(csv.reader(fh))
        if rows and not rows[0][-1].strip().lstrip("-").isdigit():
            rows = rows[1:]  # header
        for i, r in enumerate(rows, start=2):
            if len(r) < 2:
                raise InputError(csv_path, f"line {i} has {len(r)} fields", "file,label")
            try:
                lab = int(r[1])
            except ValueError:
                raise InputError(csv_path, f"line {i}: label {r[1]!r} is not an integer", "digits 0-9") from None
            items.append((folder / r[0].strip(), lab))
    else:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
            items += [(p, int(sub.name)) for p in sorted(sub.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
    if not items:
        return None
    bad = [lab for _, lab in items if not 0 <= lab <= 9]
    if bad:
        raise InputError(csv_path if csv_path.exists() else folder, f"label {bad[0]} out of range", "digits 0-9")
    x, _ = load_images([p for p, _ in items])
    return Split(x, torch.tensor([lab for _, lab in items], dtype=torch.int64), str(folder))


def load_labelled(path: str | Path) -> Split:
    """Labelled 28x28 digits for `evaluate`: an idx image file (labels beside it), a folder with an idx
    pair (MNIST names, t10k first), or a folder of PNGs in class subfolders 0-9 or listed in labels.csv."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist", "idx files or a folder of labelled PNG images")
    if path.is_file():
        return _read_pair(path, _labels_for(path))
    pair = _idx_pair(path)
    if pair is not None:
        return _read_pair(*pair)
    split = _png_folder(path)
    if split is None:
        raise InputError(path, "holds no idx files, no class subfolders 0-9 with images and no labels.csv",
                         "MNIST idx files or labelled PNG images")
    return split
