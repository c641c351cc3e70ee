"""OCT B-scan readers, label derivation, preprocessing, augmentation, splits and data preparation.

Accepted layouts (``load_dataset`` picks by what the folder holds):

1. **RETOUCH volumes**: any folder below the root holding ``oct.mhd`` (+ its .raw) and ``reference.mhd``
   (the voxel annotation; any label > 0 is fluid). Each B-scan (the slowest axis, z) becomes one sample,
   labelled "fluid" when its mask slice has any fluid voxel; the subject is the folder name.
2. **Labels CSV** (``labels.csv``, e.g. Duke DME ``duke_dme_chiu2015``): columns ``image`` (path relative
   to the CSV), and ``label`` (fluid / no_fluid; also normal, 1/0) and/or ``mask`` (an image whose pixels
   > 127 are fluid: the label is derived from it when ``label`` is absent); optional ``subject``.
   A folder holding one such dataset folder (e.g. ``oct/`` holding ``duke_dme_chiu2015/``) also works.
3. **Class per folder** (Kermany OCT2017): ``<root>/<class>/*.jpeg|png|tif``, and ``<root>/train|test|val/
   <class>/`` (all splits are read); fluid classes: fluid, CNV, DME; fluid-free: no_fluid, normal, DRUSEN.
   These images are read lazily (one batch at a time), never all at once.

Fluid masks are kept (native resolution, only for B-scans with fluid) wherever the layout has them, so
the label of a B-scan is derived from the region the network actually sees (``prepare``).

Preprocessing (``Prep``) maps every B-scan to a box in its native pixels, then scales the box to the
network's input: ``centre`` is the paper's centre crop (after an optional shorter-side resize), ``retina``
is the retina band (rows centred on the retina's intensity centroid, the white registration wedge set to
background first). The prepared set is uint8 (N, 1, H, W); ``Prepared.batch`` gives float [0, 1] batches
on the device, and the model normalises them with its weights' mean and SD.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detectlab.core.errors import InputError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
POSITIVE = {"fluid", "cnv", "dme", "1", "true", "yes"}
NEGATIVE = {"no_fluid", "nofluid", "normal", "drusen", "0", "false", "no"}
KERMANY_SPLITS = ("train", "test", "val")
_KERMANY_NAME = re.compile(r"^[A-Za-z]+-(\d+)-\d+")

#: MetaImage element types we read (scalar grey levels)
MET_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
             "MET_FLOAT": 4, "MET_DOUBLE": 8}


class LazyImages(Sequence):
    """A sequence of B-scans read from their files on access (a large set is never held in memory)."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [read_image(p) for p in self.paths[i]]
        return read_image(self.paths[i])


@dataclass
class BScans:
    """N grey B-scans (uint8 (H, W) arrays, in memory or lazy), labels (1 = fluid), subjects, masks."""

    images: Sequence[np.ndarray]
    labels: np.ndarray
    subjects: np.ndarray
    names: list[str]
    source: str = ""
    groups_known: bool = True
    #: per B-scan: a bool (H, W) fluid mask, or None (no fluid, or no mask known); None: no masks at all
    masks: list[np.ndarray | None] | None = None
    #: per B-scan: the MetaImage volume it came from and its slice index ("" / -1 for 2-D images)
    volumes: list[str] = field(default_factory=list)
    slices: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def lazy(self) -> bool:
        return isinstance(self.images, LazyImages)

    def counts(self) -> dict[str, int]:
        return {"fluid": int(self.labels.sum()), "no_fluid": int((self.labels == 0).sum())}

    def subset(self, idx: Sequence[int]) -> "BScans":
        idx = [int(i) for i in idx]
        imgs = LazyImages([self.images.paths[i] for i in idx]) if self.lazy else [self.images[i] for i in idx]
        return replace(self, images=imgs, labels=self.labels[idx], subjects=self.subjects[idx],
                       names=[self.names[i] for i in idx],
                       masks=None if self.masks is None else [self.masks[i] for i in idx],
                       volumes=[self.volumes[i] for i in idx] if self.volumes else [],
                       slices=[self.slices[i] for i in idx] if self.slices else [])


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


