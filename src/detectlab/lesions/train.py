"""Training: the lightweight Mask R-CNN (segmentation) and COVID-CT-Mask-Net's classifier S.

Segmentation: Adam (the paper preset: lr 1e-5, weight decay 1e-3 as in the authors' code) on the
torchvision Mask R-CNN losses, no augmentation; checkpoints every `checkpoint_every` iterations
inside the unit (model + Adam state, safetensors) so an interrupted training resumes where it stopped.

Classification: the trained segmentation model frozen without its mask branch; its ranked RoI batch
(score threshold -0.01, NMS 0.75, B = 128) is computed once per image and cached (the model is frozen
and deterministic, so this equals running it every epoch), then S is trained with Adam and
cross-entropy; short batches get a fresh random rank-preserving padding every epoch.

`detectlab lesions train` trains the first backbone of the config (segmentation, then classifier)
and leaves a run folder that `predict` uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from detectlab.core import progress
from detectlab.core.checkpoints import load_checkpoint, load_into, save_checkpoint
from detectlab.core.runtime import choose_device, seed_everything
from detectlab.lesions.data import CLASS_NAMES, CTSlice, mask_to_instances, to_target, to_tensor
from detectlab.lesions.model import (ClassifierS, CovidCTMaskNet, ModelConfig, build_maskrcnn, count_params,
                                     roi_features)

SYSTEM = "lesions"


# ------------------------------------------------------------------ segmentation


def _save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt/{i}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    meta = {**meta, "param_groups": sd["param_groups"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    tmp.replace(path)


def _load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    t = load_file(str(path), device=str(device))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model/")})
    state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("opt/"):
            _, i, name = k.split("/", 2)
            state.setdefault(int(i), {})[name] = v.cpu() if name == "step" else v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def batches_of(n: int, batch_size: int, steps: int, g: torch.Generator, start: int = 0):
    """Index batches for `steps` iterations, reshuffling every epoch (deterministic in g and start)."""
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    step = 0
    while step < steps:
        perm = torch.randperm(n, generator=g)
        for b in range(per_epoch):
            if step >= steps:
                return
            if step >= start:
                yield step, perm[b * batch_size: (b + 1) * batch_size].tolist()
            step += 1


def train_segmentation(mc: ModelConfig, train: list[CTSlice], tc: Any, device: torch.device, seed: int = 0,
                       state_path: Path | None = None, min_area: int = 100, name: str = "segmentation"
                       ) -> tuple[torch.nn.Module, dict]:
    """Train Mask R-CNN on the slices; returns (model, history with seconds)."""
    seed_everything(seed)
    model = build_maskrcnn(mc).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    data = [(to_tensor(s.image), to_target(s, min_area)) for s in train]
    hist: dict[str, Any] = {"step": [], "loss": [], "components": {}, "seconds": 0.0}
    start = 0
    if state_path is not None and state_path.exists():
        meta = _load_state(state_path, model, opt, device)
        start, hist = meta["step"], meta["history"]
        progress.log(f"{name}: resumed at iteration {start}/{tc.iterations}")
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter() - hist["seconds"]
    run_loss: list[float] = []
    model.train()
    for step, idx in batches_of(len(data), tc.batch_size, tc.iterations, g, start):
        imgs = [data[i][0].to(device) for i in idx]
        tgts = [{k: v.to(device) for k, v in data[i][1].items()} for i in idx]
        losses = model(imgs, tgts)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss.append(float(loss.detach()))
        for k, v in losses.items():
            hist["components"].setdefault(k, []).append(float(v.detach()))
        done = step + 1
        if done % tc.log_every == 0 or done == tc.iterations:
            hist["step"].append(done)
            hist["loss"].append(float(np.mean(run_loss)))
            progress.log(f"{name}: iteration {done}/{tc.iterations} loss {np.mean(run_loss):.4f} "
                         f"({time.perf_counter() - t0:.0f} s)")
            run_loss = []
        if state_path is not None and tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < tc.iterations:
            hist["seconds"] = time.perf_counter() - t0
            _save_state(state_path, model, opt, {"step": done, "history": hist})
    hist["seconds"] = time.perf_counter() - t0
    return model.eval(), hist


@torch.no_grad()
def predict_segmentation(model: torch.nn.Module, slices: list[CTSlice], device: torch.device,
                         batch: int = 4) -> list[dict[str, np.ndarray]]:
    """Per slice: masks (N, H, W) bool (sigmoid > 0.5), boxes (N, 4), scores (N,)."""
    model.eval()
    out = []
    for i in range(0, len(slices), batch):
        dets = model([to_tensor(s.image).to(device) for s in slices[i:i + batch]])
        for d in dets:
            m = d["masks"][:, 0] > 0.5 if "masks" in d else torch.zeros((0, 1, 1), dtype=torch.bool)
            out.append({"masks": m.cpu().numpy(), "boxes": d["boxes"].cpu().numpy(),
                        "scores": d["scores"].cpu().numpy()})
    return out


def evaluate_segmentation(model, slices: list[CTSlice], device, min_area: int = 100) -> tuple[dict, list[dict]]:
    """COCO AP for masks and boxes on the slices; returns (metrics, predictions)."""
    from detectlab.lesions.cocoeval import coco_ap

    preds = predict_segmentation(model, slices, device)
    gt = []
    for s in slices:
        m, b = mask_to_instances(s.mask, min_area)
        gt.append({"masks": m, "boxes": b, "size": s.mask.shape})
    seg = coco_ap(gt, preds, "segm")
    box = coco_ap(gt, preds, "bbox")
    res = {**seg, **{f"box_{k}": v for k, v in box.items()},
           "n_images": len(slices), "n_instances": int(sum(len(x["masks"]) for x in gt)),
           "n_detections": int(sum(len(p["scores"]) for p in preds))}
    return res, preds


# ------------------------------------------------------------------ classifier


@torch.no_grad()
def roi_cache(net: CovidCTMaskNet, slices: list[CTSlice], device: torch.device, batch: int = 4) -> list[dict]:
    """The frozen model's ranked RoIs per slice (before padding): boxes, scores, image size."""
    out = []
    for i in range(0, len(slices), batch):
        imgs = [to_tensor(s.image).to(device) for s in slices[i:i + batch]]
        for d, im in zip(net.detections(imgs), imgs):
            out.append({"boxes": d["boxes"].cpu(), "scores": d["scores"].cpu(), "size": tuple(im.shape[-2:])})
    return out


