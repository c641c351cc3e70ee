"""The paper's protocol: experiments (client partitions) x strategies on Flower, Table IV side by side.

For every experiment (``balanced2`` = Table I, ``imbalanced3`` = Table II, ``combined4`` = Table III,
``dirichlet``/``iid`` for any number of clients) the data is decoded once into 16-frame chunks (cached),
split by source video into train/test, dealt out to the clients (see :mod:`.partition`), and every
strategy (FedAvg, FedPer, Per-FedAvg, FedMeta-Per) runs for ``fl.rounds`` rounds on Flower's simulation
engine (or on a deployment grid when called from the ServerApp). Each (experiment, strategy) is a unit: its
result file is written when it finishes and read back when the run is resumed.

metrics.json: ``experiments.<name>.strategies.<strategy>.{accuracy, loss, per_client, bytes_per_round}``
(+ ``history`` per round, ``params_sent``), ``experiments.<name>.clients`` (chunk counts per client).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import progress
from detectlab.core.config import BaseConfig, resolve_data
from detectlab.core.errors import InputError
from detectlab.core.runs import Run
from detectlab.core.units import Unit, run_units

DATA_SUBDIR = "video"
SYSTEM = "violence"
STRATEGIES = ("fedavg", "fedper", "perfedavg", "fedmetaper")
STRATEGY_NAMES = {"fedavg": "FedAvg", "fedper": "FedPer", "perfedavg": "Per-FedAvg", "fedmetaper": "FedMeta-Per"}


@dataclass
class DataConfig:
    size: int = 64  # frames resized to size x size
    stride: int = 16  # chunk start spacing in frames (16 = non-overlapping)
    max_chunks: int = 0  # per clip, 0 = all
    test_fraction: float = 0.25  # of the source videos, held out (grouped split)
    data2: str = ""  # second dataset for combined4 ("" = built-in second dataset when data is built-in)
    # built-in synthetic data
    syn_sites: int = 2
    syn_sources_per_site: int = 4
    syn_clips_per_source: int = 4
    syn_frames: int = 32
    syn_size: int = 64


@dataclass
class ModelConfig:
    width: int = 8
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    dropout: float = 0.2


@dataclass
class FLConfig:
    rounds: int = 10
    epochs: int = 1  # local epochs per round (FedAvg, FedPer)
    batch: int = 16
    lr: float = 1e-3  # Adam, local training
    weight_decay: float = 0.0  # Adam weight decay, local training
    alpha: float = 0.03  # Per-FedAvg / FedMeta-Per inner (personalisation) step
    beta: float = 0.03  # Per-FedAvg / FedMeta-Per outer step
    delta: float = 1e-3  # Hessian-free finite-difference step
    variant: str = "fo"  # Per-FedAvg: fo (first-order) or hf (Hessian-free)
    meta_steps: int = 0  # per round; 0 = as many as batches in `epochs` epochs
    adapt_steps: int = 1  # personalisation steps before evaluation (Per-FedAvg, FedMeta-Per)
    client_threads: int = 1
    sim_cpus: int = 2  # CPUs Ray may use (one per client at a time)
    fault: str = ""  # test hook: "nan:K" or "shape:K" makes client K send a bad update
    timeout: float = 3600.0
    # federation (fed): robust aggregation, bounded counts, partial participation, bounded rounds
    aggregation: str = "fedavg"  # fedavg | median | trimmed | krum (Flower's FedAvg/FedMedian/FedTrimmedAvg/Krum)
    trim_beta: float = 0.25  # trimmed: fraction cut from each tail
    krum_malicious: int = 1  # krum: assumed number of malicious clients
    clip_norm: float = 0.0  # > 0: clip every update to this L2 norm (Flower's server-side fixed clipping)
    max_weight: float = 0.0  # > 0: no client weighs more than this x the median claimed num-examples
    fraction: float = 1.0  # clients sampled per round (partial participation); evaluation covers all
    min_clients: int = 1  # usable updates a round needs (0 = every sampled client), else the run stops
    round_timeout: float = 600.0  # seconds to wait for the nodes and replies of a round


@dataclass
class Config(BaseConfig):
    experiments: list[str] = field(default_factory=lambda: ["balanced2", "imbalanced3"])
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    clients: int = 4  # for dirichlet / iid
    dirichlet_alpha: float = 0.5
    train_experiment: str = "balanced2"  # what `detectlab violence train` runs
    train_strategy: str = "fedper"
    data_opts: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fl: FLConfig = field(default_factory=FLConfig)


def model_dict(cfg: Config) -> dict:
    return {"arch": "DiffGated", "width": cfg.model.width, "hidden": list(cfg.model.hidden),
            "dropout": cfg.model.dropout, "size": cfg.data_opts.size}


def validate(cfg: Config) -> None:
    from detectlab.violence.partition import EXPERIMENTS

    for e in cfg.experiments:
        if e not in EXPERIMENTS:
            raise InputError(f"config key 'experiments' ({e})", "unknown experiment", "one of " + ", ".join(EXPERIMENTS))
    for s in cfg.strategies:
        if s not in STRATEGIES:
            raise InputError(f"config key 'strategies' ({s})", "unknown strategy", "one of " + ", ".join(STRATEGIES))
    if cfg.fl.variant not in ("fo", "hf"):
        raise InputError("config key 'fl.variant'", f"unknown Per-FedAvg variant {cfg.fl.variant!r}", "fo or hf")
    fl = cfg.fl  # federation settings (fed)
    if fl.aggregation not in ("fedavg", "median", "trimmed", "krum"):
        raise InputError("config key 'fl.aggregation'", f"unknown aggregation {fl.aggregation!r}",
                         "fedavg, median, trimmed or krum")
    if not 0 < fl.fraction <= 1:
        raise InputError("config key 'fl.fraction'", f"{fl.fraction}", "a fraction of clients in (0, 1]")
    if not 0 <= fl.trim_beta < 0.5:
        raise InputError("config key 'fl.trim_beta'", f"{fl.trim_beta}", "in [0, 0.5)")
    for key in ("krum_malicious", "min_clients"):
        if getattr(fl, key) < 0:
            raise InputError(f"config key 'fl.{key}'", f"{getattr(fl, key)}", "an integer >= 0")
    for key in ("clip_norm", "max_weight"):
        if getattr(fl, key) < 0:
            raise InputError(f"config key 'fl.{key}'", f"{getattr(fl, key)}", ">= 0 (0 = off)")
    if fl.round_timeout <= 0:
        raise InputError("config key 'fl.round_timeout'", f"{fl.round_timeout}", "seconds > 0")
    if cfg.data_opts.size < 16 or cfg.data_opts.size % 4:
        raise InputError("config key 'data_opts.size'", f"{cfg.data_opts.size}", "a multiple of 4, at least 16")


def _builtin(run: Run, cfg: Config, which: int) -> Path:
    from detectlab.violence.synthetic import make_dataset

    d = cfg.data_opts
    return make_dataset(run.path("data", f"builtin{which}"), n_sites=d.syn_sites,
                        sources_per_site=d.syn_sources_per_site, clips_per_source=d.syn_clips_per_source,
                        size=d.syn_size, n_frames=d.syn_frames, seed=cfg.seed + 101 * which)


def load_dataset(cfg: Config, run: Run, which: int = 0):
    """ChunkSet of the main (which=0) or second (which=1) dataset."""
    from detectlab.violence.data import load_chunks

    d = cfg.data_opts
    value = cfg.data if which == 0 else (d.data2 or "")
    path = resolve_data(value, DATA_SUBDIR) if which == 0 else (Path(value) if value else None)
    if which == 1 and path is None and resolve_data(cfg.data, DATA_SUBDIR) is not None:
        raise InputError("config key 'data_opts.data2'", "combined4 needs a second dataset (the paper pools RWF-2000 "
                         "and Crowd Violence)", "data_opts.data2=<folder of labelled clips>")
    cache = None
    if path is None:
        path = _builtin(run, cfg, which)
        cache = run.path("data", "cache")
    return load_chunks(path, d.size, d.stride, d.max_chunks, cache_dir=cache)


def prepare(cfg: Config, run: Run, experiment: str) -> dict:
    """Decode/cache the data, build the experiment's partition file; return the job skeleton."""
    from detectlab.violence.partition import make_partition, n_clients_of, save_partition

    cs = load_dataset(cfg, run, 0)
    cache_dir = Path(cs.cache) if cs.cache else None
    clips = cs.clips
    if experiment == "combined4":
        cs2 = load_dataset(cfg, run, 1)
        x = np.concatenate([np.asarray(cs.x), np.asarray(cs2.x)])
        y = np.concatenate([cs.y, cs2.y])
        clip = np.concatenate([cs.clip, cs2.clip + len(cs.clips)])
        clips = cs.clips + [dict(c, group="ds2:" + c["group"]) for c in cs2.clips]
        cache_dir = run.path("data", "combined-cache", "x.npy").parent
        np.save(cache_dir / "x.npy", x)
        np.save(cache_dir / "y.npy", y)
        clip_of_chunk = clip
    else:
        clip_of_chunk = cs.clip
        if cache_dir is None:  # cache not writable: keep a copy in the run folder
            cache_dir = run.path("data", "cache-copy", "x.npy").parent
            np.save(cache_dir / "x.npy", np.asarray(cs.x))
            np.save(cache_dir / "y.npy", cs.y)
    k = n_clients_of(experiment, cfg.clients)
    labels = np.asarray([c["label"] for c in clips])
    groups = np.asarray([c["group"] for c in clips])
    n_chunks = np.asarray([c["n_chunks"] for c in clips])
    train, test = make_partition(labels, groups, n_chunks, experiment, k, cfg.dirichlet_alpha,
                                 cfg.data_opts.test_fraction, cfg.seed)
    pfile = save_partition(run.path("data", f"partition-{experiment}.npz"), str(cache_dir), train, test, clip_of_chunk)
    y_all = np.load(Path(cache_dir) / "y.npy", mmap_mode="r")
    clients = []
    with np.load(pfile) as z:
        for i in range(k):
            tr, te = z[f"train_{i}"], z[f"test_{i}"]
            clients.append({"client": i, "train_fight": int(y_all[tr].sum()), "train_nonfight": int(len(tr) - y_all[tr].sum()),
                            "test_fight": int(y_all[te].sum()), "test_nonfight": int(len(te) - y_all[te].sum()),
                            "train_clips": int(len(train[i])), "test_clips": int(len(test[i]))})
    progress.log(f"{experiment}: {k} clients " + "; ".join(
        f"c{c['client']} train {c['train_fight']}F/{c['train_nonfight']}N test {c['test_fight']}F/{c['test_nonfight']}N"
        for c in clients))
    fl = cfg.fl
    job = {
        "experiment": experiment, "n_clients": k, "rounds": fl.rounds, "seed": cfg.seed, "model": model_dict(cfg),
        "partition_file": str(pfile), "out": str(run.dir), "export": True, "timeout": fl.timeout,
        "client": {"lr": fl.lr, "weight_decay": fl.weight_decay, "epochs": fl.epochs, "batch": fl.batch, "alpha": fl.alpha, "beta": fl.beta,
                   "delta": fl.delta, "variant": fl.variant, "meta_steps": fl.meta_steps,
                   "adapt_steps": fl.adapt_steps, "threads": fl.client_threads, "fault": fl.fault},
        "data": {"source": cs.source, "counts": cs.counts(), "skipped": cs.skipped},
        "fl": asdict(fl), "device": cfg.device,  # federation settings for the ServerApp (fed)
    }
    return {"job": job, "clients": clients}


