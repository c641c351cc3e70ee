"""`detectlab lesions predict RUN SLICE...`: lesion instances and the COVID-CT-Mask-Net class per slice.

Per input slice (PNG/JPEG, or every slice of a NIfTI/MetaImage volume) it writes, under --out
(default RUN/predictions): `<name>_overlay.png` (boxes, masks, scores and class scores),
`<name>_instances.png` (16-bit label map: 0 background, k = instance k at the input's resolution),
and `<name>.json` (class, class scores, instances with box, score and area); one line per slice on stdout.
Top-level imports stay light: the CLI imports this module at every start.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="", help="which backbone of the run to use [the run's first]")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="lesion score threshold [the model's, 0.75 as in the paper]")


def _inputs(paths: list[Path]):
    """Yield (name, uint8 slice) for images and volumes."""
    from detectlab.core.errors import InputError
    from detectlab.lesions.data import is_volume, read_image, read_volume, stem, volume_to_uint8

    for p in paths:
        if not p.exists():
            raise InputError(p, "input file does not exist")
        if is_volume(p):
            vol = volume_to_uint8(read_volume(p))
            for z in range(vol.shape[0]):
                yield f"{stem(p)}_z{z:04d}", vol[z]
        else:
            yield stem(p), read_image(p)


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from detectlab.core.errors import InputError
    from detectlab.core.runs import open_run, write_json
    from detectlab.lesions.data import CLASS_NAMES, CTSlice, resize_slice, to_tensor
    from detectlab.lesions.figures import save_overlay
    from detectlab.lesions.model import roi_features
    from detectlab.lesions.train import load_classifier, load_segmentation

    folder, cfg = open_run(model_run)
    ck = folder / "checkpoints"
    backbone = getattr(args, "backbone", "") or next(iter(cfg.get("backbones", [])), "")
    seg_path = ck / f"seg-{backbone}.safetensors"
    if not seg_path.exists():
        have = sorted(p.stem for p in ck.glob("seg-*.safetensors"))
        raise InputError(seg_path, "no segmentation checkpoint for this backbone",
                         f"one of {have}" if have else "a finished `lesions train` or `lesions run` folder")
    seg, header = load_segmentation(seg_path)
    thr = getattr(args, "score_thresh", None)
    if thr is not None:
        seg.roi_heads.score_thresh = float(thr)
    cls_path = ck / f"cls-{backbone}.safetensors"
    net = load_classifier(seg_path, cls_path)[0] if cls_path.exists() else None
    size = int(header.get("image_size", cfg.get("image_size", 0)) or 0)
    out = Path(out) if out is not None else folder / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'slice':<32} {'lesions':>7} {'class':>10} " + " ".join(f"{n:>9}" for n in CLASS_NAMES))
    for name, img in _inputs(inputs):
        h0, w0 = img.shape
        s = resize_slice(CTSlice(img, np.zeros(img.shape, bool), name), size)
        x = to_tensor(s.image)
        with torch.no_grad():
            d = seg([x])[0]
            probs = None
            if net is not None:
                r = net.detections([x])[0]
                feats = roi_features(r["boxes"], r["scores"], tuple(x.shape[-2:]), net.roi_batch)[None]
                net.s.eval()
                probs = torch.softmax(net.s(feats), 1)[0].numpy()
        # back to the input's resolution
        sy, sx = h0 / s.image.shape[0], w0 / s.image.shape[1]
        boxes = d["boxes"].numpy() * np.array([sx, sy, sx, sy], np.float32)
        m = d["masks"][:, :1].float()
        if len(m) and (h0, w0) != tuple(s.image.shape):
            m = torch.nn.functional.interpolate(m, size=(h0, w0), mode="bilinear", align_corners=False)
        masks = (m[:, 0] > 0.5).numpy() if len(m) else np.zeros((0, h0, w0), bool)
        scores = d["scores"].numpy()
        label_map = np.zeros((h0, w0), np.uint16)
        for k in range(len(masks) - 1, -1, -1):  # higher-ranked instances drawn last, so they win overlaps
            label_map[masks[k]] = k + 1
        Image.fromarray(label_map).save(out / f"{name}_instances.png")
        pred = {"masks": masks, "boxes": boxes, "scores": scores}
        cls_name = CLASS_NAMES[int(probs.argmax())] if probs is not None else "n/a"
        save_overlay(out / f"{name}_overlay.png", img, pred, probs, name)
        res = {"slice": name, "backbone": backbone, "class": int(probs.argmax()) if probs is not None else None,
               "class_name": cls_name, "class_scores": dict(zip(CLASS_NAMES, map(float, probs)))
               if probs is not None else None,
               "instances": [{"id": k + 1, "box": [float(v) for v in b], "score": float(sc), "area": int(mm.sum())}
                             for k, (b, sc, mm) in enumerate(zip(boxes, scores, masks))]}
        write_json(out / f"{name}.json", res)
        print(f"{name:<32} {len(scores):>7} {cls_name:>10} " +
              (" ".join(f"{p:>9.3f}" for p in probs) if probs is not None else ""))
    print(f"outputs in {out}")
    return 0
