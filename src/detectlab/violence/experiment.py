"""The paper's protocol: experiments (client partitions) x splits x seeds x strategies on Flower, with the
baselines on the same clients, and Table IV side by side.

For every experiment (``balanced2`` = Table I, ``imbalanced3`` = Table II, ``combined4`` = Table III,
``dirichlet``/``iid`` for any number of clients), split (``source``: held-out source videos; ``chunk``: the leaky
random chunk split of the paper's numbers) and seed, :func:`detectlab.violence.train.prepare` deals the clips to
the clients, every strategy runs ``fl.rounds`` rounds on Flower's simulation engine (or a deployment grid), and
every baseline (majority class per client, motion-energy logistic regression, local-only training, FedAvg + local
fine-tuning) runs on the same clients. Each (unit key, method) is a unit: its result file is written when it
finishes and read back on a resume (a resume may add seeds, strategies, baselines, splits or experiments).

Metrics (:func:`detectlab.violence.train.summarize`): accuracy, balanced accuracy and ROC-AUC per client and
pooled over the clients' held-out chunks and clips (a clip's score = mean of its chunk scores), then mean, SD and
standard error over the seeds. A learned row whose clip-level balanced accuracy (mean over seeds) is not above the
best baseline's on the same experiment and split is ``below_baseline: true``.

metrics.json: ``experiments.<exp>.splits.<split>.methods.<method>.{kind, summary, per_client_summary, seeds,
below_baseline, best_baseline}``, ``experiments.<exp>.clients`` (chunks per client, first seed), ``target`` (FedPer
against the motion-energy baseline), ``model``, ``data``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import progress
from detectlab.core.baselines import below_baseline_summary, mark_below_baseline
from detectlab.core.metrics import mean_sd
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units
from detectlab.violence import train
from detectlab.violence.config import (BASELINE_NAMES, STRATEGIES, STRATEGY_NAMES, Config, model_dict)
from detectlab.violence.partition import PAPER_RESULTS, PAPER_TABLES

#: learned rows are compared on this (pooled clip-level balanced accuracy, mean over seeds)
COMPARE = "clip_balanced_accuracy"
CHUNK_SPLIT_BASELINES = ("majority", "motion", "motion_local")
METRICS = [("clip", "accuracy"), ("clip", "balanced_accuracy"), ("clip", "auc"),
           ("chunk", "accuracy"), ("chunk", "balanced_accuracy"), ("chunk", "auc")]


def method_name(m: str) -> str:
    return STRATEGY_NAMES.get(m) or BASELINE_NAMES.get(m, m)


def _read_unit(run: Run, key: str) -> dict | None:
    import json

    p = run.dir / "units" / f"{key}.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())["result"]


def _plan(cfg: Config, split: str) -> tuple[list[str], list[str]]:
    if split == "source":
        return list(cfg.strategies), list(cfg.baselines)
    return list(cfg.chunk_strategies), [b for b in cfg.baselines if b in CHUNK_SPLIT_BASELINES]


def run(cfg: Config, run: Run, grid: Any = None) -> dict[str, Any]:
    """Run every experiment x split x seed x method not finished yet, then write metrics, tables and figures."""
    if "combined4" in cfg.experiments and train.data_path(cfg, 1) is not None:
        run.pin_data(train.data_path(cfg, 1), name="data2")
    results: dict[tuple[str, str], dict[int, dict[str, dict]]] = {}
    jobs: dict[tuple[str, str, int], dict] = {}
    for exp in cfg.experiments:
        for split in cfg.splits:
            strategies, baselines = _plan(cfg, split)
            for s in cfg.seeds:
                seed = cfg.seed + s
                job = train.prepare(cfg, run, exp, seed, split)
                jobs[(exp, split, seed)] = job
                pending = [st for st in strategies if _read_unit(run, f"{job['key']}-{st}") is None]
                if pending:
                    progress.log(f"{job['key']}: running {', '.join(pending)} for {cfg.fl.rounds} rounds on "
                                 f"{job['n_clients']} clients ({'deployment grid' if grid is not None else 'simulation engine'})")
                    train.federate(job, pending, cfg, grid)
                got: dict[str, dict] = {}
                for st in strategies:
                    res = _read_unit(run, f"{job['key']}-{st}")
                    if res is None:
                        raise RuntimeError(f"{job['key']}-{st}: the federation finished without writing this result")
                    got[st] = {**_learned_extras(res), **train.summarize(res["per_client"])}
                if "fedavg_ft" in baselines and "fedavg" not in strategies:
                    progress.log(f"{job['key']}: FedAvg + fine-tuning skipped (fedavg is not among the strategies)")
                    baselines = [b for b in baselines if b != "fedavg_ft"]
                units = [Unit(f"{job['key']}-{b}", train.baseline_unit, {"name": b, "job": job, "cfg": cfg},
                              num_cpus=1) for b in baselines]
                done = run_units(run, units, cfg.workers, cfg.ray_address, description=f"{job['key']} baselines",
                                 device=cfg.device)
                for b in baselines:
                    res = done[f"{job['key']}-{b}"]
                    got[b] = {**{k: v for k, v in res.items() if k != "per_client"}, **train.summarize(res["per_client"])}
                results.setdefault((exp, split), {})[seed] = got
    metrics = collect(cfg, results, jobs)
    from detectlab.violence.model import build_model, param_counts

    metrics["model"] = {**model_dict(cfg), **param_counts(build_model(model_dict(cfg)))}
    first = next(iter(jobs.values()))
    metrics["data"] = first["data"]
    rows = tables(run, cfg, metrics)
    metrics["below_baseline"] = below_baseline_summary(rows, name_key="method", group_by=("experiment",))
    run.write_metrics(metrics)
    figures(run, cfg, metrics, results)
    return metrics


def _learned_extras(res: dict) -> dict:
    keep = ("bytes_per_round", "params_sent", "rejected", "seconds", "rounds", "accuracy", "loss")
    out = {k: res.get(k) for k in keep}
    out["selected_round"] = {k: v.get("selected-round") for k, v in res["per_client"].items()}
    out["history"] = res.get("history", [])
    return out


def _summary(per_seed: list[dict]) -> dict[str, dict]:
    out = {}
    for level, name in METRICS:
        ms = mean_sd(s["pooled"][level][name] for s in per_seed)
        ms["se"] = ms["sd"] / math.sqrt(ms["n"]) if ms["n"] > 1 else float("nan")
        ms["values"] = [s["pooled"][level][name] for s in per_seed]
        out[f"{level}_{name}"] = ms
    return out


def _client_summary(per_seed: list[dict]) -> dict[str, dict]:
    clients = sorted({k for s in per_seed for k in s["per_client"]}, key=int)
    out = {}
    for k in clients:
        rows = [s["per_client"][k] for s in per_seed if k in s["per_client"]]
        out[k] = {f"{level}_{name}": mean_sd(r[level][name] for r in rows) for level, name in METRICS}
        out[k]["n_test_clips"] = rows[0]["n_test_clips"]
        out[k]["n_test_chunks"] = rows[0]["n_test_chunks"]
    return out


def collect(cfg: Config, results: dict, jobs: dict) -> dict[str, Any]:
    """metrics.json's experiments block and the target block from the per-seed unit results."""
    out: dict[str, Any] = {"experiments": {}, "seeds": [cfg.seed + s for s in cfg.seeds]}
    for (exp, split), by_seed in results.items():
        e = out["experiments"].setdefault(exp, {"splits": {}})
        seed0 = sorted(by_seed)[0]
        if split == "source" or "clients" not in e:
            e["clients"] = jobs[(exp, split, seed0)]["clients"]
            e["n_clients"] = jobs[(exp, split, seed0)]["n_clients"]
        methods = {}
        names = list(dict.fromkeys(m for s in by_seed.values() for m in s))
        for m in names:
            per_seed = [by_seed[s][m] for s in sorted(by_seed) if m in by_seed[s]]
            kind = "model" if m in STRATEGIES else "baseline"
            methods[m] = {"kind": kind, "name": method_name(m), "summary": _summary(per_seed),
                          "per_client_summary": _client_summary(per_seed),
                          "seeds": {str(s): {k: v for k, v in by_seed[s][m].items() if k not in ("history",)}
                                    for s in sorted(by_seed) if m in by_seed[s]}}
        e["splits"][split] = {"methods": methods, "leaky": split == "chunk"}
    out["target"] = target(out)
    return out


