"""Benchmark: our fine-tuning loop against a bare torchvision training loop, and the largest-batch finder.

    python benchmarks/bench_fluid.py --size smoke|full      (or: detectlab bench fluid --size full)

Training throughput: images/s of `detectlab.fluid.train.fit` (its training steps; validation checks timed
apart) over a bare loop written the plain torchvision way (torchvision model with a 2-class `fc`, SGD
momentum 0.9, a shuffled index per epoch, forward/cross-entropy/backward/step) with the same architecture,
batch, images and number of iterations. Goal: ratio >= 0.95. Both are run `repeats` times, alternating, and
the best time of each is kept.
Batch finder: seconds of `find_max_batch` over the time of one design (folds x the time of one fold's
training in `fit`, validation checks included). Goal: <= 0.10.
"""

from __future__ import annotations

import argparse
import platform
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

SIZES = {
    "smoke": {"arch": "resnet18", "size": 32, "images": 32, "batch": 8, "epochs": 1, "repeats": 1, "folds": 2},
    "full": {"arch": "resnet18", "size": 224, "images": 96, "batch": 8, "epochs": 2, "repeats": 3, "folds": 10},
}


def bare_loop(x: torch.Tensor, y: torch.Tensor, arch: str, batch: int, iterations: int, seed: int) -> float:
    """The plain torchvision way; returns seconds of training."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    n, steps, it = len(x), len(x) // batch, 0
    model.train()
    t0 = time.perf_counter()
    while it < iterations:
        perm = torch.randperm(n, generator=g)
        for b in range(steps):
            if it >= iterations:
                break
            idx = perm[b * batch:(b + 1) * batch]
            xb = x[idx].expand(-1, 3, -1, -1)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
    return time.perf_counter() - t0


def ours(x: torch.Tensor, y: torch.Tensor, arch: str, batch: int, epochs: int, seed: int):
    from detectlab.fluid.model import build
    from detectlab.fluid.train import fit

    torch.manual_seed(seed)
    model = build(arch)
    tc = SimpleNamespace(lr=1e-4, momentum=0.9, max_epochs=epochs, checks_per_epoch=2, patience=10**6,
                         eval_batch=64, aux_weight=0.3)
    n_val = max(8, len(x) // 10)
    return fit(model, x[n_val:], y[n_val:], x[:n_val], y[:n_val], tc, batch, torch.device("cpu"),
               torch.Generator().manual_seed(seed))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="smoke")
    args = ap.parse_args(argv)
    s = SIZES[args.size]
    from detectlab.fluid.train import find_max_batch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(s["images"], 1, s["size"], s["size"], generator=g) * 2 - 1
    y = torch.arange(s["images"]) % 2
    best_ours, best_bare, best_fold, res = float("inf"), float("inf"), float("inf"), None
    for r in range(s["repeats"]):
        res = ours(x, y, s["arch"], s["batch"], s["epochs"], r)
        seen = res.iterations * s["batch"]
        best_ours = min(best_ours, seen / res.images_per_s)
        best_fold = min(best_fold, res.seconds)
        best_bare = min(best_bare, bare_loop(x[max(8, len(x) // 10):], y[max(8, len(x) // 10):], s["arch"],
                                             s["batch"], res.iterations, r))
    seen = res.iterations * s["batch"]
    ips_ours, ips_bare = seen / best_ours, seen / best_bare
    mb, finder_s = find_max_batch(s["arch"], s["size"], torch.device("cpu"), cap=64)
    design_s = best_fold * s["folds"]
    out = {"arch": s["arch"], "input": s["size"], "batch": s["batch"], "iterations": res.iterations,
           "ours_images_per_s": ips_ours, "bare_images_per_s": ips_bare, "throughput_ratio": ips_ours / ips_bare,
           "finder_seconds": finder_s, "finder_max_batch": mb, "design_seconds": design_s,
           "finder_fraction": finder_s / design_s, "threads": torch.get_num_threads(),
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}
    print(f"fluid benchmark ({args.size}): {s['arch']} at {s['size']} px, batch {s['batch']}, "
          f"{res.iterations} iterations, {out['machine']}")
    print(f"{'':<34}{'ours':>12}{'bare torchvision':>18}{'ratio':>8}")
    print(f"{'training images/s':<34}{ips_ours:>12.2f}{ips_bare:>18.2f}{out['throughput_ratio']:>8.2f}  (goal >= 0.95)")
    print(f"{'largest-batch finder (s)':<34}{finder_s:>12.2f}{'design ' + format(design_s, '.1f') + ' s':>18}"
          f"{out['finder_fraction']:>8.3f}  (goal <= 0.10; design = {s['folds']} folds x one fold's fit)")
    return out


if __name__ == "__main__":
    main()
