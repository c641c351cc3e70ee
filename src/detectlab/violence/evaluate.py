"""`detectlab violence evaluate RUN DATA [--client K] [--out DIR]`: a trained run's model on a labelled folder of
clips (another site's data), with the protocol's metrics.

DATA is any folder :func:`detectlab.violence.data.find_clips` reads (``fight/`` + ``noFight/``, RWF-2000
``train|val/Fight|NonFight``, ``<label>/`` folders). ``--client K`` applies client K's personalised model (FedPer:
its base + own head, Per-FedAvg / FedMeta-Per: after its personalisation step); without it, the strategy's global
model (FedAvg / Per-FedAvg; FedPer's global model is only the base, so FedPer needs ``--client``).
Every clip is cut into the fixed non-overlapping 16-frame chunks at the run's frame size (central crop as in
training); a clip's score is the mean of its chunk scores; accuracy, balanced accuracy and ROC-AUC per chunk and
per clip at ``--threshold``, beside the majority-class baseline of the model's own training data (the fight share of
that client's, or all clients', training chunks). A model that does not beat it is ``below_baseline: true``.

Outputs: metrics.json, tables/evaluate.md|csv (model and baseline rows), tables/clips.md|csv (score per clip),
figures/scores.png (clip scores per class).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from detectlab.violence.predict import add_arguments as predict_arguments

    predict_arguments(p, device=False)


def _train_share(cfg_folder: Path, header: dict) -> float | None:
    """Fight share of the training chunks behind the model (its client's, or all clients'), from the run's metrics."""
    import json

    p = cfg_folder / "metrics.json"
    if not p.exists():
        return None
    m = json.loads(p.read_text())
    key, client = str(header.get("experiment", "")), header.get("client")
    clients = None
    if m.get("unit") == key:
        clients = m.get("clients")
    for exp, e in m.get("experiments", {}).items():
        if key.startswith(f"{exp}-") and clients is None:
            clients = e.get("clients")
    if not clients:
        return None
    rows = [c for c in clients if client is None or int(c["client"]) == int(client)]
    f = sum(c["train_fight"] + c.get("val_fight", 0) for c in rows)
    n = sum(c["train_fight"] + c["train_nonfight"] + c.get("val_fight", 0) + c.get("val_nonfight", 0) for c in rows)
    return f / n if n else None


def run(model_run: Path, data: Path, out: Path, args: argparse.Namespace) -> int:
    import numpy as np

    from detectlab.core.baselines import mark_below_baseline
    from detectlab.core.runs import evaluation_run
    from detectlab.violence import task
    from detectlab.violence.data import load_clips
    from detectlab.violence.predict import load_model

    model, header, ck, cfg = load_model(model_run, args, default_client=None)
    mc = header.get("model_config", {})
    size, crop = int(mc.get("size", 64)), int(mc.get("crop", 0))
    thr = float(getattr(args, "threshold", 0.5))
    settings = {"checkpoint": ck.name, "client": header.get("client", "global"), "strategy": header.get("strategy"),
                "experiment": header.get("experiment"), "threshold": thr, "size": size, "crop": crop}
    run = evaluation_run(out, "violence", model_run, data, settings)
    try:
        clips = load_clips(data, size)
        s, y, cl, loss = task.chunk_scores(model, clips, 16, crop=crop)
        ids, cs, clab = task.clip_scores(s, y, cl)
        m = {"chunk": task.binary_scores(y, s, thr), "clip": task.binary_scores(clab, cs, thr), "loss": loss}
        share = _train_share(Path(model_run), header)
        rows = [{"method": f"{header.get('strategy')} ({'client ' + str(header['client']) if 'client' in header else 'global'})",
                 "kind": "model", **{f"{lv} {k.replace('_', ' ')}": m[lv][k] for lv in ("clip", "chunk")
                                      for k in ("accuracy", "balanced_accuracy", "auc")},
                 "clip_balanced_accuracy": m["clip"]["balanced_accuracy"]}]
        base = None
        if share is not None:
            base = {"chunk": task.binary_scores(y, np.full(len(y), share), thr),
                    "clip": task.binary_scores(clab, np.full(len(clab), share), thr), "train_fight_share": share}
            rows.append({"method": "majority class (model's training data)", "kind": "baseline",
                         **{f"{lv} {k.replace('_', ' ')}": base[lv][k] for lv in ("clip", "chunk")
                            for k in ("accuracy", "balanced_accuracy", "auc")},
                         "clip_balanced_accuracy": base["clip"]["balanced_accuracy"]})
        mark_below_baseline(rows, "clip_balanced_accuracy", name_key="method")
        run.write_table("evaluate", rows, columns=[c for c in rows[0] if c != "clip_balanced_accuracy"] +
                        ["below_baseline", "best_baseline"],
                        title=f"{ck.name} on {data}", note=f"{len(ids)} clips, {len(y)} chunks; threshold {thr}; "
                        "clip score = mean of its chunk scores.")
        run.write_table("clips", [{"clip": clips.clips[int(i)]["path"], "label": int(lb), "score": float(v),
                                   "verdict": "FIGHT" if v >= thr else "no fight"} for i, v, lb in zip(ids, cs, clab)],
                        title="Score per clip")
        run.write_metrics({"model": settings, "data": clips.counts(), "metrics": m, "baseline": base,
                           "below_baseline": rows[0].get("below_baseline"), "best_baseline": rows[0].get("best_baseline")})
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3))
        for lab, name in ((0, "no fight"), (1, "fight")):
            ax.hist(cs[clab == lab], bins=np.linspace(0, 1, 21), alpha=0.6, label=f"{name} ({int((clab == lab).sum())})")
        ax.axvline(thr, color="k", ls="--", lw=1)
        ax.set_xlabel("clip score (mean chunk p(fight))")
        ax.set_ylabel("clips")
        ax.legend(fontsize=7)
        ax.set_title(f"{header.get('strategy')} on {Path(data).name}", fontsize=9)
        run.save_figure(fig, "scores")
        print(f"{ck.name} on {data}: clip accuracy {m['clip']['accuracy']:.3f}, balanced accuracy "
              f"{m['clip']['balanced_accuracy']:.3f}, AUC {m['clip']['auc']:.3f} ({len(ids)} clips)")
    finally:
        run.close()
    return 0
