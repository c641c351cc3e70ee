"""Training: the lightweight Mask R-CNN (segmentation) and COVID-CT-Mask-Net's classifier S.

Segmentation: Adam on the torchvision Mask R-CNN losses with an optional linear warm-up and cosine/step
decay, optional horizontal flips and gradient clipping. Checkpoints every `checkpoint_every`
iterations inside the unit hold the model, Adam state, the torch RNG state and the history, so an
interrupted training resumes where it stopped and continues exactly as an uninterrupted one (batch
order and flips are functions of (seed, iteration)). With `eval_every` the validation slices are scored
during training (the learning curve: iteration, CPU seconds, mask AP, Dice); the reported model is the
last one, never the best point of the curve. Training time is measured in CPU seconds of the process
(evaluation excluded) beside wall seconds.

Classification (the authors' train_classifier.py): the segmentation model without its mask branch in
eval mode; S gets each image's ranked RoI batch (score + raw box deltas, rank-preserving padding);
BCE-with-logits on one-hot labels (or cross-entropy); S and the backbone's `bn*` affine parameters are
trained when `train_norm_affine` (the frozen model runs at every step); otherwise the RoI batch of each
image is computed once and cached on the CPU, and S trains on the cache (moved to S's device).

`detectlab lesions train` trains the first backbone of the config (segmentation, then classifier)
and leaves a run folder that `predict` and `evaluate` use.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from detectlab.core import progress
from detectlab.core.checkpoints import load_checkpoint, load_into, save_checkpoint
from detectlab.core.runtime import choose_device, seed_everything
from detectlab.lesions.config import CLASS_NAMES, ClsTrainConfig, Config, ModelConfig, SegTrainConfig
from detectlab.lesions.data import CTSlice, instances_from_map, segmentation_data, classification_data, to_target, to_tensor
from detectlab.lesions.model import (STRIDES, ClassifierS, CovidCTMaskNet, anchor_coverage, build_maskrcnn,
                                     count_params, fit_anchors, parse_backbone, roi_features)

SYSTEM = "lesions"


def module_device(m: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (where its inputs must go)."""
    return next(m.parameters()).device


# ------------------------------------------------------------------ model setup


def model_config(cfg: Config, backbone: str, train: list[CTSlice]) -> tuple[ModelConfig, dict]:
    """The Mask R-CNN settings for this training data: the global mean/SD and (with fit_anchors) anchors
    fitted to the training boxes; info holds the anchor coverage (IoU >= 0.5) of the paper's and ours."""
    from detectlab.lesions.data import global_mean_std

    mean, std = global_mean_std(train)
    mc = replace(cfg.model, backbone=backbone, image_mean=mean, image_std=std,
                 anchor_sizes=list(cfg.model.anchor_sizes), aspect_ratios=list(cfg.model.aspect_ratios))
    boxes = [instances_from_map(s.instances)[1] for s in train]
    sizes = [s.image.shape for s in train]
    stride = STRIDES[parse_backbone(backbone)[1]]
    info: dict[str, Any] = {"stride": stride}
    if any(len(b) for b in boxes):
        info["coverage_configured"] = anchor_coverage(boxes, sizes, mc.anchor_sizes, mc.aspect_ratios, stride)
        if mc.fit_anchors:
            s_, r_ = fit_anchors(np.concatenate([b for b in boxes if len(b)]))
            mc = replace(mc, anchor_sizes=s_, aspect_ratios=r_)
            info["coverage_fitted"] = anchor_coverage(boxes, sizes, s_, r_, stride)
    info.update(anchor_sizes=list(mc.anchor_sizes), aspect_ratios=list(mc.aspect_ratios))
    return mc, info


# ------------------------------------------------------------------ segmentation


