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
from typing import Any
from pathlib import Path

import numpy as np
from scipy import ndimage

from detectlab.core.config import resolve_data
from detectlab.core.errors import InputError
from detectlab.lesions.config import CLASS_NAMES, DATA_SUBDIR, Config

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_EXT = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd")
CLASS_ALIASES = {"0": 0, "1": 1, "2": 2, "normal": 0, "control": 0, "cp": 1, "pneumonia": 1, "ncp": 2,
                 "covid": 2, "covid19": 2}
CONVENTIONS = {"medseg": (1, 2), "cncb": (2, 3)}
HU_WINDOW = (-1000.0, 400.0)


@dataclass
class CTSlice:
    """One axial slice: uint8 image (H, W) and its lesion instances as an int32 label map (0 background,
    k = instance k), found once at the native resolution (8-connected components over `min_area` px).

    `mask` is the merged lesion mask (instances > 0). A boolean array given as `instances` is taken as a
    lesion mask whose components are the instances (no area rule). `lungs`: lung mask when known;
    `index`: position in its source's slice order (volume order for COVID-19-CT-Seg), -1 when unknown.
    """

    image: np.ndarray
    instances: np.ndarray
    name: str
    source: str = ""
    label: int = -1
    group: str = ""  # patient/volume (for grouped splits)
    extra: dict = field(default_factory=dict)
    lungs: np.ndarray | None = None
    index: int = -1

    def __post_init__(self) -> None:
        inst = np.asarray(self.instances)
        if inst.dtype == bool:
            inst = instance_map(inst, 0)
        self.instances = inst.astype(np.int32, copy=False)

    @property
    def mask(self) -> np.ndarray:
        return self.instances > 0


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


def instance_map(mask: np.ndarray, min_area: int = 100) -> np.ndarray:
    """Label map (int32) of the 8-connected components over `min_area` pixels, numbered 1..N in the order
    of their first pixel (row-major); smaller components become background."""
    m = np.asarray(mask) > 0
    lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(m.shape, np.int32)
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    areas[0] = 0
    keep = areas > min_area
    new = np.zeros(n + 1, np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return new[lab]


def instances_from_map(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(masks (N, H, W) bool, boxes (N, 4) x1 y1 x2 y2, exclusive ends) of a label map's instances,
    in label order; labels absent from the map (e.g. lost in a resize) are skipped. No area rule."""
    lab = np.asarray(label_map)
    objs = ndimage.find_objects(lab)
    keep = [k + 1 for k, o in enumerate(objs) if o is not None]
    if not keep:
        return np.zeros((0, *lab.shape), bool), np.zeros((0, 4), np.float32)
    masks = lab[None] == np.asarray(keep)[:, None, None]
    boxes = np.array([[objs[k - 1][1].start, objs[k - 1][0].start, objs[k - 1][1].stop, objs[k - 1][0].stop]
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


@dataclass
class Volume:
    """A CT volume in the display orientation of the training slices: `array` (Z, H, W) float32, Z from
    feet to head, rows from anterior to posterior, columns from the patient's right to left (radiological
    view); `spacing` (z, y, x) in mm. `write_label_volume` maps labels back onto the input's voxel grid."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    path: Path
    kind: str  # "nifti" or "sitk"
    affine: np.ndarray | None = None
    ornt: Any = None  # nibabel orientation of the input's axes
    orientation: str = ""  # SimpleITK: the input's DICOM orientation code
    sitk_image: Any = None  # SimpleITK: the reoriented (LPS) image, for its geometry

    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def to_native(self, arr: np.ndarray) -> np.ndarray:
        """NIfTI: a (Z, H, W) display-order array -> the input file's voxel order."""
        import nibabel as nib

        ras = np.transpose(np.asarray(arr)[:, ::-1, ::-1], (2, 1, 0))  # -> (x, y, z) in RAS
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), self.ornt)
        return np.ascontiguousarray(nib.orientations.apply_orientation(ras, back))


