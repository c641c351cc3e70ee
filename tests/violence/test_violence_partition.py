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


def test_client_counts_and_fractions_by_hand():
    """Fault caught: the paper's experiments given another number of clients, a Dirichlet/IID split that ignores
    `clients` or `seed`, fractions that do not sum to one, or a zero-client experiment accepted."""
    assert [P.n_clients_of(k, 99) for k in ("balanced2", "imbalanced3", "combined4")] == [2, 3, 4]
    assert P.n_clients_of("iid", 7) == 7 and P.n_clients_of("dirichlet", 1) == 1
    for bad in (("iid", 0), ("dirichlet", -1)):
        with pytest.raises(InputError, match="clients >= 1"):
            P.n_clients_of(*bad)
    assert np.array_equal(P.target_fractions("iid", clients=4), np.full((2, 4), 0.25))
    a = P.target_fractions("dirichlet", clients=6, alpha=0.5, seed=3)
    assert np.array_equal(a, P.target_fractions("dirichlet", clients=6, alpha=0.5, seed=3))
    assert not np.allclose(a, P.target_fractions("dirichlet", clients=6, alpha=0.5, seed=4))
    assert np.allclose(a.sum(1), 1) and not np.allclose(a[0], a[1])  # each class has its own draw
    lo = P.target_fractions("dirichlet", clients=6, alpha=0.05, seed=3)
    assert lo.max(1).mean() > a.max(1).mean()  # smaller alpha: more skewed clients
    assert np.allclose(P.target_fractions("balanced2", clients=9), 0.5)


def test_deal_edges():
    """Fault caught: dealing that drops or duplicates items, mishandles an empty list, or gives everything to one
    client when the fractions say otherwise."""
    assert P.deal([], np.array([0.5, 0.5])).tolist() == []
    assert P.deal([2, 2, 2], np.array([1.0])).tolist() == [0, 0, 0]
    assert P.deal([1, 1, 1, 1], np.array([0.25, 0.75])).tolist() == [0, 1, 1, 1]
    assert P.deal([1, 1, 1, 1], np.array([0.0, 0.5, 0.5])).tolist() == [1, 1, 2, 2]
    w = np.random.default_rng(0).integers(1, 9, 50)
    who = P.deal(w, np.array([0.2, 0.3, 0.5]))
    assert (np.diff(who) >= 0).all()  # contiguous runs in order
    share = np.array([w[who == k].sum() for k in range(3)]) / w.sum()
    assert np.allclose(share, [0.2, 0.3, 0.5], atol=0.1)


def test_a_client_without_training_clips_is_an_input_error():
    """Fault caught: a client silently left without data (it would train on nothing and report nonsense)."""
    labels, groups, chunks = _meta(n_groups=4, clips=2)
    with pytest.raises(InputError, match="gets no training clip"):
        P.make_partition(labels, groups, chunks, "iid", clients=20, seed=0)


def test_partition_depends_on_the_seed_and_keeps_test_fraction():
    """Fault caught: a seed that does not move the held-out source videos (3 seeds would be 3 copies), or a test
    share far from `test_fraction`."""
    labels, groups, chunks = _meta(n_groups=40)
    tests = []
    for seed in (0, 1, 2):
        tr, te = P.make_partition(labels, groups, chunks, "balanced2", seed=seed, test_fraction=0.25)
        tests.append(frozenset(groups[np.concatenate(te)]))
        assert 0.2 < len(np.concatenate(te)) / len(labels) < 0.3
    assert len(set(tests)) == 3
    tr, te = P.make_partition(labels, groups, chunks, "balanced2", seed=0, test_fraction=0.5)
    assert 0.4 < len(np.concatenate(te)) / len(labels) < 0.6


