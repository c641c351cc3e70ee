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
    """Fault caught: a client reading another client's clips, the wrong frames, or its validation clips mixed
    into training; an out-of-range partition-id accepted."""
    frames = np.arange(60, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    table = {"start": [0, 20, 40], "length": [20, 20, 20], "label": [1, 0, 1], "group": ["a", "b", "c"],
             "parent": [0, 1, 2]}
    pf = P.save_partition(tmp_path / "p.npz", str(tmp_path / "frames.npy"), table,
                          [np.array([0]), np.array([1])], [np.array([2]), np.array([], int)],
                          [np.array([1]), np.array([0, 2])], {"seed": 3})
    d0 = P.load_client(pf, 0)
    assert d0.train.label.tolist() == [1] and d0.val.label.tolist() == [1] and d0.test.label.tolist() == [0]
    assert int(d0.val.frames[d0.val.start[0]][0, 0, 0]) == 40 and d0.test.parent.tolist() == [1]
    d1 = P.load_client(pf, 1)
    assert len(d1.val) == 0 and d1.test.parent.tolist() == [0, 2] and int(d1.test.frames[20, 0, 0, 0]) == 40
    assert P.load_client(pf, 0) is d0  # kept in memory per process ...
    P.forget(pf)
    assert P.load_client(pf, 0) is not d0  # ... until forgotten
    with np.load(pf, allow_pickle=False) as z:
        assert int(z["meta_seed"]) == 3
    with pytest.raises(InputError, match="out of range"):
        P.load_client(pf, 5)
    with pytest.raises(InputError, match="out of range"):
        P.load_client(pf, -1)


def test_split_validation_by_source():
    """Fault caught: validation clips taken from the held-out side or sharing a source with training, a
    validation share far from the asked one, or a single-source client left without training clips."""
    groups = np.repeat([f"s{i}" for i in range(10)], 3)
    weights = np.ones(30)
    clips = np.arange(30)
    tr, va = P.split_validation(clips, groups, weights, 0.2, seed=0)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(30))
    assert not set(groups[tr]) & set(groups[va]) and len(va) == 6  # 2 whole sources of 10
    tr2, va2 = P.split_validation(clips, groups, weights, 0.2, seed=1)
    assert set(groups[va2]) != set(groups[va])  # the seed moves the validation sources
    sub = np.arange(6, 15)  # a client's own clips only
    trs, vas = P.split_validation(sub, groups, weights, 0.34, seed=0)
    assert set(np.concatenate([trs, vas]).tolist()) == set(sub.tolist()) and len(vas) == 3
    one = np.arange(3)
    tro, vao = P.split_validation(one, groups, weights, 0.5, seed=0)
    assert tro.tolist() == [0, 1, 2] and len(vao) == 0
    t0, v0 = P.split_validation(clips, groups, weights, 0.0, seed=0)
    assert len(v0) == 0 and len(t0) == 30
    big = np.ones(30)
    big[:3] = 100  # one heavy source: it is never put into validation past the asked share ...
    trb, vab = P.split_validation(clips, groups, big, 0.2, seed=0)
    assert big[vab].sum() <= 0.2 * big.sum() + 1e-9 or set(groups[vab]) == {groups[vab][0]}
    trn, van = P.split_validation(np.arange(6), groups, weights, 0.9, seed=0)
    assert len(trn) == 3 and len(van) == 3  # ... and at least one source always stays in training
