"""task.py: training windows, augmentation, clip-level scores, metrics by hand, Adam kept per client,
best-validation model selection, per-message seeds, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectlab.violence import task
from detectlab.violence.data import ClientData, ClipSet


def _clips(lengths, labels=None, size=4) -> ClipSet:
    """Clips whose frame f holds the value f (every pixel, every channel) so windows can be read back."""
    lengths = np.asarray(lengths)
    n = int(lengths.sum())
    frames = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    labels = np.asarray(labels if labels is not None else [i % 2 for i in range(len(lengths))])
    return ClipSet(frames, start, lengths, labels, [f"g{i}" for i in range(len(lengths))], [{}] * len(lengths))


def test_epoch_windows_stride_and_jitter_by_hand():
    """Fault caught: training windows that do not overlap with stride 8, that leave a clip, or jitter that is
    ignored / not clipped at the clip's ends."""
    c = _clips([40, 20])
    cl, st = task.epoch_windows(c, task.Augment(stride=8), np.random.default_rng(0))
    got = sorted(zip(cl.tolist(), st.tolist()))
    assert got == [(0, 0), (0, 8), (0, 16), (0, 24), (1, 0)]
    cl2, st2 = task.epoch_windows(c, task.Augment(stride=8, jitter=3), np.random.default_rng(1))
    assert sorted(cl2.tolist()) == sorted(cl.tolist())
    lim = np.where(cl2 == 0, 40 - 16, 20 - 16)
    assert (st2 >= 0).all() and (st2 <= lim).all()
    assert any(s % 8 for s in st2[cl2 == 0])  # some windows moved off the stride grid
    many = [task.epoch_windows(c, task.Augment(stride=16, jitter=3), np.random.default_rng(i))[1] for i in range(20)]
    assert {int(s) for m in many for s in m} - {0, 16} and max(int(s) for m in many for s in m) <= 24


def test_make_batch_reads_the_right_frames_crops_and_flips():
    """Fault caught: windows read from the wrong clip/offset, a crop that is not of the asked size, flips that
    mirror the time axis instead of the width, or an evaluation view that is not the central crop."""
    c = _clips([20, 30], labels=[0, 1], size=8)
    c.frames[:, :, 0, 0] = 200  # mark the left column
    x, y = task.make_batch(c, np.array([1]), np.array([5]), task.Augment(), None, torch.device("cpu"))
    assert x.shape == (1, 3, 16, 8, 8) and y.tolist() == [1]
    assert torch.allclose(x[0, 1, :, 4, 4] * 255, torch.arange(25, 41, dtype=torch.float32))  # clip 1 frame 5 = 25
    aug = task.Augment(crop=6, flip=True)
    xc, _ = task.make_batch(c, np.zeros(64, int), np.zeros(64, int), aug, np.random.default_rng(0), torch.device("cpu"))
    assert xc.shape[-2:] == (6, 6)
    left, right = (xc[:, 0, :, :, 0] * 255 > 150).any(2).any(1), (xc[:, 0, :, :, -1] * 255 > 150).any(2).any(1)
    assert left.any() and right.any()  # the marked column ends up on both sides: mirrored in width
    assert torch.equal(xc[:, 1, :, 3, 3] * 255, torch.arange(16, dtype=torch.float32).expand(64, 16))  # time kept
    xe, _ = task.make_batch(c, np.array([0]), np.array([0]), aug, None, torch.device("cpu"))
    assert xe.shape[-2:] == (6, 6) and float(xe[0, 0, 0, 0, 0]) * 255 < 150  # central crop drops column 0


def test_clip_scores_are_the_mean_of_their_chunks():
    """Fault caught: a clip score taken from its first/last chunk or the max, or labels attached to the wrong clip."""
    ids, s, lab = task.clip_scores([0.2, 0.4, 0.9, 0.0, 1.0], [1, 1, 0, 0, 0], [7, 7, 3, 3, 3])
    assert ids.tolist() == [3, 7] and np.allclose(s, [1.9 / 3, 0.3]) and lab.tolist() == [0, 1]