def test_saved_partition_arrays_are_plain(tmp_path):
    """Fault caught: a partition file that needs pickle to read (object arrays), or that loses the meta data."""
    pf = P.save_partition(tmp_path / "q.npz", "f.npy", {"start": [0], "length": [16], "label": [1], "group": ["a"],
                                                         "parent": [0]}, [np.array([0])], [np.array([], int)],
                          [np.array([], int)], {"experiment": "iid", "seed": 2})
    with np.load(pf, allow_pickle=False) as z:
        assert z["clip_group"].dtype.kind == "U" and str(z["meta_experiment"]) == "iid" and int(z["n_clients"]) == 1
        assert z["train_0"].tolist() == [0] and z["val_0"].dtype == np.int64 and str(z["frames_file"]) == "f.npy"
    assert not (tmp_path / "q.tmp.npz").exists()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site's own folder: 4 source videos x (2 fight + 2 no-fight) clips of 20 frames, videos.txt naming them."""
    from detectlab.violence.synthetic import _write_mp4

    root = tmp_path_factory.mktemp("site") / "clips"
    lines = []
    for s in range(4):
        lines.append(f"https://example.org/v{s}")
        for j in range(2):
            for lab, pre, folder in ((1, "fi", "fight"), (0, "nofi", "noFight")):
                name = f"{pre}{s}{j}"
                frames = np.full((20, 16, 16, 3), 40 * s + 100 * lab + j, np.uint8)
                _write_mp4(root / folder / f"{name}.mp4", frames)
                lines.append(f"{name}: 0.00 - 0.01")
    (root / "videos.txt").write_text("\n".join(lines) + "\n")
    return root


def test_node_folder_split_by_test_txt_and_sources(tmp_path, site):
    """Fault caught (data ownership): a SuperNode's own folder split so that a held-out clip (test.txt) is trained
    on, a source video in both its training and validation clips, or a fingerprint that does not change with
    the split."""
    import shutil

    from detectlab.violence.partition import client_from_folder

    root = tmp_path / "site"
    shutil.copytree(site, root)
    held = ["fi00.mp4", "fi01.mp4", "nofi00.mp4", "nofi01.mp4"]
    (root / "test.txt").write_text("\n".join(held) + "\n\n")
    data, info = client_from_folder(root, {"size": 16, "val_fraction": 0.34}, seed=0, cache_dir=tmp_path / "c")
    names = lambda c: {x["path"].split("/")[-1] for x in c.clips}  # noqa: E731
    assert names(data.test) == set(held) and info["split"] == "test.txt" and info["clips"] == 16
    assert not names(data.train) & set(held) and not names(data.val) & set(held)
    assert len(data.val) == 4 and len(data.train) == 8 and not set(data.train.group) & set(data.val.group)
    assert int(data.test.frames[data.test.start[0]][0, 0, 0]) in range(95, 106)  # its own decoded frames
    assert info["skipped"] == 0 and len(info["fingerprint"]) == 16
    (root / "test.txt").unlink()
    d2, i2 = client_from_folder(root, {"size": 16, "test_fraction": 0.25, "val_fraction": 0.0}, seed=1,
                                cache_dir=tmp_path / "c")
    assert i2["split"].startswith("grouped") and len(d2.test) == 4 and len(d2.val) == 0 and len(d2.train) == 12
    assert len(set(d2.test.group)) == 1 and not set(d2.test.group) & set(d2.train.group)
    assert i2["fingerprint"] != info["fingerprint"]


# ------------------------------------------------------------------ faults found by mutation testing


def test_split_validation_skips_a_source_too_big_and_tries_the_next():
    """Fault caught: the greedy fill stopping at the first source that would overshoot the validation share
    (`break` for `continue`), which leaves validation smaller than it could be. Seed 0 visits the sources
    in the order s2, s3, s1 (s0 always stays): s2 (1 chunk) goes, s3 (10 of 22 chunks) would pass the 20 %
    share and is skipped, s1 (1 chunk) still fits and goes."""
    assert np.random.default_rng(0 + 104729).permutation(4).tolist() == [2, 3, 1, 0]
    groups = np.array(["s0", "s1", "s2", "s3"])
    weights = np.array([10.0, 1.0, 1.0, 10.0])
    tr, va = P.split_validation(np.arange(4), groups, weights, 0.2, seed=0)
    assert va.tolist() == [1, 2] and tr.tolist() == [0, 3]


def test_deal_midpoints_on_and_near_an_edge():
    """Fault caught: an item whose weight midpoint lies exactly on a client edge given to the earlier client
    (the intervals are [edge_k, edge_k+1), searchsorted side='right'), the midpoint taken at another point
    of the item than its middle (w/3), and a single item dropped."""
    assert P.deal([1, 1], np.array([0.25, 0.75])).tolist() == [1, 1]  # midpoints 0.25 (on the edge), 0.75
    assert P.deal([1, 1, 1, 1], np.array([0.375, 0.625])).tolist() == [0, 1, 1, 1]  # 0.375 on the edge
    assert P.deal([1, 1], np.array([0.3, 0.7])).tolist() == [0, 1]  # midpoint 0.25 < 0.3 (w/3 would give 0.33)
    assert P.deal([5], np.array([0.6, 0.4])).tolist() == [0]
    assert P.deal([5], np.array([0.4, 0.6])).tolist() == [1]


