"""CT slice readers, lesion mask -> instance conversion, class labels, validation.

Formats accepted
- 2D slices: PNG/JPEG/TIFF/BMP (8-bit, grayscale or RGB, converted to gray) and masks as PNG.
- Volumes: NIfTI (.nii, .nii.gz) through nibabel, MetaImage/NRRD (.mhd, .mha, .nrrd) through SimpleITK;
  a volume with its mask volume expands into axial slices (HU volumes are windowed to [-1000, 400]).
- Mask conventions: "medseg" (0 background, 1 GGO, 2 consolidation; the Inf-Net/MedSeg files),
  "cncb" (0 background, 1 lung field, 2 GGO, 3 consolidation), "binary" (any value > 0 is lesion).
  GGO and consolidation are merged into one "lesion" class; connected components (8-connected)
  become instances; components of `min_area` (100) pixels or fewer are dropped.
- Folder layouts: the MedSeg/Inf-Net layout (``Imgs/`` + ``GT/``), the COVID-19-CT-Seg slices of
  dstaroff (``ct/`` + ``covid/``), and a generic ``images/`` + ``masks/`` layout (mask file with the same
  stem; an image with no mask file is a negative slice).
- Class labels (0 normal, 1 common pneumonia, 2 COVID-19): the ``Class_Patient_Scan_Slice.png`` naming
  (Class 0/1/2, or COVIDx's Normal/CP/NCP) and COVIDx-CT split files (``filename class xmin ymin xmax ymax``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from detectlab.core.errors import InputError

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_EXT = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd")
CLASS_NAMES = ("normal", "pneumonia", "covid")
CLASS_ALIASES = {"0": 0, "1": 1, "2": 2, "normal": 0, "control": 0, "cp": 1, "pneumonia": 1, "ncp": 2,
                 "covid": 2, "covid19": 2}
CONVENTIONS = {"medseg": (1, 2), "cncb": (2, 3)}
HU_WINDOW = (-1000.0, 400.0)


@dataclass
class CTSlice:
    """One axial slice: uint8 image (H, W), lesion mask (H, W) bool, class label (-1: unknown)."""

    image: np.ndarray
    mask: np.ndarray
    name: str
    source: str = ""
    label: int = -1
    group: str = ""  # patient/volume (for grouped splits)
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ masks and instances


def merge_lesions(mask: np.ndarray, convention: str = "medseg", path: str | Path | None = None) -> np.ndarray:
    """Merge GGO and consolidation into one boolean lesion mask."""
    m = np.asarray(mask)
    if convention == "binary":
        return m > 0
    if convention not in CONVENTIONS:
        raise InputError(path, f"unknown mask convention '{convention}'", "medseg, cncb or binary")
    vals = np.unique(m)
    allowed = {0, 1, 2} if convention == "medseg" else {0, 1, 2, 3}
    bad = [int(v) for v in vals if int(v) not in allowed]
    if bad:
        if convention == "medseg" and set(int(v) for v in vals) <= {0, 255}:
            return m > 0  # a 0/255 binary mask given where a label mask was expected
        raise InputError(path, f"mask has label values {bad[:5]}",
                         f"{sorted(allowed)} ({convention}: " + ("0 bg, 1 GGO, 2 consolidation)" if convention == "medseg"
                                                                else "0 bg, 1 lung, 2 GGO, 3 consolidation)"))
    return np.isin(m, CONVENTIONS[convention])


def mask_to_instances(mask: np.ndarray, min_area: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (8-connectivity) of a lesion mask, those over `min_area` pixels kept.

    Returns (masks (N, H, W) bool, boxes (N, 4) float32 as x1, y1, x2, y2 with exclusive x2/y2),
    in the order of the components' first pixel (row-major).
    """
    m = np.asarray(mask) > 0
    lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, *m.shape), bool), np.zeros((0, 4), np.float32)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    keep = np.flatnonzero(areas > min_area) + 1
    if keep.size == 0:
        return np.zeros((0, *m.shape), bool), np.zeros((0, 4), np.float32)
    masks = lab[None] == keep[:, None, None]
    slices = ndimage.find_objects(lab)
    boxes = np.array([[slices[k - 1][1].start, slices[k - 1][0].start, slices[k - 1][1].stop, slices[k - 1][0].stop]
                      for k in keep], np.float32)
    return masks, boxes


