"""Training, isolation of the held-out patients, stage-2 sub-sequences, the identity probe and the baseline."""

from pathlib import Path

import numpy as np
import pytest
import torch

from detectlab.core.config import from_dict
from detectlab.core.errors import InputError
from detectlab.core.metrics import f1_optimal_threshold, roc_auc
from detectlab.seizure.config import Config, PreprocessConfig, ProbeConfig, Stage1Config, Stage2Config
from detectlab.seizure.data import PatientWindows, WindowStore, apply_norm, fold_norm, write_store
from detectlab.seizure.train import (StoreWindows, fit, predict_windows, probe_identity, randperm, subsequences,
                                     train_stage1, train_stage2)

FAST = {"stage1": {"epochs": 2}, "stage2": {"epochs": 1, "seq_len": 40}, "preprocess": {"fs": 128.0}}


def _copy_store(store: WindowStore, folder: Path, poison: str | None = None, kind: str | None = None) -> WindowStore:
    """A copy of a store; the windows of patient `poison` replaced by NaN."""
    entries = []
    for i, e in enumerate(store.entries):
        X = np.asarray(store.X(i)).copy()
        if e["patient"] == poison:
            X[:] = np.nan
        entries.append(PatientWindows(e["patient"], X, store.y(i), np.arange(len(X)), store.fs,
                                      [tuple(s) for s in e["seizures"]], e["duration"], e["source"]))
    write_store(folder, entries, kind or store.kind, store.dataset, PreprocessConfig(fs=store.fs))
    return WindowStore(folder)


def test_held_out_patient_never_reaches_training(tiny_store, tmp_path):
    """Catches leakage of the test patient's windows or statistics into training (stage 1, the fold norm,
    the probe, stage 2, the threshold): its windows are NaN here, so any use would make the model NaN."""
    cfg = from_dict(Config, FAST)
    for kind in ("recordings", "windows"):
        st = _copy_store(tiny_store, tmp_path / kind, poison="P04", kind=kind)
        cfg.stage2.enabled = kind == "recordings"
        res = fit(st, cfg, 0, True, ["P01", "P02", "P03"], torch.device("cpu"), stage2=cfg.stage2.enabled)
        models = [res["cnn"]] + ([res["cnn_bilstm"]] if "cnn_bilstm" in res else [])
        for m in models:
            assert all(torch.isfinite(p).all() for p in m.parameters())
        assert np.isfinite(res["tau_cnn"]) and np.isfinite(res["probe"]["accuracy"])
        assert all(np.isfinite(h) for h in res["history"]["label_loss"])
        if kind == "windows":
            assert np.isfinite(res["norm"][0]).all() and np.isfinite(res["norm"][1]).all()


def test_threshold_comes_from_training_predictions_only(tiny_store, monkeypatch):
    """Catches tau chosen on the held-out patient (or on all patients): the thresholds are computed from
    exactly the training patients' windows, and equal the F1-optimal point of those predictions."""
    from detectlab.seizure import train

    seen = []
    real = train.threshold_from_training
    monkeypatch.setattr(train, "threshold_from_training", lambda y, p: seen.append((np.asarray(y), np.asarray(p))) or real(y, p))
    cfg = from_dict(Config, FAST)
    res = fit(tiny_store, cfg, 0, False, ["P01", "P03", "P04"], torch.device("cpu"))
    ytr = tiny_store.labels(tiny_store.entries_of(["P01", "P03", "P04"]))
    assert len(seen) == 2  # stage 1 and stage 2
    for y, _ in seen:
        np.testing.assert_array_equal(y, ytr)
    assert res["tau_cnn"] == f1_optimal_threshold(*seen[0]) and res["tau_cnn_bilstm"] == f1_optimal_threshold(*seen[1])
    p1 = np.concatenate([predict_windows(res["cnn"], tiny_store.X(i)) for i in tiny_store.entries_of(["P01", "P03", "P04"])])
    np.testing.assert_allclose(seen[0][1], p1, atol=1e-5)


def test_fold_norm_of_windowed_sets_ignores_the_test_patients_labels(tmp_path):
    """Catches standardisation pooled over a patient's own windows (half of them ictal): a test patient's
    pre-onset z-scores must not change when its ictal windows change."""
    rng = np.random.default_rng(0)
    pats = []
    for k, name in enumerate(["chb01", "chb02", "chb03"]):
        X = rng.normal(0, 30e-6 * (k + 1), (20, 18, 64)).astype(np.float32)
        y = np.r_[np.zeros(10), np.ones(10)].astype(np.int8)
        pats.append(PatientWindows(name, X, y, np.arange(20), 64.0, [], 20.0))
    st = write_store(tmp_path / "a", pats, "windows", "chbmit_windows", PreprocessConfig(fs=64.0))
    pats[2].X[10:] *= 10  # louder seizures in the test patient
    st2 = write_store(tmp_path / "b", pats, "windows", "chbmit_windows", PreprocessConfig(fs=64.0))
    z = []
    for folder in (st, st2):
        s = WindowStore(folder)
        norm = fold_norm(s, s.entries_of(["chb01", "chb02"]))
        z.append(apply_norm(np.asarray(s.X(2))[:10], norm))
    np.testing.assert_array_equal(z[0], z[1])


