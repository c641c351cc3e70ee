"""Training: a unit's data and partition, federated training on Flower, and the trained baselines.

- :func:`prepare`: decode (or read back) the clips, split them by source video (or, for the leaky chunk-split
  column, by chunk), deal them to the clients, split each client's training side again for validation, and
  write the partition file the clients read; returns the *job* the ServerApp runs.
- :func:`federate`: the job's strategies on Flower's simulation engine (or a deployment grid).
- :func:`local_only` / :func:`fedavg_finetune`: the trained baselines, in-process, with the clients' own data.
- :func:`motion` / :func:`majority`: the hand-crafted baselines (:mod:`.baseline`) on the same clients.
- :func:`summarize`: clip- and chunk-level metrics per client and pooled from the clients' test scores.
- :func:`run`: ``detectlab violence train`` (one experiment x strategy; a run folder that predict/evaluate use).

Every unit's result holds, per client, the test chunk scores (``test-scores``), labels and clip ids, so all
metrics are computed the same way for learned rows and baselines.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import progress
from detectlab.core.config import resolve_data
from detectlab.core.errors import InputError
from detectlab.core.runs import Run
from detectlab.violence import baseline as B
from detectlab.violence import task
from detectlab.violence.config import DATA_SUBDIR, Config, client_spec, model_dict
from detectlab.violence.data import ClipSet, load_clips
from detectlab.violence.model import build_model
from detectlab.violence.partition import forget, load_client, make_partition, n_clients_of, save_partition, split_validation

_DATA: dict[tuple, ClipSet] = {}


def job_key(experiment: str, split: str, seed: int) -> str:
    """Unit-name prefix: ``balanced2-seed0`` (source-video split) or ``balanced2-chunksplit-seed0``."""
    return f"{experiment}-seed{seed}" if split == "source" else f"{experiment}-chunksplit-seed{seed}"


def _builtin(run: Run, cfg: Config, which: int) -> Path:
    from detectlab.violence.synthetic import make_dataset

    d = cfg.data_opts
    return make_dataset(run.path("data", f"builtin{which}"), n_sites=d.syn_sites,
                        sources_per_site=d.syn_sources_per_site, clips_per_source=d.syn_clips_per_source,
                        size=d.syn_size, n_frames=d.syn_frames, seed=cfg.seed + 101 * which)


def data_path(cfg: Config, which: int = 0) -> Path | None:
    """The resolved data folder (None = built-in clips) of the main (0) or second (1) dataset."""
    if which == 0:
        return resolve_data(cfg.data, DATA_SUBDIR)
    if cfg.data_opts.data2:
        return resolve_data(cfg.data_opts.data2, DATA_SUBDIR)
    if resolve_data(cfg.data, DATA_SUBDIR) is not None:
        raise InputError("config key 'data_opts.data2'", "combined4 needs a second dataset (the paper pools RWF-2000 "
                         "and Crowd Violence)", "data_opts.data2=<folder of labelled clips>")
    return None


def dataset(cfg: Config, run: Run, which: int = 0) -> ClipSet:
    """The decoded clips of the main (which=0) or second (which=1) dataset (cached on disk and per process)."""
    path = data_path(cfg, which)
    cache = None
    if path is None:
        path = _builtin(run, cfg, which)
        cache = run.path("data", "cache")
    key = (str(path), cfg.data_opts.size, cfg.data_opts.max_frames, str(cache))
    if key not in _DATA:
        _DATA[key] = load_clips(path, cfg.data_opts.size, cache_dir=cache, max_frames=cfg.data_opts.max_frames)
    return _DATA[key]


def _frames_file(cs: ClipSet, run: Run, name: str) -> str:
    if cs.cache and (Path(cs.cache) / "frames.npy").exists():
        return str(Path(cs.cache) / "frames.npy")
    p = run.path("data", name, "frames.npy")  # cache not writable: keep a copy in the run folder
    if not p.exists():
        np.save(p, np.asarray(cs.frames))
    return str(p)


def _combined(cfg: Config, run: Run) -> tuple[ClipSet, str]:
    a, b = dataset(cfg, run, 0), dataset(cfg, run, 1)
    p = run.path("data", "combined", "frames.npy")
    if not p.exists():
        np.save(p, np.concatenate([np.asarray(a.frames), np.asarray(b.frames)]))
    frames = np.load(p, mmap_mode="r")
    clips = a.clips + [dict(c, group="ds2:" + c["group"]) for c in b.clips]
    cs = ClipSet(frames, np.concatenate([a.start, b.start + len(a.frames)]), np.concatenate([a.length, b.length]),
                 np.concatenate([a.label, b.label]), [c["group"] for c in clips], clips, None,
                 a.skipped + b.skipped, f"{a.source} + {b.source}", "")
    return cs, str(p)


def prepare(cfg: Config, run: Run, experiment: str, seed: int, split: str = "source") -> dict[str, Any]:
    """Build the unit's partition file; return its job (what the ServerApp and the baselines run on)."""
    if experiment == "combined4":
        cs, frames_file = _combined(cfg, run)
    else:
        cs = dataset(cfg, run, 0)
        frames_file = _frames_file(cs, run, "frames-copy")
    table = cs.segments() if split == "chunk" else cs
    k = n_clients_of(experiment, cfg.clients)
    weights = table.n_chunks()
    train, test = make_partition(table.label, table.group, weights, experiment, k, cfg.dirichlet_alpha,
                                 cfg.data_opts.test_fraction, seed)
    tv = [split_validation(t, table.group, weights, cfg.data_opts.val_fraction, seed + 31 * i) for i, t in enumerate(train)]
    train, val = [a for a, _ in tv], [b for _, b in tv]
    key = job_key(experiment, split, seed)
    pfile = save_partition(run.path("data", f"partition-{key}.npz"), frames_file,
                           {"start": table.start, "length": table.length, "label": table.label, "group": table.group,
                            "parent": table.parent}, train, val, test,
                           {"experiment": experiment, "split": split, "seed": seed})
    clients = []
    for i in range(k):
        row = {"client": i}
        for part, idx in (("train", train[i]), ("val", val[i]), ("test", test[i])):
            lab, n = table.label[idx], weights[idx]
            row.update({f"{part}_fight": int(n[lab == 1].sum()), f"{part}_nonfight": int(n[lab == 0].sum()),
                        f"{part}_clips": int(len(idx))})
        clients.append(row)
    progress.log(f"{key}: {k} clients " + "; ".join(
        f"c{c['client']} train {c['train_fight']}F/{c['train_nonfight']}N val {c['val_fight']}F/{c['val_nonfight']}N "
        f"test {c['test_fight']}F/{c['test_nonfight']}N" for c in clients))
    fl = cfg.fl
    return {
        "key": key, "experiment": experiment, "split": split, "seed": int(seed), "n_clients": k,
        # absolute paths: the ServerApp and the ClientApps run in other working directories (a relative --out
        # made every client's census fail with "No such file or directory")
        "rounds": fl.rounds, "model": model_dict(cfg), "partition_file": str(Path(pfile).resolve()),
        "out": str(Path(run.dir).resolve()),
        "export": True, "timeout": fl.timeout, "client": dict(client_spec(cfg), experiment=key),
        "data": {"source": cs.source, "counts": cs.counts(), "skipped": cs.skipped}, "clients": clients,
        "fl": asdict(fl), "device": cfg.device,  # federation settings for the ServerApp
    }


