"""Benchmark: our batched PGD against torchattacks' PGD, and the detector statistic against a SciPy version.

    python benchmarks/bench_adversarial.py --size smoke|full      (or: detectlab bench adversarial --size full)

Every comparison is interleaved (ours, peer, ours, peer, ...; detectlab.core.bench.interleaved) and
reports the median of the repetitions with its spread.
PGD: images/s of ours and of torchattacks.PGD on the same Madry CNN, batch, eps, step and steps
(random start in both); with the same seed both make the same images, pixel for pixel (checked).
Detector: 28x28 uint8 images/s of our statistic (flat fused tensor ops; and, at full size, the same
formula fused by torch.compile) against the statistic written with scipy.ndimage filters on a numpy
stack (the usual way to write it); their values must agree. The model is briefly trained on the
built-in digits so the attack has something to attack; no download.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {
    "smoke": {"pgd_images": 64, "pgd_steps": 5, "det_images": 20000, "ref_images": 2000, "reps": 5,
              "train_steps": 30, "compiled": False},
    "full": {"pgd_images": 1000, "pgd_steps": 40, "det_images": 1_000_000, "ref_images": 20000, "reps": 5,
             "train_steps": 300, "compiled": True},
}


def scipy_statistic(x: np.ndarray, scale: float = 1.0, c: float = 5.0, divisor: int = 3) -> np.ndarray:
    """The DESIGN.md statistic with scipy.ndimage, vectorised over the stack (x: 0-255 levels)."""
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
    var = (sq - cross ** 2 / 4) / divisor
    inner = (slice(None), slice(1, -1), slice(1, -1))
    w = 1.0 / (var[inner] + c)
    w /= w.sum(axis=(1, 2), keepdims=True)
    return (w * np.abs(x[inner] - pred[inner])).sum(axis=(1, 2)) / w[0].size


def _small_trained_model(steps: int, seed: int = 0):
    from detectlab.adversarial.data import builtin_digits
    from detectlab.adversarial.model import MadryCNN

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


def _spread(res: dict, n: int) -> dict:
    """images/s per case (median over reps) and the speed ratio ours/peer with its range."""
    r = res["ratio"]
    return {"img_s": {k: n / v for k, v in res["median"].items()},
            "speedup_median": 1.0 / r["median"], "speedup_min": 1.0 / r["max"], "speedup_max": 1.0 / r["min"],
            "speedup_per_rep": [1.0 / v for v in r["per_rep"]]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="smoke")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    p = dict(SIZES[args.size])
    if args.reps:
        p["reps"] = args.reps
    import torchattacks

    from detectlab.adversarial.attack import pgd
    from detectlab.adversarial.detector import statistic_fast, to_uint8
    from detectlab.core.bench import format_interleaved, interleaved

    threads = torch.get_num_threads()
    model, test = _small_trained_model(p["train_steps"])
    reps_needed = -(-p["pgd_images"] // len(test.x))
    x, y = test.x.repeat(reps_needed, 1, 1, 1)[: p["pgd_images"]], test.y.repeat(reps_needed)[: p["pgd_images"]]
    n = len(x)
    eps, steps = args.eps, p["pgd_steps"]
    alpha = 2.5 * eps / steps
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    # same seed, same images (the correctness half of the comparison)
    torch.manual_seed(1)
    ours_img = pgd(model, x, y, eps, alpha, steps, batch_size=n)
    torch.manual_seed(1)
    ta_img = ta(x, y)
    pixel_agreement = float(((ours_img - ta_img).abs() <= 1e-5).float().mean())
    pgd_res = interleaved({"ours": lambda: pgd(model, x, y, eps, alpha, steps, batch_size=n),
                           "torchattacks": lambda: ta(x, y)}, reps=p["reps"], warmup=1, ratio=("ours", "torchattacks"))

    m = p["det_images"]
    rng = np.random.default_rng(0)
    base = to_uint8(test.x)[:, 0].numpy()[rng.integers(0, len(test.x), m)]
    noise = rng.integers(-25, 26, base.shape)
    imgs = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    ti = torch.from_numpy(imgs)
    sub = p["ref_images"]
    ref_imgs = imgs[:sub]
    det_res = interleaved({"ours": lambda: statistic_fast(ti[:sub]), "scipy": lambda: scipy_statistic(ref_imgs)},
                          reps=p["reps"], warmup=1, ratio=("ours", "scipy"))
    bulk = interleaved({"ours": lambda: statistic_fast(ti)}, reps=p["reps"], warmup=1)
    ours_vals = statistic_fast(ti[:sub]).double().numpy()
    ref_vals = scipy_statistic(ref_imgs)
    max_dev = float(np.max(np.abs(ours_vals - ref_vals) / np.maximum(np.abs(ref_vals), 1e-12)))

    r = {"size": args.size, "threads": threads, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
         "pgd_images": n, "pgd_steps": steps, "eps": eps, "reps": p["reps"], "pgd_pixel_agreement": pixel_agreement,
         "pgd": _spread(pgd_res, n), "pgd_times": pgd_res["times"],
         "det_images": m, "det_ref_images": sub, "det": _spread(det_res, sub), "det_times": det_res["times"],
         "det_bulk_img_s": m / bulk["median"]["ours"], "det_bulk_times": bulk["times"]["ours"],
         "det_max_rel_dev": max_dev}
    if p["compiled"]:
        import time

        t0 = time.perf_counter()
        comp_vals = statistic_fast(ti[:1000], compiled=True)  # the one-off compile
        r["det_compile_seconds"] = time.perf_counter() - t0
        r["det_compiled_max_rel_dev"] = float(np.max(np.abs(comp_vals.double().numpy() - ref_vals[:1000])
                                                     / np.maximum(np.abs(ref_vals[:1000]), 1e-12)))
        comp = interleaved({"eager": lambda: statistic_fast(ti), "compiled": lambda: statistic_fast(ti, compiled=True)},
                           reps=p["reps"], warmup=1, ratio=("compiled", "eager"))
        r["det_compiled_img_s"] = m / comp["median"]["compiled"]
        r["det_eager_img_s_interleaved"] = m / comp["median"]["eager"]
        r["det_compiled_times"] = comp["times"]

    print(f"adversarial benchmark ({args.size}; {threads} torch threads; {r['machine']}; interleaved, "
          f"median of {p['reps']})")
    print(format_interleaved(pgd_res, f"PGD {n} images x {steps} steps"))
    print(f"  PGD images/s: ours {r['pgd']['img_s']['ours']:.1f}, torchattacks {r['pgd']['img_s']['torchattacks']:.1f}; "
          f"speed ratio ours/torchattacks {r['pgd']['speedup_median']:.3f} (range {r['pgd']['speedup_min']:.3f}-"
          f"{r['pgd']['speedup_max']:.3f}); same images: {pixel_agreement:.4%} of pixels")
    print(format_interleaved(det_res, f"statistic on {sub} images"))
    print(f"  detector images/s: ours {r['det']['img_s']['ours']:.0f}, scipy.ndimage {r['det']['img_s']['scipy']:.0f}; "
          f"speed ratio {r['det']['speedup_median']:.1f} (range {r['det']['speedup_min']:.1f}-{r['det']['speedup_max']:.1f}); "
          f"max relative deviation {max_dev:.1e}")
    print(f"  detector on {m} uint8 images: {r['det_bulk_img_s']:.0f} images/s (eager)")
    if p["compiled"]:
        print(f"  compiled (torch.compile, {r['det_compile_seconds']:.0f} s to compile): {r['det_compiled_img_s']:.0f} "
              f"images/s vs eager {r['det_eager_img_s_interleaved']:.0f} (interleaved); max relative deviation "
              f"{r['det_compiled_max_rel_dev']:.1e}")
    return r


if __name__ == "__main__":
    main()