def _save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt/{i}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {**meta, "param_groups": sd["param_groups"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    tmp.replace(path)


def _load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    t = load_file(str(path), device="cpu")
    model.load_state_dict({k[6:]: v.to(device) for k, v in t.items() if k.startswith("model/")})
    state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("opt/"):
            _, i, name = k.split("/", 2)
            state.setdefault(int(i), {})[name] = v if name == "step" else v.to(device)
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    if "rng/torch" in t:
        torch.set_rng_state(t["rng/torch"])
    return meta


def batch_at(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The slice indices of iteration `step`: epochs of a seeded permutation, a function of (seed, step)
    only, so a resumed training draws the same batches."""
    per_epoch = max(1, n // batch_size)
    epoch, b = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if n < batch_size:
        return perm.tolist()
    return perm[b * batch_size:(b + 1) * batch_size].tolist()


def augment(img: torch.Tensor, tgt: dict, tc: SegTrainConfig, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Random horizontal flip, zoom-in crop and intensity jitter (each when enabled in `tc`), drawn from
    `g` in a fixed order so the same generator state gives the same augmentation."""
    u = torch.rand(8, generator=g).tolist()
    if tc.hflip and u[0] < 0.5:
        img, tgt = hflip(img, tgt)
    if tc.zoom > 1.0:
        h, w = img.shape[-2:]
        f = 1.0 + (tc.zoom - 1.0) * u[1]
        ch, cw = max(8, int(round(h / f))), max(8, int(round(w / f)))
        y0, x0 = int(u[2] * (h - ch)), int(u[3] * (w - cw))
        img = img[:, y0:y0 + ch, x0:x0 + cw]
        m = tgt["masks"][:, y0:y0 + ch, x0:x0 + cw]
        keep = m.flatten(1).amax(1) > 0
        m = m[keep]
        from torchvision.ops import masks_to_boxes

        b = masks_to_boxes(m).to(torch.float32) if len(m) else torch.zeros((0, 4))
        b[:, 2:] += 1  # exclusive ends, as the targets
        tgt = {"boxes": b, "labels": tgt["labels"][keep], "masks": m}
    if tc.intensity_jitter > 0:
        j = tc.intensity_jitter
        c, br, gam = 1 + j * (2 * u[4] - 1), j * 0.5 * (2 * u[5] - 1), math.exp(j * (2 * u[6] - 1))
        img = ((img - 0.5) * c + 0.5 + br).clamp(0, 1) ** gam
    return img, tgt


def augment_rng(step: int, slot: int, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 7_919 + step * 131 + slot + 1)


def lr_at(step: int, tc: SegTrainConfig) -> float:
    """Learning rate of iteration `step` (0-based): linear warm-up, then constant, cosine or step decay."""
    if tc.warmup and step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if tc.schedule == "constant":
        return tc.lr
    span = max(1, tc.iterations - tc.warmup)
    p = min(1.0, (step - tc.warmup) / span)
    if tc.schedule == "cosine":
        return tc.lr * (tc.min_lr_factor + (1 - tc.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * p)))
    return tc.lr * (tc.min_lr_factor if p >= 0.75 else 1.0)  # step


def hflip(img: torch.Tensor, tgt: dict) -> tuple[torch.Tensor, dict]:
    w = img.shape[-1]
    b = tgt["boxes"].clone()
    b[:, [0, 2]] = w - tgt["boxes"][:, [2, 0]]
    return img.flip(-1), {**tgt, "boxes": b, "masks": tgt["masks"].flip(-1)}


def train_segmentation(mc: ModelConfig, train: list[CTSlice], tc: SegTrainConfig, device: torch.device,
                       seed: int = 0, state_path: Path | None = None, name: str = "segmentation",
                       val: list[CTSlice] | None = None, stop_at: int | None = None) -> tuple[torch.nn.Module, dict]:
    """Train Mask R-CNN on the slices; returns (model, history). `stop_at` ends the call after that many
    iterations (having written a checkpoint) as an interruption would; the next call resumes."""
    seed_everything(seed)
    model = build_maskrcnn(mc).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    data = [(to_tensor(s.image), to_target(s)) for s in train]
    hist: dict[str, Any] = {"step": [], "loss": [], "components": {}, "cpu_seconds": 0.0, "seconds": 0.0,
                            "curve": [], "resumed_at": []}
    start = 0
    if state_path is not None and state_path.exists():
        meta = _load_state(state_path, model, opt, device)
        start, hist = meta["step"], meta["history"]
        hist["resumed_at"].append(start)
        progress.log(f"{name}: resumed at iteration {start}/{tc.iterations}")
    base_cpu, base_wall = time.process_time() - hist["cpu_seconds"], time.perf_counter() - hist["seconds"]
    excluded = 0.0  # evaluation time inside this call
    run_loss: list[float] = []
    model.train()

    def clock() -> tuple[float, float]:
        return time.process_time() - base_cpu - excluded, time.perf_counter() - base_wall - excluded_wall[0]

    excluded_wall = [0.0]
    for step in range(start, tc.iterations):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, tc)
        idx = batch_at(step, len(data), tc.batch_size, seed)
        imgs, tgts = [], []
        for slot, i in enumerate(idx):
            im, tg = augment(*data[i], tc, augment_rng(step, slot, seed))
            imgs.append(im.to(device))
            tgts.append({k: v.to(device) for k, v in tg.items()})
        losses = model(imgs, tgts)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        run_loss.append(float(loss.detach()))
        for k, v in losses.items():
            hist["components"].setdefault(k, []).append(round(float(v.detach()), 5))
        done = step + 1
        if done % tc.log_every == 0 or done == tc.iterations:
            cpu, wall = clock()
            hist["step"].append(done)
            hist["loss"].append(float(np.mean(run_loss)))
            progress.log(f"{name}: iteration {done}/{tc.iterations} loss {np.mean(run_loss):.4f} "
                         f"lr {lr_at(step, tc):.2e} ({cpu:.0f} CPU-s, {wall:.0f} s)")
            run_loss = []
        if val is not None and tc.eval_every and (done % tc.eval_every == 0 or done == tc.iterations):
            c0, w0 = time.process_time(), time.perf_counter()
            ev = evaluate_segmentation(model, val, device, tc.dice_score_thresh)[0]
            model.train()
            excluded += time.process_time() - c0
            excluded_wall[0] += time.perf_counter() - w0
            cpu, wall = clock()
            point = {"iteration": done, "cpu_seconds": round(cpu, 1), "seconds": round(wall, 1),
                     "ap50": ev["ap50"], "ap": ev["ap"], "box_ap50": ev["box_ap50"],
                     "paper_ap50": ev["paper_ap50"], "dice": ev["dice"]["pooled"],
                     "dice_volume": ev["dice"]["mean_volume"], "n_detections": ev["n_detections"]}
            hist["curve"].append(point)
            progress.log(f"{name}: validation at {done}: mask AP50 {ev['ap50']:.4f} AP {ev['ap']:.4f} "
                         f"Dice {ev['dice']['pooled']:.4f} ({ev['n_detections']} detections)")
        save_now = state_path is not None and done < tc.iterations and (
            (tc.checkpoint_every and done % tc.checkpoint_every == 0) or (stop_at is not None and done >= stop_at))
        if save_now:
            hist["cpu_seconds"], hist["seconds"] = clock()
            _save_state(state_path, model, opt, {"step": done, "history": hist})
        if stop_at is not None and done >= stop_at and done < tc.iterations:
            hist["cpu_seconds"], hist["seconds"] = clock()
            hist["stopped_at"] = done
            return model.eval(), hist
    hist["cpu_seconds"], hist["seconds"] = clock()
    return model.eval(), hist


@torch.no_grad()
def predict_segmentation(model: torch.nn.Module, slices: list[CTSlice], device: torch.device,
                         batch: int = 4) -> list[dict[str, np.ndarray]]:
    """Per slice: masks (N, H, W) bool (sigmoid > 0.5), boxes (N, 4), scores (N,), ranked by score."""
    model.eval()
    out = []
    for i in range(0, len(slices), batch):
        dets = model([to_tensor(s.image).to(device) for s in slices[i:i + batch]])
        for d, s in zip(dets, slices[i:i + batch]):
            if "masks" in d and len(d["masks"]):
                m = d["masks"][:, 0] > 0.5
            else:
                m = torch.zeros((0, *s.image.shape), dtype=torch.bool)
            out.append({"masks": m.cpu().numpy(), "boxes": d["boxes"].cpu().numpy(),
                        "scores": d["scores"].cpu().numpy()})
    return out


def lesion_mask(pred: dict, shape: tuple[int, int], score_thresh: float) -> np.ndarray:
    """The union of the predicted instance masks scoring at least `score_thresh` (the Dice mask)."""
    keep = np.asarray(pred["scores"]) >= score_thresh
    m = np.asarray(pred["masks"], bool)
    return m[keep].any(0) if keep.any() else np.zeros(shape, bool)


def segmentation_metrics(slices: list[CTSlice], preds: list[dict], dice_thresh: float = 0.5) -> dict:
    """COCO mask and box AP, the authors' per-image AP (`paper_*`), Dice (pooled, per slice, per volume)."""
    from detectlab.lesions.cocoeval import coco_ap, dice_summary, per_image_ap

    gt = []
    for s in slices:
        m, b = instances_from_map(s.instances)
        gt.append({"masks": m, "boxes": b, "size": s.image.shape})
    seg = coco_ap(gt, preds, "segm")
    box = coco_ap(gt, preds, "bbox")
    paper = per_image_ap(gt, preds)
    dice = dice_summary([lesion_mask(p, s.image.shape, dice_thresh) for p, s in zip(preds, slices)],
                        [s.mask for s in slices], [s.group for s in slices])
    return {**seg, **{f"box_{k}": v for k, v in box.items()}, **{f"paper_{k}": v for k, v in paper.items()},
            "dice": dice, "dice_score_thresh": dice_thresh, "n_images": len(slices),
            "n_instances": int(sum(len(x["masks"]) for x in gt)),
            "n_detections": int(sum(len(p["scores"]) for p in preds))}


def evaluate_segmentation(model, slices: list[CTSlice], device, dice_thresh: float = 0.5) -> tuple[dict, list[dict]]:
    """Metrics (see `segmentation_metrics`) and predictions of the model on the slices."""
    preds = predict_segmentation(model, slices, device)
    return segmentation_metrics(slices, preds, dice_thresh), preds


# ------------------------------------------------------------------ classifier


@torch.no_grad()
def roi_cache(net: CovidCTMaskNet, slices: list[CTSlice], device: torch.device, batch: int = 4) -> list[dict]:
    """The frozen model's ranked RoIs per slice (before padding), kept on the CPU: scores, values, boxes."""
    out = []
    for i in range(0, len(slices), batch):
        imgs = [to_tensor(s.image).to(device) for s in slices[i:i + batch]]
        for d in net.detections(imgs):
            out.append({k: v.detach().cpu() for k, v in d.items()})
    return out


def cache_features(cache: list[dict], roi_batch: int, g: torch.Generator | None = None) -> torch.Tensor:
    return torch.stack([roi_features(c["values"], c["scores"], roi_batch, g) for c in cache])


def cls_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """BCE-with-logits on one-hot labels (the authors') or softmax cross-entropy."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, y)


def train_classifier(net: CovidCTMaskNet, train: list[CTSlice], cc: ClsTrainConfig, seed: int = 0,
                     name: str = "classifier", cache: list[dict] | None = None) -> dict:
    """Train S (and the norm affine parameters when net.train_norm_affine) on the labelled slices.

    Without norm training, `cache` (or a fresh `roi_cache`) holds each image's RoIs on the CPU and the
    padded batches are moved to S's device; otherwise the frozen model runs on every batch."""
    g = seed_everything(seed)
    device = module_device(net.s)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cc.lr, weight_decay=cc.weight_decay)
    y_all = torch.as_tensor([s.label for s in train], dtype=torch.long)
    n = len(train)
    hist: dict[str, list] = {"epoch": [], "loss": [], "acc": []}
    t0, c0 = time.perf_counter(), time.process_time()
    if not net.train_norm_affine and cache is None:
        cache = roi_cache(net, train, device)
    imgs = None if not net.train_norm_affine else [to_tensor(s.image) for s in train]
    for ep in range(cc.epochs):
        net.train()
        x_all = cache_features(cache, net.roi_batch, g) if cache is not None else None
        perm = torch.randperm(n, generator=g)
        tot, correct = 0.0, 0
        for b in range(0, n, cc.batch_size):
            idx = perm[b:b + cc.batch_size]
            if x_all is not None:
                logits = net.s(x_all[idx].to(device))
            else:
                logits = net([imgs[i].to(device) for i in idx.tolist()], g)
            y = y_all[idx].to(logits.device)
            loss = cls_loss(logits, y, cc.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        hist["epoch"].append(ep + 1)
        hist["loss"].append(tot / n)
        hist["acc"].append(correct / n)
        if (ep + 1) % max(1, cc.epochs // 5) == 0 or ep + 1 == cc.epochs:
            progress.log(f"{name}: epoch {ep + 1}/{cc.epochs} loss {tot / n:.4f} train acc {correct / n:.3f}")
    hist["seconds"] = time.perf_counter() - t0
    hist["cpu_seconds"] = time.process_time() - c0
    return hist


@torch.no_grad()
def classify(net: CovidCTMaskNet, slices: list[CTSlice] | None = None, cache: list[dict] | None = None,
             batch: int = 4) -> np.ndarray:
    """Class probabilities (N, 3) (softmax of S's logits) with the deterministic, evenly spread padding."""
    net.eval()
    device = module_device(net.s)
    if cache is None:
        cache = roi_cache(net, slices or [], module_device(net.seg))
    if not cache:
        return np.zeros((0, len(CLASS_NAMES)), np.float32)
    return torch.softmax(net.s(cache_features(cache, net.roi_batch, None).to(device)), 1).cpu().numpy()


def class_metrics(y: np.ndarray, prob: np.ndarray) -> dict:
    """Per-class sensitivity (recall) and overall accuracy."""
    from detectlab.core.metrics import accuracy, sensitivity

    pred = prob.argmax(1)
    sens = {CLASS_NAMES[c]: sensitivity(y == c, pred == c) for c in range(len(CLASS_NAMES))}
    return {"sensitivity": sens, "accuracy": accuracy(y, pred)}


# ------------------------------------------------------------------ checkpoints


def load_segmentation(path: Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    from detectlab.core.checkpoints import read_header

    header = read_header(path)
    model = build_maskrcnn(header["model_config"])
    load_into(model, path, SYSTEM)
    return model.to(device).eval(), header


def build_classifier(seg_state: dict, mc: dict | ModelConfig, cc: ClsTrainConfig | dict) -> CovidCTMaskNet:
    cc = cc if isinstance(cc, dict) else asdict(cc)
    net = CovidCTMaskNet(mc, cc.get("roi_batch", 128), cc.get("hidden", 512), score_thresh=cc.get("score_thresh", -0.01),
                         box_values=cc.get("box_values", "deltas"), train_norm_affine=cc.get("train_norm_affine", True))
    net.seg.load_state_dict({k: v for k, v in seg_state.items() if not k.startswith("roi_heads.mask_")})
    return net


def load_classifier(seg_path: Path, cls_path: Path, device="cpu") -> tuple[CovidCTMaskNet, dict]:
    """COVID-CT-Mask-Net from the segmentation checkpoint and the classifier checkpoint (which holds S
    and, when trained, the norm affine parameters under `seg.`)."""
    from detectlab.core.checkpoints import read_header

    sh, ch = read_header(seg_path), read_header(cls_path)
    net = build_classifier(load_checkpoint(seg_path, SYSTEM)[0], sh["model_config"], ch)
    state = load_checkpoint(cls_path, SYSTEM)[0]
    net.s.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("s.")})
    seg_part = {k[4:]: v for k, v in state.items() if k.startswith("seg.")}
    if seg_part:
        net.seg.load_state_dict(seg_part, strict=False)
    return net.to(device).eval(), ch


def _classifier_state(net: CovidCTMaskNet) -> dict[str, torch.Tensor]:
    st = {f"s.{k}": v for k, v in net.s.state_dict().items()}
    if net.train_norm_affine:
        from detectlab.lesions.model import norm_affine_parameters

        st.update({f"seg.backbone.body.{n}": p.detach() for n, p in norm_affine_parameters(net.seg)})
    return st


# ------------------------------------------------------------------ units (module-level, picklable kwargs)


def seg_unit(backbone: str, cfg_dict: dict, run_dir: str) -> dict:
    """Train + evaluate one segmentation model; writes checkpoints/seg-<backbone>.safetensors."""
    from detectlab.core.config import from_dict
    from detectlab.lesions import baseline

    cfg = from_dict(Config, cfg_dict)
    rd = Path(run_dir)
    device = choose_device(cfg.device)
    sd = segmentation_data(cfg, rd)
    train, val, info = sd.train, sd.val, sd.info
    mc, anchors = model_config(cfg, backbone, train)
    progress.log(f"seg {backbone}: {len(train)} training / {len(val)} validation slices ({info['source']}), "
                 f"mean {mc.image_mean:.4f} sd {mc.image_std:.4f}, anchors {mc.anchor_sizes} x {mc.aspect_ratios}")
    part = rd / "units" / f"seg-{backbone}.partial"
    model, hist = train_segmentation(mc, train, cfg.seg, device, cfg.seed, part, name=f"seg {backbone}",
                                     val=val if cfg.seg.eval_every else None)
    ev, _ = evaluate_segmentation(model, val, device, cfg.seg.dice_score_thresh)
    base = baseline.evaluate(train, val, cfg.min_area)
    empty = segmentation_metrics(val, [{"masks": np.zeros((0, *s.image.shape), bool), "boxes": np.zeros((0, 4)),
                                        "scores": np.zeros(0)} for s in val], cfg.seg.dice_score_thresh)
    ck = rd / "checkpoints" / f"seg-{backbone}.safetensors"
    save_checkpoint(ck, model, SYSTEM, asdict(mc), kind="segmentation", backbone=backbone, image_size=cfg.image_size,
                    dice_score_thresh=cfg.seg.dice_score_thresh, min_area=cfg.min_area,
                    volume_preprocess=cfg.volume_preprocess, baseline_threshold=base.get("threshold"))
    if part.exists():
        part.unlink()
    progress.log(f"seg {backbone}: mask AP {ev['ap']:.4f} AP50 {ev['ap50']:.4f} (per-image AP50 "
                 f"{ev['paper_ap50']:.4f}), Dice {ev['dice']['pooled']:.4f}; lung-threshold baseline Dice "
                 f"{base.get('dice', {}).get('pooled', float('nan')):.4f}; {hist['cpu_seconds'] / 60:.1f} CPU-min")
    return {**ev, "params": count_params(model), "train_minutes": hist["seconds"] / 60,
            "train_cpu_minutes": hist["cpu_seconds"] / 60, "backbone": backbone, "anchors": anchors,
            "history": {"step": hist["step"], "loss": hist["loss"], "curve": hist["curve"],
                        "resumed_at": hist["resumed_at"]},
            "n_train": len(train), "data": info, "baseline": base,
            "empty_baseline": {"AP@0.5": empty["ap50"], "per-image AP@0.5": empty["paper_ap50"],
                               "per-image AP@[.5:.95]": empty["paper_ap"], "Dice": empty["dice"]["pooled"],
                               "Dice/slice": empty["dice"]["mean_slice"], "Dice/volume": empty["dice"]["mean_volume"]}}


def cls_unit(backbone: str, cfg_dict: dict, run_dir: str) -> dict:
    """Train + evaluate COVID-CT-Mask-Net on the frozen seg-<backbone> model; writes cls-<backbone>."""
    from detectlab.core.config import from_dict

    cfg = from_dict(Config, cfg_dict)
    rd = Path(run_dir)
    device = choose_device(cfg.device)
    cc = cfg.cls
    seg_path = rd / "checkpoints" / f"seg-{backbone}.safetensors"
    seg_state, header = load_checkpoint(seg_path, SYSTEM)
    net = build_classifier(seg_state, header["model_config"], cc).to(device)
    train, test, info = classification_data(cfg, rd)
    info["domain"] = classifier_domain(segmentation_data_is_real(cfg), bool(info.get("builtin")))
    t0 = time.perf_counter()
    tr_cache = None if cc.train_norm_affine else roi_cache(net, train, device)
    cache_s = time.perf_counter() - t0
    ytr = np.array([s.label for s in train])
    yte = np.array([s.label for s in test])
    hist = train_classifier(net, train, cc, cfg.seed, name=f"cls {backbone}", cache=tr_cache)
    te_cache = roi_cache(net, test, device)
    prob = classify(net, cache=te_cache)
    m = class_metrics(yte, prob)
    majority = int(np.bincount(ytr, minlength=len(CLASS_NAMES)).argmax())
    base = class_metrics(yte, np.eye(len(CLASS_NAMES))[np.full(len(yte), majority)])
    save_checkpoint(rd / "checkpoints" / f"cls-{backbone}.safetensors", _classifier_state(net), SYSTEM,
                    {"roi_batch": cc.roi_batch, "hidden": cc.hidden}, kind="classifier", backbone=backbone,
                    roi_batch=cc.roi_batch, hidden=cc.hidden, score_thresh=cc.score_thresh, box_values=cc.box_values,
                    train_norm_affine=cc.train_norm_affine, segmentation=seg_path.name)
    rois = [{"label": int(y), "scores": c["scores"].tolist(),
             "areas": ((c["boxes"][:, 2] - c["boxes"][:, 0]) * (c["boxes"][:, 3] - c["boxes"][:, 1])).tolist()}
            for y, c in zip(yte, te_cache)]
    progress.log(f"cls {backbone}: accuracy {m['accuracy']:.4f}; sensitivity " +
                 ", ".join(f"{k} {v:.3f}" for k, v in m["sensitivity"].items()) + f" ({info['domain']})")
    return {**m, "params": count_params(net), "trainable_params": count_params(net, trainable_only=True),
            "train_minutes": (hist["seconds"] + cache_s) / 60, "backbone": backbone, "n_train": len(train),
            "n_test": len(test), "history": {k: hist[k] for k in ("epoch", "loss", "acc")},
            "test_probs": prob.tolist(), "test_labels": yte.tolist(), "test_names": [s.name for s in test],
            "rois": rois, "data": info, "majority": {"class": CLASS_NAMES[majority], **base}}


def classifier_domain(seg_real: bool, cls_builtin: bool) -> str:
    """How Table 3's detector and classifier data relate (a detector trained on real CT applied to the
    built-in phantoms is out of domain, and the table says so)."""
    if seg_real and cls_builtin:
        return "out of domain: detector trained on real CT, classifier trained and tested on built-in phantoms"
    if not seg_real and not cls_builtin:
        return "out of domain: detector trained on built-in phantoms, classifier on real slices"
    return "one domain (detector and classifier data from the same source)"


def segmentation_data_is_real(cfg: Config) -> bool:
    from detectlab.core.config import resolve_data
    from detectlab.lesions.config import DATA_SUBDIR

    return resolve_data(cfg.data, DATA_SUBDIR) is not None


def run(cfg: Any, run: Any) -> dict[str, Any]:
    """`detectlab lesions train`: segmentation + classifier for the first backbone, usable by predict."""
    from detectlab.core.config import to_dict
    from detectlab.core.units import Unit, run_units
    from detectlab.lesions.config import check

    check(cfg)
    if not (Path(run.dir) / "metrics.json").exists():  # read every input once: bad input fails at once
        segmentation_data(cfg, run.dir)
        if cfg.cls.enabled:
            classification_data(cfg, run.dir)
    b = cfg.backbones[0]
    cd = to_dict(cfg)
    seg = run_units(run, [Unit(f"seg-{b}", seg_unit, dict(backbone=b, cfg_dict=cd, run_dir=str(run.dir)))],
                    description="segmentation")[f"seg-{b}"]
    metrics: dict[str, Any] = {"segmentation": {b: seg_summary(seg)}}
    if cfg.cls.enabled:
        cl = run_units(run, [Unit(f"cls-{b}", cls_unit, dict(backbone=b, cfg_dict=cd, run_dir=str(run.dir)))],
                       description="classifier")[f"cls-{b}"]
        metrics["classification"] = {b: cls_summary(cl)}
    run.write_metrics(metrics)
    return metrics


def seg_summary(r: dict) -> dict:
    """The metrics.json entry of one segmentation unit."""
    base = r.get("baseline", {})
    out = {k: r[k] for k in ("ap50", "ap75", "ap", "box_ap50", "box_ap", "paper_ap50", "paper_ap75", "paper_ap",
                             "params", "train_minutes", "train_cpu_minutes")}
    out["dice"] = {k: r["dice"][k] for k in ("pooled", "mean_slice", "mean_volume")}
    best = r.get("empty_baseline", {}).get("Dice", 0.0)
    if "dice" in base:
        out["baseline_lung_threshold"] = {"dice": base["dice"]["pooled"], "dice_volume": base["dice"]["mean_volume"],
                                          "ap50": base["coco"]["ap50"], "paper_ap50": base["per_image"]["ap50"],
                                          "threshold": base["threshold"]}
        best = max(best, base["dice"]["pooled"])
    out["baseline_empty"] = {"dice": r.get("empty_baseline", {}).get("Dice"),
                             "paper_ap50": r.get("empty_baseline", {}).get("per-image AP@0.5")}
    out["below_baseline"] = not (r["dice"]["pooled"] > best)
    return out


def cls_summary(c: dict) -> dict:
    out = {k: c[k] for k in ("sensitivity", "accuracy", "params", "trainable_params")}
    out["domain"] = c["data"]["domain"]
    out["majority_accuracy"] = c["majority"]["accuracy"]
    out["below_baseline"] = not (c["accuracy"] > c["majority"]["accuracy"])
    return out