def test_metrics_by_hand():
    """Fault caught: balanced accuracy computed as accuracy, AUC from thresholded predictions, or a
    single-class client given a balanced accuracy of 0.5 instead of its class recall."""
    m = task.binary_scores([1, 1, 1, 0], [0.9, 0.6, 0.2, 0.7])
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["auc"] == pytest.approx(1 / 3) and m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == 0
    one = task.binary_scores([1, 1, 1], [0.9, 0.2, 0.6])
    assert one["balanced_accuracy"] == pytest.approx(2 / 3) and np.isnan(one["auc"])
    sm = task.score_metrics([0.9, 0.8, 0.1, 0.3, 0.6], [1, 1, 0, 0, 0], [0, 0, 1, 2, 2])
    assert sm["clip"]["n"] == 3 and sm["clip"]["accuracy"] == 1.0 and sm["chunk"]["accuracy"] == 0.8


def _tiny_model(dropout=0.0):
    from detectlab.violence.model import build_model

    torch.manual_seed(0)
    return build_model({"width": 2, "hidden": [8, 4], "dropout": dropout, "norm": "group", "input_norm": "chunk"})


def _data(seed=0):
    rng = np.random.default_rng(seed)
    lengths = [20, 24, 18, 20]
    frames = rng.integers(0, 255, (sum(lengths), 16, 16, 3), dtype=np.uint8)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cs = ClipSet(frames, start, lengths, [1, 0, 1, 0], ["a", "b", "c", "d"], [{}] * 4)
    return ClientData(cs.subset([0, 1]), cs.subset([2]), cs.subset([3]))


SPEC = {"strategy": "fedavg", "lr": 1e-2, "epochs": 1, "batch": 2, "keep_optimizer": True, "eval_stride": 16,
        "aug": {"stride": 4, "jitter": 0, "crop": 0, "flip": False}}


def test_adam_moments_are_kept_across_rounds():
    """Fault caught: Adam recreated every round (its moments reset), the issue's 'Adam reset every round':
    two rounds with the kept state must equal one uninterrupted Adam run over the same batches."""
    data = _data()
    m1 = _tiny_model()
    state = {}
    for r in range(2):
        _, state = task.train_round(m1, data, SPEC, state, np.random.default_rng(r))
        m1.load_state_dict({k: v.clone() for k, v in m1.state_dict().items()})  # what a new round receives
    assert any(k.startswith("opt/") for k in state) and int(state["opt/0/step"]) == 2 * 3  # 5 windows, batch 2
    m2 = _tiny_model()
    opt = task.make_adam(list(m2.parameters()), SPEC)
    for r in range(2):
        task.fit_epoch(m2, data.train, opt, 2, task.Augment.from_spec(SPEC), np.random.default_rng(r))
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    m3 = _tiny_model()
    st3 = {}
    for r in range(2):
        _, st3 = task.train_round(m3, data, {**SPEC, "keep_optimizer": False}, st3, np.random.default_rng(r))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(m3.parameters(), m2.parameters()))


def test_final_scores_come_from_the_best_validation_round():
    """Fault caught: reporting the last round's model although an earlier round had the lower validation loss
    (or choosing on the test clips)."""
    data = _data()
    m = _tiny_model()
    spec = dict(SPEC, strategy="fedper", select="best_val")
    state = {}
    _, state = task.evaluate_round(m, data, spec, state, 1, False, np.random.default_rng(0))
    best = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():  # a much worse model in round 2: validation loss goes up
        m.head.fc3.bias.copy_(torch.tensor([50.0, -50.0]) * (1 if data.val.label[0] == 1 else -1))
    out, state = task.evaluate_round(m, data, spec, state, 2, True, np.random.default_rng(0))
    assert out["selected-round"] == 1 and int(state["best_round"]) == 1
    assert all(torch.equal(m.state_dict()[k], v) for k, v in best.items())  # the model left for export
    assert len(out["test-scores"]) == len(out["test-labels"]) == len(out["test-clips"]) == 1
    out2, _ = task.evaluate_round(m, data, dict(spec, select="last"), {}, 3, True, np.random.default_rng(0))
    assert out2["selected-round"] == 3