def volume_bscans(vol: np.ndarray, mask: np.ndarray | None, name: str) -> BScans:
    """The B-scans of one volume (z, y, x) as a BScans (subject = volume name)."""
    z = len(vol)
    lab = slice_labels(mask) if mask is not None else np.zeros(z, np.int64)
    masks = None if mask is None else [(mask[i] > 0) if lab[i] else None for i in range(z)]
    return BScans(list(vol), lab, np.asarray([name] * z), [f"{name}[{i}]" for i in range(z)], name, True,
                  masks, [name] * z, list(range(z)))


def concat(parts: list[BScans], source: str, groups_known: bool = True) -> BScans:
    masks: list | None = []
    for p in parts:
        masks = None if (masks is None or p.masks is None) else masks + p.masks
    return BScans([im for p in parts for im in p.images], np.concatenate([p.labels for p in parts]),
                  np.concatenate([p.subjects for p in parts]), [n for p in parts for n in p.names], source,
                  groups_known, masks, [v for p in parts for v in p.volumes], [s for p in parts for s in p.slices])


def load_retouch(root: Path) -> BScans:
    parts = []
    for o in sorted(root.rglob("oct.mhd")):
        ref = o.parent / "reference.mhd"
        if not ref.exists():
            raise InputError(o.parent, "oct.mhd without reference.mhd", "the RETOUCH layout: oct.mhd + reference.mhd")
        vol, mask = load_volume_pair(o, ref)
        part = volume_bscans(vol, mask, o.parent.name)
        part.names = [f"{o.parent.name}/{i}" for i in range(len(vol))]
        parts.append(part)
    return concat(parts, str(root))


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
    has_masks = "mask" in cols and all(r.get("mask") for r in rows)
    images, labels, subjects, names, masks = [], [], [], [], []
    for i, r in enumerate(rows, start=2):
        p = root / r["image"]
        img = read_image(p)
        m = None
        if r.get("mask"):
            mp = root / r["mask"]
            m = read_image(mp) > 127
            if m.shape != img.shape:
                raise InputError(mp, f"mask shape {m.shape} differs from the image's {img.shape}",
                                 "a mask of the same size as its B-scan")
        derived = None if m is None else int(m.any())
        lab = _norm_label(r["label"], f"{csv_path}:{i}") if r.get("label") else derived
        if lab is None:
            raise InputError(f"{csv_path}:{i}", "row has neither a label nor a mask", "label or mask")
        if derived is not None and derived != lab:
            raise InputError(f"{csv_path}:{i}", f"label '{r['label']}' contradicts its mask {r['mask']} "
                                                 f"({'has' if derived else 'has no'} fluid pixels)",
                             "a label that agrees with the mask (or no label column)")
        images.append(img)
        labels.append(lab)
        masks.append(m if (m is not None and m.any()) else None)
        subjects.append(r.get("subject") or r["image"])
        names.append(r["image"])
    known = "subject" in cols
    return BScans(images, np.asarray(labels, np.int64), np.asarray(subjects), names, str(csv_path), known,
                  masks if has_masks else None)


def _class_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in POSITIVE | NEGATIVE)


def _class_roots(root: Path) -> list[Path]:
    """The folders holding class folders: root itself and/or its train/test/val splits (Kermany)."""
    roots = [root] if _class_folders(root) else []
    roots += [root / s for s in KERMANY_SPLITS if (root / s).is_dir() and _class_folders(root / s)]
    return roots


