"""Figs. 2-4 of the paper: mean accuracy versus mean iterations to best accuracy."""

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


def all_figures(run: Any, metrics: dict) -> None:
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
                ax.set_xlabel("mean iterations to best accuracy")
                ax.set_ylabel("mean validation accuracy")
                ax.grid(alpha=0.3)
                if num != 4:
                    ax.legend(fontsize=7)
                suffix = f"_{variant}" if variant else ""
                ax.set_title((ax.get_title() + "\n" if ax.get_title() else "") + f"Fig. {num}: {design}{suffix}",
                             fontsize=9)
                run.save_figure(fig, f"fig{num}_{design}{suffix}")