def test_threshold_aware_choice_prefers_the_model_that_separates_the_clips(monkeypatch):
    """Fault caught: with select=best_val_bacc, keeping the round whose validation AUC is higher although it
    calls every validation clip one class (balanced accuracy 0.5 at the 0.5 threshold the reported predictions
    use) over a later round that classifies them; ties in balanced accuracy must fall back to AUC, then loss.
    The default rule stays AUC-first (the committed real runs were made with it)."""
    one_class = {"loss": 0.70, "clip": {"balanced_accuracy": 0.5}, "chunk": {"auc": 0.76}}
    separates = {"loss": 1.10, "clip": {"balanced_accuracy": 0.62}, "chunk": {"auc": 0.66}}
    assert task.val_score(separates, "best_val_bacc") > task.val_score(one_class, "best_val_bacc")
    assert task.val_score(one_class) > task.val_score(separates)  # best_val: AUC first, as before
    tie = dict(separates, chunk={"auc": 0.70})
    assert task.val_score(tie, "best_val_bacc") > task.val_score(separates, "best_val_bacc")
    undefined = {"loss": 0.2, "clip": {"balanced_accuracy": float("nan")}, "chunk": {"auc": float("nan")}}
    assert task.val_score(one_class, "best_val_bacc") > task.val_score(undefined, "best_val_bacc")
    # through evaluate_round: round 1 one-class with the higher AUC, round 2 separating -> round 2 is reported
    data = _data()
    m = _tiny_model()
    rounds = iter([one_class, separates, separates])
    real = task.evaluate

    def fake_evaluate(model, clips, *a, **k):
        if clips is data.val:
            return {**next(rounds), "accuracy": 0.5, "n": len(clips)}
        return real(model, clips, *a, **k)

    monkeypatch.setattr(task, "evaluate", fake_evaluate)
    spec = dict(SPEC, strategy="fedper", select="best_val_bacc")
    _, st = task.evaluate_round(m, data, spec, {}, 1, False, np.random.default_rng(0))
    out, st = task.evaluate_round(m, data, spec, st, 2, True, np.random.default_rng(0))
    assert out["selected-round"] == 2
    rounds = iter([one_class, separates])
    _, st = task.evaluate_round(m, data, dict(spec, select="best_val"), {}, 1, False, np.random.default_rng(0))
    out, _ = task.evaluate_round(m, data, dict(spec, select="best_val"), st, 2, True, np.random.default_rng(0))
    assert out["selected-round"] == 1


def test_final_round_scores_the_test_clips_once_when_its_model_is_the_reported_one(monkeypatch):
    """Fault caught (cost): the last round evaluating the test clips twice with the same weights when the
    current model is the reported one (select=last, or the best validation round is this one): one redundant
    pass over every client's test set per strategy. And the reuse must not leak into the other case: when an
    earlier round was better, the reported scores are those of the restored model, not this round's."""
    data = _data()
    m = _tiny_model()
    calls = []
    real = task.evaluate

    def counting(model, clips, *a, **k):
        calls.append("test" if clips is data.test else "val")
        return real(model, clips, *a, **k)

    monkeypatch.setattr(task, "evaluate", counting)
    spec = dict(SPEC, strategy="fedper", select="last")
    out, _ = task.evaluate_round(m, data, spec, {}, 1, True, np.random.default_rng(0))
    assert calls.count("test") == 1 and out["final-acc"] == out["test-acc"] and out["selected-round"] == 1
    calls.clear()
    out, _ = task.evaluate_round(m, data, dict(spec, select="best_val"), {}, 1, True, np.random.default_rng(0))
    assert calls.count("test") == 1 and out["selected-round"] == 1 and out["final-loss"] == out["test-loss"]
    # round 1 best, round 2 much worse: the final scores come from a second pass with round 1's weights
    spec = dict(spec, select="best_val")
    _, st = task.evaluate_round(m, data, spec, {}, 1, False, np.random.default_rng(0))
    with torch.no_grad():
        m.head.fc3.bias.copy_(torch.tensor([50.0, -50.0]) * (1 if data.val.label[0] == 1 else -1))
    calls.clear()
    out, _ = task.evaluate_round(m, data, spec, st, 2, True, np.random.default_rng(0))
    assert out["selected-round"] == 1 and calls.count("test") == 2 and out["final-loss"] != out["test-loss"]


def test_float_noise_in_validation_auc_does_not_decide_the_choice():
    """Fault caught: an AUC higher by 1e-16 (float noise of the same ranking) keeping the earlier model although
    the tie-break (lower loss) prefers the later one."""
    a = {"loss": 0.9, "chunk": {"auc": 0.7 + 1e-16 * 3}}
    b = {"loss": 0.6, "chunk": {"auc": 0.7}}
    assert task.val_score(b) > task.val_score(a)


