"""Client partitions: dealing by hand, the paper's tables, grouped train/test, Dirichlet, the partition file."""

from __future__ import annotations

import numpy as np
import pytest

from detectlab.core.errors import InputError
from detectlab.violence import partition as P


def test_deal_by_hand():
    assert P.deal([1, 1, 1, 1], np.array([0.5, 0.5])).tolist() == [0, 0, 1, 1]
    assert P.deal([3, 1, 1, 1], np.array([0.5, 0.5])).tolist() == [0, 1, 1, 1]  # midpoints 0.25, .58, .75, .92
    assert P.deal([1] * 10, np.array([0.2, 0.3, 0.5])).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]


def test_paper_fractions():
    f = P.target_fractions("imbalanced3")
    assert np.allclose(f[1], np.array([641, 655, 504]) / 1800) and np.allclose(f[0], np.array([27, 1305, 468]) / 1800)
    assert np.allclose(P.target_fractions("balanced2"), 0.5)
    assert P.target_fractions("combined4").shape == (2, 4)
    d = P.target_fractions("dirichlet", clients=5, alpha=0.3, seed=1)
    assert d.shape == (2, 5) and np.allclose(d.sum(1), 1)
    with pytest.raises(InputError):
        P.n_clients_of("nope", 2)


def _meta(n_groups=40, clips=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], n_groups * clips // 2)
    groups = np.repeat([f"src{i:02d}" for i in range(n_groups)], clips)
    chunks = rng.integers(1, 5, len(labels))
    return labels, groups, chunks


@pytest.mark.parametrize("kind,k", [("balanced2", 2), ("imbalanced3", 3), ("combined4", 4), ("dirichlet", 5), ("iid", 3)])
def test_partition_is_grouped_and_complete(kind, k):
    labels, groups, chunks = _meta()
    tr, te = P.make_partition(labels, groups, chunks, kind, clients=k, alpha=0.5, test_fraction=0.25, seed=0)
    assert len(tr) == len(te) == k
    allc = np.concatenate(tr + te)
    assert sorted(allc.tolist()) == list(range(len(labels)))  # every clip exactly once
    assert not set(groups[np.concatenate(tr)]) & set(groups[np.concatenate(te)])  # no source in train and test
    assert 0.15 < len(np.concatenate(te)) / len(labels) < 0.35


def test_imbalanced_client_shares_follow_table2():
    labels, groups, chunks = _meta(n_groups=60)
    tr, _ = P.make_partition(labels, groups, chunks, "imbalanced3", seed=0)
    fight = np.array([chunks[t][labels[t] == 1].sum() for t in tr], float)
    non = np.array([chunks[t][labels[t] == 0].sum() for t in tr], float)
    assert np.allclose(fight / fight.sum(), np.array([641, 655, 504]) / 1800, atol=0.05)
    assert np.allclose(non / non.sum(), np.array([27, 1305, 468]) / 1800, atol=0.05)
    assert non[0] < 0.1 * fight[0]  # client 1 is almost all fight, as in Table II


def test_partition_file_round_trip(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    x = np.arange(6 * 16 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 16, 2, 2, 3)
    y = np.array([1, 1, 0, 0, 1, 0])
    np.save(cache / "x.npy", x)
    np.save(cache / "y.npy", y)
    clip_of_chunk = np.array([0, 0, 1, 2, 3, 3])
    pf = P.save_partition(tmp_path / "p.npz", str(cache), [np.array([0, 2]), np.array([1])], [np.array([3]), np.array([])],
                          clip_of_chunk)
    xtr, ytr, xte, yte = P.load_client(str(pf), 0)
    assert ytr.tolist() == [1, 1, 0] and np.array_equal(xtr, x[[0, 1, 3]]) and yte.tolist() == [1, 0]
    xtr1, ytr1, xte1, yte1 = P.load_client(str(pf), 1)
    assert ytr1.tolist() == [0] and len(yte1) == 0
    with pytest.raises(InputError, match="out of range"):
        P.load_client(str(pf), 5)


def test_prepare_combined4_pools_two_builtin_datasets(tmp_path):
    from detectlab.core.config import load_config
    from detectlab.core.runs import Run
    from detectlab.violence import experiment

    cfg = load_config(experiment.Config, "violence", "smoke",
                      ["data=builtin", "data_opts.size=16", "data_opts.syn_size=32", "data_opts.syn_sources_per_site=3"])
    with Run(tmp_path / "run", cfg, "violence") as run:
        prep = experiment.prepare(cfg, run, "combined4")
    job, clients = prep["job"], prep["clients"]
    assert job["n_clients"] == 4 and len(clients) == 4
    total = sum(c["train_fight"] + c["train_nonfight"] + c["test_fight"] + c["test_nonfight"] for c in clients)
    assert total == 2 * 2 * 3 * 4 * 2  # two datasets x 2 sites x 3 sources x 4 clips x 2 chunks
    assert clients[1]["train_fight"] + clients[1]["train_nonfight"] < clients[3]["train_fight"] + clients[3]["train_nonfight"]
    with np.load(job["partition_file"]) as z:
        assert int(z["n_clients"]) == 4