def read_volume_geom(path: str | Path) -> Volume:
    """A NIfTI (nibabel) or MetaImage/NRRD (SimpleITK) volume in the display orientation, with spacing."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "volume file does not exist")
    name = path.name.lower()
    try:
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            import nibabel as nib

            img = nib.load(str(path))
            arr = np.asarray(img.dataobj, dtype=np.float32)
            if arr.ndim == 4 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.ndim != 3:
                raise InputError(path, f"volume has {arr.ndim} dimensions", "3 (x, y, z)")
            ornt = nib.orientations.io_orientation(img.affine)
            to_ras = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
            ras = nib.orientations.apply_orientation(arr, to_ras)  # canonical: x to the right, y anterior, z up
            zooms = np.abs(np.asarray(img.header.get_zooms()[:3], float))
            z_ras = np.empty(3)
            z_ras[to_ras[:, 0].astype(int)] = zooms
            disp = np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1]  # rows anterior first, columns right first
            return Volume(np.ascontiguousarray(disp), (float(z_ras[2]), float(z_ras[1]), float(z_ras[0])), path,
                          "nifti", affine=img.affine, ornt=ornt)
        import SimpleITK as sitk

        im = sitk.ReadImage(str(path))
        if im.GetDimension() != 3:
            raise InputError(path, f"volume has {im.GetDimension()} dimensions", "3")
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(im.GetDirection())
        im = sitk.DICOMOrient(im, "LPS")  # x to the left, y to posterior: (z, y, x) is the display order
        arr = sitk.GetArrayFromImage(im).astype(np.float32)
        sx, sy, sz = im.GetSpacing()
        return Volume(arr, (float(sz), float(sy), float(sx)), path, "sitk", orientation=code, sitk_image=im)
    except InputError:
        raise
    except Exception as e:  # nibabel/SimpleITK raise many types for corrupt files
        raise InputError(path, f"not a readable volume ({type(e).__name__})", "NIfTI, MetaImage or NRRD") from None


def read_volume(path: str | Path) -> np.ndarray:
    """A volume as (Z, H, W) float32 in the display orientation (see `Volume`)."""
    return read_volume_geom(path).array


def write_label_volume(vol: Volume, labels: np.ndarray, out: Path) -> Path:
    """Save a (Z, H, W) label array on the input's voxel grid: NIfTI with the input's affine, or the
    SimpleITK format of `out` with the input's geometry."""
    lab = np.asarray(labels).astype(np.uint16)
    out.parent.mkdir(parents=True, exist_ok=True)
    if vol.kind == "nifti":
        import nibabel as nib

        native = vol.to_native(lab)
        img = nib.Nifti1Image(native, vol.affine)
        img.set_qform(vol.affine, code=1)
        img.set_sform(vol.affine, code=1)
        nib.save(img, str(out))
    else:
        import SimpleITK as sitk

        im = sitk.GetImageFromArray(lab)
        im.CopyInformation(vol.sitk_image)
        sitk.WriteImage(sitk.DICOMOrient(im, vol.orientation), str(out))
    return out


def check_ct_volume(vol: np.ndarray, path: str | Path) -> None:
    """Refuse volumes whose intensities are not CT in Hounsfield units (air near -1000, tissue near 0)."""
    v = np.asarray(vol, np.float32)
    p1, p50, p99 = (float(x) for x in np.percentile(v, [1, 50, 99]))
    if not (p1 <= -500 and -1100 <= p50 <= 500 and p99 <= 4000):
        raise InputError(path, f"intensities do not look like CT in Hounsfield units (1st/50th/99th percentile "
                               f"{p1:.0f}/{p50:.0f}/{p99:.0f})",
                         "a chest CT with air near -1000 HU and soft tissue near 0 HU; "
                         "--allow-non-ct scales other volumes min-max")


