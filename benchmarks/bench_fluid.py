"""Benchmark: our fine-tuning loop against a bare torchvision training loop, interleaved.

    python benchmarks/bench_fluid.py --size smoke|full      (or: detectlab bench fluid --size full)

Ours: the training loop of `detectlab.fluid.train.fit` (no validation check: the peer has none) on a prepared
uint8 set (batches converted to float on the fly, the model normalising its input, the fused optimizer). Peer: the plain
torchvision way (torchvision model with a 2-class `fc`, SGD momentum 0.9, a shuffled index per epoch,
forward / cross-entropy / backward / step on a float tensor held in memory), same architecture, batch,
images and iterations. The two run interleaved (ours, peer, ours, peer, ...) after a warm-up; we report the
median images/s of each and the median (and spread) of the per-repetition throughput ratio ours/peer
(= time(peer) / time(ours) of the same repetition pair). Goal: >= 0.95.
"""

from __future__ import annotations

import argparse
import platform
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from detectlab.core.bench import interleaved

SIZES = {
    "smoke": {"arch": "resnet18", "size": 32, "images": 32, "batch": 8, "epochs": 1, "reps": 5},
    "full": {"arch": "resnet18", "size": 224, "images": 64, "batch": 8, "epochs": 1, "reps": 5},
}


def bare_loop(x: torch.Tensor, y: torch.Tensor, arch: str, batch: int, epochs: int, seed: int) -> None:
    """The plain torchvision way."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for b in range(n // batch):
            idx = perm[b * batch:(b + 1) * batch]
            loss = F.cross_entropy(model(x[idx].expand(-1, 3, -1, -1)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def ours(train, val, arch: str, batch: int, epochs: int, seed: int):
    from detectlab.fluid.model import build
    from detectlab.fluid.train import fit

    torch.manual_seed(seed)
    tc = SimpleNamespace(optimizer="sgd", lr=1e-4, momentum=0.9, weight_decay=0.0, max_epochs=epochs,
                         checks_per_epoch=1, val_every=10**9, patience=10**6, select_by="accuracy", eval_batch=64,
                         aux_weight=0.3, class_weights=False, bn_recalibrate=False, bn_images=0)
    return fit(build(arch), train, val, tc, batch, torch.device("cpu"), seed, check_at_end=False)


def main(argv: list[str] | None = None) -> dict:
    from detectlab.fluid.data import Prepared

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="smoke")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default: the size's)")
    args = ap.parse_args(argv)
    s = SIZES[args.size]
    reps = args.reps or s["reps"]
    g = torch.Generator().manual_seed(0)
    xu = torch.randint(0, 256, (s["images"] + 8, 1, s["size"], s["size"]), generator=g, dtype=torch.uint8)
    y = torch.arange(s["images"] + 8) % 2
    train, val = Prepared(xu[:-8], y[:-8]), Prepared(xu[-8:], y[-8:])
    xf = xu[:-8].float() / 255.0
    res = interleaved({"ours": lambda: ours(train, val, s["arch"], s["batch"], s["epochs"], 0),
                        "peer": lambda: bare_loop(xf, y[:-8], s["arch"], s["batch"], s["epochs"], 0)}, reps=reps, warmup=1,
                      ratio=("peer", "ours"))
    seen = (s["images"] // s["batch"]) * s["batch"] * s["epochs"]
    ips = {k: seen / v for k, v in res["median"].items()}
    r = res["ratio"]
    out = {"arch": s["arch"], "input": s["size"], "batch": s["batch"], "images_per_rep": seen, "reps": reps,
           "ours_images_per_s": ips["ours"], "peer_images_per_s": ips["peer"], "ratio_median": r["median"],
           "ratio_min": r["min"], "ratio_max": r["max"], "ratio_q1": r["q1"], "ratio_q3": r["q3"],
           "per_rep": r["per_rep"], "times": res["times"], "threads": torch.get_num_threads(),
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}
    print(f"fluid benchmark ({args.size}): {s['arch']} at {s['size']} px, batch {s['batch']}, {seen} images per "
          f"repetition, {reps} interleaved repetitions, {out['machine']}")
    print(f"{'':<28}{'ours (fit)':>12}{'bare torchvision':>18}")
    print(f"{'training images/s (median)':<28}{ips['ours']:>12.2f}{ips['peer']:>18.2f}")
    print(f"throughput ratio ours/peer per repetition (time peer / time ours): median {r['median']:.3f} (q1 {r['q1']:.3f}, q3 {r['q3']:.3f}, "
          f"min {r['min']:.3f}, max {r['max']:.3f}; goal >= 0.95)")
    return out


if __name__ == "__main__":
    main()