def test_stage2_refuses_windowed_data(tiny_store, tmp_path):
    """Catches the CNN-BiLSTM trained on isolated windows whose label follows their position (CHB-MIT:
    pre-onset piece then ictal piece in every record), where it would learn the file order."""
    st = _copy_store(tiny_store, tmp_path / "w", kind="windows")
    with pytest.raises(InputError, match="needs continuous recordings"):
        train_stage2(st, [0, 1], None, Stage2Config(epochs=1), 0)


def test_subsequences_cover_each_recording_once_without_crossing():
    """Catches stage-2 sequences running across a file gap or windows dropped or repeated."""
    rng = np.random.default_rng(0)
    lengths = [7, 130, 61, 300]
    cuts = set()
    for _ in range(5):
        pieces = subsequences(lengths, 50, rng)
        for e, n in enumerate(lengths):
            own = sorted((a, b) for ee, a, b in pieces if ee == e)
            assert own[0][0] == 0 and own[-1][1] == n
            assert all(b1 == a2 for (_, b1), (a2, _) in zip(own, own[1:]))  # contiguous, no overlap
            assert all(0 < b - a <= 50 for a, b in own)
        cuts.add(tuple(a for e, a, _ in pieces if e == 3))
    assert len(cuts) > 1  # the cut points move between epochs
    assert subsequences(lengths, 0, rng) == [(0, 0, 7), (1, 0, 130), (2, 0, 61), (3, 0, 300)]


