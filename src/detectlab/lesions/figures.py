"""Fig. 2-style overlays (boxes, masks, scores, class scores), Fig. 3-style RoI score histograms and
area-versus-score scatter per class, and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from detectlab.lesions.config import CLASS_NAMES  # noqa: E402

COLORS = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.3, 0.5, 1.0], [1.0, 0.9, 0.1], [1.0, 0.3, 1.0],
                   [0.1, 1.0, 1.0]])


def overlay_rgb(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Gray image (H, W) uint8 with instance masks (N, H, W) blended in colour -> (H, W, 3) float in [0, 1]."""
    rgb = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    if len(masks):
        m = np.asarray(masks, bool)
        col = COLORS[np.arange(len(m)) % len(COLORS)]  # (N, 3)
        cover = m.any(0)
        first = np.argmax(m, axis=0)  # the first instance covering each pixel
        rgb[cover] = (1 - alpha) * rgb[cover] + alpha * col[first[cover]]
    return rgb


def draw_detections(ax, image: np.ndarray, pred: dict, title: str = "", max_show: int = 10) -> None:
    ax.imshow(overlay_rgb(image, pred["masks"][:max_show]))
    for k, (b, s) in enumerate(zip(pred["boxes"][:max_show], pred["scores"][:max_show])):
        c = COLORS[k % len(COLORS)]
        ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=c, lw=1))
        ax.text(b[0], b[1] - 1, f"lesion {s:.2f}", color=c, fontsize=6, va="bottom")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_overlay(path: Path, image: np.ndarray, pred: dict, probs: np.ndarray | None = None,
                 label: str = "") -> Path:
    """The prediction figure of one slice (used by predict): overlay, and class scores when given."""
    n = 2 if probs is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    draw_detections(axes[0, 0], image, pred, f"{label}: {len(pred['scores'])} lesion(s)")
    if probs is not None:
        _class_bars(axes[0, 1], probs, None)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _class_bars(ax, probs, true: int | None) -> None:
    colors = ["tab:green" if (true is not None and c == true) else "tab:red" for c in range(len(probs))]
    ax.barh(range(len(probs)), probs, color=colors)
    ax.set_yticks(range(len(probs)), [f"{c}: {n}" for c, n in enumerate(CLASS_NAMES)], fontsize=7)
    ax.set_xlim(0, 1)
    for c, p in enumerate(probs):
        ax.text(min(p + 0.02, 0.8), c, f"{p:.2f}", va="center", fontsize=7)
    ax.set_title("class scores" + (f" (true {true}, green)" if true is not None else ""), fontsize=8)


