"""Benchmark: our batched PGD against torchattacks' PGD, and the detector statistic against a SciPy version.

    python benchmarks/bench_adversarial.py --size smoke|full      (or: detectlab bench adversarial --size full)

PGD: images/s of ours over torchattacks.PGD on the same Madry CNN, batch, eps, step and steps (random
start in both), and both attacks' success rates on the same images (they must agree).
Detector: 28x28 images/s of our tensor statistic (no autograd, chunked) over the same statistic written
with scipy.ndimage filters on a numpy stack (the usual way to write it), and over our differentiable
version; their values must agree. Model weights are random-initialised then briefly trained on the
built-in digits so the attack has something to attack; no download.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {
    "smoke": {"pgd_images": 64, "pgd_steps": 5, "det_images": 4000, "repeats": 1, "train_steps": 30},
    "full": {"pgd_images": 1000, "pgd_steps": 40, "det_images": 100000, "repeats": 3, "train_steps": 300},
}


def scipy_statistic(x: np.ndarray, scale: float = 255.0, c: float = 5.0) -> np.ndarray:
    """The DESIGN.md statistic with scipy.ndimage, vectorised over the stack (reference for speed and value)."""
    from scipy import ndimage

    x = x.astype(np.float64) * scale
    k_cross = np.zeros((1, 3, 3))
    k_cross[0, [0, 1, 1, 2], [1, 0, 2, 1]] = 1.0
    k_diag = np.zeros((1, 3, 3))
    k_diag[0, [0, 0, 2, 2], [0, 2, 0, 2]] = 1.0
    cross = ndimage.correlate(x, k_cross, mode="constant")
    diag = ndimage.correlate(x, k_diag, mode="constant")
    sq = ndimage.correlate(x * x, k_cross, mode="constant")
    pred = 0.5 * cross - 0.25 * diag
    var = sq / 4 - (cross / 4) ** 2
    inner = (slice(None), slice(1, -1), slice(1, -1))
    w = 1.0 / (var[inner] + c)
    w /= w.sum(axis=(1, 2), keepdims=True)
    return (w * np.abs(x[inner] - pred[inner])).sum(axis=(1, 2)) / w[0].size


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _small_trained_model(steps: int, seed: int = 0):
    from detectlab.adversarial.model import MadryCNN
    from detectlab.adversarial.synthetic import builtin_digits

    torch.manual_seed(seed)
    train, test = builtin_digits()
    model = MadryCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train.x), (50,), generator=g)
        loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), test


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="smoke")
    ap.add_argument("--eps", type=float, default=0.3)
    args = ap.parse_args(argv)
    p = SIZES[args.size]
    import torchattacks

    from detectlab.adversarial.attack import pgd, predict_labels
    from detectlab.adversarial.detector import statistic, statistic_batched

    threads = torch.get_num_threads()
    model, test = _small_trained_model(p["train_steps"])
    n = min(p["pgd_images"], len(test.x))
    if n < p["pgd_images"]:  # repeat the built-in test images to reach the requested count
        reps = -(-p["pgd_images"] // len(test.x))
        x, y = test.x.repeat(reps, 1, 1, 1)[: p["pgd_images"]], test.y.repeat(reps)[: p["pgd_images"]]
    else:
        x, y = test.x[:n], test.y[:n]
    n = len(x)
    eps, steps = args.eps, p["pgd_steps"]
    alpha = 2.5 * eps / steps
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    out = {}
    torch.manual_seed(1)
    t_ours = _best_time(lambda: out.__setitem__("ours", pgd(model, x, y, eps, alpha, steps, batch_size=n)),
                        p["repeats"])
    torch.manual_seed(1)
    t_ta = _best_time(lambda: out.__setitem__("ta", ta(x, y)), p["repeats"])
    succ_ours = float((predict_labels(model, out["ours"]) != y).float().mean())
    succ_ta = float((predict_labels(model, out["ta"]) != y).float().mean())

    m = p["det_images"]
    rng = np.random.default_rng(0)
    base = test.x.numpy()[rng.integers(0, len(test.x), m)]
    imgs = np.clip(base + rng.uniform(-0.1, 0.1, base.shape), 0, 1).astype(np.float32)
    ti = torch.from_numpy(imgs)
    res = {}
    t_det = _best_time(lambda: res.__setitem__("ours", statistic_batched(ti)), p["repeats"])
    sub = min(m, 20000)  # the slower references on at most 20k images
    t_ref = _best_time(lambda: res.__setitem__("scipy", scipy_statistic(imgs[:sub, 0])), 1)
    with torch.no_grad():
        t_diff = _best_time(lambda: res.__setitem__("diff", statistic(ti[:sub])), 1)
    max_dev = float(np.max(np.abs(res["ours"][:sub].double().numpy() - res["scipy"])
                           / np.maximum(np.abs(res["scipy"]), 1e-9)))

    r = {
        "size": args.size, "threads": threads, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "pgd_images": n, "pgd_steps": steps, "eps": eps,
        "pgd_ours_img_s": _rate(n, t_ours), "pgd_torchattacks_img_s": _rate(n, t_ta),
        "pgd_success_ours": succ_ours, "pgd_success_torchattacks": succ_ta,
        "det_images": m, "det_ours_img_s": _rate(m, t_det), "det_scipy_img_s": _rate(sub, t_ref),
        "det_autograd_img_s": _rate(sub, t_diff), "det_max_rel_dev": max_dev,
    }
    r["pgd_ratio"] = r["pgd_ours_img_s"] / r["pgd_torchattacks_img_s"]
    r["det_ratio_scipy"] = r["det_ours_img_s"] / r["det_scipy_img_s"]
    r["det_ratio_autograd"] = r["det_ours_img_s"] / r["det_autograd_img_s"]

    print(f"adversarial benchmark ({args.size}; {threads} torch threads; {r['machine']})")
    print(f"{'':34s}{'ours':>14s}{'peer':>14s}{'ratio':>8s}")
    print(f"{'PGD images/s (torchattacks)':34s}{r['pgd_ours_img_s']:14.1f}{r['pgd_torchattacks_img_s']:14.1f}"
          f"{r['pgd_ratio']:8.2f}")
    print(f"{'PGD success rate':34s}{succ_ours:14.3f}{succ_ta:14.3f}")
    print(f"{'detector images/s (scipy.ndimage)':34s}{r['det_ours_img_s']:14.0f}{r['det_scipy_img_s']:14.0f}"
          f"{r['det_ratio_scipy']:8.1f}")
    print(f"{'detector images/s (our autograd)':34s}{r['det_ours_img_s']:14.0f}{r['det_autograd_img_s']:14.0f}"
          f"{r['det_ratio_autograd']:8.1f}")
    print(f"statistic: max relative deviation from the scipy reference {max_dev:.1e}")
    return r


if __name__ == "__main__":
    main()
