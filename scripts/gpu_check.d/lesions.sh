#!/usr/bin/env bash
# lesions on the GPU: the smoke preset (segmentation + COVID-CT-Mask-Net with its RoI cache), the
# classifier with trainable norm affine parameters (the authors' setting: the frozen model runs on the
# GPU every step), evaluate and predict (a PNG slice and a NIfTI volume), all with --device cuda.
# OUT is set by scripts/gpu_check.sh. Exits non-zero on any error.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
DL=${DETECTLAB:-detectlab}
PY=${PYTHON:-python}
$DL lesions run --preset smoke --data builtin --device cuda --out "$OUT/lesions-smoke"
$DL lesions train --preset smoke --data builtin --device cuda --out "$OUT/lesions-affine" \
  seg.iterations=20 cls.train_norm_affine=true cls.epochs=2
$PY - "$OUT" <<'PY'
import sys, pathlib
import numpy as np, nibabel as nib
from PIL import Image
out = pathlib.Path(sys.argv[1])
src = sorted((out / "lesions-smoke" / "data" / "classification" / "images").glob("2_*.png"))[0]
img = np.asarray(Image.open(src))
Image.fromarray(img).save(out / "slice.png")
hu = (img.astype(np.float32) / 255 * 1400 - 1000).T[::-1, ::-1]
nib.save(nib.Nifti1Image(np.stack([hu, hu, hu], -1), np.diag([0.8, 0.8, 2.5, 1])), str(out / "vol.nii.gz"))
d = out / "evalset" / "images"; d.mkdir(parents=True, exist_ok=True)
(out / "evalset" / "masks").mkdir(exist_ok=True)
m = np.asarray(Image.open(str(src).replace("/images/", "/masks/")))
Image.fromarray(img).save(d / "a.png"); Image.fromarray(m).save(out / "evalset" / "masks" / "a.png")
PY
$DL lesions predict "$OUT/lesions-smoke" "$OUT/slice.png" "$OUT/vol.nii.gz" --out "$OUT/pred" --device cuda
$DL lesions predict "$OUT/lesions-affine" "$OUT/slice.png" --out "$OUT/pred-affine" --device cuda
$DL lesions evaluate "$OUT/lesions-smoke" "$OUT/evalset" --out "$OUT/eval" --device cuda
test -s "$OUT/pred/vol_lesions.nii.gz" && test -s "$OUT/eval/metrics.json"
echo "lesions gpu-check: ok"
