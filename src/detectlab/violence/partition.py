"""Client partitions: the paper's three experiments, Dirichlet non-IID and IID, split by source video.

Every partition is built the same way, so no source video (``videos.txt``) or clip spans train and test:

1. a grouped, stratified holdout of the clips (core.splits.stratified_holdout with the source video as the
   group) gives a global train set and a global test set;
2. in each of the two sets, per class, the clips sorted by source (so a site/camera stays together) are
   dealt out to the clients in contiguous runs whose chunk counts follow the target fractions of the
   experiment. A client's held-out data is therefore from its own slice of the test sources;
3. each client's training clips are split again by source video into training and *validation*
   (:func:`split_validation`), used for early stopping only.

The *chunk split* (the paper's apparent protocol, leaky) runs the same code on
:meth:`detectlab.violence.data.ClipSet.segments`, where every 16-frame chunk is its own item and group, so chunks
of one video sit on both sides; it is reported beside the source-video split, labelled leaky.

Target fractions (per class, over clients) follow the paper's client tables:
- ``balanced2`` (Table I): 900/900 and 900/900 fight/non-fight chunks -> 1/2, 1/2 of each class;
- ``imbalanced3`` (Table II): fight 641/655/504, non-fight 27/1305/468;
- ``combined4`` (Table III, two datasets pooled): fight 570/151/1019/695, non-fight 402/49/777/1207;
- ``dirichlet``: per class, fractions ~ Dirichlet(alpha) over `clients` clients; ``iid``: equal fractions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detectlab.core.errors import InputError
from detectlab.core.splits import stratified_holdout
from detectlab.violence.data import ClientData, ClipSet

#: per experiment: (fight counts, non-fight counts) per client, as in the paper's Tables I-III
PAPER_TABLES = {
    "balanced2": ([900, 900], [900, 900]),
    "imbalanced3": ([641, 655, 504], [27, 1305, 468]),
    "combined4": ([570, 151, 1019, 695], [402, 49, 777, 1207]),
}
#: the paper's Table IV (accuracy, loss) of its FedPer model per experiment
PAPER_RESULTS = {
    "balanced2": {"config": "Balanced, RWF dataset", "clients": 2, "accuracy": 0.9869, "loss": 0.0031},
    "imbalanced3": {"config": "Imbalanced, RWF dataset", "clients": 3, "accuracy": 0.9860, "loss": 0.0024},
    "combined4": {"config": "Imbalanced, RWF & Crowd Violence", "clients": 4, "accuracy": 0.993, "loss": 0.0018},
}
EXPERIMENTS = ("balanced2", "imbalanced3", "combined4", "dirichlet", "iid")


def n_clients_of(kind: str, clients: int) -> int:
    if kind in PAPER_TABLES:
        return len(PAPER_TABLES[kind][0])
    if kind in ("dirichlet", "iid"):
        if clients < 1:
            raise InputError(f"experiment '{kind}'", f"needs clients >= 1, got {clients}")
        return clients
    raise InputError(f"experiment '{kind}'", "unknown experiment", "one of " + ", ".join(EXPERIMENTS))


def target_fractions(kind: str, clients: int = 2, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """(2, K) array: row c = the fraction of class c (0 non-fight, 1 fight) each client gets."""
    k = n_clients_of(kind, clients)
    if kind in PAPER_TABLES:
        fi, no = (np.asarray(v, float) for v in PAPER_TABLES[kind])
        return np.stack([no / no.sum(), fi / fi.sum()])
    if kind == "iid":
        return np.full((2, k), 1.0 / k)
    rng = np.random.default_rng(seed + 7919)
    return rng.dirichlet(np.full(k, alpha), size=2)


def deal(weights: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Deal items (in order, with sizes `weights`) into len(fractions) contiguous runs by cumulative size.

    Item i goes to the client whose cumulative-fraction interval holds the midpoint of its cumulative
    weight, so runs follow the target fractions as closely as whole items allow.
    """
    w = np.asarray(weights, float)
    if w.size == 0:
        return np.zeros(0, int)
    mid = (np.cumsum(w) - w / 2) / w.sum()
    edges = np.cumsum(fractions)[:-1]
    return np.searchsorted(edges, mid, side="right")


