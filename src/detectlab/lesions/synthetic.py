"""Built-in chest-CT-like slices with lesion masks, written as PNG in the real formats.

Each slice: air, a body outline with a fat rim, two dark lungs, a vertebra and the mediastinum,
bright vessels in the lungs, and lesions drawn per class:
- COVID-19 (2): 2-4 peripheral ground-glass patches (mild, textured), some with a small consolidation core;
- common pneumonia (1): 1-2 large, dense consolidations with a ground-glass rim, anywhere in a lung;
- normal (0): no lesion.
Files: ``images/<class>_<patient>_<scan>_<slice>.png`` (8-bit gray, the COVIDx naming) and
``masks/<same>.png`` with the MedSeg convention (0 background, 1 GGO, 2 consolidation), and
``lungs/<same>.png`` (0/255 lung mask, as COVID-19-CT-Seg's lungs/).
Everything is vectorised over the pixel grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from detectlab.lesions.config import CLASS_NAMES


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / rx) ** 2 + (v / ry) ** 2


def _blob(rng, yy, xx, cy, cx, r, lobes=4):
    """An irregular blob: union of a few overlapping ellipses around (cy, cx), radius ~ r (pixel units)."""
    d = np.full(yy.shape, np.inf, np.float32)
    for _ in range(lobes):
        oy, ox = rng.normal(0, 0.35 * r, 2)
        ry, rx = r * rng.uniform(0.6, 1.0, 2)
        d = np.minimum(d, _ellipse(yy, xx, cy + oy, cx + ox, ry, rx, rng.uniform(0, np.pi)))
    return d


def make_slice(rng: np.random.Generator, size: int, cls: int, with_lungs: bool = False):
    """One (image uint8 (size, size), mask uint8 with 0/1/2) pair of class `cls`; with `with_lungs` also
    the lung mask (bool)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    s = float(size)
    img = np.full((size, size), 8.0, np.float32)
    cy, cx = s * (0.52 + rng.normal(0, 0.01)), s * (0.5 + rng.normal(0, 0.01))
    bry, brx = s * rng.uniform(0.33, 0.38), s * rng.uniform(0.42, 0.46)
    body = _ellipse(yy, xx, cy, cx, bry, brx)
    img[body <= 1] = 95.0  # fat
    img[body <= 0.85] = 150.0  # soft tissue
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        ly, lx = cy - s * 0.02 + rng.normal(0, s * 0.01), cx + side * s * rng.uniform(0.17, 0.2)
        lry, lrx = s * rng.uniform(0.22, 0.26), s * rng.uniform(0.12, 0.15)
        lungs |= _ellipse(yy, xx, ly, lx, lry, lrx, side * rng.uniform(0.0, 0.15)) <= 1
    lungs &= body <= 0.8
    img[lungs] = 30.0
    img[_ellipse(yy, xx, cy + bry * 0.75, cx, s * 0.05, s * 0.05) <= 1] = 235.0  # vertebra
    img[_ellipse(yy, xx, cy - s * 0.03, cx, s * 0.08, s * 0.06) <= 1] = 165.0  # mediastinum / heart
    # vessels: small bright blobs and a few short lines inside the lungs
    ly_idx, lx_idx = np.nonzero(lungs)
    n_ves = int(rng.integers(18, 30))
    pick = rng.integers(0, len(ly_idx), n_ves)
    vy, vx = ly_idx[pick].astype(np.float32), lx_idx[pick].astype(np.float32)
    sig = s * rng.uniform(0.004, 0.009, n_ves)
    vess = np.zeros((size, size), np.float32)
    for y0, x0, sg in zip(vy, vx, sig):  # n_ves (about 25) full-grid ops, not a pixel loop
        vess = np.maximum(vess, np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sg * sg)))
    img += 110.0 * vess * lungs
    mask = np.zeros((size, size), np.uint8)
    if cls == 2:  # COVID-19: peripheral ground-glass patches
        dist = ndimage.distance_transform_edt(lungs)
        periph = lungs & (dist > s * 0.015) & (dist < s * 0.05)
        py, px = np.nonzero(periph)
        for _ in range(int(rng.integers(2, 5))):
            k = rng.integers(0, len(py))
            r = s * rng.uniform(0.045, 0.075)
            d = _blob(rng, yy, xx, py[k], px[k], r)
            les = (d <= 1) & lungs
            tex = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5)
            img[les] += 45.0 + 25.0 * tex[les]
            mask[les] = np.maximum(mask[les], 1)
            if rng.random() < 0.3:
                core = (d <= 0.3) & lungs
                img[core] = np.maximum(img[core], 120.0)
                mask[core] = 2
    elif cls == 1:  # common pneumonia: large dense consolidations
        ly_idx, lx_idx = np.nonzero(lungs & (ndimage.distance_transform_edt(lungs) > s * 0.06))
        for _ in range(int(rng.integers(1, 3))):
            k = rng.integers(0, len(ly_idx))
            r = s * rng.uniform(0.09, 0.13)
            d = _blob(rng, yy, xx, ly_idx[k], lx_idx[k], r, lobes=5)
            rim = (d <= 1.4) & lungs
            core = (d <= 1) & lungs
            img[rim] += 35.0
            mask[rim] = np.maximum(mask[rim], 1)
            img[core] = 125.0 + 10.0 * rng.normal(0, 1, int(core.sum()))
            mask[core] = 2
    img = ndimage.gaussian_filter(img, 0.8) + rng.normal(0, 5.0, img.shape)
    out = np.clip(img, 0, 255).round().astype(np.uint8)
    return (out, mask, lungs) if with_lungs else (out, mask)


def generate(root: str | Path, n_patients: int = 12, slices_per_patient: int = 3, size: int = 128,
             seed: int = 0) -> Path:
    """Write a balanced three-class set (patients cycle through the classes) under `root` once.

    A `manifest.json` records the settings; a folder with a matching manifest is reused as is.
    """
    from PIL import Image

    root = Path(root)
    manifest = {"n_patients": n_patients, "slices_per_patient": slices_per_patient, "size": size, "seed": seed,
                "classes": list(CLASS_NAMES), "lungs": True}
    mf = root / "manifest.json"
    if mf.exists() and json.loads(mf.read_text()) == manifest:
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "lungs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for p in range(n_patients):
        cls = p % 3
        for k in range(slices_per_patient):
            img, mask, lungs = make_slice(rng, size, cls, with_lungs=True)
            name = f"{cls}_{p:04d}_{seed:04d}_{k:04d}.png"
            Image.fromarray(img, "L").save(root / "images" / name)
            Image.fromarray(mask, "L").save(root / "masks" / name)
            Image.fromarray(lungs.astype(np.uint8) * 255, "L").save(root / "lungs" / name)
    mf.write_text(json.dumps(manifest))
    return root
