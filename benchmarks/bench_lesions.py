"""Inference latency of the lightweight ResNet18-T1 Mask R-CNN vs torchvision's maskrcnn_resnet50_fpn.

Same image (a built-in synthetic CT slice), CPU, eval mode, both models' transforms set to the
image's size (no upscaling to 800 px), two classes (background, lesion) for both, the same
detections cap (100) and score threshold 0 so both
return the full cap and paste the same number of masks. Random weights (nothing downloads); latency
does not depend on the weights' values. Goal (issue): latency ratio ours/peer at most 0.5.

    python benchmarks/bench_lesions.py --size smoke|full     (or: detectlab bench lesions --size full)
"""

from __future__ import annotations

import argparse
import statistics
import time

SIZES = {"smoke": dict(image=128, repeats=1, warmup=0, cap=10), "full": dict(image=512, repeats=7, warmup=2, cap=100)}


def _time(model, x, repeats: int, warmup: int) -> tuple[float, int]:
    import torch

    with torch.no_grad():
        for _ in range(warmup):
            model([x])
        ts, n = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model([x])
            ts.append(time.perf_counter() - t0)
            n = len(out[0]["scores"])
    return statistics.median(ts), n


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from detectlab.lesions.data import to_tensor
    from detectlab.lesions.model import ModelConfig, build_maskrcnn, count_params
    from detectlab.lesions.synthetic import make_slice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="smoke", choices=sorted(SIZES))
    ap.add_argument("--cap", type=int, default=0, help="detections cap of both models [10 smoke, 100 full]")
    args = ap.parse_args(argv)
    s = SIZES[args.size]
    args.cap = args.cap or s["cap"]
    torch.manual_seed(0)
    img, _ = make_slice(np.random.default_rng(0), s["image"], 2)
    x = to_tensor(img)
    ours = build_maskrcnn(ModelConfig(backbone="resnet18_t1", min_size=s["image"], max_size=s["image"],
                                      box_score_thresh=0.0, detections_per_img=args.cap)).eval()
    peer = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, min_size=s["image"], max_size=s["image"],
                                 box_score_thresh=0.0, box_detections_per_img=args.cap).eval()
    t_ours, n_ours = _time(ours, x, s["repeats"], s["warmup"])
    t_peer, n_peer = _time(peer, x, s["repeats"], s["warmup"])
    res = {"size": args.size, "image": s["image"], "threads": torch.get_num_threads(),
           "ours_latency_s": t_ours, "peer_latency_s": t_peer, "latency_ratio": t_ours / t_peer,
           "ours_params": count_params(ours), "peer_params": count_params(peer),
           "param_ratio": count_params(ours) / count_params(peer), "ours_detections": n_ours,
           "peer_detections": n_peer}
    print(f"lesions benchmark ({args.size}): {s['image']}x{s['image']} slice, CPU, {res['threads']} threads, "
          f"median of {s['repeats']} after {s['warmup']} warm-up, cap {args.cap}")
    print(f"{'model':<34} {'params':>12} {'latency (s)':>12} {'detections':>11}")
    print(f"{'ResNet18-T1 Mask R-CNN (ours)':<34} {res['ours_params']:>12,} {t_ours:>12.3f} {n_ours:>11}")
    print(f"{'maskrcnn_resnet50_fpn (torchvision)':<34} {res['peer_params']:>12,} {t_peer:>12.3f} {n_peer:>11}")
    print(f"{'ratio ours / torchvision':<34} {res['param_ratio']:>12.3f} {res['latency_ratio']:>12.3f}   "
          f"(goal: latency ratio <= 0.5: {'met' if res['latency_ratio'] <= 0.5 else 'NOT met'})")
    return res


if __name__ == "__main__":
    main()
