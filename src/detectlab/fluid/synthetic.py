"""Built-in OCT volumes: layered retina with a foveal pit, speckle, and dark fluid pockets.

Written in the RETOUCH layout (``<root>/<case>/oct.mhd`` + ``reference.mhd``, MetaImage via SimpleITK),
so the built-in data goes through the real reader. About `fluid_fraction` of the B-scans of each volume
hold 1-3 fluid pockets (hypo-reflective ellipses inside the retina, of varied size), marked 1 in the
reference; the others have none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_volume(rng: np.random.Generator, slices: int, height: int, width: int,
                fluid_fraction: float = 0.6, max_pockets: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One volume (z, y, x) uint8 and its fluid mask uint8, all B-scans generated at once."""
    z = np.arange(slices)[:, None, None]
    y = np.arange(height)[None, :, None].astype(np.float32)
    x = np.arange(width)[None, None, :].astype(np.float32)
    xc = width / 2 + rng.normal(0, width * 0.03)
    zc = (slices - 1) / 2
    # inner limiting membrane: a gently tilted curve with a foveal pit that is deepest at the central slice
    top = height * (0.28 + rng.uniform(-0.04, 0.04)) + (x - xc) * rng.uniform(-0.05, 0.05)
    pit_depth = height * 0.09 * np.exp(-((z - zc) / max(1.0, slices / 4)) ** 2)
    top = top + pit_depth * np.exp(-((x - xc) / (width * 0.08)) ** 2)
    thick = height * (0.32 + rng.uniform(-0.03, 0.03))
    bottom = height * 0.28 + thick + (x - xc) * rng.uniform(-0.03, 0.03) + 2 * np.sin(x / width * 6 + z * 0.3)
    depth = (y - top) / np.maximum(bottom - top, 1)  # 0 at ILM, 1 at RPE
    inside = (depth >= 0) & (depth <= 1)
    # layers: alternating reflectivity bands inside the retina, a bright RPE band, dim choroid below
    bands = 0.45 + 0.25 * np.cos(depth * np.pi * 7) * np.exp(-depth)
    img = np.where(inside, bands, 0.08)
    img = img + 0.9 * np.exp(-((y - bottom) / 2.5) ** 2)  # RPE
    img = img + np.where(y > bottom, 0.25 * np.exp(-(y - bottom) / (height * 0.08)), 0)
    # fluid pockets: dark ellipses inside the retina, in a fraction of the B-scans
    has = rng.random(slices) < fluid_fraction
    n_pk = rng.integers(1, max_pockets + 1, slices) * has
    k = np.arange(max_pockets)[None, :, None, None]
    on = (k < n_pk[:, None, None, None])
    cx = rng.uniform(0.2, 0.8, (slices, max_pockets, 1, 1)) * width
    cd = rng.uniform(0.3, 0.7, (slices, max_pockets, 1, 1))
    rx = rng.uniform(0.06, 0.15, (slices, max_pockets, 1, 1)) * width
    ry = rng.uniform(0.2, 0.35, (slices, max_pockets, 1, 1)) * thick
    xi = np.broadcast_to(x, (slices, 1, height, width))[:, None, 0]
    top_at = np.take_along_axis(np.broadcast_to(top, (slices, 1, width)), np.clip(cx.astype(int)[..., 0, 0], 0,
                                                                                    width - 1)[:, :, None], 2)
    cy = top_at[..., None] + cd * thick
    ell = ((xi - cx) / rx) ** 2 + ((y[None] - cy) / ry) ** 2 <= 1
    mask = (ell & on).any(axis=1) & inside
    img = np.where(mask, 0.05, img)
    # speckle (multiplicative, gamma) and additive noise
    speckle = rng.gamma(4.0, 0.25, img.shape)
    img = img * speckle + rng.normal(0, 0.03, img.shape)
    vol = np.clip(img * 200, 0, 255).astype(np.uint8)
    return vol, mask.astype(np.uint8)


def write_volume(folder: Path, vol: np.ndarray, mask: np.ndarray, spacing=(0.0113, 0.0039, 0.12)) -> None:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("oct", vol), ("reference", mask)):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(spacing)
        sitk.WriteImage(im, str(folder / f"{name}.mhd"))


def generate(root: Path, volumes: int = 4, slices: int = 16, height: int = 128, width: int = 128,
             fluid_fraction: float = 0.6, seed: int = 0) -> Path:
    """Write `volumes` synthetic cases under root (skipped when already written); returns root."""
    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for v in range(volumes):
        vol, mask = make_volume(rng, slices, height, width, fluid_fraction)
        # both classes in every volume, so grouped splits stay stratified
        if mask.reshape(slices, -1).any(1).all() or not mask.any():
            vol, mask = make_volume(rng, slices, height, width, fluid_fraction)
        write_volume(root / f"SYN{v:03d}", vol, mask)
    done.write_text("ok\n")
    return root
