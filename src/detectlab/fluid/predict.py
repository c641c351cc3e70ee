"""`detectlab fluid predict RUN INPUT... [--out DIR]`: the fluid probability of every B-scan, a result per
MetaImage volume, and Grad-CAM saliency maps.

RUN is a `fluid train` folder (checkpoints/model.safetensors) or a `fluid run` folder (one fold-0 checkpoint
per design x arch x batch; `--checkpoint NAME` picks one, default: the best validation accuracy).
INPUT: B-scan images (.png/.jpg/.tif/.bmp), MetaImage volumes (.mhd + .raw: every z slice is a B-scan) or
folders holding them (searched recursively). Images much smaller than the network's input are refused.

With --out: predictions.json (every B-scan: probability, label, saliency peak in input and native pixels;
every volume: fluid when any B-scan is, and which B-scans) and saliency/<name>.png overlays.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="",
                   help="checkpoint name in RUN/checkpoints (default: model, else the best validation accuracy)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability at or above which a B-scan is 'fluid' (default: the threshold stored in the "
                        "checkpoint, chosen on validation data when it was trained; 0.5 if it holds none)")
    p.add_argument("--no-saliency", action="store_true", help="do not write Grad-CAM saliency maps under --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto [cpu]")


def pick_checkpoint(folder: Path, name: str = "") -> Path:
    from detectlab.core.checkpoints import read_header
    from detectlab.core.errors import InputError

    ck = folder / "checkpoints"
    if name:
        p = ck / (name if name.endswith(".safetensors") else f"{name}.safetensors")
        if not p.exists():
            avail = ", ".join(sorted(q.stem for q in ck.glob("*.safetensors"))) or "none"
            raise InputError(p, "no such checkpoint in the run", f"one of: {avail}")
        return p
    if (ck / "model.safetensors").exists():
        return ck / "model.safetensors"
    cands = sorted(ck.glob("*.safetensors"))
    if not cands:
        raise InputError(folder, "run folder has no checkpoints", "a finished `fluid train` or `fluid run` folder")
    return max(cands, key=lambda p: read_header(p).get("val_accuracy") or 0.0)


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders replaced by the images and .mhd volumes below them (sorted)."""
    from detectlab.core.errors import InputError
    from detectlab.fluid.data import IMAGE_EXT

    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix.lower() in IMAGE_EXT or f.suffix.lower() == ".mhd")
                           and f.name != "reference.mhd")
            if not found:
                raise InputError(p, "folder holds no B-scan images or .mhd volumes", "PNG/JPEG/TIFF images or .mhd volumes")
            out += found
        elif not p.exists():
            raise InputError(p, "input does not exist", "a B-scan image, a .mhd volume or a folder")
        elif p.suffix.lower() in IMAGE_EXT or p.suffix.lower() == ".mhd":
            out.append(p)
        else:
            raise InputError(p, f"unsupported file type '{p.suffix}'", "a B-scan image (.png/.jpg/.tif) or a .mhd volume")
    return out


def iter_bscans(files: list[Path]) -> Iterator[tuple[np.ndarray, str, str, int]]:
    """(image, name, volume or '', slice or -1) for every B-scan of the files, one file at a time."""
    from detectlab.fluid.data import read_image, read_mhd, to_uint8

    for p in files:
        if p.suffix.lower() == ".mhd":
            vol = to_uint8(read_mhd(p))
            vol = vol[None] if vol.ndim == 2 else vol
            for i, im in enumerate(vol):
                yield im, f"{p}[{i}]", str(p), i
        else:
            yield read_image(p), str(p), "", -1


def load_inputs(inputs: list[Path]) -> tuple[list, list[str]]:
    """Every B-scan of the inputs (images, volume slices, folders): (images, names)."""
    items = list(iter_bscans(expand_inputs(inputs)))
    return [i[0] for i in items], [i[1] for i in items]


def _native(box: tuple[int, int, int, int], size: tuple[int, int], rc: tuple[int, int]) -> list[int]:
    top, left, rows, cols = box
    return [int(top + (rc[0] + 0.5) * rows / size[0]), int(left + (rc[1] + 0.5) * cols / size[1])]