def make_partition(clip_labels: np.ndarray, clip_groups: np.ndarray, clip_chunks: np.ndarray, kind: str,
                   clients: int = 2, alpha: float = 0.5, test_fraction: float = 0.25, seed: int = 0
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Clip indices per client: (train_clips[k], test_clips[k]) for k in range(K)."""
    labels = np.asarray(clip_labels)
    groups = np.asarray(clip_groups).astype(str)
    chunks = np.asarray(clip_chunks)
    frac = target_fractions(kind, clients, alpha, seed)
    k = frac.shape[1]
    tr, te = stratified_holdout(labels, test_fraction, seed, groups=groups)
    train: list[list[int]] = [[] for _ in range(k)]
    test: list[list[int]] = [[] for _ in range(k)]
    for pool, out in ((tr, train), (te, test)):
        for c in (0, 1):
            idx = pool[labels[pool] == c]
            idx = idx[np.lexsort((idx, groups[idx]))]  # by source, then clip order
            who = deal(chunks[idx], frac[c])
            for j, client in zip(idx, who):
                out[client].append(int(j))
    train_a = [np.asarray(sorted(t), int) for t in train]
    test_a = [np.asarray(sorted(t), int) for t in test]
    for i, t in enumerate(train_a):
        if len(t) == 0:
            raise InputError(f"experiment '{kind}'", f"client {i} gets no training clip from {len(labels)} clips",
                             "more clips, or fewer clients")
    return train_a, test_a


def split_validation(clips: np.ndarray, groups: np.ndarray, weights: np.ndarray, fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's training clips into (train, validation) by source video.

    Source groups in a seeded random order go to validation while the validation share of the chunk
    `weights` stays at most `fraction` (the first group always goes, unless it is the only one); a client with a
    single source video gets no validation clips. No source is on both sides.
    """
    clips = np.asarray(clips, int)
    if fraction <= 0 or len(clips) == 0:
        return clips, clips[:0]
    g = np.asarray(groups).astype(str)[clips]
    w = np.asarray(weights, float)[clips]
    uniq = np.unique(g)
    if len(uniq) < 2:
        return clips, clips[:0]
    order = np.random.default_rng(seed + 104729).permutation(len(uniq))
    total, taken, val_groups = w.sum(), 0.0, []
    for j in order[:-1]:  # at least one source stays in training
        wj = w[g == uniq[j]].sum()
        if val_groups and taken + wj > fraction * total:
            continue
        val_groups.append(uniq[j])
        taken += wj
    is_val = np.isin(g, val_groups)
    return clips[~is_val], clips[is_val]


def save_partition(path: Path, frames_file: str, table: dict[str, np.ndarray], train: list[np.ndarray],
                   val: list[np.ndarray], test: list[np.ndarray], meta: dict | None = None) -> Path:
    """Write the clip table (``start``, ``length``, ``label``, ``group``, ``parent`` into `frames_file`) and every
    client's train/val/test clip indices. Plain arrays only (read back without pickle)."""
    arrays = {"frames_file": np.asarray(str(frames_file)), "n_clients": np.asarray(len(train))}
    for k in ("start", "length", "label", "group", "parent"):
        arrays[f"clip_{k}"] = np.asarray(table[k]).astype(str) if k == "group" else np.asarray(table[k], np.int64)
    for i, (a, b, c) in enumerate(zip(train, val, test)):
        arrays[f"train_{i}"] = np.asarray(a, np.int64)
        arrays[f"val_{i}"] = np.asarray(b, np.int64)
        arrays[f"test_{i}"] = np.asarray(c, np.int64)
    for k, v in (meta or {}).items():
        arrays[f"meta_{k}"] = np.asarray(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


_CACHE: dict[tuple[str, int], ClientData] = {}


def load_client(partition_file: str | Path, pid: int) -> ClientData:
    """Client `pid`'s train/val/test clips (frames copied into memory once per process)."""
    key = (str(partition_file), int(pid))
    if key not in _CACHE:
        with np.load(partition_file, allow_pickle=False) as z:
            n = int(z["n_clients"])
            if not 0 <= pid < n:
                raise InputError(partition_file, f"partition-id {pid} out of range", f"0..{n - 1}")
            frames = np.load(str(z["frames_file"]), mmap_mode="r")
            allc = ClipSet(frames, z["clip_start"], z["clip_length"], z["clip_label"], z["clip_group"], [],
                           z["clip_parent"])
            parts = [allc.subset(z[f"{p}_{pid}"]).materialize() for p in ("train", "val", "test")]
        _CACHE[key] = ClientData(*parts)
    return _CACHE[key]


def forget(partition_file: str | Path) -> None:
    """Drop the in-memory copies of a partition's clients (a driver process that has finished with them)."""
    for key in [k for k in _CACHE if k[0] == str(partition_file)]:
        del _CACHE[key]


def client_from_folder(root: Path, opts: dict, seed: int = 0, cache_dir: Path | None = None
                       ) -> tuple[ClientData, dict]:
    """A SuperNode's own folder of clips -> (ClientData, info), read on the node only.

    Held out: the clips named in ``<root>/test.txt`` (one file name per line) when it exists, else a grouped,
    stratified holdout by source video (``opts["test_fraction"]``, `seed`); validation: a grouped split of the
    rest (``opts["val_fraction"]``). `info` has the split used, clip counts and a fingerprint of the files.
    """
    import hashlib

    from detectlab.violence.data import load_clips

    root = Path(root)
    cs = load_clips(root, int(opts.get("size", 64)), cache_dir=cache_dir, max_frames=int(opts.get("max_frames", 0)))
    names = [Path(c["path"]).name for c in cs.clips]
    split_file = root / "test.txt"
    if split_file.exists():
        held = {ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()}
        test = np.asarray([i for i, n in enumerate(names) if n in held], int)
        how = "test.txt"
    else:
        _, test = stratified_holdout(cs.label, float(opts.get("test_fraction", 0.25)), seed, groups=cs.group)
        how = "grouped holdout by source video"
    rest = np.setdiff1d(np.arange(len(cs)), test)
    tr, va = split_validation(rest, cs.group, cs.n_chunks(), float(opts.get("val_fraction", 0.2)), seed)
    h = hashlib.sha256((split_file.read_text() if split_file.exists() else "").encode())
    for c in sorted(cs.clips, key=lambda c: c["path"]):
        p = Path(c["path"])
        h.update(f"{p.relative_to(root) if p.is_relative_to(root) else p.name}|{p.stat().st_size}\n".encode())
    data = ClientData(*(cs.subset(i).materialize() for i in (tr, va, test)))
    return data, {"split": how, "clips": len(cs), "skipped": len(cs.skipped), "fingerprint": h.hexdigest()[:16]}
