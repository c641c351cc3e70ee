"""Inference latency of the lightweight Mask R-CNN (ours) vs torchvision's maskrcnn_resnet50_fpn.

Same image (a built-in synthetic CT slice), CPU, eval mode, both models' transforms set to the image's
size (no upscaling to 800 px), two classes (background, lesion), the same detections cap and score
threshold 0 so both return the full cap and paste the same number of masks. Random weights (nothing
downloads); latency does not depend on the weights' values. The two are timed INTERLEAVED (ours, peer,
ours, peer, ...) after a warm-up, so machine load hits both alike; the median ratio of each repetition
pair and its spread are reported. Goal (issue): latency ratio ours/peer at most 0.5.

    python benchmarks/bench_lesions.py --size smoke|full [--backbone resnet18_t1]
"""

from __future__ import annotations

import argparse
import statistics
import time

SIZES = {"smoke": dict(image=96, reps=5, warmup=1, cap=10), "full": dict(image=512, reps=7, warmup=2, cap=100)}


def interleaved(fns: dict, reps: int, warmup: int, ratio: tuple[str, str]) -> dict:
    """core.bench.interleaved when the core has it; the same protocol otherwise."""
    try:
        from detectlab.core.bench import interleaved as core_interleaved

        return core_interleaved(fns, reps=reps, warmup=warmup, ratio=ratio)
    except ImportError:
        pass
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    per = [a / b for a, b in zip(times[ratio[0]], times[ratio[1]])]
    q = statistics.quantiles(per, n=4) if len(per) > 1 else [per[0]] * 3
    return {"times": times, "median": {k: statistics.median(v) for k, v in times.items()},
            "ratio": {"median": statistics.median(per), "min": min(per), "max": max(per), "q1": q[0], "q3": q[2],
                      "per_rep": per}}


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from detectlab.lesions.config import ModelConfig
    from detectlab.lesions.data import to_tensor
    from detectlab.lesions.model import build_maskrcnn, count_params
    from detectlab.lesions.synthetic import make_slice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="smoke", choices=sorted(SIZES))
    ap.add_argument("--backbone", default="resnet18_t1")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions per model [5 smoke, 7 full]")
    args = ap.parse_args(argv)
    s = SIZES[args.size]
    reps = args.reps or s["reps"]
    torch.manual_seed(0)
    img, _ = make_slice(np.random.default_rng(0), s["image"], 2)
    x = to_tensor(img)
    ours = build_maskrcnn(ModelConfig(backbone=args.backbone, min_size=s["image"], max_size=s["image"],
                                      box_score_thresh=0.0, detections_per_img=s["cap"])).eval()
    peer = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, min_size=s["image"],
                                 max_size=s["image"], box_score_thresh=0.0, box_detections_per_img=s["cap"]).eval()
    n = {}

    def run(name, model):
        def f():
            with torch.no_grad():
                n[name] = len(model([x])[0]["scores"])
        return f

    res = interleaved({"ours": run("ours", ours), "peer": run("peer", peer)}, reps, s["warmup"], ("ours", "peer"))
    out = {"size": args.size, "image": s["image"], "threads": torch.get_num_threads(), "reps": reps,
           "warmup": s["warmup"], "ours_latency_s": res["median"]["ours"], "peer_latency_s": res["median"]["peer"],
           "latency_ratio": res["ratio"]["median"], "ratio_spread": [res["ratio"]["min"], res["ratio"]["max"]],
           "ratio_iqr": [res["ratio"]["q1"], res["ratio"]["q3"]], "per_rep_ratio": res["ratio"]["per_rep"],
           "times": res["times"], "ours_params": count_params(ours), "peer_params": count_params(peer),
           "param_ratio": count_params(ours) / count_params(peer), "ours_detections": n["ours"],
           "peer_detections": n["peer"]}
    print(f"lesions benchmark ({args.size}): {s['image']}x{s['image']} slice, CPU, {out['threads']} threads, "
          f"{reps} interleaved repetitions after {s['warmup']} warm-up, cap {s['cap']}")
    print(f"{'model':<36} {'params':>12} {'median (s)':>11} {'detections':>11}")
    print(f"{args.backbone + ' Mask R-CNN (ours)':<36} {out['ours_params']:>12,} {out['ours_latency_s']:>11.3f} "
          f"{n['ours']:>11}")
    print(f"{'maskrcnn_resnet50_fpn (torchvision)':<36} {out['peer_params']:>12,} {out['peer_latency_s']:>11.3f} "
          f"{n['peer']:>11}")
    print(f"ratio ours / torchvision: params {out['param_ratio']:.3f}, latency median {out['latency_ratio']:.3f} "
          f"(min {res['ratio']['min']:.3f}, max {res['ratio']['max']:.3f}, IQR {res['ratio']['q1']:.3f}-"
          f"{res['ratio']['q3']:.3f}); goal <= 0.5: {'met' if out['latency_ratio'] <= 0.5 else 'NOT met'}")
    return out


if __name__ == "__main__":
    main()