def target(metrics: dict) -> dict[str, Any]:
    """FedPer's pooled clip-level balanced accuracy against the motion-energy baseline's (pooled training), same
    experiment, source-video split: mean and standard error over seeds of both and of the paired difference."""
    out = {}
    for exp, e in metrics["experiments"].items():
        ms = e["splits"].get("source", {}).get("methods", {})
        if "fedper" not in ms or "motion" not in ms:
            continue
        f = ms["fedper"]["summary"][COMPARE]["values"]
        b = ms["motion"]["summary"][COMPARE]["values"]
        d = [x - y for x, y in zip(f, b)]
        sd = mean_sd(d)
        se = sd["sd"] / math.sqrt(sd["n"]) if sd["n"] > 1 else float("nan")
        out[exp] = {"fedper": ms["fedper"]["summary"][COMPARE], "motion": ms["motion"]["summary"][COMPARE],
                    "difference": {**sd, "se": se, "values": d}, "met": bool(sd["mean"] > 0),
                    "stretch_met": bool(sd["mean"] > 0.05)}
    return out


def _pm(d: dict, digits: int = 3) -> str:
    m, s = d.get("mean", float("nan")), d.get("sd", float("nan"))
    if m is None or not np.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if d.get("n", 1) > 1 else f"{m:.{digits}f}"