def test_bad_settings_name_the_setting_and_what_is_allowed():
    """Fault caught: an error line that loses the setting it is about, what is wrong, or what is allowed (the
    house rule for bad input: one line naming all three)."""
    with pytest.raises(InputError) as e:
        P.n_clients_of("nope", 2)
    assert str(e.value) == ("experiment 'nope': unknown experiment "
                            "(expected one of balanced2, imbalanced3, combined4, dirichlet, iid)")
    with pytest.raises(InputError) as e:
        P.n_clients_of("iid", 0)
    assert str(e.value) == "experiment 'iid': needs clients >= 1, got 0"
    labels, groups, chunks = _meta(n_groups=4, clips=2)
    with pytest.raises(InputError) as e:
        P.make_partition(labels, groups, chunks, "iid", clients=20, seed=0)
    assert str(e.value).startswith("experiment 'iid': client ") and str(e.value).endswith(
        " gets no training clip from 8 clips (expected more clips, or fewer clients)")


def test_partition_file_edges(tmp_path):
    """Fault caught: partition-id == n_clients accepted (a KeyError deep in numpy instead of one line naming
    the range), the out-of-range line without the file or the valid range, a clip's parent index not read
    back from the file, and a partition file in a folder that does not exist yet not written."""
    frames = np.arange(60, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    table = {"start": [0, 20, 40], "length": [20, 20, 20], "label": [1, 0, 1], "group": ["a", "b", "c"],
             "parent": [7, 5, 9]}
    pf = P.save_partition(tmp_path / "new" / "deeper" / "p.npz", str(tmp_path / "frames.npy"), table,
                          [np.array([0, 2]), np.array([1])], [np.array([], int)] * 2, [np.array([1]), np.array([0])])
    assert pf.exists()
    d0 = P.load_client(pf, 0)
    assert d0.train.parent.tolist() == [7, 9] and d0.test.parent.tolist() == [5]
    with pytest.raises(InputError) as e:
        P.load_client(pf, 2)
    assert str(e.value) == f"{pf}: partition-id 2 out of range (expected 0..1)"
    P.forget(pf)


def test_partition_and_validation_are_reproducible_from_the_seed():
    """Fault caught: a seed not passed on (the holdout, the Dirichlet draw or the validation order drawn
    from fresh entropy), so that a rerun of the same seed gives another partition; and the Dirichlet client
    shares not those of target_fractions for that seed."""
    labels, groups, chunks = _meta(n_groups=60)
    a = P.make_partition(labels, groups, chunks, "dirichlet", clients=3, alpha=1.0, seed=5)
    b = P.make_partition(labels, groups, chunks, "dirichlet", clients=3, alpha=1.0, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))
    want = P.target_fractions("dirichlet", 3, 1.0, 5)
    assert not np.allclose(want, P.target_fractions("dirichlet", 3, 1.0, 0), atol=0.1)
    for c in (0, 1):
        got = np.array([chunks[t][labels[t] == c].sum() for t in a[0]], float)
        assert np.allclose(got / got.sum(), want[c], atol=0.05)
    g = np.repeat([f"s{i}" for i in range(12)], 2)
    v1 = P.split_validation(np.arange(24), g, np.ones(24), 0.3, seed=3)[1]
    v2 = P.split_validation(np.arange(24), g, np.ones(24), 0.3, seed=3)[1]
    assert v1.tolist() == v2.tolist()


class _Bomb:
    """Pickled into a partition file: unpickling it would call _explode (code run from a data file)."""

    def __reduce__(self):
        return (_explode, ())


_EXPLODED = []


def _explode():
    _EXPLODED.append(True)
    return 2


def test_partition_file_is_read_without_unpickling(tmp_path):
    """Fault caught: load_client reading the partition file with allow_pickle=True, which runs whatever a
    pickled object array in it says (the house rule: never unpickle). A file whose n_clients is a pickled
    object must be refused before anything in it is run."""
    pf = tmp_path / "evil.npz"
    bomb = np.empty((), dtype=object)
    bomb[()] = _Bomb()
    np.savez(pf, n_clients=bomb, frames_file=np.asarray("f.npy"))
    with pytest.raises(ValueError, match="allow_pickle"):
        P.load_client(pf, 0)
    assert _EXPLODED == []
