"""Figs. 2-4 of the paper (mean held-out accuracy versus mean iterations to the chosen model), ROC curves of
the pooled held-out predictions beside the baselines, and the saliency-in-mask shares."""

from __future__ import annotations

from typing import Any

import numpy as np


def _points(dm: dict) -> list[dict[str, Any]]:
    return [{"arch": a, "batch": int(b), "acc": m["accuracy"]["mean"], "it": m["iterations_to_best"],
             "params": m["params"]} for a, bs in dm.items() for b, m in bs.items()]


def fig2(ax, pts: list[dict]) -> None:
    """Per architecture: accuracy vs iterations, one marker per batch size (labelled)."""
    for arch in dict.fromkeys(p["arch"] for p in pts):
        ps = sorted((p for p in pts if p["arch"] == arch), key=lambda p: p["it"])
        ax.plot([p["it"] for p in ps], [p["acc"] for p in ps], "o-", label=arch)
        for p in ps:
            ax.annotate(str(p["batch"]), (p["it"], p["acc"]), textcoords="offset points", xytext=(3, 3), fontsize=7)


def fig3(ax, pts: list[dict]) -> None:
    """Per batch size: accuracy vs iterations across architectures (labelled)."""
    for b in sorted({p["batch"] for p in pts}):
        ps = sorted((p for p in pts if p["batch"] == b), key=lambda p: p["it"])
        ax.plot([p["it"] for p in ps], [p["acc"] for p in ps], "s--", label=f"batch {b}")
        for p in ps:
            ax.annotate(p["arch"], (p["it"], p["acc"]), textcoords="offset points", xytext=(3, 3), fontsize=6)


def fig4(ax, pts: list[dict]) -> None:
    """Smallest batch: bubble size = number of parameters."""
    b0 = min(p["batch"] for p in pts)
    ps = [p for p in pts if p["batch"] == b0]
    sizes = np.array([p["params"] for p in ps], float) / 1e6
    ax.scatter([p["it"] for p in ps], [p["acc"] for p in ps], s=20 + sizes * 8, alpha=0.5)
    for p, s in zip(ps, sizes):
        ax.annotate(f"{p['arch']} ({s:.1f}M)", (p["it"], p["acc"]), fontsize=7, ha="center")
    ax.set_title(f"batch {b0}; bubble area ~ parameters")


def _roc(ax, y: np.ndarray, p: np.ndarray, label: str, style: str) -> None:
    from sklearn.metrics import roc_curve

    if np.unique(y).size < 2:
        return
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, style, label=label, lw=1.4)


def roc_figure(run: Any, design: str, cells: list[tuple[str, dict]], baselines: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.4))
    for name, m in cells:
        _roc(ax, np.asarray(m["y"]), np.asarray(m["p"]), f"{name} (AUC {m['auc']:.2f})", "-")
    for name, m in baselines.items():
        _roc(ax, np.asarray(m["y"]), np.asarray(m["p"]), f"baseline {name} (AUC {m['auc']:.2f})", "--")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"Pooled held-out ROC, {design}", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    run.save_figure(fig, f"roc_{design}")


def saliency_figure(run: Any, saliency: dict) -> None:
    import matplotlib.pyplot as plt

    rows = [(f"{v}/{d}/{c}", s) for v, ds in saliency.items() for d, cs in ds.items() for c, s in cs.items()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [s["share"] for _, s in rows], height=0.4, color="tab:blue", label="peak on a fluid pixel")
    # rows without cell-level results (units scored before they existed) draw no cell bar or marker, not 0
    nan = float("nan")
    ax.barh(y + 0.2, [s.get("cell_share", nan) for _, s in rows], height=0.4, color="tab:orange",
            label="peak cell holds fluid")
    ax.scatter([s.get("cell_chance", nan) for _, s in rows], y + 0.2, color="grey", marker="|", s=120,
               label="chance (share of cells with fluid)")
    ax.scatter([s["chance"] for _, s in rows], y - 0.2, color="black", marker="|", s=120,
               label="chance (fluid share of input)")
    for i, (_, s) in enumerate(rows):
        ax.annotate(f"{s['hits']}/{s['n']}", (max(s["share"], s["chance"]), i - 0.2), xytext=(4, -3), textcoords="offset points", fontsize=7)
        if "cell_hits" in s:
            ax.annotate(f"{s['cell_hits']}/{s['n']}", (max(s["cell_share"], s["cell_chance"]), i + 0.2), xytext=(4, -3),
                        textcoords="offset points", fontsize=7)
        else:
            ax.annotate("no cell-level result", (0, i + 0.2), xytext=(3, -3), textcoords="offset points",
                        fontsize=7, color="grey")
    ax.set_yticks(y, [n for n, _ in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(rows) - 0.4)  # both bars of every row in view, even where one is missing
    ax.set_xlabel("share of held-out fluid B-scans")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Grad-CAM peak inside the fluid mask", fontsize=9)
    run.save_figure(fig, "saliency_in_mask")


def all_figures(run: Any, metrics: dict, curves: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("", metrics["designs"])] + [(v, m["designs"]) for v, m in metrics.get("variants", {}).items()]
    for variant, designs in groups:
        for design, dm in designs.items():
            pts = [p for p in _points(dm) if np.isfinite(p["acc"])]
            if not pts:
                continue
            for num, fn in ((2, fig2), (3, fig3), (4, fig4)):
                fig, ax = plt.subplots(figsize=(6, 4.2))
                fn(ax, pts)
                ax.set_xlabel("mean iterations to the chosen model")
                ax.set_ylabel("mean held-out accuracy")
                ax.grid(alpha=0.3)
                if num != 4:
                    ax.legend(fontsize=7)
                suffix = f"_{variant}" if variant else ""
                ax.set_title((ax.get_title() + "\n" if ax.get_title() else "") + f"Fig. {num}: {design}{suffix}",
                             fontsize=9)
                run.save_figure(fig, f"fig{num}_{design}{suffix}")
    for design, c in (curves or {}).items():
        roc_figure(run, design, c["cells"], c["baselines"])
    saliency_figure(run, metrics.get("saliency", {}))


def overlay_png(path: Any, image: np.ndarray, cam: np.ndarray, title: str = "", peak: Any = None) -> None:
    """A small PNG: the input B-scan in grey with the saliency in colour on top, its peak marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    fig, ax = plt.subplots(figsize=(max(2.5, 5 * w / max(h, w)), max(2.0, 5 * h / max(h, w)) + 0.3))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(cam, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    r, c = peak if peak is not None else np.unravel_index(int(np.argmax(cam)), cam.shape)
    ax.plot([c], [r], "w+", markersize=12, markeredgewidth=2)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
