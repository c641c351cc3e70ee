"""The paper's Figs. 2-4 (with their 50 %-TPR and perfect-separation eps), the detectors' ROC and AUC, and a
histogram of the statistic, all from the experiment's metrics."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {"natural": dict(color="tab:blue"), "secret": dict(color="tab:red")}
LINES = {"pgd": "-", "fgsm": ":", "apgd": "-.", "adaptive": "--"}
CMAP = {"natural": plt.cm.Blues, "secret": plt.cm.Reds}
MARK_LS = {"natural": ":", "secret": "-."}  # the paper: dotted natural, dash-dotted secret


def _markers(ax, metrics: dict, key: str) -> None:
    for m, e in metrics["models"].items():
        v = e.get(key)
        if v is not None:
            ax.axvline(v, ls=MARK_LS[m], lw=1, **STYLE[m])
            ax.text(v, 0.03 if m == "natural" else 0.1, f" {v:.2f}", fontsize=7, **STYLE[m])


def _curve(run, metrics: dict, key: str, ylabel: str, title: str, name: str, attacks=("pgd",),
           clean_key: str | None = None, marker_key: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, e in metrics["models"].items():
        for a in attacks:
            s = e["attacks"].get(a)
            if not s or None in s["eps"]:
                continue
            x, y = list(s["eps"]), list(s[key])
            if clean_key:
                x, y = [0.0] + x, [e[clean_key]] + y
            ax.plot(x, y, LINES[a], marker="o" if len(x) < 12 else None, ms=3, label=f"{m} ({a})", **STYLE[m])
    if marker_key:
        _markers(ax, metrics, marker_key)
    ax.set_xlabel("ε (L∞, pixel scale [0,1])")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    run.save_figure(fig, name)


def _roc(run, metrics: dict) -> None:
    rocs = metrics.get("roc") or {}
    models = list(metrics["models"])
    if not rocs:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    n_neg = max(1, metrics.get("n_benign", 1))
    for ax, m in zip(axes[0], models):
        keys = [k for k in rocs if k.startswith(m + "-")]
        for i, k in enumerate(keys):
            col = plt.cm.viridis(i / max(1, len(keys) - 1))
            for det, ls in (("steganalysis", "-"), ("feature_squeezing", "--")):
                if det in rocs[k]:
                    c = rocs[k][det]
                    ax.plot(np.maximum(c["fpr"], 0.5 / n_neg), c["tpr"], ls, color=col,
                            label=f"{k[len(m) + 1:]} {'steg' if det == 'steganalysis' else 'FS'}")
        ax.set_xscale("log")
        ax.set_xlim(0.5 / n_neg, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.axvline(0.01, color="gray", lw=0.6)
        ax.axvline(0.001, color="gray", lw=0.6)
        ax.set_xlabel(f"FPR on {n_neg} clean test images (log)")
        ax.set_ylabel("TPR (all attacked images)")
        ax.set_title(f"ROC, {m} model: steganalysis (solid) vs feature squeezing (dashed)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    run.save_figure(fig, "roc")


def _auc(run, metrics: dict) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, e in metrics["models"].items():
        for a in ("pgd", "adaptive"):
            s = e["attacks"].get(a)
            if not s:
                continue
            ax.plot(s["eps"], s["auc"], LINES[a], label=f"{m} {a}: steganalysis", **STYLE[m])
            if "feature_squeezing" in s:
                ax.plot(s["eps"], s["feature_squeezing"]["auc"], LINES[a], marker="x", ms=4, alpha=0.6,
                        label=f"{m} {a}: feature squeezing", **STYLE[m])
    ax.axhline(0.5, color="gray", lw=0.8)
    ax.set_xlabel("ε")
    ax.set_ylabel("ROC AUC (clean test vs attacked)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Detector AUC per ε (0.5: the detector that flags nothing)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    run.save_figure(fig, "auc")


def _hist(run, metrics: dict) -> None:
    h = metrics.get("hist")
    if not h or not h.get("attacked"):
        return
    bins = np.asarray(h["bins"])
    centers, width = (bins[:-1] + bins[1:]) / 2, bins[1] - bins[0]
    fig, ax = plt.subplots(figsize=(6, 4))

    def dens(v):
        v = np.asarray(v, float)
        return v / max(v.sum(), 1) / width

    ax.step(centers, dens(h["train"]), where="mid", color="k", label="benign (training)")
    ax.step(centers, dens(h["benign"]), where="mid", color="gray", ls="--", label="benign (test)")
    keys = list(h["attacked"])
    for k, v in h["attacked"].items():
        m, a = k.split("-")[:2]
        same = [j for j in keys if j.split("-")[:2] == [m, a]]  # one shade per eps, darker = larger eps
        shade = 0.45 + 0.5 * same.index(k) / max(1, len(same) - 1)
        ax.plot(centers, dens(v), LINES[a], label=k, color=CMAP.get(m, plt.cm.Greys)(shade))
    ax.axvline(1.0, color="k", lw=0.8)
    ax.text(1.02, ax.get_ylim()[1] * 0.9, "threshold", fontsize=8)
    ax.set_xlabel("statistic p̂ / threshold")
    ax.set_ylabel("density")
    ax.set_title("Detector statistic: benign vs attacked", fontsize=10)
    ax.legend(fontsize=6)
    run.save_figure(fig, "statistic_hist")


def all_figures(run, metrics: dict) -> None:
    _curve(run, metrics, "tpr", "TPR (misclassified & flagged)", "Fig. 2: detector TPR under PGD "
           "(lines: ε of 50 % TPR)", "fig2_tpr", marker_key="eps_tpr50")
    _curve(run, metrics, "accuracy", "classifier accuracy", "Fig. 3: accuracy of the classifiers under PGD "
           "(lines: ε of 50 % TPR)", "fig3_accuracy", attacks=("pgd", "apgd"), clean_key="clean_accuracy",
           marker_key="eps_tpr50")
    _curve(run, metrics, "combined_accuracy", "accuracy (flagged or correct)",
           "Fig. 4: detector + classifier (lines: ε of perfect separation)", "fig4_combined",
           attacks=("pgd", "fgsm", "apgd", "adaptive"), clean_key="clean_combined_accuracy",
           marker_key="eps_perfect_separation")
    _roc(run, metrics)
    _auc(run, metrics)
    _hist(run, metrics)
