"""OCT B-scan readers, label derivation and preprocessing.

Accepted layouts (``load_dataset`` picks by what the folder holds):

1. **RETOUCH volumes**: any folder below the root holding ``oct.mhd`` (+ its .raw) and ``reference.mhd``
   (the voxel annotation; any label > 0 is fluid). Each B-scan (the slowest axis, z) becomes one sample,
   labelled "fluid" when its mask slice has any fluid voxel; the subject is the folder name.
2. **Labels CSV** (``labels.csv``, e.g. Duke DME ``duke_dme_chiu2015``): columns ``image`` (path relative
   to the CSV), and ``label`` (fluid / no_fluid; also normal, 1/0) and/or ``mask`` (an image whose pixels
   > 127 are fluid: the label is derived from it when ``label`` is absent); optional ``subject``.
   A folder holding one such dataset folder (e.g. ``oct/`` holding ``duke_dme_chiu2015/``) also works.
3. **Class per folder** (Kermany OCT2017): ``<root>/<class>/*.jpeg|png|tif`` (or ``<root>/train/<class>``);
   fluid classes: fluid, CNV, DME; fluid-free classes: no_fluid, normal, DRUSEN.

Images are kept as uint8 grey arrays; ``to_tensor`` does the paper's preprocessing (optional resize of
the shorter side, centre crop to the model's input size, rescale to [-1, 1]) for the whole set at once.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.core.errors import InputError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
POSITIVE = {"fluid", "cnv", "dme", "1", "true", "yes"}
NEGATIVE = {"no_fluid", "nofluid", "normal", "drusen", "0", "false", "no"}

#: MetaImage element types we read (scalar grey levels)
MET_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
             "MET_FLOAT": 4, "MET_DOUBLE": 8}


@dataclass
class BScans:
    """N grey B-scans (a list of uint8 (H, W) arrays), labels (1 = fluid) and subjects."""

    images: list[np.ndarray]
    labels: np.ndarray
    subjects: np.ndarray
    names: list[str]
    source: str = ""
    groups_known: bool = True
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        return {"fluid": int(self.labels.sum()), "no_fluid": int((self.labels == 0).sum())}


# ---------------------------------------------------------------- MetaImage
def read_mhd_header(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "MetaImage header does not exist", "an .mhd file with its .raw data file")
    try:
        text = path.read_text(errors="strict")
    except (UnicodeDecodeError, OSError):
        raise InputError(path, "not a text MetaImage header", "an ASCII .mhd header") from None
    hdr = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            hdr[k.strip()] = v.strip()
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in hdr:
            raise InputError(path, f"MetaImage header lacks {key}", "NDims, DimSize, ElementType, ElementDataFile")
    return hdr


def check_mhd(path: Path) -> tuple[int, ...]:
    """Validate a header against its raw file before SimpleITK reads it; returns DimSize (x, y[, z])."""
    hdr = read_mhd_header(path)
    etype = hdr["ElementType"]
    if etype not in MET_TYPES:
        raise InputError(path, f"unsupported pixel type {etype}", "one of " + ", ".join(MET_TYPES))
    channels = int(hdr.get("ElementNumberOfChannels", "1") or 1)
    if channels != 1:
        raise InputError(path, f"{channels} channels per voxel", "a single-channel grey volume")
    try:
        dims = tuple(int(d) for d in hdr["DimSize"].split())
    except ValueError:
        raise InputError(path, f"bad DimSize '{hdr['DimSize']}'", "integers") from None
    if len(dims) not in (2, 3) or len(dims) != int(hdr["NDims"]):
        raise InputError(path, f"NDims {hdr['NDims']} with DimSize {dims}", "a 2-D or 3-D image")
    data = hdr["ElementDataFile"]
    if data == "LOCAL" or data.startswith("LIST"):
        return dims
    raw = path.parent / data
    if not raw.is_file():
        raise InputError(raw, "raw data file named by the header does not exist", "the .raw beside the .mhd")
    compressed = hdr.get("CompressedData", "False").lower() == "true"
    if not compressed:
        want = int(np.prod(dims)) * MET_TYPES[etype] + int(hdr.get("HeaderSize", "0") or 0)
        have = raw.stat().st_size
        if have != want:
            raise InputError(raw, f"raw size {have} bytes does not match the header ({dims} x {etype} = "
                                  f"{want} bytes)", "a raw file of exactly DimSize x element size")
    return dims


def read_mhd(path: Path) -> np.ndarray:
    """A MetaImage volume as a numpy array (z, y, x) (or (y, x) for 2-D), validated first."""
    import SimpleITK as sitk

    check_mhd(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(path, f"SimpleITK cannot read it ({str(e).splitlines()[-1][:150]})",
                         "a valid MetaImage .mhd/.raw pair") from None
    return sitk.GetArrayFromImage(img)


def to_uint8(vol: np.ndarray) -> np.ndarray:
    """Scale any grey volume to uint8 (0-255 kept as is for uint8; min-max otherwise)."""
    if vol.dtype == np.uint8:
        return vol
    v = vol.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    return np.zeros(v.shape, np.uint8) if hi <= lo else np.round((v - lo) / (hi - lo) * 255).astype(np.uint8)


def slice_labels(mask: np.ndarray) -> np.ndarray:
    """Per B-scan label: 1 when the slice's mask has any fluid voxel (> 0). mask is (z, y, x)."""
    return (mask.reshape(mask.shape[0], -1) > 0).any(axis=1).astype(np.int64)