def tables(run: Run, cfg: Config, metrics: dict) -> list[dict]:
    """Write every table; returns Table IV's rows (marked against the baselines)."""
    rows, long = [], []
    n_seeds = len(metrics["seeds"])
    for exp, e in metrics["experiments"].items():
        src = e["splits"].get("source", {}).get("methods", {})
        chk = e["splits"].get("chunk", {}).get("methods", {})
        paper = PAPER_RESULTS.get(exp)
        for m, r in list(src.items()) + [(m, r) for m, r in chk.items() if m not in src]:
            sm = r["summary"] if m in src else None
            row = {"experiment": exp, "clients": e.get("n_clients"), "method": method_name(m), "kind": r["kind"]}
            for level, name in METRICS:
                row[f"{level} {name.replace('_', ' ')}"] = _pm(sm[f"{level}_{name}"]) if sm else "not run"
            row["chunk split (leaky): chunk accuracy"] = _pm(chk[m]["summary"]["chunk_accuracy"]) if m in chk else "not run"
            row["paper accuracy (FedPer)"] = paper["accuracy"] if (paper and m == "fedper") else ""
            row[COMPARE] = sm[COMPARE]["mean"] if sm else float("nan")
            rows.append(row)
        for split, sp in e["splits"].items():
            for m, r in sp["methods"].items():
                lr = {"experiment": exp, "split": split, "method": method_name(m), "kind": r["kind"]}
                for level, name in METRICS:
                    d = r["summary"][f"{level}_{name}"]
                    lr[f"{level}_{name}_mean"], lr[f"{level}_{name}_sd"] = d["mean"], d["sd"]
                lr["seeds"] = r["summary"][COMPARE]["n"]
                long.append(lr)
    mark_below_baseline([r for r in rows if r[COMPARE] == r[COMPARE] or r["kind"] == "baseline"], COMPARE,
                        group_by=("experiment",), name_key="method")
    mark_below_baseline(long, f"{COMPARE}_mean", group_by=("experiment", "split"), name_key="method")
    for exp, e in metrics["experiments"].items():  # copy the verdicts into metrics.json
        for split, sp in e["splits"].items():
            for m, r in sp["methods"].items():
                lr = next(x for x in long if x["experiment"] == exp and x["split"] == split
                          and x["method"] == method_name(m))
                if r["kind"] == "model":
                    r["below_baseline"] = lr.get("below_baseline")
                    r["best_baseline"] = lr.get("best_baseline")
    cols = ["experiment", "clients", "method", "kind"] + [f"{lv} {nm.replace('_', ' ')}" for lv, nm in METRICS] + [
        "chunk split (leaky): chunk accuracy", "paper accuracy (FedPer)", "below_baseline", "best_baseline"]
    src_name = Path(str(metrics.get("data", {}).get("source", ""))).name or "built-in"
    run.write_table("table4", rows, columns=cols,
                    title=f"Table IV: experiments x methods, held-out source videos (mean ± SD over {n_seeds} seed(s))",
                    note=(f"Ours: {src_name}, frames {cfg.data_opts.size}x{cfg.data_opts.size}, 16-frame chunks, "
                          f"{cfg.fl.rounds} rounds x {cfg.fl.epochs} local epoch(s). Pooled over the clients' held-out "
                          "chunks/clips; clip score = mean of its chunk scores; threshold 0.5. below_baseline: clip "
                          "balanced accuracy (mean over seeds) not above the best baseline's. The chunk-split column is "
                          "LEAKY (chunks of one video on both sides, as the paper's 3,600 chunks from 400 videos suggest); "
                          "it is shown only to see how much of the paper's 98-99 % such a split explains. Paper: FedPer on "
                          "RWF-2000 (+ Crowd Violence), Table IV."))
    run.write_table("table4_long", long, title="All splits, methods and metrics (mean and SD over seeds)")
    for exp, e in metrics["experiments"].items():
        prow = []
        if exp in PAPER_TABLES:
            fi, no = PAPER_TABLES[exp]
            prow = [{"client": f"{i + 1} (paper)", "train_fight": f, "train_nonfight": n} for i, (f, n) in enumerate(zip(fi, no))]
        crow = [dict(c, client=str(c["client"] + 1)) for c in e["clients"]]
        run.write_table(f"clients_{exp}", crow + prow, title=f"{exp}: chunks per client, first seed (ours, then the paper's)",
                        columns=["client", "train_fight", "train_nonfight", "val_fight", "val_nonfight", "test_fight",
                                 "test_nonfight", "train_clips", "val_clips", "test_clips"])
        pc = []
        for m, r in e["splits"].get("source", {}).get("methods", {}).items():
            for k, v in r["per_client_summary"].items():
                row = {"client": int(k) + 1, "method": method_name(m), "kind": r["kind"],
                       "test clips": v["n_test_clips"], "test chunks": v["n_test_chunks"]}
                for level, name in METRICS:
                    row[f"{level} {name.replace('_', ' ')}"] = _pm(v[f"{level}_{name}"])
                row[COMPARE] = v[COMPARE]["mean"]
                pc.append(row)
        mark_below_baseline(pc, COMPARE, group_by=("client",), name_key="method")
        pc.sort(key=lambda r: (r["client"], r["kind"] != "model"))
        run.write_table(f"per_client_{exp}", pc, columns=[c for c in pc[0] if c != COMPARE] if pc else None,
                        title=f"{exp}: per client, held-out source videos (mean ± SD over {n_seeds} seed(s))",
                        note="Balanced accuracy of a client with one class in its test clips is that class's recall; "
                             "AUC is n/a there. below_baseline per client: clip balanced accuracy.")
    trows = []
    for exp, t in metrics["target"].items():
        trows.append({"experiment": exp, "FedPer clip balanced accuracy": f"{t['fedper']['mean']:.3f} ± {t['fedper']['se']:.3f} (SE)",
                      "motion-energy LR": f"{t['motion']['mean']:.3f} ± {t['motion']['se']:.3f} (SE)",
                      "difference (paired)": f"{t['difference']['mean']:+.3f} ± {t['difference']['se']:.3f} (SE)",
                      "per seed": " ".join(f"{d:+.3f}" for d in t["difference"]["values"]),
                      "target (> 0)": "met" if t["met"] else "NOT met",
                      "stretch (> 0.05)": "met" if t["stretch_met"] else "not met"})
    if trows:
        run.write_table("target", trows, title="Target: FedPer above the motion-energy baseline (source-video split, "
                                               "pooled clip-level balanced accuracy)")
    bt = []
    for exp, e in metrics["experiments"].items():
        ms = e["splits"].get("source", {}).get("methods", {})
        ref = None
        if "fedavg" in ms:
            ref = next(iter(ms["fedavg"]["seeds"].values()))["bytes_per_round"]
        for m, r in ms.items():
            if r["kind"] != "model":
                continue
            first = next(iter(r["seeds"].values()))
            b = first["bytes_per_round"]
            bt.append({"experiment": exp, "strategy": method_name(m), "params sent": first["params_sent"],
                       "up bytes/round": b["up"], "down bytes/round": b["down"], "payload up": b["payload_up"],
                       "ratio to FedAvg": b["total"] / ref["total"] if ref else ""})
    run.write_table("bytes", bt, title="Bytes exchanged per round (all clients; data = float32 parameter bytes, "
                                       "payload = ArrayRecord.count_bytes())")
    from detectlab.violence.model import build_model, layer_table

    run.write_table("model_layers", layer_table(build_model(model_dict(cfg))), title="Diff-Gated layers")
    return rows


