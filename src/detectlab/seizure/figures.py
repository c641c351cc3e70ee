"""Figs. 2-4 of the paper (matplotlib, Agg) and the prediction trace used by `predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def fig2_losses(res: dict[str, dict], seed: int):
    """Stage-1 label loss, domain loss and domain accuracy per epoch, mean +- SD across folds."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for adv, color, lab in ((True, "C3", "w/ AT"), (False, "C0", "w/o AT (domain head = probe, λ=0)")):
        hs = [r["history"] for r in res.values() if r.get("seed") == seed and r.get("adversarial") == adv]
        if not hs:
            continue
        for ax, key, title in zip(axes, ("label_loss", "domain_loss", "domain_acc"),
                                  ("(a) label loss", "(b) domain loss", "(c) domain accuracy")):
            a = np.asarray([h[key] for h in hs])
            ep = np.arange(1, a.shape[1] + 1)
            m, s = a.mean(0), a.std(0)
            ax.plot(ep, m, color=color, label=lab)
            ax.fill_between(ep, m - s, m + s, color=color, alpha=0.2)
            ax.set_title(title)
            ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Fig. 2: stage-1 training, mean ± SD across folds (seed {seed})")
    fig.tight_layout()
    return fig


def trace_axes(ax_sig, ax_p, signal: np.ndarray | None, fs: float, traces: dict[str, np.ndarray],
               thresholds: dict[str, float], seizures: list, window_s: float = 1.0) -> None:
    """EEG (one channel) on top, probability traces with their thresholds below, seizures shaded."""
    if ax_sig is not None and signal is not None:
        t = np.arange(len(signal)) / fs
        ax_sig.plot(t, signal, lw=0.3, color="k")
        ax_sig.set_ylabel("EEG (z)")
    for i, (name, p) in enumerate(traces.items()):
        t = np.arange(len(p)) * window_s + window_s / 2
        ax_p.plot(t, p, color=f"C{i}", lw=1, label=name)
        ax_p.axhline(thresholds[name], color=f"C{i}", ls="--", lw=0.8)
    for ax in (ax_sig, ax_p):
        if ax is None:
            continue
        for on, off in seizures:
            ax.axvspan(on, off, color="0.6", alpha=0.35, lw=0)
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.set_ylabel("p(seizure)")
    ax_p.set_xlabel("time (s)")
    ax_p.legend(fontsize=7, loc="upper right")


def fig3_traces(res: dict[str, dict], store: Any, entries: list[int], seed: int, variants: tuple[str, str]):
    """Preprocessed EEG (highest-variance channel) and the test probabilities of one recording per row."""
    fig, axes = plt.subplots(2 * len(entries), 1, figsize=(11, 3.2 * len(entries)), squeeze=False)
    for k, i in enumerate(entries):
        X = np.asarray(store.X(i))
        ch = int(np.argmax(X.std(axis=(0, 2)))) if len(X) else 0
        sig = X[:, ch, :].reshape(-1)
        e = store.entries[i]
        traces, thr = {}, {}
        for v in variants:
            r = next((r for r in res.values() if r.get("seed") == seed and v in r and str(i) in r[v]["probs"]), None)
            if r is not None:
                traces[v] = np.asarray(r[v]["probs"][str(i)])
                thr[v] = r[v]["threshold"]
        trace_axes(axes[2 * k, 0], axes[2 * k + 1, 0], sig, store.fs, traces, thr, e["seizures"], store.window_s)
        axes[2 * k, 0].set_title(f"patient {e['patient']}, {Path(e['source'].split('#')[0]).name} (seed {seed}); "
                                 "dashed: thresholds; grey: annotated seizure")
    fig.suptitle("Fig. 3: preprocessed EEG (highest-variance channel) and seizure probability")
    fig.tight_layout()
    return fig


def fig4_mcc(per_patient: dict, with_at: str, without: str, baseline: dict | None = None):
    pats = list(per_patient[with_at])
    a = np.array([per_patient[with_at][p]["mcc"] for p in pats])
    b = np.array([per_patient[without].get(p, {}).get("mcc", np.nan) for p in pats])
    x = np.arange(len(pats))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(pats) + 2), 3.5))
    ax.bar(x - 0.2, b, 0.4, label=f"{without} (w/o AT)", color="C0")
    ax.bar(x + 0.2, a, 0.4, label=f"{with_at} (w/ AT)", color="C3")
    if baseline:
        c = np.array([baseline.get(p, {}).get("mcc", np.nan) for p in pats])
        ax.scatter(x, c, marker="_", s=400, color="k", zorder=3, label="log-RMS + LR baseline")
    ax.set_xticks(x, pats, rotation=60, fontsize=8)
    ax.set_ylabel("MCC (mean over seeds)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(f"Fig. 4: per-patient MCC with vs without AT; AT better for {int(np.nansum(a > b))} of {len(pats)}")
    fig.tight_layout()
    return fig


def all_figures(run: Any, cfg: Any, res: dict[str, dict], store: Any, metrics: dict) -> None:
    seed = cfg.seed
    run.save_figure(fig2_losses(res, seed), "fig2_stage1_losses")
    pp = metrics["per_patient"]
    pair = ("cnn_bilstm_at", "cnn_bilstm") if "cnn_bilstm_at" in pp and "cnn_bilstm" in pp else ("cnn_at", "cnn")
    if pair[0] in pp and pair[1] in pp and pp[pair[0]]:
        run.save_figure(fig4_mcc(pp, *pair, pp.get("logrms_lr")), "fig4_per_patient_mcc")
    if store.kind != "recordings" or pair[0] not in pp or not pp[pair[0]]:
        return
    pats = cfg.fig3_patients
    if not pats:
        gain = {p: pp[pair[0]][p]["mcc"] - pp[pair[1]].get(p, {}).get("mcc", np.nan) for p in pp[pair[0]]}
        order = sorted((g, p) for p, g in gain.items() if np.isfinite(g))
        pats = list(dict.fromkeys([order[-1][1], order[0][1]])) if order else list(gain)[:1]
    entries = []
    for p in pats:
        ids = [i for i in store.entries_of([p]) if store.entries[i]["seizures"]] or store.entries_of([p])
        entries += ids[:1]
    if entries:
        run.save_figure(fig3_traces(res, store, entries, seed, (pair[1], pair[0])), "fig3_probability_traces")
