"""The paper's Figs. 2-4 and a histogram of the statistic, from the experiment's metrics."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {"natural": dict(color="tab:blue"), "secret": dict(color="tab:red")}
LINES = {"pgd": "-", "fgsm": ":", "adaptive": "--"}


def _curve(run, metrics: dict, key: str, ylabel: str, title: str, name: str, attacks=("pgd",),
           clean_key: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, e in metrics["models"].items():
        for a in attacks:
            s = e["attacks"].get(a)
            if not s:
                continue
            x, y = list(s["eps"]), list(s[key])
            if clean_key:
                x, y = [0.0] + x, [e[clean_key]] + y
            ax.plot(x, y, LINES[a], marker="o" if len(x) < 12 else None, ms=3, label=f"{m} ({a})", **STYLE[m])
    ax.set_xlabel("ε (L∞, pixel scale [0,1])")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    run.save_figure(fig, name)


def all_figures(run, metrics: dict, unit_results: dict[str, Any], train_ratio, benign_ratio, bins) -> None:
    _curve(run, metrics, "tpr", "TPR (misclassified & flagged)", "Fig. 2: detector true positive rate",
           "fig2_tpr")
    _curve(run, metrics, "accuracy", "classifier accuracy", "Fig. 3: accuracy of the classifiers under PGD",
           "fig3_accuracy", clean_key="clean_accuracy")
    _curve(run, metrics, "combined_accuracy", "accuracy (flagged or correct)",
           "Fig. 4: detector + classifier, incl. FGSM and adaptive attacker", "fig4_combined",
           attacks=("pgd", "fgsm", "adaptive"), clean_key="clean_combined_accuracy")
    hists = [r for r in unit_results.values() if "hist" in r and r["attack"] in ("pgd", "adaptive")]
    if hists:
        fig, ax = plt.subplots(figsize=(6, 4))
        centers = (bins[:-1] + bins[1:]) / 2
        ax.hist(np.clip(train_ratio.numpy(), bins[0], bins[-1]), bins, histtype="step", density=True,
                color="k", label="benign (training)")
        ax.hist(np.clip(benign_ratio.numpy(), bins[0], bins[-1]), bins, histtype="step", density=True,
                color="gray", ls="--", label="benign (test)")
        for r in hists:
            h = np.asarray(r["hist"], float)
            ax.plot(centers, h / max(h.sum(), 1) / (bins[1] - bins[0]), LINES[r["attack"]],
                    label=f"{r['model']} {r['attack']} ε={r['eps']:.2f}", **STYLE[r["model"]],
                    alpha=0.5 + 0.5 * r["eps"] / max(x["eps"] for x in hists))
        ax.axvline(1.0, color="k", lw=0.8)
        ax.text(1.02, ax.get_ylim()[1] * 0.9, "threshold", fontsize=8)
        ax.set_xlabel("statistic p̂ / threshold")
        ax.set_ylabel("density")
        ax.set_title("Detector statistic: benign vs attacked")
        ax.legend(fontsize=7)
        run.save_figure(fig, "statistic_hist")