def federate(job: dict, strategies: list[str], cfg: Config, grid: Any = None) -> dict[str, Any]:
    """The job's `strategies` on Flower: {strategy: result}. A finished strategy (unit file) is read back."""
    from detectlab.violence.server_app import run_federation, simulate

    job = dict(job, strategies=list(strategies))
    if grid is not None:
        return run_federation(grid, job)
    return simulate(job, cfg.fl.sim_cpus)


# ---------------------------------------------------------------- metrics of a unit
def summarize(per_client: dict[str, dict]) -> dict[str, Any]:
    """Per client and pooled {"chunk": ..., "clip": ...} metrics from each client's test scores."""
    out: dict[str, Any] = {"per_client": {}}
    s_all, y_all, c_all = [], [], []
    for pid, c in sorted(per_client.items(), key=lambda kv: int(kv[0])):
        s, y, cl = (np.asarray(c.get(k, []), float) for k in ("test-scores", "test-labels", "test-clips"))
        m = task.score_metrics(s, y.astype(int), cl.astype(int))
        out["per_client"][str(pid)] = {**m, "n_test_chunks": int(len(s)), "n_test_clips": m["clip"]["n"]}
        s_all.append(s)
        y_all.append(y)
        c_all.append(cl)
    if s_all:
        out["pooled"] = task.score_metrics(np.concatenate(s_all), np.concatenate(y_all).astype(int),
                                           np.concatenate(c_all).astype(int))
    return out