def load_class_folders(root: Path) -> BScans:
    """Kermany-style class folders (all of train/test/val); images are read lazily, one batch at a time."""
    paths, labels, subjects, names = [], [], [], []
    for base in _class_roots(root):
        for d in _class_folders(base):
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXT)
            if not files:
                raise InputError(d, "empty class folder", "B-scan images (.png/.jpeg/.tif) in every class folder")
            lab = _norm_label(d.name, str(d))
            for f in files:
                paths.append(f)
                labels.append(lab)
                # Kermany names: CNV-<patient>-<n>.jpeg; the patient id groups the splits
                m = _KERMANY_NAME.match(f.stem)
                subjects.append(m.group(1) if m else f.stem)
                names.append(str(f.relative_to(root)))
    known = all(_KERMANY_NAME.match(Path(n).stem) for n in names)
    return BScans(LazyImages(paths), np.asarray(labels, np.int64), np.asarray(subjects), names, str(root), known)


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
    elif _class_roots(path):
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
@dataclass(frozen=True)
class Prep:
    """How a B-scan becomes the network's input: a box in native pixels, scaled to (rows, cols)."""

    crop: str = "centre"  # "centre" (the paper) or "retina" (the retina band)
    size: tuple[int, int] = (224, 224)  # network input (rows, cols)
    resize: int = 0  # centre: the shorter side is scaled to this before the crop (0: no scaling)
    band_rows: float = 0.52  # retina: band height / B-scan height
    band_cols: float = 0.84  # retina: band width / B-scan width
    denoise: bool = False  # 3x3 median filter of the native box (beyond the paper)

    def as_dict(self) -> dict[str, Any]:
        return {"crop": self.crop, "size": list(self.size), "resize": self.resize, "band_rows": self.band_rows,
                "band_cols": self.band_cols, "denoise": self.denoise}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Prep":
        return cls(d.get("crop", "centre"), tuple(int(v) for v in d["size"]), int(d.get("resize", 0)),
                   float(d.get("band_rows", 0.52)), float(d.get("band_cols", 0.84)), bool(d.get("denoise", False)))

    def min_image_side(self) -> tuple[int, int]:
        """Images smaller than this (rows, cols) are refused: they would be blown up from a few pixels."""
        if self.crop == "retina":
            return max(2, self.size[0] // 2), max(2, self.size[1] // 2)
        side = max(2, (self.resize or min(self.size)) // 2)
        return side, side


def remove_wedge(img: np.ndarray, level: int = 250, min_area: int = 50) -> np.ndarray:
    """The white registration wedge (saturated regions touching the border) set to the background level."""
    from scipy import ndimage as ndi

    sat = img >= level
    if not sat.any():
        return img
    lab, n = ndi.label(sat)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    edge = edge[edge > 0]
    if edge.size == 0:
        return img
    areas = ndi.sum_labels(np.ones_like(lab), lab, edge)
    wedge = np.isin(lab, edge[areas >= min_area])
    if not wedge.any():
        return img
    out = img.copy()
    rest = img[~wedge]
    out[wedge] = np.uint8(np.percentile(rest, 10)) if rest.size else 0
    return out


def retina_centre_row(img: np.ndarray) -> float:
    """The intensity centroid row of the retina: brightness above the median row profile, squared."""
    from scipy import ndimage as ndi

    h, w = img.shape
    c0, c1 = int(w * 0.13), max(int(w * 0.87), int(w * 0.13) + 1)
    prof = ndi.gaussian_filter1d(img[:, c0:c1].astype(np.float32).mean(1), max(1.0, h / 120))
    wgt = np.clip(prof - np.median(prof), 0, None) ** 2
    return float((wgt * np.arange(h)).sum() / wgt.sum()) if wgt.sum() > 0 else h / 2


def crop_box(img: np.ndarray, prep: Prep) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of the region the network sees, in native pixels (may reach past the edges)."""
    h, w = img.shape
    if prep.crop == "retina":
        rows, cols = max(1, round(h * prep.band_rows)), max(1, round(w * prep.band_cols))
        top = int(round(retina_centre_row(img) - rows / 2))
        top = min(max(top, 0), max(h - rows, 0))
        return top, (w - cols) // 2, rows, cols
    s = prep.resize / min(h, w) if prep.resize > 0 else 1.0
    rows, cols = max(1, round(prep.size[0] / s)), max(1, round(prep.size[1] / s))
    return (h - rows) // 2, (w - cols) // 2, rows, cols


def _take(a: np.ndarray, top: int, left: int, rows: int, cols: int, fill: int) -> np.ndarray:
    """a[top:top+rows, left:left+cols], padded with `fill` where the box leaves the array."""
    h, w = a.shape
    out = np.full((rows, cols), fill, a.dtype)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + rows, h), min(left + cols, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = a[y0:y1, x0:x1]
    return out


def _scale(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area/bilinear (antialiased) scaling of a uint8 (H, W) array to `size` (rows, cols)."""
    if a.shape == tuple(size):
        return a
    t = torch.from_numpy(a).float()[None, None]
    t = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return t[0, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()


def median3_np(a: np.ndarray) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(a, size=3, mode="nearest")


def preprocess(img: np.ndarray, mask: np.ndarray | None, prep: Prep, name: str = "image"
               ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """One B-scan -> (uint8 input (rows, cols), mask share per input pixel 0-255 or None, label of the box).

    The label is 1 when the mask has any fluid pixel inside the box the network sees (None without a mask).
    """
    h, w = img.shape
    rmin, cmin = prep.min_image_side()
    if h < rmin or w < cmin:
        raise InputError(name, f"image is {h}x{w} px, much smaller than the network input "
                               f"{prep.size[0]}x{prep.size[1]}", f"a B-scan of at least {rmin}x{cmin} px")
    if prep.crop == "retina":
        img = remove_wedge(img)
    top, left, rows, cols = crop_box(img, prep)
    fill = int(np.percentile(img, 10)) if prep.crop == "retina" else 0
    box = _take(img, top, left, rows, cols, fill)
    if prep.denoise:
        box = median3_np(box)
    x = _scale(box, prep.size)
    if mask is None:
        return x, None, None
    mb = _take(mask.astype(np.uint8) * 255, top, left, rows, cols, 0)
    return x, _scale(mb, prep.size), int(mb.any())


@dataclass
class Prepared:
    """B-scans ready for a network: uint8 (N, 1, rows, cols) inputs (or a lazy reader), labels, mask shares."""

    x: torch.Tensor | None
    y: torch.Tensor
    m: torch.Tensor | None = None  # uint8 (N, 1, rows, cols) share of fluid per input pixel, 0-255
    lazy: tuple | None = None  # (BScans, Prep) for sets read one batch at a time
    relabelled: int = 0  # labels changed because the box holds none of the B-scan's fluid

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: Any) -> "Prepared":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        if self.lazy is not None:
            ds, prep = self.lazy
            return Prepared(None, self.y[idx], None, (ds.subset(idx.tolist()), prep))
        return Prepared(self.x[idx], self.y[idx], None if self.m is None else self.m[idx])

    def batch(self, idx: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(float inputs in [0, 1], labels, float mask shares or None) of the rows `idx`, on `device`."""
        if self.lazy is not None:
            ds, prep = self.lazy
            ii = [int(i) for i in (idx.tolist() if torch.is_tensor(idx) else idx)]
            xs = [preprocess(ds.images[i], None, prep, ds.names[i])[0] for i in ii]
            x = torch.from_numpy(np.stack(xs))[:, None]
            y = self.y[torch.as_tensor(ii)]
            m = None
        else:
            x, y = self.x[idx], self.y[idx]
            m = None if self.m is None else self.m[idx]
        x = x.to(device, non_blocking=True).float().div_(255.0)
        m = None if m is None else m.to(device, non_blocking=True).float().div_(255.0)
        return x, y.to(device, non_blocking=True), m


def prepare(ds: BScans, prep: Prep, idx: Sequence[int] | None = None) -> Prepared:
    """Preprocess the B-scans `idx` (all by default): in memory as uint8, or lazily for a lazy set."""
    idx = list(range(len(ds))) if idx is None else [int(i) for i in idx]
    if ds.lazy:
        sub = ds.subset(idx)
        return Prepared(None, torch.from_numpy(sub.labels.copy()), None, (sub, prep))
    xs, ms, ys, changed = [], [], [], 0
    for i in idx:
        mask = ds.masks[i] if ds.masks is not None else None
        x, m, lab = preprocess(ds.images[i], mask, prep, ds.names[i])
        if ds.masks is not None:
            lab = 0 if lab is None else lab
            changed += int(lab != ds.labels[i])
            ms.append(m if m is not None else np.zeros(prep.size, np.uint8))
        else:
            lab = int(ds.labels[i])
        xs.append(x)
        ys.append(lab)
    x = torch.from_numpy(np.stack(xs))[:, None]
    m = torch.from_numpy(np.stack(ms))[:, None] if ms else None
    return Prepared(x, torch.as_tensor(ys, dtype=torch.long), m, None, changed)


def region_labels(ds: BScans, prep: Prep) -> np.ndarray:
    """The label of every B-scan from the region the network sees (the dataset's labels without masks)."""
    if ds.masks is None:
        return ds.labels.copy()
    out = ds.labels.copy()
    for i, m in enumerate(ds.masks):
        if m is None:
            out[i] = 0
            continue
        top, left, rows, cols = crop_box(remove_wedge(ds.images[i]) if prep.crop == "retina" else ds.images[i],
                                         prep)
        out[i] = int(_take(m.astype(np.uint8), top, left, rows, cols, 0).any())
    return out


def median3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median filter of (N, 1, H, W), edges replicated; vectorised with unfold."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    n, c, h, w = x.shape
    patches = F.unfold(p, 3)  # (N, 9, H*W)
    return patches.median(dim=1).values.view(n, c, h, w)


def check_generator(g: torch.Generator, x: torch.Tensor) -> None:
    """A random draw must come from a generator on the device of the data it meets (shape-only 'meta' data
    draws from the CPU generator, as core.runtime.generator gives it)."""
    want = "cpu" if x.device.type == "meta" else x.device.type
    if torch.device(g.device).type != want:
        raise ValueError(f"generator on {g.device} meets data on {x.device}")


def augment(x: torch.Tensor, m: torch.Tensor | None, g: torch.Generator, shift: float = 0.08,
            speckle: float = 0.15, gamma: tuple[float, float] = (0.75, 1.35)
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augmentation without wrap-around, on the data's device: horizontal flip, vertical shift (edge rows
    repeated, never wrapped), multiplicative log-normal speckle and a gamma curve. x, m: (N, 1, H, W) in [0, 1].
    """
    check_generator(g, x)
    n, _, h, w = x.shape
    dev = x.device
    flip = (torch.rand(n, generator=g, device=dev) < 0.5).view(n, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    if m is not None:
        m = torch.where(flip, m.flip(-1), m)
    if shift > 0:
        dy = ((torch.rand(n, generator=g, device=dev) * 2 - 1) * shift * h).round().long()
        rows = (torch.arange(h, device=dev)[None, :] - dy[:, None]).clamp_(0, h - 1)
        ix = rows.view(n, 1, h, 1).expand(n, 1, h, w)
        x = torch.gather(x, 2, ix)
        if m is not None:
            m = torch.gather(m, 2, ix)
    lo, hi = np.log(gamma[0]), np.log(gamma[1])
    gam = torch.exp(lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=g, device=dev))
    x = x.clamp(0, 1).pow(gam)
    if speckle > 0:
        noise = torch.exp(speckle * torch.randn(x.shape, generator=g, device=dev) - speckle ** 2 / 2)
        x = x * noise
    return x.clamp_(0, 1), m


# ---------------------------------------------------------------- splits
def make_folds(labels: np.ndarray, subjects: np.ndarray | None, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (grouped when subjects are given; one fold per subject if fewer than k)."""
    from detectlab.core.splits import stratified_kfold

    if subjects is not None:
        k = min(k, np.unique(subjects).size)
    return stratified_kfold(labels, k, seed, subjects)


def design_split(design: str, fold: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: train90 trains on k-1 folds, train10 on one fold."""
    rest, one = fold
    if design == "train90":
        return rest, one
    if design == "train10":
        return one, rest
    raise InputError(f"design '{design}'", "unknown design", "train90 or train10")


def holdout(idx: np.ndarray, labels: np.ndarray, subjects: np.ndarray | None, share: float, seed: int
            ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split `idx` into (fit, validation, grouped): by subject when there are >= 2 subjects, stratified.

    With one subject (train10 on Duke) the split is stratified by B-scan inside it (grouped=False).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    idx = np.asarray(idx)
    y = labels[idx]
    k = max(2, int(round(1 / share)))
    if subjects is not None:
        g = subjects[idx]
        ng = np.unique(g).size
        if ng >= 2:
            # the fold of StratifiedGroupKFold(k) nearest to the asked share, never every subject
            splitter = StratifiedGroupKFold(n_splits=min(k, ng), shuffle=True, random_state=seed)
            fit, val = next(splitter.split(np.zeros(len(idx)), y, g))
            if np.unique(y[fit]).size == 2:
                return idx[fit], idx[val], True
    counts = np.bincount(y, minlength=2)
    k = min(k, int(counts.min())) if counts.min() >= 2 else 0
    if k < 2:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(idx))
        nv = max(1, int(round(len(idx) * share)))
        return idx[np.sort(perm[nv:])], idx[np.sort(perm[:nv])], False
    fit, val = next(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(idx)), y))
    return idx[fit], idx[val], False


# ---------------------------------------------------------------- data preparation for a run
def data_path(cfg: Any, run: Any | None) -> Path:
    """The data folder: the configured path, or the synthetic volumes (written once under the run)."""
    from detectlab.core.config import resolve_data
    from detectlab.fluid.config import DATA_SUBDIR
    from detectlab.fluid.synthetic import generate

    p = resolve_data(cfg.data, DATA_SUBDIR)
    if p is not None:
        return p
    s = cfg.synthetic
    root = run.path("data", "synthetic") if run is not None else Path("runs/fluid-synthetic")
    return generate(root, s.volumes, s.slices, s.height, s.width, s.fluid_fraction, seed=cfg.seed)


_CACHE: dict[str, Any] = {}


def read_data(path: Path, max_images: int = 0, seed: int = 0) -> BScans:
    """load_dataset, cached per process (units of one run share it), optional stratified subset."""
    key = f"{Path(path).resolve()}|{max_images}|{seed}"
    if key not in _CACHE:
        ds = load_dataset(Path(path))
        if 0 < max_images < len(ds):
            from sklearn.model_selection import train_test_split

            idx, _ = train_test_split(np.arange(len(ds)), train_size=max_images, random_state=seed,
                                      stratify=ds.labels)
            ds = ds.subset(np.sort(idx))
        _CACHE.clear()
        _CACHE[key] = ds
    return _CACHE[key]


def load_data(cfg: Any, run: Any | None = None) -> BScans:
    return read_data(data_path(cfg, run), cfg.max_images, cfg.seed)


def subjects_for(cfg: Any, ds: BScans) -> np.ndarray | None:
    """Subjects for grouped splits: whenever they are known (and grouping is on)."""
    return ds.subjects if cfg.group_by_subject and ds.groups_known else None


def prep_for(cfg: Any, arch: str, denoise: bool | None = None) -> Prep:
    """The preprocessing of `arch` under `cfg` (input size: Table I for the centre crop unless set)."""
    from detectlab.fluid.model import get_arch

    a = get_arch(arch)
    dn = cfg.denoise if denoise is None else denoise
    if cfg.crop == "retina":
        rows, cols = (max(int(v), a.min_size) for v in cfg.band_size)
        return Prep("retina", (rows, cols), 0, cfg.band_rows, cfg.band_cols, dn)
    side = max(cfg.input_size, a.min_size) if cfg.input_size > 0 else a.input_size
    return Prep("centre", (side, side), cfg.resize, cfg.band_rows, cfg.band_cols, dn)


_PREP_CACHE: dict[tuple, Prepared] = {}


def prepared(ds: BScans, prep: Prep) -> Prepared:
    """The whole set prepared with `prep`, cached per process (every fold of an architecture shares it)."""
    key = (id(ds), ds.source, len(ds), prep)
    if key not in _PREP_CACHE:
        if len(_PREP_CACHE) > 4:
            _PREP_CACHE.clear()
        _PREP_CACHE[key] = prepare(ds, prep)
    return _PREP_CACHE[key]