def check_ct_slice(img: np.ndarray, path: str | Path, min_side: int = 32) -> None:
    """Refuse slices that cannot be a CT slice: tiny images or images without contrast."""
    h, w = np.shape(img)[:2]
    if min(h, w) < min_side:
        raise InputError(path, f"image is {w}x{h} pixels", f"a CT slice at least {min_side}x{min_side} pixels; "
                                                           "--allow-non-ct skips this check")
    lo, hi = np.percentile(img, [1, 99])
    if hi - lo < 30:
        raise InputError(path, f"image has almost no contrast (1st-99th percentile {lo:.0f}-{hi:.0f} of 255)",
                         "a CT slice with dark lungs and bright tissue; --allow-non-ct skips this check")


def volume_to_uint8(vol: np.ndarray) -> np.ndarray:
    """HU volumes (min below -500) windowed to [-1000, 400]; others min-max scaled; -> uint8."""
    v = vol.astype(np.float32)
    lo, hi = (HU_WINDOW if v.min() < -500 else (float(v.min()), float(v.max())))
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return (np.clip((v - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def slices_to_uint8(vol: np.ndarray, method: str = "window") -> np.ndarray:
    """(Z, H, W) volume -> uint8 slices: "window" (`volume_to_uint8`) or "clahe" (each slice min-max scaled,
    then OpenCV CLAHE with clip limit 7 and 8x8 tiles: the preprocessing of the COVID-19-CT-Seg PNGs)."""
    if method == "window":
        return volume_to_uint8(vol)
    import cv2

    clahe = cv2.createCLAHE(clipLimit=7.0)
    out = np.zeros(vol.shape, np.uint8)
    for z, sl in enumerate(np.asarray(vol, np.float32)):
        lo, hi = float(sl.min()), float(sl.max())
        u8 = np.zeros(sl.shape, np.uint8) if hi <= lo else ((sl - lo) / (hi - lo) * 255).astype(np.uint8)
        out[z] = clahe.apply(u8)
    return out


def estimate_lungs(vol_hu: np.ndarray) -> np.ndarray:
    """A rough lung mask of a HU volume (Z, H, W): air-like voxels (< -400 HU) inside the body, outside air
    removed, the two largest 3-D components kept, holes (lesions, vessels) filled slice by slice."""
    v = np.asarray(vol_hu)
    body = v > -500
    body = np.stack([ndimage.binary_fill_holes(b) for b in body])
    air = (v < -400) & body
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros(v.shape, bool)
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:2] + 1
    keep = [k for k in keep if sizes[k - 1] >= 0.1 * sizes.max()]
    lungs = np.isin(lab, keep)
    return np.stack([ndimage.binary_fill_holes(z) for z in lungs])


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
               names: list[str] | None = None, lung_dir: Path | None = None, volume_preprocess: str = "window",
               check_ct: bool = False) -> list[CTSlice]:
    """Slices from an image folder and a mask folder matched by file stem (volumes expand to slices).

    Instances are the components over `min_area` pixels at the file's native resolution (the rule is
    applied here once; resizing later keeps every instance). `lung_dir`: lung masks with the same names
    (slices or volumes). Volumes in Hounsfield units become 8-bit slices by `volume_preprocess`, others
    are min-max scaled; with `check_ct` a volume whose intensities are not CT in HU is refused.
    """
    files = _files(img_dir, IMAGE_EXT + VOLUME_EXT)
    if names is not None:
        wanted = {stem(Path(n)) for n in names}
        files = [f for f in files if stem(f) in wanted]
    if not files:
        raise InputError(img_dir, "no images found", "PNG/JPEG slices or NIfTI/MetaImage volumes")
    masks = {}
    if mask_dir is not None and mask_dir.is_dir():
        masks = {stem(p): p for p in _files(mask_dir, IMAGE_EXT + VOLUME_EXT)}
    lungs, lung_vols = {}, {}
    if lung_dir is not None and lung_dir.is_dir():
        lungs = {stem(p): p for p in _files(lung_dir, IMAGE_EXT)}
        lung_vols = {stem(p): p for p in _files(lung_dir, VOLUME_EXT)}
    out: list[CTSlice] = []
    for f in files:
        mp = masks.get(stem(f))
        if mp is None and require_masks:
            raise InputError(f, "image has no mask", f"a mask with the same name in {mask_dir}")
        if is_volume(f):
            raw = read_volume(f)
            if check_ct:
                check_ct_volume(raw, f)
            vol = slices_to_uint8(raw, volume_preprocess) if raw.min() < -500 else volume_to_uint8(raw)
            mvol = read_volume(mp).round().astype(np.int32) if mp is not None else np.zeros(vol.shape, np.int32)
            _check_pair(vol, mvol, f, mp or f)
            les = merge_lesions(mvol, convention, mp)
            lvol = None
            lv = lung_vols.get(stem(f))
            if lv is not None:
                lvol = read_volume(lv) > 0
                _check_pair(vol, lvol, f, lv)
            label, group = _label_of(f.name, labels, default_label)
            out += [CTSlice(vol[z], instance_map(les[z], min_area), f"{stem(f)}#{z:04d}", source, label, stem(f),
                            lungs=None if lvol is None else lvol[z], index=z) for z in range(vol.shape[0])]
            continue
        img = read_image(f)
        m = read_mask(mp) if mp is not None else np.zeros(img.shape, np.int32)
        _check_pair(img, m, f, mp or f)
        label, group = _label_of(f.name, labels, default_label)
        lp = lungs.get(stem(f))
        lm = None
        if lp is not None:
            lm = read_mask(lp) > 0
            _check_pair(img, lm, f, lp)
        out.append(CTSlice(img, instance_map(merge_lesions(m, convention, mp), min_area), stem(f), source, label,
                           group or stem(f), lungs=lm, index=len(out)))
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


def load_segmentation_data(root: str | Path, min_area: int = 100, max_per_source: int = 0,
                           volume_preprocess: str = "window") -> dict[str, list[CTSlice]]:
    """All lesion-annotated slices under `root`, per source (layout). COVID-19-CT-Seg slices come with
    their lung masks (`lungs/`) when present."""
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
        lung_dir = imgs.parent / "lungs" if not name.startswith("medseg") else None
        out[name] = load_pairs(imgs, masks, conv, min_area, name, names=[f.name for f in files],
                               require_masks=not name.startswith("folder:"), lung_dir=lung_dir,
                               volume_preprocess=volume_preprocess)
    return out


def load_classification_folder(root: str | Path, split_file: str | Path | None = None,
                               min_area: int = 100) -> list[CTSlice]:
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
            out.append(CTSlice(img, np.zeros(img.shape, np.int32), stem(p), str(split_file), e.label,
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
        inst = np.zeros(img.shape, np.int32)
        if mpath.exists():
            m = read_mask(mpath)
            _check_pair(img, m, f, mpath)
            inst = instance_map(merge_lesions(m, "medseg", mpath), min_area)
        lpath = root / "lungs" / (stem(f) + ".png")
        lungs = None
        if lpath.exists():
            lungs = read_mask(lpath) > 0
            _check_pair(img, lungs, f, lpath)
        out.append(CTSlice(img, inst, stem(f), str(root), label, patient, lungs=lungs))
    return out


# ------------------------------------------------------------------ volumes and splits


def lung_steps(slices: list[CTSlice]) -> np.ndarray:
    """Jaccard distance between consecutive slices' lung masks (image difference / 255 when a slice has
    no lung mask); element 0 is 0."""
    d = np.zeros(len(slices))
    for k in range(1, len(slices)):
        a, b = slices[k - 1].lungs, slices[k].lungs
        if a is not None and b is not None and a.shape == b.shape:
            union = np.logical_or(a, b).sum()
            d[k] = np.logical_xor(a, b).sum() / union if union else 0.0
        elif slices[k - 1].image.shape == slices[k].image.shape:
            d[k] = float(np.abs(slices[k].image.astype(np.float32) - slices[k - 1].image).mean()) / 255.0
        else:
            d[k] = 1.0
    return d


def volume_starts(steps: np.ndarray, jump: float = 0.5, ratio: float = 2.0) -> list[int]:
    """Positions where a new volume starts: 0, and every step of at least `jump` that is also at least
    `ratio` times the median of the (up to four) neighbouring steps."""
    n = len(steps)
    starts = [0]
    for k in range(1, n):
        nb = [steps[j] for j in (k - 2, k - 1, k + 1, k + 2) if 1 <= j < n and j != k]
        ref = float(np.median(nb)) if nb else 0.0
        if steps[k] >= jump and steps[k] >= ratio * ref:
            starts.append(k)
    return starts


def assign_volumes(slices: list[CTSlice], prefix: str, jump: float = 0.5, ratio: float = 2.0) -> list[str]:
    """Group ids `<prefix>/vNN` for slices in volume order (the COVID-19-CT-Seg index order)."""
    starts = volume_starts(lung_steps(slices), jump, ratio) + [len(slices)]
    groups = [""] * len(slices)
    for v, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        for k in range(a, b):
            groups[k] = f"{prefix}/v{v:02d}"
    return groups


def group_holdout(groups: list[str], fraction: float, seed: int = 0,
                  strata: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, held_idx): whole groups are held out so that the held-out share of samples is the one
    nearest to `fraction` that whole groups allow (subset sums over the groups in a seeded random order,
    so the seed picks among equally good choices); at least one group on each side. With `strata` (a label per sample,
    constant within a group) this is done per stratum."""
    g = np.asarray(groups)
    if strata is not None:
        st = np.asarray(strata)
        held = []
        for k, v in enumerate(sorted(set(st.tolist()))):
            idx = np.flatnonzero(st == v)
            if len(set(g[idx].tolist())) < 2:
                continue
            _, h = group_holdout(list(g[idx]), fraction, seed + k)
            held.append(idx[h])
        if held:
            h = np.sort(np.concatenate(held))
            return np.setdiff1d(np.arange(len(g)), h), h
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise InputError("split", f"a grouped holdout needs at least 2 groups, got {len(uniq)}",
                         "data from at least two volumes or patients")
    sizes = {u: int((g == u).sum()) for u in uniq}
    order = [uniq[i] for i in np.random.default_rng(seed).permutation(len(uniq))]
    target = fraction * len(g)
    # subset sums over the groups in the seeded order: the first way each held-out count is reached
    parent: dict[int, tuple[int, str] | None] = {0: None}
    for u in order:
        for tot in sorted(parent, reverse=True):
            new = tot + sizes[u]
            if new not in parent:
                parent[new] = (tot, u)
    options = [t for t in parent if 0 < t < len(g)]
    best = min(options, key=lambda t: (abs(t - target), t))
    held = []
    while parent[best] is not None:
        best, u = parent[best]
        held.append(u)
    mask = np.isin(g, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# ------------------------------------------------------------------ tensors


def global_mean_std(slices: list[CTSlice]) -> tuple[float, float]:
    """Global pixel mean and SD over the slices, on the [0, 1] scale (the paper's only normalisation)."""
    n = sum(s.image.size for s in slices)
    tot = sum(float(s.image.sum(dtype=np.float64)) for s in slices) / 255.0
    sq = sum(float((s.image.astype(np.float64) ** 2).sum()) for s in slices) / 255.0 ** 2
    mean = tot / n
    return mean, float(np.sqrt(max(sq / n - mean ** 2, 1e-12)))


def resize_slice(s: CTSlice, size: int) -> CTSlice:
    """Resize so the longer side is `size` (image bilinear, instance map and lungs nearest); 0 keeps the
    slice. Every instance is kept, however small it becomes (the area rule was applied at native size)."""
    h, w = s.image.shape
    if size <= 0 or max(h, w) == size:
        return s
    from PIL import Image

    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = np.asarray(Image.fromarray(s.image).resize((nw, nh), Image.BILINEAR))
    inst = np.asarray(Image.fromarray(s.instances.astype(np.int32), "I").resize((nw, nh), Image.NEAREST)).astype(np.int32)
    lungs = None
    if s.lungs is not None:
        lungs = np.asarray(Image.fromarray(s.lungs.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)) > 127
    return CTSlice(img, inst, s.name, s.source, s.label, s.group, s.extra, lungs, s.index)


def to_tensor(img: np.ndarray):
    """uint8 (H, W) -> float (3, H, W) in [0, 1] (gray replicated for the ResNet stem)."""
    import torch

    t = torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).div_(255.0)
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


def to_target(s: CTSlice) -> dict:
    """torchvision Mask R-CNN target from the slice's instance map: boxes, labels (1 = lesion), masks."""
    import torch

    masks, boxes = instances_from_map(s.instances)
    return {"boxes": torch.from_numpy(boxes).reshape(-1, 4), "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8))}


# ------------------------------------------------------------------ data preparation (segmentation, classifier)


@dataclass
class SegData:
    train: list[CTSlice]
    val: list[CTSlice]
    info: dict


def _index_of(s: CTSlice) -> int:
    try:
        return int(s.name)
    except ValueError:
        return -1


def _extra_slices(folder: Path, train: list[CTSlice], have: set[str], min_area: int) -> list[CTSlice]:
    """Slices of `folder` (ct/ covid/ lungs/ named by index) lying strictly inside a training volume's index
    range and not loaded yet; boundary gaps are skipped, so no slice of a validation volume can come in."""
    ct = folder / "ct"
    if not ct.is_dir() or not (folder / "covid").is_dir():
        raise InputError(folder, "extra_slices folder has no ct/ and covid/ subfolders",
                         "the COVID-19-CT-Seg layout (ct/, covid/, lungs/ with index-named PNGs)")
    ranges: dict[str, list[int]] = {}
    for s in train:
        i = _index_of(s)
        if i >= 0 and s.source.startswith("covid19-ct-seg"):
            ranges.setdefault(s.group, []).append(i)
    names = []
    for f in _files(ct, IMAGE_EXT):
        try:
            i = int(stem(f))
        except ValueError:
            continue
        if stem(f) in have:
            continue
        grp = next((g for g, ix in ranges.items() if min(ix) < i < max(ix)), None)
        if grp is not None:
            names.append((f.name, grp))
    if not names:
        return []
    add = load_pairs(ct, folder / "covid", "binary", min_area, "covid19-ct-seg:extra", names=[n for n, _ in names],
                     require_masks=True, lung_dir=folder / "lungs")
    groups = dict((stem(Path(n)), g) for n, g in names)
    for s in add:
        s.group = groups[s.name]
    return add


def segmentation_data(cfg: Config, run_dir: Path | str) -> SegData:
    """Training and validation slices, split by volume (COVID-19-CT-Seg volumes recovered from the slice
    order), by slice for MedSeg (no patient ids), by patient for built-in data; resized to `image_size`."""
    from detectlab.lesions.synthetic import generate

    sp = cfg.split
    path = resolve_data(cfg.data, DATA_SUBDIR)
    fixed_train: list[CTSlice] = []
    info: dict[str, Any] = {}
    if path is None:
        sy = cfg.synthetic
        root = generate(Path(run_dir) / "data" / "segmentation", sy.seg_patients, sy.slices_per_patient, sy.size,
                        cfg.seed)
        pool = load_classification_folder(root, min_area=cfg.min_area)
        groups = [f"builtin/{s.group}" for s in pool]
        for s, gg in zip(pool, groups):
            s.group = gg
        info.update(source="builtin synthetic", sources={"builtin": len(pool)})
    else:
        per = load_segmentation_data(path, cfg.min_area, cfg.max_per_source, cfg.volume_preprocess)
        pool, groups = [], []
        info.update(source=str(path), sources={n: len(v) for n, v in per.items()}, volumes={})
        for name, ss in per.items():
            if name.startswith("covid19-ct-seg"):
                g = assign_volumes(ss, name, sp.boundary_jump, sp.boundary_ratio)
                starts = [ss[k].name for k in range(len(ss)) if k == 0 or g[k] != g[k - 1]]
                info["volumes"][name] = {"n": len(starts), "first_slices": starts}
            elif name.startswith("medseg"):
                if sp.medseg == "off":
                    continue
                g = [f"{name}/{s.name}" for s in ss]  # no patient ids: every slice is its own group
                if sp.medseg == "train":
                    for s, gg in zip(ss, g):
                        s.group = gg
                    fixed_train += ss
                    continue
            else:
                g = [f"{name}/{s.group}" for s in ss]
            for s, gg in zip(ss, g):
                s.group = gg
            pool += ss
            groups += g
    strata = [s.label for s in pool] if path is None else None  # built-in: stratified by class
    tr, va = group_holdout(groups, sp.val_fraction, cfg.seed, strata)
    train, val = [pool[i] for i in tr], [pool[i] for i in va]
    dropped = 0
    if sp.guard and val:
        held = {}
        for s in val:
            held.setdefault(s.source, set()).add(s.index)
        keep = []
        for s in train:
            near = held.get(s.source, set()) if s.source.startswith("covid19-ct-seg") else set()
            if s.index >= 0 and any(abs(s.index - j) <= sp.guard for j in near):
                dropped += 1
                continue
            keep.append(s)
        train = keep
    if cfg.extra_slices and path is not None:
        have = {s.name for s in pool}
        extra = _extra_slices(Path(cfg.extra_slices).expanduser(), train, have, cfg.min_area)
        info["extra_slices"] = {"folder": str(cfg.extra_slices), "added": len(extra)}
        train += extra
    train += fixed_train
    train = [resize_slice(s, cfg.image_size) for s in train]
    val = [resize_slice(s, cfg.image_size) for s in val]
    info.update(n_train=len(train), n_val=len(val), guard_dropped=dropped,
                val_groups=sorted({s.group for s in val}), n_train_groups=len({s.group for s in train}),
                val_with_lesion=int(sum(bool(s.mask.any()) for s in val)),
                val_instances=int(sum(int(s.instances.max()) for s in val)))
    return SegData(train, val, info)


def classification_data(cfg: Config, run_dir: Path | str) -> tuple[list[CTSlice], list[CTSlice], dict]:
    """(train, test, info) of three-class slices, split by patient and stratified by class."""
    from detectlab.core.splits import stratified_holdout
    from detectlab.lesions.synthetic import generate

    cc = cfg.cls
    if cc.data in ("", "builtin"):
        sy = cfg.synthetic
        root = generate(Path(run_dir) / "data" / "classification", sy.cls_patients, sy.slices_per_patient, sy.size,
                        cfg.seed + 1)
        slices = load_classification_folder(root, min_area=cfg.min_area)
        info = {"source": "builtin synthetic (three classes)", "builtin": True}
    else:
        p = Path(cc.data).expanduser()
        slices = load_classification_folder(p, cc.split_file or None, cfg.min_area)
        info = {"source": str(p), "builtin": False}
    labels = [s.label for s in slices]
    present = sorted(set(labels))
    if len(present) < 2:
        raise InputError(cc.data, f"classification data has only class {present}", "slices of at least two classes")
    slices = [resize_slice(s, cfg.image_size) for s in slices]
    tr, te = stratified_holdout(np.asarray(labels), cc.test_fraction, cfg.seed, np.asarray([s.group for s in slices]))
    train, test = [slices[i] for i in tr], [slices[i] for i in te]
    info.update(n_train=len(train), n_test=len(test),
                per_class_test={CLASS_NAMES[c]: int(sum(s.label == c for s in test)) for c in range(3)})
    return train, test, info