def volume_results(rows: list[dict]) -> list[dict[str, Any]]:
    vols: dict[str, list[dict]] = {}
    for r in rows:
        if r["volume"]:
            vols.setdefault(r["volume"], []).append(r)
    return [{"volume": v, "bscans": len(rs), "fluid": any(r["label"] == "fluid" for r in rs),
             "fluid_bscans": [r["slice"] for r in rs if r["label"] == "fluid"],
             "max_p_fluid": max(r["p_fluid"] for r in rs)} for v, rs in vols.items()]


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import torch

    from detectlab.core.checkpoints import read_header
    from detectlab.core.runs import open_run, write_json
    from detectlab.core.runtime import choose_device
    from detectlab.fluid.data import IMAGE_EXT, Prep, crop_box, preprocess, remove_wedge
    from detectlab.fluid.figures import overlay_png
    from detectlab.fluid.saliency import gradcam, peak_points
    from detectlab.fluid.train import load_model, stored_threshold, threshold_arg

    folder, _ = open_run(model_run)
    ck = pick_checkpoint(folder, getattr(args, "checkpoint", "") or "")
    device = choose_device(getattr(args, "device", "cpu") or "cpu")
    model, mc = load_model(ck, device)
    prep = Prep.from_dict(mc["prep"])
    given = threshold_arg(args)
    thr, thr_from = stored_threshold(read_header(ck), given)
    files = expand_inputs(inputs)
    sal_dir = None
    if out is not None and not getattr(args, "no_saliency", False):
        sal_dir = Path(out) / "saliency"
        sal_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    print(f"# model {ck.name} ({mc['arch']}, input {prep.size[0]}x{prep.size[1]} px, {prep.crop} crop); "
          f"fluid at p >= {thr:.4g} ({thr_from})")
    print(f"{'b-scan':<56} {'p_fluid':>8} {'label':>9}")

    def flush(batch: list[tuple]) -> None:
        x = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None].to(device).float().div_(255.0)
        with torch.no_grad():
            prob = torch.softmax(model(x), 1)[:, 1].cpu().numpy()
        cams = gradcam(model, x).cpu().numpy() if sal_dir is not None else None
        peaks = peak_points(gradcam(model, x, coarse=True), prep.size).cpu().numpy() if sal_dir is not None else None
        for j, (xi, name, vol, sl, box) in enumerate(batch):
            p = float(prob[j])
            lab = "fluid" if p >= thr else "no_fluid"
            print(f"{name:<56} {p:>8.4f} {lab:>9}")
            r = {"bscan": name, "volume": vol, "slice": sl, "p_fluid": p, "label": lab}
            if cams is not None:
                rc = (int(peaks[j][0]), int(peaks[j][1]))
                r["saliency_peak_input"] = [rc[0], rc[1]]
                r["saliency_peak_native"] = _native(box, prep.size, rc)
                base = Path(name).name
                if Path(base).suffix.lower() in IMAGE_EXT:  # scan.png -> 00003_scan.png, not scan.png.png
                    base = Path(base).stem
                png = sal_dir / (f"{len(rows):05d}_" + "".join(c if c.isalnum() or c in "._-" else "_"
                                                                 for c in base)[:80] + ".png")
                overlay_png(png, xi / 255.0, cams[j], f"{Path(name).name}: p(fluid) {p:.2f}", rc)
                r["saliency_png"] = str(png)
            rows.append(r)

    batch: list[tuple] = []
    for img, name, vol, sl in iter_bscans(files):
        x, _, _ = preprocess(img, None, prep, name)
        box = crop_box(remove_wedge(img) if prep.crop == "retina" else img, prep)
        batch.append((x, name, vol, sl, box))
        if len(batch) == 32:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    vols = volume_results(rows)
    for v in vols:
        which = ", ".join(str(s) for s in v["fluid_bscans"]) or "none"
        print(f"# volume {v['volume']}: {'FLUID' if v['fluid'] else 'no fluid'} ({len(v['fluid_bscans'])} of "
              f"{v['bscans']} B-scans: {which})")
    if out is not None:
        write_json(Path(out) / "predictions.json", {"checkpoint": str(ck), "threshold": thr,
                                                    "threshold_from": thr_from, "prep": prep.as_dict(),
                                                    "predictions": rows, "volumes": vols})
    return 0