def test_stage2_holds_only_one_batch_of_windows(tiny_store, monkeypatch):
    """Catches stage 2 reading a whole patient (or everything) per step: every read is one sub-sequence."""
    reads = []

    class Spy:
        def __init__(self, arr):
            self.arr = arr

        def __getitem__(self, sl):
            out = self.arr[sl]
            reads.append(len(out))
            return out

        def __len__(self):
            return len(self.arr)

    real_X = tiny_store.X
    monkeypatch.setattr(tiny_store, "X", lambda i: Spy(real_X(i)))
    ids = tiny_store.entries_of(["P01", "P02"])
    _, hist = train_stage2(tiny_store, ids, None, Stage2Config(epochs=2, seq_len=30, batch_size=2), 0)
    assert reads and max(reads) <= 30
    assert sum(reads) == 2 * tiny_store.n(ids)  # each window once per epoch
    assert hist["steps"] == [len(reads) // 2 // 2 + (len(reads) // 2) % 2] * 2 or sum(hist["steps"]) * 2 >= len(reads)


def test_store_windows_take_and_in_memory_paths_agree(tiny_store):
    """Catches the per-batch (memory-mapped) stage-1 path reading other windows than the in-memory path."""
    src = StoreWindows(tiny_store, tiny_store.entries_of(["P02", "P03"]))
    allw = src.all()
    idx = np.array([5, len(allw) - 1, 0, 130, 77])
    np.testing.assert_array_equal(src.take(idx), allw[idx])
    y = tiny_store.labels(src.ids)
    d = np.concatenate([np.full(len(tiny_store.y(i)), k) for k, i in enumerate(src.ids)])
    a, ha = train_stage1(src, y, d, 2, Stage1Config(epochs=1), True, 3)
    b, hb = train_stage1(src, y, d, 2, Stage1Config(epochs=1, in_memory_mb=0), True, 3)
    assert ha["label_loss"] == pytest.approx(hb["label_loss"], rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_generator_seam_refuses_a_generator_on_another_device():
    """Catches a CPU torch.Generator drawing the permutation for data on another device (a crash on the
    first GPU); the meta device stands in for CUDA."""
    with pytest.raises(RuntimeError, match="generator on cpu drawing for data on meta"):
        randperm(5, torch.Generator(), torch.device("meta"))
    g = torch.Generator().manual_seed(0)
    assert sorted(randperm(6, g, torch.device("cpu")).tolist()) == list(range(6))


def test_training_dry_run_on_the_meta_device(tiny_store, monkeypatch):
    """Catches a tensor or generator created on the CPU while the data live elsewhere, in stage 1 and
    stage 2 (a dry run on `meta`: any CPU tensor meeting a meta tensor raises)."""
    from detectlab.seizure import train

    ids = tiny_store.entries_of(["P01", "P02"])
    X = tiny_store.gather(ids)
    y = tiny_store.labels(ids)
    d = np.r_[np.zeros(len(tiny_store.y(ids[0]))), np.ones(len(tiny_store.y(ids[1])))]
    m, h = train_stage1(X[:64], y[:64], d[:64], 2, Stage1Config(epochs=1), True, 0, "meta")
    assert next(m.parameters()).device.type == "meta" and len(h["label_loss"]) == 1
    m2, _ = train_stage2(tiny_store, ids, None, Stage2Config(epochs=1, seq_len=20), 0, "meta")
    assert next(m2.parameters()).device.type == "meta"
    monkeypatch.setattr(train, "generator", lambda device, seed: torch.Generator())  # the bug, re-introduced
    with pytest.raises(RuntimeError, match="generator on cpu"):
        train_stage1(X[:64], y[:64], d[:64], 2, Stage1Config(epochs=1), True, 0, "meta")


def test_identity_probe_detects_identity_and_chance():
    """Catches a probe that cannot see patient identity (or sees it in random features): identity coded
    in the features gives accuracy ~1, features without identity give the chance level."""
    rng = np.random.default_rng(0)
    n, k = 80, 4
    dom = np.repeat(np.arange(k), n)
    lab = np.tile(np.r_[np.zeros(n // 2), np.ones(n // 2)], k).astype(int)
    groups = [np.arange(i * n, (i + 1) * n) for i in range(k)]
    coded = rng.normal(0, 1, (n * k, 40))
    coded[:, :10] += 3 * rng.normal(0, 1, (k, 10))[dom]  # each patient its own mean in 10 features
    r = probe_identity(coded, dom, lab, groups, ProbeConfig(block=5))
    assert r["accuracy"] > 0.95 and r["within_class_balanced"] > 0.95
    assert r["chance_accuracy"] == pytest.approx(0.25) and r["chance_balanced"] == pytest.approx(0.25)
    r0 = probe_identity(rng.normal(0, 1, (n * k, 40)), dom, lab, groups, ProbeConfig(block=5))
    assert r0["balanced_accuracy"] < 0.4 and r0["patients"] == 4


def test_probe_halves_hold_both_classes_of_every_patient():
    """Catches a probe split that puts one class in the training half and the other in the test half
    (CHB-MIT: 10 pre-onset then 10 ictal windows per record): each half holds half of every patient's
    windows of every class, in blocks of consecutive windows."""
    from detectlab.seizure.train import probe_halves

    lab = np.tile(np.repeat([0, 1, 0, 1], 10), 2)
    groups = [np.arange(40), np.arange(40, 80)]
    half = probe_halves(lab, groups, 5)
    for g in groups:
        for c in (0, 1):
            assert half[g][lab[g] == c].sum() == 10
    np.testing.assert_array_equal(half[:20], np.repeat([0, 1, 0, 1], 5).astype(bool))


def test_logrms_baseline_learns_amplitude_and_round_trips():
    """Catches a baseline that does not rank louder windows higher, a threshold not from its training
    predictions, or a saved baseline that scores differently after loading."""
    from detectlab.seizure.baseline import LogRMSBaseline, log_rms

    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (200, 18, 64)).astype(np.float32)
    y = np.r_[np.zeros(150), np.ones(50)].astype(int)
    X[y == 1] *= 3
    F = log_rms(X)
    np.testing.assert_allclose(F[:, 0], np.log(np.sqrt((X.astype(np.float64) ** 2).mean(axis=(1, 2)))), atol=1e-6)
    b = LogRMSBaseline().fit(F, y)
    s = b.scores(F)
    assert roc_auc(y, s) == 1.0 and b.threshold == f1_optimal_threshold(y, s)
    c = LogRMSBaseline.from_dict(b.to_dict())
    np.testing.assert_allclose(c.scores(F), s)
    one = LogRMSBaseline().fit(F[:150], y[:150])  # a training set without seizures: constant non-seizure
    assert (one.scores(F) < 0.01).all()


def test_tiny_end_to_end_learns_on_held_out_patient(tiny_store):
    """Catches a pipeline that does not learn: stage 1 (AT) and stage 2 trained on three synthetic patients
    find the fourth patient's seizure (held-out AUC > 0.85)."""
    cfg = from_dict(Config, {"stage1": {"epochs": 8}, "stage2": {"epochs": 6, "lr": 0.003, "seq_len": 50},
                             "preprocess": {"fs": 128.0}})
    res = fit(tiny_store, cfg, 0, True, ["P01", "P02", "P03"], torch.device("cpu"))
    h = res["history"]["label_loss"]
    assert h[-1] < 0.7 * h[0]
    assert res["history"]["lambda"][-1] == pytest.approx(2 / (1 + np.exp(-10)) - 1, rel=1e-3)
    (i,) = tiny_store.entries_of(["P04"])
    y = tiny_store.y(i)
    assert roc_auc(y, predict_windows(res["cnn"], tiny_store.X(i))) > 0.85
    p2 = predict_windows(res["cnn_bilstm"], tiny_store.X(i), seq_len=50)
    assert p2.shape == y.shape and roc_auc(y, p2) > 0.85