def fig2(run, cfg, backbone: str, cls_result: dict | None) -> None:
    """Rows: test slices (one per class, then validation slices); columns: prediction, mask score map,
    ground truth, class scores."""
    import torch

    from detectlab.lesions.data import classification_data, segmentation_data, to_tensor
    from detectlab.lesions.train import load_segmentation

    device = torch.device("cpu")
    model, _ = load_segmentation(run.checkpoints / f"seg-{backbone}.safetensors", device)
    rows: list[tuple[Any, np.ndarray | None]] = []
    if cls_result is not None:
        _, test, _ = classification_data(cfg, run.dir)
        names = cls_result["test_names"]
        probs = np.asarray(cls_result["test_probs"])
        for c in (2, 1, 0):
            k = next((i for i, s in enumerate(test) if s.label == c), None)
            if k is not None and test[k].name in names:
                rows.append((test[k], probs[names.index(test[k].name)]))
    val = segmentation_data(cfg, run.dir).val
    with_lesion = [s for s in val if s.mask.any()][: max(1, cfg.figure_examples - len(rows) // 2)]
    rows += [(s, None) for s in with_lesion]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for i, (s, pr) in enumerate(rows):
        with torch.no_grad():
            d = model([to_tensor(s.image)])[0]
        prob = d["masks"][:, 0].numpy()
        p = {"masks": prob > 0.5, "boxes": d["boxes"].numpy(), "scores": d["scores"].numpy()}
        draw_detections(axes[i, 0], s.image, p, f"{s.name}")
        # mask score map: the per-pixel max over the kept detections' mask probabilities
        score_map = prob.max(0) if len(prob) else np.zeros(s.image.shape, np.float32)
        axes[i, 1].imshow(score_map, cmap="magma", vmin=0, vmax=1)
        axes[i, 1].set_title("mask score map", fontsize=8)
        axes[i, 1].axis("off")
        axes[i, 2].imshow(s.image, cmap="gray")
        axes[i, 2].imshow(np.ma.masked_where(~s.mask, s.mask), cmap="autumn", alpha=0.6)
        axes[i, 2].set_title("ground-truth lesions", fontsize=8)
        axes[i, 2].axis("off")
        if pr is not None:
            _class_bars(axes[i, 3], pr, s.label)
        else:
            axes[i, 3].axis("off")
            axes[i, 3].text(0.1, 0.5, "validation slice\n(segmentation data)", fontsize=8)
    fig.suptitle(f"Fig. 2: {backbone} segmentation and COVID-CT-Mask-Net class scores", fontsize=10)
    fig.tight_layout()
    run.save_figure(fig, f"fig2_overlays_{backbone}")


def fig3(run, backbone: str, cls_result: dict, top: int = 16) -> None:
    """Per class: confidence histogram and box area vs score for the top-16 and all RoIs of the test images."""
    rois = cls_result["rois"]
    fig, axes = plt.subplots(3, 4, figsize=(13, 8.5), squeeze=False)
    for r, c in enumerate((2, 1, 0)):
        sel = [x for x in rois if x["label"] == c]
        for j, (k, what) in enumerate(((top, f"top {top}"), (None, "all"))):
            sc = np.concatenate([np.asarray(x["scores"][:k], float) for x in sel]) if sel else np.zeros(0)
            ar = np.concatenate([np.asarray(x["areas"][:k], float) for x in sel]) if sel else np.zeros(0)
            axes[r, 2 * j].hist(sc, bins=np.linspace(0, 1, 21), color="tab:blue")
            axes[r, 2 * j].set_title(f"{CLASS_NAMES[c]}: scores, {what} RoIs", fontsize=8)
            axes[r, 2 * j + 1].scatter(ar, sc, s=4, alpha=0.4, color="tab:red")
            axes[r, 2 * j + 1].set_ylim(-0.02, 1.02)
            axes[r, 2 * j + 1].set_title(f"{CLASS_NAMES[c]}: area vs score, {what}", fontsize=8)
            axes[r, 2 * j + 1].set_xlabel("box area (px)", fontsize=7)
    fig.suptitle(f"Fig. 3: RoI confidence and area per class ({backbone}, all test images of each class)",
                 fontsize=10)
    fig.tight_layout()
    run.save_figure(fig, f"fig3_rois_{backbone}")


def curves(run, seg: dict, cls: dict) -> None:
    has_curve = any(r["history"].get("curve") for r in seg.values())
    n = 1 + bool(cls) + has_curve
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    ax = axes[0, 0]
    for r in seg.values():
        ax.plot(r["history"]["step"], r["history"]["loss"], label=r["backbone"])
    ax.set_xlabel("iteration")
    ax.set_ylabel("Mask R-CNN loss (sum)")
    ax.set_title("segmentation training", fontsize=9)
    ax.legend(fontsize=7)
    k = 1
    if has_curve:
        ax = axes[0, k]
        k += 1
        for r in seg.values():
            c = r["history"].get("curve") or []
            it = [p["iteration"] for p in c]
            ax.plot(it, [p["ap50"] for p in c], "o-", label=f"{r['backbone']} mask AP@0.5")
            ax.plot(it, [p["dice"] for p in c], "s--", label=f"{r['backbone']} Dice")
            base = r.get("baseline", {}).get("dice", {}).get("pooled")
            if base is not None:
                ax.axhline(base, color="gray", ls=":", label=f"lung-threshold Dice {base:.2f}")
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.set_title("validation volumes", fontsize=9)
        ax.legend(fontsize=7)
    if cls:
        ax = axes[0, k]
        for r in cls.values():
            ax.plot(r["history"]["epoch"], r["history"]["loss"], label=r["backbone"])
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title("classifier S training", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    run.save_figure(fig, "training_curves")


def all_figures(run, cfg, seg: dict, cls: dict) -> None:
    curves(run, seg, cls)
    b = cfg.backbones[0]
    c = cls.get(f"cls-{b}") if cls else None
    fig2(run, cfg, b, c)
    if c is not None:
        fig3(run, b, c)
