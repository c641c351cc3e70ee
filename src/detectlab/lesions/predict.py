"""`detectlab lesions predict RUN INPUT...`: lesion instances and the COVID-CT-Mask-Net class.

Slices (PNG/JPEG): under --out (default RUN/predictions) `<name>_overlay.png` (boxes, masks, scores and
class scores), `<name>_instances.png` (16-bit label map, 0 background, k = instance k, at the input's
resolution) and `<name>.json` (class, class scores, instances with box, score and area).

Volumes (NIfTI, MetaImage, NRRD): brought to one orientation (axial slices, radiological view), each
slice segmented; `<name>_lesions.nii.gz` is the lesion label volume (1 = lesion) on the input's voxel
grid with the input's affine (NIfTI; SimpleITK formats keep their geometry), and `<name>.json` holds the
lesion volume in mL (voxel count x voxel volume), the lung volume and the percentage of the lung
involved (lung mask from --lung-mask, else estimated by thresholding air inside the body), the slices
with lesions and the classifier's mean class scores; `<name>_overlay.png` shows the slice with the
largest lesion area.

Inputs must look like CT: volumes in Hounsfield units (air near -1000), slices of at least 32x32 pixels
with contrast; anything else is refused with one line (exit 2) unless --allow-non-ct. The backbone runs
once per slice for both the segmentation and the classifier when they share its weights.
Top-level imports stay light: the CLI imports this module at every start.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="", help="which backbone of the run to use [the run's first]")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="lesion score threshold [the model's for instances; the run's Dice threshold for volumes]")
    p.add_argument("--lung-mask", action="append", default=[],
                   help="lung mask volume for a volume input (repeat in the order of the volumes) [estimated]")
    p.add_argument("--allow-non-ct", action="store_true",
                   help="score inputs that do not look like CT (MRI, tiny or flat images): min-max scaled")


class Predictor:
    """The run's segmentation model (and classifier when trained) applied slice by slice."""

    def __init__(self, model_run: Path, backbone: str = "", score_thresh: float | None = None, device="cpu"):
        from detectlab.core.errors import InputError
        from detectlab.core.runs import open_run
        from detectlab.lesions.train import load_classifier, load_segmentation

        folder, cfg = open_run(model_run)
        ck = folder / "checkpoints"
        self.backbone = backbone or next(iter(cfg.get("backbones", [])), "")
        seg_path = ck / f"seg-{self.backbone}.safetensors"
        if not seg_path.exists():
            have = sorted(p.stem for p in ck.glob("seg-*.safetensors"))
            raise InputError(seg_path, "no segmentation checkpoint for this backbone",
                             f"one of {have}" if have else "a finished `lesions train` or `lesions run` folder")
        self.seg, self.header = load_segmentation(seg_path, device)
        if score_thresh is not None:
            self.seg.roi_heads.score_thresh = float(score_thresh)
        cls_path = ck / f"cls-{self.backbone}.safetensors"
        self.net, self.cls_header = (load_classifier(seg_path, cls_path, device) if cls_path.exists() else (None, {}))
        # the classifier's backbone equals the segmentation model's unless its norm affine parameters trained
        self.share = self.net is not None and not self.cls_header.get("train_norm_affine", True)
        self.size = int(self.header.get("image_size", cfg.get("image_size", 0)) or 0)
        self.dice_thresh = float(score_thresh if score_thresh is not None else self.header.get("dice_score_thresh", 0.5))
        self.volume_preprocess = self.header.get("volume_preprocess", "window")
        self.folder, self.device = folder, device

    def slice(self, img):
        """uint8 (H, W) -> (pred at the input's resolution: masks, boxes, scores; class probs or None)."""
        import numpy as np
        import torch

        from detectlab.lesions.data import CTSlice, resize_slice, to_tensor
        from detectlab.lesions.model import roi_features, segment

        h0, w0 = img.shape
        s = resize_slice(CTSlice(img, np.zeros(img.shape, np.int32), ""), self.size)
        x = to_tensor(s.image).to(self.device)
        with torch.no_grad():
            dets, rois = segment(self.seg, [x], self.net, self.share)
            d = dets[0]
            probs = None
            if self.net is not None:
                r = rois[0]
                feats = roi_features(r["values"], r["scores"], self.net.roi_batch)[None]
                probs = torch.softmax(self.net.s(feats), 1)[0].cpu().numpy()
        sy, sx = h0 / s.image.shape[0], w0 / s.image.shape[1]
        boxes = d["boxes"].cpu().numpy() * np.array([sx, sy, sx, sy], np.float32)
        m = d["masks"][:, :1].float()
        if len(m) and (h0, w0) != tuple(s.image.shape):
            m = torch.nn.functional.interpolate(m, size=(h0, w0), mode="bilinear", align_corners=False)
        masks = (m[:, 0] > 0.5).cpu().numpy() if len(m) else np.zeros((0, h0, w0), bool)
        return {"masks": masks, "boxes": boxes, "scores": d["scores"].cpu().numpy()}, probs