def _client_result(scores: np.ndarray, labels: np.ndarray, clips: np.ndarray, data, **extra) -> dict:
    return {"test-scores": [float(x) for x in scores], "test-labels": [int(x) for x in labels],
            "test-clips": [int(data.test.parent[c]) for c in clips], **extra}


# ---------------------------------------------------------------- trained baselines
def _device(cfg: Config):
    from detectlab.core.runtime import choose_device

    return choose_device(cfg.device)


def local_only(job: dict, cfg: Config) -> dict[str, Any]:
    """Each client trains alone (no federation) on its own training clips, same recipe and epoch budget as the
    federation (``baseline.local_epochs``, 0 = rounds x epochs), early-stopped on its validation clips."""
    import torch

    spec = dict(job["client"], strategy="local", seed=job["seed"])
    epochs = cfg.baseline.local_epochs or cfg.fl.rounds * cfg.fl.epochs
    dev = _device(cfg)
    per = {}
    for pid in range(job["n_clients"]):
        data = load_client(job["partition_file"], pid)
        rng = task.seed_message(task.message_seed(spec, pid, 0, "local"))
        torch.manual_seed(int(job["seed"]))
        model = build_model(job["model"]).to(dev)
        h = task.train_local(model, data, spec, epochs, rng, patience=cfg.baseline.local_patience)
        s, y, cl, loss = task.chunk_scores(model, data.test, int(spec["eval_stride"]), crop=int(spec["aug"]["crop"]))
        per[str(pid)] = _client_result(s, y, cl, data, **{"selected-epoch": h["selected_epoch"], "final-loss": loss,
                                                          "epochs-run": len(h["history"])})
        progress.log(f"{job['key']} local-only client {pid}: epoch {h['selected_epoch']} of {len(h['history'])} "
                     f"chosen on validation, test chunk accuracy {float(((s >= 0.5) == y).mean()):.3f}")
    return {"per_client": per, "epochs": epochs}


def fedavg_finetune(job: dict, cfg: Config) -> dict[str, Any]:
    """FedAvg's final global model fine-tuned by each client on its training clips (``baseline.ft_epochs``),
    early-stopped on its validation clips (no fine-tuning at all is a candidate)."""
    import torch

    from detectlab.core.checkpoints import load_checkpoint

    ck = Path(job["out"]) / "checkpoints" / f"{job['key']}-fedavg-global.safetensors"
    if not ck.exists():
        raise RuntimeError(f"{job['key']}: FedAvg + fine-tuning needs the FedAvg unit first ({ck} is missing)")
    glob, _ = load_checkpoint(ck, "violence")
    lr = cfg.baseline.ft_lr or cfg.fl.lr / 3
    spec = dict(job["client"], strategy="fedavg_ft", seed=job["seed"], lr=lr)
    dev = _device(cfg)
    per = {}
    for pid in range(job["n_clients"]):
        data = load_client(job["partition_file"], pid)
        rng = task.seed_message(task.message_seed(spec, pid, 0, "finetune"))
        model = build_model(job["model"]).to(dev)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in glob.items()})
        h = task.train_local(model, data, spec, cfg.baseline.ft_epochs, rng, include_start=True)
        s, y, cl, loss = task.chunk_scores(model, data.test, int(spec["eval_stride"]), crop=int(spec["aug"]["crop"]))
        per[str(pid)] = _client_result(s, y, cl, data, **{"selected-epoch": h["selected_epoch"], "final-loss": loss})
    return {"per_client": per, "ft_epochs": cfg.baseline.ft_epochs, "ft_lr": lr}