def _not_produced(key: str) -> dict:
    raise RuntimeError(f"{key}: the federation finished without writing this result")


def run(cfg: Config, run: Run, grid: Any = None) -> dict[str, Any]:
    """Run every experiment x strategy (simulation engine, or `grid` when given) and write the outputs."""
    from detectlab.violence.server_app import run_federation, simulate, unit_key, unit_path

    validate(cfg)
    metrics: dict[str, Any] = {"experiments": {}}
    units = []
    prepared = {}
    for exp in cfg.experiments:
        prep = prepare(cfg, run, exp)
        prepared[exp] = prep
        job = dict(prep["job"], strategies=list(cfg.strategies))
        pending = [s for s in cfg.strategies if not unit_path(run.dir, exp, s).exists()]
        if pending:
            job["strategies"] = pending
            progress.log(f"{exp}: running {', '.join(pending)} for {cfg.fl.rounds} rounds on "
                         f"{job['n_clients']} clients ({'deployment grid' if grid is not None else 'simulation engine'})")
            if grid is not None:
                run_federation(grid, job)
            else:
                simulate(job, cfg.fl.sim_cpus)
        units += [Unit(unit_key(exp, s), _not_produced, {"key": unit_key(exp, s)}) for s in cfg.strategies]
    res = run_units(run, units, 1, "", description="experiment x strategy")
    for exp in cfg.experiments:
        prep = prepared[exp]
        metrics["experiments"][exp] = {
            "clients": prep["clients"], "n_clients": prep["job"]["n_clients"],
            "strategies": {s: res[unit_key(exp, s)] for s in cfg.strategies},
        }
    first = prepared[cfg.experiments[0]]["job"] if cfg.experiments else {}
    from detectlab.violence.model import build_model, param_counts

    metrics["model"] = {**model_dict(cfg), **param_counts(build_model(model_dict(cfg)))}
    metrics["data"] = first.get("data", {})
    run.write_metrics(metrics)
    tables(run, cfg, metrics)
    figures(run, cfg, metrics)
    return metrics


