#!/usr/bin/env bash
# gpu-check for adversarial: smoke preset, evaluate and predict on --device cuda (OUT and DL set by
# scripts/gpu_check.sh). Also checks that the CUDA run's random starts equal the CPU's (same seed).
set -euo pipefail
DL=${DL:-.venv/bin/detectlab}
OUT=${OUT:-runs/gpu-check/adversarial}
PY=$(dirname "$DL")/python
mkdir -p "$OUT"
# the whole protocol (train both models, every attack incl. the adaptive one, both detectors) on the GPU
"$DL" adversarial run --preset smoke --data builtin --device cuda --out "$OUT/run"
# labelled digits in the MNIST idx format for evaluate, one PNG for predict
"$PY" - "$OUT" <<'PY'
import gzip, struct, sys
from pathlib import Path
import numpy as np
from PIL import Image
from detectlab.adversarial.data import builtin_digits
from detectlab.adversarial.detector import to_uint8
out = Path(sys.argv[1]) / "digits"
out.mkdir(parents=True, exist_ok=True)
_, test = builtin_digits(seed=0)
x, y = to_uint8(test.x[:100])[:, 0].numpy(), test.y[:100].numpy().astype(np.uint8)
for name, arr, magic in (("t10k-images-idx3-ubyte.gz", x, 2051), ("t10k-labels-idx1-ubyte.gz", y, 2049)):
    with gzip.open(out / name, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())
Image.fromarray(x[0]).save(out / "digit0.png")
PY
"$DL" adversarial evaluate "$OUT/run" "$OUT/digits" --device cuda --eps 0.1,0.3 --out "$OUT/evaluate"
"$DL" adversarial predict "$OUT/run" "$OUT/digits/digit0.png" "$OUT/digits/t10k-images-idx3-ubyte.gz" \
  --model secret --device cuda --out "$OUT/predict"
# every attack on CUDA tensors, and the random start independent of the device
"$PY" - <<'PY'
import torch
from detectlab.adversarial import attack as atk
from detectlab.adversarial.data import builtin_digits
from detectlab.adversarial.model import MadryCNN
torch.manual_seed(0)
_, test = builtin_digits(seed=0)
x, y = test.x[:32], test.y[:32]
m = MadryCNN().eval()
starts = []
for dev in ("cpu", "cuda"):
    g = torch.Generator().manual_seed(3)
    starts.append(atk.uniform_noise(x.to(dev), 0.3, g).cpu())
assert torch.equal(starts[0], starts[1]), "random start differs between CPU and CUDA"
mc, xc, yc = m.to("cuda"), x.cuda(), y.cuda()
for name, f in [("pgd", lambda: atk.pgd(mc, xc, yc, 0.3, 0.01, 5, generator=torch.Generator().manual_seed(0))),
                ("fgsm", lambda: atk.fgsm(mc, xc, yc, 0.3)),
                ("apgd", lambda: atk.apgd(mc, xc, yc, 0.3, steps=5)),
                ("cw", lambda: atk.cw_l2(mc, xc, yc, steps=5)),
                ("adaptive", lambda: atk.adaptive_attack(mc, xc, yc, 0.3, 0.01, steps=5,
                                                          generator=torch.Generator().manual_seed(0)).x)]:
    out = f()
    assert out.device.type == "cuda", name
    print("ok", name, tuple(out.shape))
PY
echo "adversarial gpu-check ok"