# ---------------------------------------------------------------- hand-crafted baselines
def majority(job: dict, cfg: Config) -> dict[str, Any]:
    """Every client predicts the fight share of its own training chunks (the majority class at 0.5)."""
    per = {}
    stride = int(job["client"]["eval_stride"])
    for pid in range(job["n_clients"]):
        data = load_client(job["partition_file"], pid)
        y_train = np.concatenate([data.train.chunks(stride)[1], data.val.chunks(stride)[1]])
        cl, _ = data.test.chunk_index(stride)
        s = B.majority_client_scores(y_train, len(cl))
        per[str(pid)] = _client_result(s, data.test.label[cl], cl, data, **{"train-fight-share": float(y_train.mean())})
    return {"per_client": per}


def motion(job: dict, cfg: Config, pooled: bool = True) -> dict[str, Any]:
    """Motion-energy logistic regression, trained on all clients' training chunks (`pooled`, a centralised
    baseline: stronger than any one client could build) or on each client's own."""
    stride = int(job["client"]["eval_stride"])
    feats = []
    for pid in range(job["n_clients"]):
        data = load_client(job["partition_file"], pid)
        tr = [B.clip_chunk_features(part, stride) for part in (data.train, data.val)]
        feats.append((np.concatenate([t[0] for t in tr]), np.concatenate([t[1] for t in tr]),
                      B.clip_chunk_features(data.test, stride), data))
    if pooled:
        shared = B.MotionLR(cfg.baseline.motion_c).fit(np.concatenate([f[0] for f in feats]),
                                                       np.concatenate([f[1] for f in feats]))
    per = {}
    for pid, (f_tr, y_tr, (f_te, y_te, cl), data) in enumerate(feats):
        lr = shared if pooled else B.MotionLR(cfg.baseline.motion_c).fit(f_tr, y_tr)
        per[str(pid)] = _client_result(lr.predict_proba(f_te), y_te, cl, data)
    return {"per_client": per, "features": B.N_FEATURES, "pooled": pooled}


def baseline_unit(name: str, job: dict, cfg: Config) -> dict[str, Any]:
    """One baseline of one job (a core Unit's function)."""
    fns = {"majority": majority, "motion": motion, "motion_local": lambda j, c: motion(j, c, pooled=False),
           "local": local_only, "fedavg_ft": fedavg_finetune}
    try:
        return fns[name](job, cfg)
    finally:
        forget(job["partition_file"])


# ---------------------------------------------------------------- `detectlab violence train`
def run(cfg: Config, run: Run) -> dict[str, Any]:
    """One federated training (``train_experiment`` x ``train_strategy``, seed ``seed + seeds[0]``, source-video
    split): the run folder holds the global model and every client's personalised model
    (``checkpoints/<experiment>-seed<s>-<strategy>-client<K>.safetensors``) for predict and evaluate."""
    from detectlab.violence.model import param_counts

    seed = cfg.seed + cfg.seeds[0]
    job = prepare(cfg, run, cfg.train_experiment, seed, "source")
    res = federate(job, [cfg.train_strategy], cfg)[cfg.train_strategy]
    summary = summarize(res["per_client"])
    metrics = {"unit": job["key"], "experiment": cfg.train_experiment, "strategy": cfg.train_strategy, "seed": seed,
               "clients": job["clients"], **summary, "rounds": res.get("rounds"),
               "bytes_per_round": res.get("bytes_per_round"),
               "model": {**model_dict(cfg), **param_counts(build_model(model_dict(cfg)))}, "data": job["data"]}
    run.write_metrics(metrics)
    rows = [{"client": int(k) + 1, "clip accuracy": v["clip"]["accuracy"],
             "clip balanced accuracy": v["clip"]["balanced_accuracy"], "clip AUC": v["clip"]["auc"],
             "chunk accuracy": v["chunk"]["accuracy"], "test clips": v["n_test_clips"]}
            for k, v in summary["per_client"].items()]
    run.write_table("per_client", rows, title=f"{job['key']} {cfg.train_strategy}: held-out clips per client")
    return metrics