def figures(run: Run, cfg: Config, metrics: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = [e for e in metrics["experiments"] if (e, "source") in results]
    if not exps:
        return
    fig, axes = plt.subplots(1, len(exps), figsize=(4.8 * len(exps), 3.6), squeeze=False)
    for ax, exp in zip(axes[0], exps):
        by_seed = results[(exp, "source")]
        for m in cfg.strategies:
            curves = [r[m]["history"] for r in by_seed.values() if m in r and r[m].get("history")]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            acc = np.nanmean([[c[i]["accuracy"] for i in range(n)] for c in curves], axis=0)
            ax.plot(range(1, n + 1), acc, marker="o", ms=3, label=f"{method_name(m)} (test, current model)")
        ms = metrics["experiments"][exp]["splits"]["source"]["methods"]
        if "motion" in ms:
            ax.axhline(ms["motion"]["summary"]["chunk_accuracy"]["mean"], color="k", ls="--", lw=1,
                       label="motion-energy LR (pooled)")
        ax.set_title(f"{exp} ({metrics['experiments'][exp]['n_clients']} clients, mean of {len(by_seed)} seed(s))")
        ax.set_xlabel("round")
        ax.set_ylabel("held-out chunk accuracy (weighted)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    run.save_figure(fig, "accuracy_per_round")
    # constrained layout: the long method names of the second panel otherwise overprint the first panel's bars
    fig, axes = plt.subplots(1, len(exps), figsize=(5.6 * len(exps), 3.6), squeeze=False, layout="constrained")
    for ax, exp in zip(axes[0], exps):
        ms = metrics["experiments"][exp]["splits"]["source"]["methods"]
        names = list(ms)
        vals = [ms[m]["summary"][COMPARE]["mean"] for m in names]
        errs = [ms[m]["summary"][COMPARE]["sd"] for m in names]
        colors = ["tab:blue" if ms[m]["kind"] == "model" else "tab:gray" for m in names]
        ax.barh(range(len(names)), vals, xerr=errs, color=colors)
        ax.set_yticks(range(len(names)), [method_name(m) for m in names], fontsize=7)
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        base = [v for v, m in zip(vals, names) if ms[m]["kind"] != "model"]
        if base:  # a model bar that ends left of this line is below the best baseline
            ax.axvline(max(base), color="tab:red", lw=1, ls="--", label=f"best baseline ({max(base):.3f})")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlim(0, 1.02)  # a best-baseline line at 1.0 stays visible beside the frame
        ax.set_xlabel("clip balanced accuracy (pooled, mean ± SD over seeds)")
        ax.set_title(f"{exp}: models (blue) and baselines (grey)", fontsize=9)
    run.save_figure(fig, "balanced_accuracy")


def report_deployment(run: Run, cfg: Config, fed_metrics: dict) -> dict:
    """Tables and figures of a deployment run (``detectlab violence deploy``), from the federation's metrics.json:
    the strategies and the majority class per client (from each node's census counts; the server never holds a
    clip, so the motion-energy and trained baselines are not available there)."""
    results: dict = {}
    jobs: dict = {}
    for exp, e in fed_metrics["experiments"].items():
        got = {}
        census = {}
        for s, res in e.get("strategies", {}).items():
            got[s] = {**_learned_extras(res), **train.summarize(res["per_client"])}
            census = res.get("census", census)
        per = {}
        for pid, c in census.items():
            pc = next(iter(e["strategies"].values()))["per_client"].get(str(pid), {})
            n_tr = c.get("train_fight", 0) + c.get("train_nonfight", 0) + c.get("val_fight", 0) + c.get("val_nonfight", 0)
            share = (c.get("train_fight", 0) + c.get("val_fight", 0)) / n_tr if n_tr else 0.5
            labels = pc.get("test-labels", [])
            per[str(pid)] = {"test-scores": [share] * len(labels), "test-labels": labels,
                             "test-clips": pc.get("test-clips", [])}
        if per:
            got["majority"] = train.summarize(per)
        seed = cfg.seed + cfg.seeds[0]
        results[(exp, "source")] = {seed: got}
        jobs[(exp, "source", seed)] = {"clients": e.get("clients", []), "n_clients": e.get("n_clients")}
    metrics = collect(cfg, results, jobs)
    metrics["model"], metrics["data"] = fed_metrics.get("model", {}), fed_metrics.get("data", {})
    rows = tables(run, cfg, metrics)
    metrics["below_baseline"] = below_baseline_summary(rows, name_key="method", group_by=("experiment",))
    metrics["federation"] = fed_metrics
    run.write_metrics(metrics)
    figures(run, cfg, metrics, results)
    return metrics


__all__ = ["run", "collect", "tables", "figures", "target", "report_deployment"]