def cache_features(cache: list[dict], roi_batch: int, g: torch.Generator | None = None) -> torch.Tensor:
    return torch.stack([roi_features(c["boxes"], c["scores"], c["size"], roi_batch, g) for c in cache])


def train_classifier(s: ClassifierS, cache: list[dict], labels: np.ndarray, cc: Any, seed: int = 0,
                     name: str = "classifier") -> dict:
    """Train S on cached RoI batches (random rank-preserving padding each epoch)."""
    g = seed_everything(seed)
    opt = torch.optim.Adam(s.parameters(), lr=cc.lr, weight_decay=cc.weight_decay)
    y = torch.as_tensor(labels, dtype=torch.long)
    n = len(cache)
    hist: dict[str, list] = {"epoch": [], "loss": [], "acc": []}
    t0 = time.perf_counter()
    for ep in range(cc.epochs):
        s.train()
        x = cache_features(cache, s.roi_batch, g)
        perm = torch.randperm(n, generator=g)
        tot, correct = 0.0, 0
        for b in range(0, n, cc.batch_size):
            idx = perm[b:b + cc.batch_size]
            logits = s(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        hist["epoch"].append(ep + 1)
        hist["loss"].append(tot / n)
        hist["acc"].append(correct / n)
        if (ep + 1) % max(1, cc.epochs // 5) == 0 or ep + 1 == cc.epochs:
            progress.log(f"{name}: epoch {ep + 1}/{cc.epochs} loss {tot / n:.4f} train acc {correct / n:.3f}")
    hist["seconds"] = time.perf_counter() - t0
    return hist


@torch.no_grad()
def classify_cache(s: ClassifierS, cache: list[dict]) -> np.ndarray:
    """Class probabilities (N, 3) with the deterministic (evenly spread) padding."""
    s.eval()
    if not cache:
        return np.zeros((0, 3), np.float32)
    return torch.softmax(s(cache_features(cache, s.roi_batch, None)), 1).numpy()


def class_metrics(y: np.ndarray, prob: np.ndarray) -> dict:
    """Per-class sensitivity (recall) and overall accuracy."""
    from detectlab.core.metrics import accuracy, sensitivity

    pred = prob.argmax(1)
    sens = {CLASS_NAMES[c]: sensitivity(y == c, pred == c) for c in range(len(CLASS_NAMES))}
    return {"sensitivity": sens, "accuracy": accuracy(y, pred)}


# ------------------------------------------------------------------ units (module-level, picklable kwargs)


def seg_unit(backbone: str, cfg_dict: dict, run_dir: str) -> dict:
    """Train + evaluate one segmentation model; writes checkpoints/seg-<backbone>.safetensors."""
    from detectlab.core.config import from_dict
    from detectlab.lesions.experiment import Config, model_config, segmentation_data

    cfg = from_dict(Config, cfg_dict)
    rd = Path(run_dir)
    device = choose_device(cfg.device)
    train, val, info = segmentation_data(cfg, rd)
    mc = model_config(cfg, backbone, train)
    progress.log(f"seg {backbone}: {len(train)} training / {len(val)} validation slices ({info['source']}), "
                 f"mean {mc.image_mean:.4f} sd {mc.image_std:.4f}")
    model, hist = train_segmentation(mc, train, cfg.seg, device, cfg.seed, rd / "units" / f"seg-{backbone}.partial",
                                     cfg.min_area, name=f"seg {backbone}")
    ev, _ = evaluate_segmentation(model, val, device, cfg.min_area)
    ck = rd / "checkpoints" / f"seg-{backbone}.safetensors"
    save_checkpoint(ck, model, SYSTEM, mc.__dict__, kind="segmentation", backbone=backbone, image_size=cfg.image_size)
    part = rd / "units" / f"seg-{backbone}.partial"
    if part.exists():
        part.unlink()
    progress.log(f"seg {backbone}: mask AP {ev['ap']:.4f} AP50 {ev['ap50']:.4f} AP75 {ev['ap75']:.4f} "
                 f"(box AP {ev['box_ap']:.4f}), {hist['seconds'] / 60:.1f} min")
    return {**ev, "params": count_params(model), "train_minutes": hist["seconds"] / 60, "backbone": backbone,
            "history": {"step": hist["step"], "loss": hist["loss"]}, "n_train": len(train), "data": info}


def load_segmentation(path: Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    from detectlab.core.checkpoints import read_header

    header = read_header(path)
    model = build_maskrcnn(header["model_config"])
    load_into(model, path, SYSTEM)
    return model.to(device).eval(), header


def load_classifier(seg_path: Path, cls_path: Path, device="cpu") -> tuple[CovidCTMaskNet, dict]:
    from detectlab.core.checkpoints import read_header

    sh, ch = read_header(seg_path), read_header(cls_path)
    net = CovidCTMaskNet(sh["model_config"], ch.get("roi_batch", 128), ch.get("hidden", 512),
                         score_thresh=ch.get("score_thresh", -0.01))
    seg_state = {k: v for k, v in load_checkpoint(seg_path, SYSTEM)[0].items() if not k.startswith("roi_heads.mask_")}
    net.seg.load_state_dict(seg_state)
    load_into(net.s, cls_path, SYSTEM)
    return net.to(device), ch


def cls_unit(backbone: str, cfg_dict: dict, run_dir: str) -> dict:
    """Train + evaluate COVID-CT-Mask-Net on the frozen seg-<backbone> model; writes cls-<backbone>."""
    from detectlab.core.config import from_dict
    from detectlab.lesions.experiment import Config, classification_data

    cfg = from_dict(Config, cfg_dict)
    rd = Path(run_dir)
    device = choose_device(cfg.device)
    cc = cfg.cls
    seg_path = rd / "checkpoints" / f"seg-{backbone}.safetensors"
    seg, header = load_segmentation(seg_path, device)
    net = CovidCTMaskNet(header["model_config"], cc.roi_batch, cc.hidden, score_thresh=cc.score_thresh)
    net.seg.load_state_dict({k: v for k, v in seg.state_dict().items() if not k.startswith("roi_heads.mask_")})
    net.to(device)
    train, test, info = classification_data(cfg, rd)
    t0 = time.perf_counter()
    tr_cache = roi_cache(net, train, device)
    te_cache = roi_cache(net, test, device)
    cache_s = time.perf_counter() - t0
    ytr = np.array([s.label for s in train])
    yte = np.array([s.label for s in test])
    hist = train_classifier(net.s, tr_cache, ytr, cc, cfg.seed, name=f"cls {backbone}")
    prob = classify_cache(net.s, te_cache)
    m = class_metrics(yte, prob)
    save_checkpoint(rd / "checkpoints" / f"cls-{backbone}.safetensors", net.s, SYSTEM,
                    {"roi_batch": cc.roi_batch, "hidden": cc.hidden}, kind="classifier", backbone=backbone,
                    roi_batch=cc.roi_batch, hidden=cc.hidden, score_thresh=cc.score_thresh, segmentation=seg_path.name)
    # RoI statistics for the Fig. 3 plots: scores and box areas of each test image's ranked batch
    rois = [{"label": int(y), "scores": c["scores"].tolist(),
             "areas": ((c["boxes"][:, 2] - c["boxes"][:, 0]) * (c["boxes"][:, 3] - c["boxes"][:, 1])).tolist()}
            for y, c in zip(yte, te_cache)]
    progress.log(f"cls {backbone}: accuracy {m['accuracy']:.4f}; sensitivity " +
                 ", ".join(f"{k} {v:.3f}" for k, v in m["sensitivity"].items()))
    return {**m, "params": count_params(net), "trainable_params": count_params(net, trainable_only=True),
            "train_minutes": (hist["seconds"] + cache_s) / 60, "backbone": backbone, "n_train": len(train),
            "n_test": len(test), "history": {k: hist[k] for k in ("epoch", "loss", "acc")},
            "test_probs": prob.tolist(), "test_labels": yte.tolist(), "test_names": [s.name for s in test],
            "rois": rois, "data": info}


def run(cfg: Any, run: Any) -> dict[str, Any]:
    """`detectlab lesions train`: segmentation + classifier for the first backbone, usable by predict."""
    from detectlab.core.config import to_dict
    from detectlab.core.units import Unit, run_units

    from detectlab.lesions.experiment import check_config, validate_data

    check_config(cfg)
    validate_data(cfg, run.dir)
    b = cfg.backbones[0]
    cd = to_dict(cfg)
    seg = run_units(run, [Unit(f"seg-{b}", seg_unit, dict(backbone=b, cfg_dict=cd, run_dir=str(run.dir)))],
                    description="segmentation")[f"seg-{b}"]
    metrics: dict[str, Any] = {"segmentation": {b: {k: seg[k] for k in ("ap50", "ap75", "ap", "params",
                                                                        "train_minutes")}}}
    if cfg.cls.enabled:
        cl = run_units(run, [Unit(f"cls-{b}", cls_unit, dict(backbone=b, cfg_dict=cd, run_dir=str(run.dir)))],
                       description="classifier")[f"cls-{b}"]
        metrics["classification"] = {b: {k: cl[k] for k in ("sensitivity", "accuracy", "params", "trainable_params")}}
    run.write_metrics(metrics)
    return metrics