def tables(run: Run, cfg: Config, metrics: dict) -> None:
    from detectlab.violence.partition import PAPER_RESULTS, PAPER_TABLES

    rows = []
    for exp, e in metrics["experiments"].items():
        paper = PAPER_RESULTS.get(exp)
        for s, r in e["strategies"].items():
            rows.append({"experiment": exp, "clients": e["n_clients"], "strategy": STRATEGY_NAMES[s],
                         "accuracy": r["accuracy"], "loss": r["loss"],
                         "paper accuracy (FedPer)": paper["accuracy"] if paper else "",
                         "paper loss (FedPer)": paper["loss"] if paper else "",
                         "bytes/round": r["bytes_per_round"]["total"], "rounds": r["rounds"],
                         "seconds": r["seconds"]})
    src = metrics.get("data", {}).get("source", "")
    run.write_table("table4", rows, title="Table IV: experiments x strategies (weighted mean over clients' held-out chunks)",
                    note=f"Ours: {src}, frames {cfg.data_opts.size}x{cfg.data_opts.size}, 16-frame chunks, "
                         f"{cfg.fl.rounds} rounds x {cfg.fl.epochs} local epoch(s); accuracy/loss on each client's "
                         "held-out source videos after the last round. Paper: FedPer on RWF-2000 (+ Crowd Violence), "
                         "3,600 chunks (Table IV).")
    for exp, e in metrics["experiments"].items():
        prow = []
        if exp in PAPER_TABLES:
            fi, no = PAPER_TABLES[exp]
            prow = [{"client": f"{i + 1} (paper)", "train_fight": f, "train_nonfight": n} for i, (f, n) in enumerate(zip(fi, no))]
        crow = [dict(c, client=str(c["client"] + 1)) for c in e["clients"]]
        run.write_table(f"clients_{exp}", crow + prow, title=f"{exp}: chunks per client (ours, then the paper's)",
                        columns=["client", "train_fight", "train_nonfight", "test_fight", "test_nonfight",
                                 "train_clips", "test_clips"])
        pc = []
        for s, r in e["strategies"].items():
            for k, v in r["per_client"].items():
                pc.append({"strategy": STRATEGY_NAMES[s], "client": int(k) + 1, **v})
        run.write_table(f"per_client_{exp}", pc, title=f"{exp}: per-client held-out accuracy and loss (last round)")
    bt = []
    for exp, e in metrics["experiments"].items():
        ref = e["strategies"].get("fedavg")
        for s, r in e["strategies"].items():
            b = r["bytes_per_round"]
            bt.append({"experiment": exp, "strategy": STRATEGY_NAMES[s], "params sent": r["params_sent"],
                       "up bytes/round": b["up"], "down bytes/round": b["down"], "payload up": b["payload_up"],
                       "ratio to FedAvg": b["total"] / ref["bytes_per_round"]["total"] if ref else ""})
    run.write_table("bytes", bt, title="Bytes exchanged per round (all clients; data = float32 parameter bytes, "
                                       "payload = ArrayRecord.count_bytes())")
    from detectlab.violence.model import build_model, layer_table

    run.write_table("model_layers", layer_table(build_model(model_dict(cfg))), title="Diff-Gated layers")


def figures(run: Run, cfg: Config, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = list(metrics["experiments"])
    if not exps:
        return
    fig, axes = plt.subplots(1, len(exps), figsize=(4.5 * len(exps), 3.4), squeeze=False)
    for ax, exp in zip(axes[0], exps):
        for s, r in metrics["experiments"][exp]["strategies"].items():
            h = r["history"]
            ax.plot([x["round"] for x in h], [x["accuracy"] for x in h], marker="o", ms=3, label=STRATEGY_NAMES[s])
        ax.set_title(f"{exp} ({metrics['experiments'][exp]['n_clients']} clients)")
        ax.set_xlabel("round")
        ax.set_ylabel("held-out accuracy (weighted)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    run.save_figure(fig, "accuracy_per_round")


def with_single(cfg: Config, experiment: str, strategy: str) -> Config:
    c = copy.deepcopy(cfg)
    c.experiments = [experiment]
    c.strategies = [strategy]
    return c


__all__ = ["Config", "DATA_SUBDIR", "run", "prepare", "asdict"]