def _image(pr: Predictor, path: Path, out: Path, allow: bool) -> str:
    import numpy as np
    from PIL import Image

    from detectlab.core.runs import write_json
    from detectlab.lesions.config import CLASS_NAMES
    from detectlab.lesions.data import check_ct_slice, read_image, stem
    from detectlab.lesions.figures import save_overlay

    img = read_image(path)
    if not allow:
        check_ct_slice(img, path)
    name = stem(path)
    pred, probs = pr.slice(img)
    h0, w0 = img.shape
    label_map = np.zeros((h0, w0), np.uint16)
    for k in range(len(pred["masks"]) - 1, -1, -1):  # higher-ranked instances drawn last, so they win overlaps
        label_map[pred["masks"][k]] = k + 1
    Image.fromarray(label_map).save(out / f"{name}_instances.png")
    cls_name = CLASS_NAMES[int(probs.argmax())] if probs is not None else "n/a"
    save_overlay(out / f"{name}_overlay.png", img, pred, probs, name)
    write_json(out / f"{name}.json", {
        "input": str(path), "backbone": pr.backbone, "class": int(probs.argmax()) if probs is not None else None,
        "class_name": cls_name, "class_scores": dict(zip(CLASS_NAMES, map(float, probs))) if probs is not None else None,
        "instances": [{"id": k + 1, "box": [float(v) for v in b], "score": float(sc), "area": int(mm.sum())}
                      for k, (b, sc, mm) in enumerate(zip(pred["boxes"], pred["scores"], pred["masks"]))]})
    scores = " ".join(f"{p:>9.3f}" for p in probs) if probs is not None else ""
    return f"{name:<32} {len(pred['scores']):>7} {cls_name:>10} {scores}"


def _volume(pr: Predictor, path: Path, lung_path: Path | None, out: Path, allow: bool) -> str:
    import numpy as np

    from detectlab.core.errors import InputError
    from detectlab.core.runs import write_json
    from detectlab.lesions.config import CLASS_NAMES
    from detectlab.lesions.data import (check_ct_volume, estimate_lungs, read_volume_geom, slices_to_uint8, stem,
                                        volume_to_uint8, write_label_volume)
    from detectlab.lesions.figures import save_overlay
    from detectlab.lesions.train import lesion_mask

    vol = read_volume_geom(path)
    hu = True
    try:
        check_ct_volume(vol.array, path)
    except InputError:
        if not allow:
            raise
        hu = False
    u8 = slices_to_uint8(vol.array, pr.volume_preprocess) if hu else volume_to_uint8(vol.array)
    name = stem(path)
    lesions = np.zeros(vol.array.shape, bool)
    probs_all, best = [], (-1, None, None)
    for z in range(u8.shape[0]):
        pred, probs = pr.slice(u8[z])
        lesions[z] = lesion_mask(pred, u8[z].shape, pr.dice_thresh)
        if probs is not None:
            probs_all.append(probs)
        if lesions[z].sum() > best[0]:
            best = (int(lesions[z].sum()), z, pred)
    if lung_path is not None:
        lv = read_volume_geom(lung_path)
        if lv.array.shape != vol.array.shape:
            raise InputError(lung_path, f"lung mask has shape {lv.array.shape} but its volume {path.name} has "
                                        f"{vol.array.shape} (after reorientation)", "a lung mask on the same grid")
        lungs, lung_source = lv.array > 0, str(lung_path)
    elif hu:
        lungs, lung_source = estimate_lungs(vol.array), "estimated (air < -400 HU inside the body, holes filled)"
    else:
        lungs, lung_source = None, "none (not a HU volume)"
    write_label_volume(vol, lesions.astype(np.uint16), out / f"{name}_lesions.nii.gz")
    ml = float(lesions.sum()) * vol.voxel_ml()
    res = {"input": str(path), "backbone": pr.backbone, "shape_zyx": list(vol.array.shape),
           "spacing_zyx_mm": list(vol.spacing), "lesion_voxels": int(lesions.sum()), "lesion_ml": ml,
           "lesion_score_thresh": pr.dice_thresh, "slices_with_lesion": [int(z) for z in np.flatnonzero(lesions.any((1, 2)))],
           "lung_mask": lung_source, "labels": f"{name}_lesions.nii.gz (1 = lesion)"}
    if lungs is not None:
        lung_n = int(lungs.sum())
        res.update(lung_ml=lung_n * vol.voxel_ml(),
                   lung_involved_percent=100.0 * int((lesions & lungs).sum()) / lung_n if lung_n else float("nan"))
    cls_name = "n/a"
    if probs_all:
        mean = np.mean(probs_all, 0)
        cls_name = CLASS_NAMES[int(mean.argmax())]
        res.update(class_name=cls_name, mean_class_scores=dict(zip(CLASS_NAMES, map(float, mean))))
    if best[1] is not None:
        save_overlay(out / f"{name}_overlay.png", u8[best[1]], best[2], None, f"{name} z={best[1]}")
    write_json(out / f"{name}.json", res)
    pct = res.get("lung_involved_percent", float("nan"))
    return f"{name:<32} {ml:>9.1f} mL lesion, {pct:>5.1f} % of lung, class {cls_name}"


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    from detectlab.core.errors import InputError
    from detectlab.core.runtime import choose_device
    from detectlab.lesions.config import CLASS_NAMES
    from detectlab.lesions.data import is_volume

    for p in inputs:
        if not p.exists():
            raise InputError(p, "input file does not exist")
    lungs = [Path(p) for p in (getattr(args, "lung_mask", None) or [])]
    vols = [p for p in inputs if is_volume(p)]
    if len(lungs) > len(vols):
        raise InputError("--lung-mask", f"{len(lungs)} lung masks for {len(vols)} volume inputs", "at most one per volume")
    device = choose_device(getattr(args, "device", None) or "cpu")
    pr = Predictor(model_run, getattr(args, "backbone", ""), getattr(args, "score_thresh", None), device)
    allow = bool(getattr(args, "allow_non_ct", False))
    out = Path(out) if out is not None else pr.folder / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    if any(not is_volume(p) for p in inputs):
        print(f"{'slice':<32} {'lesions':>7} {'class':>10} " + " ".join(f"{n:>9}" for n in CLASS_NAMES))
    vi = 0
    for p in inputs:
        if is_volume(p):
            print(_volume(pr, p, lungs[vi] if vi < len(lungs) else None, out, allow))
            vi += 1
        else:
            print(_image(pr, p, out, allow))
    print(f"outputs in {out}")
    return 0