def test_message_seeds_differ_by_round_client_and_kind():
    """Fault caught (fault 7): one seed per client for every message, so every round repeats the same dropout
    masks and windows."""
    spec = {"seed": 3, "experiment": "balanced2-seed3", "strategy": "fedper"}
    s = {(p, r, k): task.message_seed(spec, p, r, k) for p in (0, 1) for r in (1, 2) for k in ("train", "evaluate")}
    assert len(set(s.values())) == len(s)
    assert task.message_seed(spec, 0, 1, "train") == s[(0, 1, "train")]  # reproducible
    assert task.message_seed(dict(spec, seed=4), 0, 1, "train") != s[(0, 1, "train")]
    task.seed_message(s[(0, 1, "train")])
    a = torch.nn.functional.dropout(torch.ones(64), 0.5)
    task.seed_message(s[(0, 2, "train")])
    b = torch.nn.functional.dropout(torch.ones(64), 0.5)
    task.seed_message(s[(0, 1, "train")])
    assert not torch.equal(a, b) and torch.equal(a, torch.nn.functional.dropout(torch.ones(64), 0.5))


def test_batches_follow_the_models_device(monkeypatch):
    """Fault caught: batches built on a hard-coded CPU while the model sits on a GPU. The model's device
    (seam: task.device_of) must reach every tensor task.py creates; checked with the `meta` device."""
    x, y = task.make_batch(_clips([20]), np.array([0]), np.array([0]), task.Augment(), None, torch.device("meta"))
    assert x.device.type == "meta" and y.device.type == "meta"
    seen, inside = [], []
    real, real_tt, real_lt = task.make_batch, task.to_tensor, task.labels_tensor

    def spy(clips, clip, first, aug, rng, device):
        seen.append(torch.device(device).type)
        inside.append(1)
        try:
            return real(clips, clip, first, aug, rng, torch.device("cpu"))
        finally:
            inside.pop()

    def spy_tt(x, device="cpu"):
        if not inside:
            seen.append(torch.device(device).type)
        return real_tt(x, "cpu")

    def spy_lt(y, device="cpu"):
        if not inside:
            seen.append(torch.device(device).type)
        return real_lt(y, "cpu")

    monkeypatch.setattr(task, "make_batch", spy)
    monkeypatch.setattr(task, "to_tensor", spy_tt)
    monkeypatch.setattr(task, "labels_tensor", spy_lt)
    monkeypatch.setattr(task, "device_of", lambda model: torch.device("meta"))
    data, m = _data(), _tiny_model()
    task.train_round(m, data, SPEC, {}, np.random.default_rng(0))
    task.train_round(m, data, dict(SPEC, strategy="perfedavg", alpha=0.01, beta=0.01, meta_steps=1), {},
                     np.random.default_rng(0))
    task.evaluate_round(m, data, dict(SPEC, strategy="perfedavg", alpha=0.01, adapt_steps=1), {}, 1, True,
                        np.random.default_rng(0))
    assert seen and set(seen) == {"meta"}


def test_client_device_choice():
    """Fault caught: a client that ignores the configured device, or asks for CUDA where there is none."""
    assert task.client_device({"device": "cpu"}).type == "cpu"
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert task.client_device({"device": "auto"}).type == want
    assert task.client_device({"device": "cuda"}).type == want


def test_validation_choice_prefers_auc_then_loss():
    """Fault caught: choosing the model on validation loss alone (it chose the untrained round-1 model on the real
    clips, whose loss was lowest while its AUC was chance), or ignoring the loss when AUC ties or is undefined."""
    chance = {"loss": 0.69, "chunk": {"auc": 0.5}}
    sharp = {"loss": 1.2, "chunk": {"auc": 0.8}}
    assert task.val_score(sharp) > task.val_score(chance)
    assert task.val_score({"loss": 0.5, "chunk": {"auc": 0.8}}) > task.val_score(sharp)
    one_class = [{"loss": 0.4, "chunk": {"auc": float("nan")}}, {"loss": 0.6, "chunk": {"auc": float("nan")}}]
    assert task.val_score(one_class[0]) > task.val_score(one_class[1])
    assert task.val_score(chance) > task.val_score(one_class[0])  # a defined AUC beats an undefined one