def load_volume_pair(oct_path: Path, ref_path: Path) -> tuple[np.ndarray, np.ndarray]:
    vol = read_mhd(oct_path)
    mask = read_mhd(ref_path)
    if vol.shape != mask.shape:
        raise InputError(ref_path, f"mask shape {mask.shape} differs from the volume's {vol.shape}",
                         "a reference of the same size as oct.mhd")
    if vol.ndim == 2:
        vol, mask = vol[None], mask[None]
    return to_uint8(vol), mask


def load_retouch(root: Path) -> BScans:
    octs = sorted(root.rglob("oct.mhd"))
    images, labels, subjects, names = [], [], [], []
    for o in octs:
        ref = o.parent / "reference.mhd"
        if not ref.exists():
            raise InputError(o.parent, "oct.mhd without reference.mhd", "the RETOUCH layout: oct.mhd + reference.mhd")
        vol, mask = load_volume_pair(o, ref)
        lab = slice_labels(mask)
        images += list(vol)
        labels.append(lab)
        subj = o.parent.name
        subjects += [subj] * len(vol)
        names += [f"{subj}/{i}" for i in range(len(vol))]
    return BScans(images, np.concatenate(labels), np.asarray(subjects), names, str(root))


# ---------------------------------------------------------------- 2-D images
def read_image(path: Path) -> np.ndarray:
    """A 2-D image as uint8 grey (H, W); RGB is averaged."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image does not exist", "a PNG/JPEG/TIFF B-scan")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im.convert("L") if mode not in ("L", "I;16", "I", "F") else im)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(path, f"not a readable image ({e.__class__.__name__})", "a PNG/JPEG/TIFF B-scan") from None
    if arr.ndim != 2:
        raise InputError(path, f"image has shape {arr.shape}", "a 2-D grey or RGB image")
    return to_uint8(arr)


def mask_has_fluid(mask: np.ndarray) -> bool:
    return bool((mask > 127).any())


def _norm_label(value: str, where: str) -> int:
    v = value.strip().lower()
    if v in POSITIVE:
        return 1
    if v in NEGATIVE:
        return 0
    raise InputError(where, f"unknown label '{value}'", "fluid or no_fluid (or normal, 1, 0)")


def load_labels_csv(csv_path: Path) -> BScans:
    root = csv_path.parent
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputError(csv_path, "labels CSV has no rows", "a header and one row per B-scan")
    cols = set(rows[0])
    if "image" not in cols or not ({"label", "mask"} & cols):
        raise InputError(csv_path, f"columns {sorted(cols)}", "columns image, label and/or mask, optional subject")
    images, labels, subjects, names = [], [], [], []
    for i, r in enumerate(rows, start=2):
        p = root / r["image"]
        img = read_image(p)
        if r.get("mask"):
            mp = root / r["mask"]
            m = read_image(mp)
            if m.shape != img.shape:
                raise InputError(mp, f"mask shape {m.shape} differs from the image's {img.shape}",
                                 "a mask of the same size as its B-scan")
            derived = int(mask_has_fluid(m))
        else:
            derived = None
        lab = _norm_label(r["label"], f"{csv_path}:{i}") if r.get("label") else derived
        if lab is None:
            raise InputError(f"{csv_path}:{i}", "row has neither a label nor a mask", "label or mask")
        images.append(img)
        labels.append(lab)
        subjects.append(r.get("subject") or r["image"])
        names.append(r["image"])
    known = "subject" in cols
    return BScans(images, np.asarray(labels, np.int64), np.asarray(subjects), names, str(csv_path), known)


def _class_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in POSITIVE | NEGATIVE)


def load_class_folders(root: Path) -> BScans:
    if (root / "train").is_dir() and not _class_folders(root):
        root = root / "train"
    images, labels, subjects, names = [], [], [], []
    for d in _class_folders(root):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXT)
        if not files:
            raise InputError(d, "empty class folder", "B-scan images (.png/.jpeg/.tif) in every class folder")
        lab = _norm_label(d.name, str(d))
        for f in files:
            images.append(read_image(f))
            labels.append(lab)
            # Kermany names: CNV-<patient>-<n>.jpeg; the patient id groups the splits
            m = re.match(r"^[A-Za-z]+-(\d+)-\d+", f.stem)
            subjects.append(m.group(1) if m else f.stem)
            names.append(f"{d.name}/{f.name}")
    known = all(re.match(r"^[A-Za-z]+-(\d+)-\d+", Path(n).stem) for n in names)
    return BScans(images, np.asarray(labels, np.int64), np.asarray(subjects), names, str(root), known)


def load_dataset(path: Path) -> BScans:
    """Read any of the three layouts and check the result has both classes."""
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        ds = load_labels_csv(path)
    elif not path.is_dir():
        raise InputError(path, "data path is neither a folder nor a labels CSV", "a folder in an OCT layout")
    elif (path / "labels.csv").is_file():
        ds = load_labels_csv(path / "labels.csv")
    elif any(path.rglob("oct.mhd")):
        ds = load_retouch(path)
    elif _class_folders(path) or ((path / "train").is_dir() and _class_folders(path / "train")):
        ds = load_class_folders(path)
    else:
        subs = [d for d in sorted(path.iterdir()) if d.is_dir() and (d / "labels.csv").is_file()]
        if not subs:
            raise InputError(path, "no OCT data found",
                             "labels.csv, RETOUCH oct.mhd + reference.mhd folders, or class folders (fluid/no_fluid)")
        ds = load_labels_csv(subs[0] / "labels.csv")
    if len(ds) == 0:
        raise InputError(path, "no B-scans found", "at least one B-scan per class")
    for cls, n in ds.counts().items():
        if n == 0:
            raise InputError(path, f"class '{cls}' is empty", "B-scans of both classes (fluid and no_fluid)")
    return ds


# ---------------------------------------------------------------- preprocessing
def _stack_same_shape(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group image indices by shape: [(indices, stacked uint8 array)]."""
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        shapes.setdefault(im.shape, []).append(i)
    return [(np.asarray(idx), np.stack([images[i] for i in idx])) for idx in shapes.values()]


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop (N, C, H, W) to size x size; zero-pads (in the output scale) when the image is smaller."""
    h, w = x.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def to_tensor(images: list[np.ndarray], size: int, resize: int = 0, denoise: bool = False) -> torch.Tensor:
    """The paper's preprocessing for a whole set: (N, 1, size, size) float32 in [-1, 1].

    resize > 0 first scales each image so its shorter side is `resize` px (0: no scaling, as in the
    paper). denoise applies a 3x3 median filter (an option beyond the paper).
    """
    out = torch.empty(len(images), 1, size, size)
    for idx, arr in _stack_same_shape(images):
        x = torch.from_numpy(arr).float().unsqueeze(1).div_(127.5).sub_(1.0)
        if denoise:
            x = median3(x)
        if resize > 0:
            h, w = x.shape[-2:]
            s = resize / min(h, w)
            x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                              antialias=True, align_corners=False)
        out[torch.from_numpy(idx)] = centre_crop(x, size)
    return out.clamp_(-1, 1)


def median3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median filter of (N, 1, H, W), edges replicated; vectorised with unfold."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    n, c, h, w = x.shape
    patches = F.unfold(p, 3)  # (N, 9, H*W)
    return patches.median(dim=1).values.view(n, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator, shift: int = 8) -> torch.Tensor:
    """Simple augmentation (beyond the paper): random horizontal flip, shift up to `shift` px, contrast +-10%."""
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if shift > 0:
        dx, dy = (torch.randint(-shift, shift + 1, (2,), generator=g)).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.2
    return (x * gain).clamp(-1, 1)