def drop_small(mask: np.ndarray, min_area: int = 100) -> np.ndarray:
    """The lesion mask with components of `min_area` pixels or fewer merged into the background."""
    masks, _ = mask_to_instances(mask, min_area)
    return masks.any(0) if len(masks) else np.zeros(np.shape(mask), bool)


# ------------------------------------------------------------------ class labels


def parse_class(token: str, source: str | Path | None = None) -> int:
    c = CLASS_ALIASES.get(str(token).strip().lower())
    if c is None:
        raise InputError(source, f"unknown class '{token}'",
                         "0/1/2 or Normal/CP/NCP (0 normal, 1 common pneumonia, 2 COVID-19)")
    return c


_NAME_RE = re.compile(r"^([A-Za-z0-9]+)_([^_]+)_([^_]+)_([^_.]+)\.[A-Za-z]+$")


def class_from_name(name: str, source: str | Path | None = None) -> tuple[int, str]:
    """`Class_Patient_Scan_Slice.png` -> (class, patient). Raises InputError for other names/classes."""
    m = _NAME_RE.match(Path(name).name)
    if not m:
        raise InputError(source or name, "file name is not Class_Patient_Scan_Slice.png",
                         "e.g. 2_341_1834_0022.png or NCP_341_1834_0022.png")
    return parse_class(m.group(1), source or name), m.group(2)


@dataclass
class SplitEntry:
    filename: str
    label: int
    box: tuple[int, int, int, int] | None = None


def read_covidx_split(path: str | Path) -> list[SplitEntry]:
    """COVIDx-CT split file: `filename class xmin ymin xmax ymax` per line (the box is the body crop)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "split file does not exist")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (2, 6):
            raise InputError(f"{path}:{i}", f"line has {len(parts)} fields", "filename class [xmin ymin xmax ymax]")
        label = parse_class(parts[1], f"{path}:{i}")
        box = None
        if len(parts) == 6:
            try:
                box = tuple(int(v) for v in parts[2:])
            except ValueError:
                raise InputError(f"{path}:{i}", "box values are not integers") from None
            if box[2] <= box[0] or box[3] <= box[1]:
                raise InputError(f"{path}:{i}", f"empty box {box}", "xmin < xmax and ymin < ymax")
        out.append(SplitEntry(parts[0], label, box))
    if not out:
        raise InputError(path, "split file is empty")
    return out


def read_name_list(path: str | Path) -> list[str]:
    """A list of file names, one per line (the COVID-CT-Mask-Net split lists)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "name list does not exist")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise InputError(path, "name list is empty")
    return names


# ------------------------------------------------------------------ pixels


def is_volume(path: Path) -> bool:
    n = path.name.lower()
    return any(n.endswith(e) for e in VOLUME_EXT)


def stem(path: Path) -> str:
    n = path.name
    for e in (".nii.gz",) + VOLUME_EXT + IMAGE_EXT:
        if n.lower().endswith(e):
            return n[: -len(e)]
    return path.stem


def read_image(path: str | Path) -> np.ndarray:
    """An 8-bit slice as (H, W) uint8; colour is converted to gray."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                return np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).astype(np.uint8)
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(path, f"not a readable image ({e.__class__.__name__})", "PNG or JPEG") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A label mask PNG as (H, W) integer labels (palette indices kept, RGB reduced to gray)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mask file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L", "I", "I;16", "1"):
                return np.asarray(im).astype(np.int32)
            return np.asarray(im.convert("L")).astype(np.int32)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(path, f"not a readable mask image ({e.__class__.__name__})", "a PNG label mask") from None


def read_volume(path: str | Path) -> np.ndarray:
    """A volume as (Z, H, W) float32: NIfTI through nibabel, other formats through SimpleITK."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "volume file does not exist")
    name = path.name.lower()
    try:
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            import nibabel as nib

            arr = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
            if arr.ndim == 4 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.ndim != 3:
                raise InputError(path, f"volume has {arr.ndim} dimensions", "3 (x, y, z)")
            # nibabel gives (x, y, z): slices along z, rows = y
            return np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)  # (z, y, x)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InputError(path, f"volume has {arr.ndim} dimensions", "3")
        return arr
    except InputError:
        raise
    except Exception as e:  # nibabel/SimpleITK raise many types for corrupt files
        raise InputError(path, f"not a readable volume ({type(e).__name__})", "NIfTI, MetaImage or NRRD") from None


def volume_to_uint8(vol: np.ndarray) -> np.ndarray:
    """HU volumes (min below -500) windowed to [-1000, 400]; others min-max scaled; -> uint8."""
    v = vol.astype(np.float32)
    lo, hi = (HU_WINDOW if v.min() < -500 else (float(v.min()), float(v.max())))
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return (np.clip((v - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


# ------------------------------------------------------------------ folders


def _files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(exts))


def _check_pair(img: np.ndarray, mask: np.ndarray, ipath: Path, mpath: Path) -> None:
    if img.shape != mask.shape:
        raise InputError(mpath, f"mask is {mask.shape[-1]}x{mask.shape[-2]} but its image {ipath.name} is "
                                f"{img.shape[-1]}x{img.shape[-2]}", "a mask of the same size as its image")


def _label_of(name: str, labels: dict[str, int] | None, default: int) -> tuple[int, str]:
    if labels is not None and name in labels:
        return labels[name], ""
    try:
        return class_from_name(name)
    except InputError:
        return default, ""


def load_pairs(img_dir: Path, mask_dir: Path | None, convention: str, min_area: int = 100, source: str = "",
               default_label: int = -1, labels: dict[str, int] | None = None, require_masks: bool = False,
               names: list[str] | None = None) -> list[CTSlice]:
    """Slices from an image folder and a mask folder matched by file stem (volumes expand to slices)."""
    files = _files(img_dir, IMAGE_EXT + VOLUME_EXT)
    if names is not None:
        wanted = {stem(Path(n)) for n in names}
        files = [f for f in files if stem(f) in wanted]
    if not files:
        raise InputError(img_dir, "no images found", "PNG/JPEG slices or NIfTI/MetaImage volumes")
    masks = {}
    if mask_dir is not None and mask_dir.is_dir():
        masks = {stem(p): p for p in _files(mask_dir, IMAGE_EXT + VOLUME_EXT)}
    out: list[CTSlice] = []
    for f in files:
        mp = masks.get(stem(f))
        if mp is None and require_masks:
            raise InputError(f, "image has no mask", f"a mask with the same name in {mask_dir}")
        if is_volume(f):
            vol = volume_to_uint8(read_volume(f))
            mvol = read_volume(mp).round().astype(np.int32) if mp is not None else np.zeros(vol.shape, np.int32)
            _check_pair(vol, mvol, f, mp or f)
            les = merge_lesions(mvol, convention, mp)
            label, group = _label_of(f.name, labels, default_label)
            out += [CTSlice(vol[z], drop_small(les[z], min_area), f"{stem(f)}#{z:04d}", source, label, stem(f))
                    for z in range(vol.shape[0])]
            continue
        img = read_image(f)
        m = read_mask(mp) if mp is not None else np.zeros(img.shape, np.int32)
        _check_pair(img, m, f, mp or f)
        label, group = _label_of(f.name, labels, default_label)
        out.append(CTSlice(img, drop_small(merge_lesions(m, convention, mp), min_area), stem(f), source, label,
                           group or stem(f)))
    return out


def find_layouts(root: Path) -> list[tuple[str, Path, Path | None, str]]:
    """(name, image folder, mask folder, convention) for every known layout under `root`."""
    found = []
    for imgs in sorted(root.rglob("Imgs")):
        gt = imgs.parent / "GT"
        if gt.is_dir() and "MultiClass" in imgs.parent.name:
            found.append((f"medseg:{imgs.parent.name}", imgs, gt, "medseg"))
    for ct in sorted(root.rglob("ct")):
        if ct.is_dir() and (ct.parent / "covid").is_dir():
            found.append((f"covid19-ct-seg:{ct.parent.name}", ct, ct.parent / "covid", "binary"))
    for imgs in sorted(root.rglob("images")):
        if imgs.is_dir():
            conv = (imgs.parent / "CONVENTION").read_text().strip() if (imgs.parent / "CONVENTION").exists() else "medseg"
            found.append((f"folder:{imgs.parent.name}", imgs, imgs.parent / "masks", conv))
    if root.is_dir() and not found and any(_files(root, IMAGE_EXT + VOLUME_EXT)):
        found.append((f"folder:{root.name}", root, None, "medseg"))
    return found


def load_segmentation_data(root: str | Path, min_area: int = 100, max_per_source: int = 0) -> dict[str, list[CTSlice]]:
    """All lesion-annotated slices under `root`, per source (layout)."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "data folder does not exist")
    layouts = find_layouts(root)
    if not layouts:
        raise InputError(root, "no CT slices found",
                         "Imgs/+GT/ (MedSeg), ct/+covid/ (COVID-19-CT-Seg) or images/+masks/ folders")
    out = {}
    for name, imgs, masks, conv in layouts:
        files = _files(imgs, IMAGE_EXT + VOLUME_EXT)
        if max_per_source and len(files) > max_per_source:
            # evenly spaced, so contiguous volumes stay represented
            pick = np.linspace(0, len(files) - 1, max_per_source).round().astype(int)
            files = [files[i] for i in np.unique(pick)]
        out[name] = load_pairs(imgs, masks, conv, min_area, name, names=[f.name for f in files],
                               require_masks=not name.startswith("folder:"))
    return out


def load_classification_folder(root: str | Path, split_file: str | Path | None = None) -> list[CTSlice]:
    """Labelled slices: names `Class_Patient_Scan_Slice.png`, or a COVIDx split file (then cropped to its box)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "classification folder does not exist")
    imgs = root / "images" if (root / "images").is_dir() else root
    if split_file is not None:
        entries = read_covidx_split(split_file)
        out = []
        for e in entries:
            p = imgs / e.filename
            img = read_image(p)
            if e.box is not None:
                x1, y1, x2, y2 = e.box
                img = img[y1:y2, x1:x2]
            out.append(CTSlice(img, np.zeros(img.shape, bool), stem(p), str(split_file), e.label,
                               class_from_name(e.filename)[1] if _NAME_RE.match(e.filename) else stem(p)))
        return out
    files = _files(imgs, IMAGE_EXT)
    if not files:
        raise InputError(imgs, "no images found", "Class_Patient_Scan_Slice.png files")
    out = []
    for f in files:
        label, patient = class_from_name(f.name, f)
        img = read_image(f)
        mpath = root / "masks" / (stem(f) + ".png")
        mask = np.zeros(img.shape, bool)
        if mpath.exists():
            m = read_mask(mpath)
            _check_pair(img, m, f, mpath)
            mask = drop_small(merge_lesions(m, "medseg", mpath))
        out.append(CTSlice(img, mask, stem(f), str(root), label, patient))
    return out


# ------------------------------------------------------------------ tensors


def global_mean_std(slices: list[CTSlice]) -> tuple[float, float]:
    """Global pixel mean and SD over the slices, on the [0, 1] scale (the paper's only normalisation)."""
    n = sum(s.image.size for s in slices)
    tot = sum(float(s.image.sum(dtype=np.float64)) for s in slices) / 255.0
    sq = sum(float((s.image.astype(np.float64) ** 2).sum()) for s in slices) / 255.0 ** 2
    mean = tot / n
    return mean, float(np.sqrt(max(sq / n - mean ** 2, 1e-12)))


def resize_slice(s: CTSlice, size: int) -> CTSlice:
    """Resize so the longer side is `size` (image bilinear, mask nearest); 0 keeps the slice as is."""
    h, w = s.image.shape
    if size <= 0 or max(h, w) == size:
        return s
    from PIL import Image

    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = np.asarray(Image.fromarray(s.image).resize((nw, nh), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(s.mask.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)) > 127
    return CTSlice(img, mask, s.name, s.source, s.label, s.group, s.extra)


def to_tensor(img: np.ndarray):
    """uint8 (H, W) -> float (3, H, W) in [0, 1] (gray replicated for the ResNet stem)."""
    import torch

    t = torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).div_(255.0)
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


def to_target(s: CTSlice, min_area: int = 100) -> dict:
    """torchvision Mask R-CNN target: boxes, labels (1 = lesion), masks."""
    import torch

    masks, boxes = mask_to_instances(s.mask, min_area)
    return {"boxes": torch.from_numpy(boxes).reshape(-1, 4), "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8))}
