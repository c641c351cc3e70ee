import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from detectlab.adversarial.detector import (SteganalysisDetector, _fused, quantize, roc_auc, roc_curve,
                                            statistic, statistic_fast, threshold_at_fpr, to_uint8, tpr_at_fpr)

KERNEL = np.array([[-0.25, 0.5, -0.25], [0.5, 0, 0.5], [-0.25, 0.5, -0.25]])
MEAN_KERNEL = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]])


def authors_statistic(sample: np.ndarray, divisor: float = 3.0) -> float:
    """alxshine/stego4secureML common.py (diffToEstimate(sample, kernel, getWeightMatrix(sample))), copied in
    spirit line by line: scipy convolve2d 'valid', the neighbour mean by convolution, a pixel loop for the
    weights. An implementation independent of the tensor code under test; `divisor` is their 3 or our 4."""
    estimated = convolve2d(sample, KERNEL, mode="valid")
    resized = sample[1:-1, 1:-1]
    diff = resized - estimated
    m = convolve2d(sample, MEAN_KERNEL, mode="valid")
    weights = np.zeros_like(resized)
    for x in range(weights.shape[0]):
        for y in range(weights.shape[1]):
            ox, oy = x + 1, y + 1
            weights[x, y] = ((sample[ox - 1, oy] - m[x, y]) ** 2 + (sample[ox + 1, oy] - m[x, y]) ** 2
                             + (sample[ox, oy - 1] - m[x, y]) ** 2 + (sample[ox, oy + 1] - m[x, y]) ** 2) / divisor
    weights = 1.0 / (weights + 5)
    weights = weights / weights.sum()
    return float(np.mean(np.abs(diff * weights)))


@pytest.fixture(scope="module")
def images():
    """8-bit images with every kind of neighbourhood: random noise, smooth ramps, flat areas and strokes."""
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (3, 12, 10))
    yy, xx = np.mgrid[0:12, 0:10]
    ramp = (9 * xx + 13 * yy)[None]
    strokes = np.zeros((2, 12, 10), int)
    strokes[0, 3:9, 4:6] = 255
    strokes[1, 2:10, 2:8] = rng.integers(0, 2, (8, 6)) * 200
    return np.concatenate([noise, ramp, strokes]).astype(np.uint8)


@pytest.mark.parametrize("divisor", [3, 4])
def test_all_implementations_match_the_authors_code(images, divisor):
    """Faults caught: a wrong predictor kernel, variance convention (/3 vs /4), weight normalisation or
    border handling in any of the three implementations (autograd, flat fast path, fused formula)."""
    ref = np.array([authors_statistic(im.astype(float), divisor) for im in images])
    u8 = torch.from_numpy(images)
    f64 = u8.double() / 255
    np.testing.assert_allclose(statistic(f64, divisor=divisor).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(statistic_fast(u8, divisor=divisor).numpy(), ref, rtol=2e-5)
    np.testing.assert_allclose(statistic_fast(u8.float() / 255, divisor=divisor).numpy(), ref, rtol=2e-4)
    np.testing.assert_allclose(_fused(u8.float(), 5.0, divisor).numpy(), ref, rtol=2e-5)
    # chunking (a remainder chunk of 1) does not change a result
    np.testing.assert_allclose(statistic_fast(u8, batch_size=2, divisor=divisor).numpy(),
                               statistic_fast(u8, divisor=divisor).numpy(), rtol=1e-6)


def test_two_pixel_image_by_hand():
    """Two interior pixels with different local variance: the weights differ, so a detector that ignores
    them (uniform w) or mis-normalises them gives another value. Caught: w not applied, variance / 4
    instead of / 3, w normalised per pixel instead of per image."""
    img = np.array([[0, 10, 0, 0], [30, 100, 40, 0], [0, 20, 0, 0]], float)
    # pixel (1,1): neighbours 10,20,30,40 -> mean 25, Σ(v-m)² = 500, σ² = 500/3; x̂ = ½·100 - ¼·0 = 50, r = 50
    # pixel (1,2): neighbours 0,0,100,0 -> mean 25, Σ(v-m)² = 7500, σ² = 2500; x̂ = ½·100 - ¼·(10+20) = 42.5,
    #              r = 40 - 42.5 = -2.5
    w1, w2 = 1 / (500 / 3 + 5), 1 / (2500 + 5)
    expect = (w1 * 50 + w2 * 2.5) / (w1 + w2) / 2
    assert authors_statistic(img) == pytest.approx(expect, rel=1e-12)
    x = torch.tensor(img / 255)[None]
    assert float(statistic(x)) == pytest.approx(expect, rel=1e-9)
    assert float(statistic_fast(torch.tensor(img, dtype=torch.uint8)[None])) == pytest.approx(expect, rel=1e-5)
    assert float(statistic(x, divisor=4)) != pytest.approx(expect, rel=1e-5)  # the convention matters here


def test_linear_images_score_zero_and_gradcheck():
    """The predictor is exact on linear images (fault: a kernel that does not sum to 1); the autograd
    statistic has correct gradients (the adaptive attacker follows them)."""
    yy, xx = torch.meshgrid(*(torch.linspace(0, 1, 16, dtype=torch.float64),) * 2, indexing="ij")
    assert float(statistic((0.3 * xx + 0.5 * yy)[None, None])) == pytest.approx(0.0, abs=1e-12)
    x = torch.rand(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: statistic(t), (x,), eps=1e-6, atol=1e-6)


def test_quantize_round_and_the_authors_floor():
    """'floor' is numpy's (adv * 255).astype(int) on float32 (the authors' code); 'round' the nearest level.
    Fault caught: floor and round swapped, or floor on a float64 copy (differs from float32 at level edges)."""
    rng = np.random.default_rng(0)
    a = rng.random(5000).astype(np.float32)
    a[:3] = [0.0, 1.0, 128 / 255]
    t = torch.from_numpy(a)
    np.testing.assert_array_equal(to_uint8(t, "floor").numpy(), (a * 255).astype(int))
    np.testing.assert_array_equal(to_uint8(t, "round").numpy(), np.rint(a.astype(np.float64) * 255).astype(int))
    assert (to_uint8(t, "floor") != to_uint8(t, "round")).float().mean() > 0.3
    np.testing.assert_allclose(quantize(t, "round").numpy() * 255, np.rint(a.astype(np.float64) * 255), atol=1e-3)
    assert torch.equal(quantize(t, "none"), t)
    with pytest.raises(ValueError) as e:
        quantize(t, "nearest")
    assert str(e.value) == "unknown quantisation 'nearest' (one of round, floor, none)"


def test_roc_auc_and_tpr_at_fpr():
    """AUC with ties equals sklearn's; the FPR-constrained threshold lets through exactly floor(fpr·n)
    negatives. Faults: ties counted as wins, an off-by-one in the allowed false positives, >= for >."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    neg = rng.integers(0, 50, 1000).astype(float)
    pos = rng.integers(20, 80, 300).astype(float)
    auc = roc_auc_score(np.r_[np.zeros(1000), np.ones(300)], np.r_[neg, pos])
    assert roc_auc(neg, pos) == pytest.approx(auc, abs=1e-12)
    neg = np.arange(1000.0)
    assert threshold_at_fpr(neg, 0.01) == 989.0  # 990..999 (10 = 1 %) lie above it
    r = tpr_at_fpr(neg, np.array([989.0, 989.5, 1500.0, 5.0]), 0.01)
    assert r == {"threshold": 989.0, "fpr": 0.01, "tpr": 0.5}
    assert tpr_at_fpr(neg, np.array([999.5]), 0.0)["threshold"] == 999.0
    c = roc_curve(np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    # points of "score > t" for t = 2, 1, 0, then (1, 1)
    assert c["fpr"] == [0.0, 0.0, 0.0, 0.5, 1.0] and c["tpr"] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_fit_sets_max_and_quantile_thresholds(digits):
    """The thresholds are the max and the 0.9999 / 0.999 quantiles of the training statistic (faults: the
    mean, a quantile of the wrong tail); attacked-looking (±0.2 sign-noise) images are flagged."""
    train, test = digits
    u8 = to_uint8(train.x[:300], "round")
    s = np.array([authors_statistic(im.astype(float)) for im in u8[:, 0].numpy()])
    det = SteganalysisDetector().fit(u8)
    assert det.threshold == pytest.approx(s.max(), rel=1e-5)
    assert det.fit_stats["second_max"] == pytest.approx(np.sort(s)[-2], rel=1e-5)
    # 3,000 distinct statistics: at most 0.1 % (3 images) above q0.999, at most 0.01 % (0) above q0.9999
    noise = torch.randint(0, 256, (3000, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    big = SteganalysisDetector().fit(noise)
    sn = big.score(noise).numpy()
    assert (sn > big.thresholds["q0.999"]).sum() == 3 and (sn > big.thresholds["q0.9999"]).sum() == 0
    assert big.thresholds["q0.999"] == np.sort(sn)[-4] and big.thresholds["max"] == sn.max()
    g = torch.Generator().manual_seed(0)
    noisy = (test.x + 0.2 * torch.sign(torch.randn(test.x.shape, generator=g))).clamp(0, 1)
    _, flagged = det.detect(to_uint8(noisy))
    assert flagged.float().mean() > 0.95
    _, clean_flags = det.detect(to_uint8(test.x))
    assert clean_flags.float().mean() < 0.05
    with pytest.raises(RuntimeError, match="not fitted"):
        SteganalysisDetector().detect(test.x)


def test_compiled_branch_scales_and_chunks_like_the_eager_one(images, monkeypatch):
    """The torch.compile branch (30 s to compile, so run here with compile as the identity): uint8 levels
    and [0, 1] floats give the same values in chunks of any size (faults: floats not scaled by 255,
    a dropped last chunk)."""
    import detectlab.adversarial.detector as d

    monkeypatch.setattr(d, "_COMPILED", None)
    monkeypatch.setattr(torch, "compile", lambda f, **kw: f)
    u8 = torch.from_numpy(np.concatenate([images] * 200))  # 1,200 images: a second, partial chunk of 1,000
    eager = statistic_fast(u8)
    np.testing.assert_allclose(statistic_fast(u8, compiled=True).numpy(), eager.numpy(), rtol=1e-5)
    np.testing.assert_allclose(statistic_fast(u8.float() / 255, compiled=True).numpy(), eager.numpy(), rtol=2e-4)
    assert statistic_fast(u8[:0]).shape == (0,)


# ------------------------------------------------------------------ faults found by mutation testing

from detectlab.adversarial.detector import _check, _fast_chunk  # noqa: E402
from detectlab.adversarial.detector import _interior_mask as _real_interior_mask  # noqa: E402
from detectlab.core.errors import InputError  # noqa: E402


def test_quantize_floor_is_float32_floor_and_keeps_the_dtype():
    """Catches quantize(.., 'floor') rounding instead of flooring, flooring a float64 copy (the authors'
    float32 (adv * 255).astype(int) differs at level edges), or returning another dtype than x's."""
    rng = np.random.default_rng(3)
    a = rng.random(4000).astype(np.float32)
    a[:2] = [0.0, 1.0]
    q = quantize(torch.from_numpy(a), "floor")
    assert q.dtype == torch.float32
    np.testing.assert_array_equal(np.rint(q.numpy().astype(np.float64) * 255), (a * 255).astype(int))
    q64 = quantize(torch.from_numpy(a).double(), "floor")
    assert q64.dtype == torch.float64
    np.testing.assert_array_equal(np.rint(q64.numpy() * 255), (a * 255).astype(int))
    # a value just below a level edge in float64 that float32 rounds up onto the edge
    x = torch.tensor([np.nextafter(3 / 255, 0)], dtype=torch.float64)
    assert float(quantize(x, "floor")) * 255 == pytest.approx(float(np.floor(np.float32(x.item()) * np.float32(255))))
    r64 = quantize(torch.tensor([0.5 / 255 + 1e-6, 0.2], dtype=torch.float64), "round")
    assert r64.dtype == torch.float64 and r64.tolist() == [1 / 255, 51 / 255]


def test_to_uint8_clamps_and_passes_bytes_through():
    """Catches values outside [0, 1] (an attack step before its clip) wrapping round in the uint8 cast
    instead of saturating at 0 / 255, for both rules, a result that is not uint8, and uint8 input being
    rescaled a second time."""
    t = torch.tensor([-0.3, -1e-4, 0.0, 1.0, 1.0 + 1e-4, 1.7])
    for mode in ("round", "floor", "none"):
        out = to_uint8(t, mode)
        assert out.dtype == torch.uint8 and out.tolist() == [0, 0, 0, 255, 255, 255]
    b = torch.tensor([0, 3, 200, 255], dtype=torch.uint8)
    assert to_uint8(b) is b and to_uint8(b, "floor") is b


def test_check_accepts_3x3_and_rejects_other_shapes():
    """Catches the shape rules: colour (N,3,H,W) images accepted (the statistic of channel 0 only), a
    2-pixel side accepted (no interior pixel: a mean over nothing), a 3x3 image (one interior pixel)
    rejected, and (N,1,H,W) not squeezed to (N,H,W)."""
    assert _check(torch.zeros(2, 1, 3, 3)).shape == (2, 3, 3)
    assert _check(torch.zeros(2, 3, 4)).shape == (2, 3, 4)
    for shape in [(2, 3, 5, 5), (2, 2, 5), (2, 5, 2), (5, 5), (1, 1, 1, 5, 5)]:
        with pytest.raises(ValueError, match="expected"):
            _check(torch.zeros(shape))
    # one interior pixel, by hand: neighbours 10, 20, 30, 40 (as test_two_pixel_image_by_hand): r = 50
    img = np.array([[0, 10, 0], [30, 100, 40], [0, 20, 0]], float)
    assert float(statistic(torch.tensor(img / 255)[None])) == pytest.approx(50.0, rel=1e-9)
    assert float(statistic_fast(torch.tensor(img, dtype=torch.uint8)[None, None])) == pytest.approx(50.0, rel=1e-6)


def test_statistic_reads_uint8_as_levels_and_takes_c(images):
    """Catches the autograd statistic scaling uint8 input by 255 again (it is already 0-255 levels) and
    the constant c of the weights not reaching any of the implementations."""
    u8 = torch.from_numpy(images)
    f64 = u8.double() / 255
    np.testing.assert_allclose(statistic(u8).numpy(), statistic(f64).numpy(), rtol=1e-6)
    for c in (0.5, 50.0):
        ref = statistic(f64, c=c).numpy()
        assert not np.allclose(ref, statistic(f64).numpy(), rtol=1e-3)  # c matters on these images
        np.testing.assert_allclose(statistic_fast(u8, c=c).numpy(), ref, rtol=2e-5)
        np.testing.assert_allclose(_fused(u8.float(), c, 3).numpy(), ref, rtol=2e-5)
        np.testing.assert_allclose(SteganalysisDetector(c=c).score(u8).numpy(), ref, rtol=2e-5)
    np.testing.assert_allclose(SteganalysisDetector(divisor=4).score(u8).numpy(), statistic(f64, divisor=4).numpy(),
                               rtol=2e-5)


def test_fast_chunk_ignores_what_the_work_buffer_held(images):
    """Catches a margin of the reused work buffer left unzeroed: the buffer comes from torch.empty (and
    holds the previous chunk), so stale NaN/inf there would reach the border positions, whose weight 0
    does not remove a NaN (0 · NaN = NaN)."""
    u8 = torch.from_numpy(images)
    m, h, w = u8.shape
    expect = statistic(u8.double() / 255).numpy()
    for fill in (float("nan"), float("inf"), 1e30):
        buf = torch.full((m * h * w + 2 * (w + 1) + 7,), fill)
        np.testing.assert_allclose(_fast_chunk(u8, buf, 5.0, 3).numpy(), expect, rtol=2e-5)


def test_fast_path_follows_the_device_of_the_images(images, monkeypatch):
    """Catches the work buffer or the interior mask left on the CPU while the images are on another
    device (a GPU in use), checked on the `meta` device. A meta op accepts a CPU operand, so two seams
    record where things are: the cached (CPU) interior mask must be moved to the chunk's device, and
    statistic_fast must hand _fast_chunk a buffer on the images' device."""
    import detectlab.adversarial.detector as d

    x = torch.from_numpy(images).to("meta")
    moved_to = []

    class CachedMask:
        def __init__(self, h, w):
            self.h, self.w = h, w

        def to(self, device):
            moved_to.append(torch.device(device).type)
            return _real_interior_mask(self.h, self.w).to(device)

    monkeypatch.setattr(d, "_interior_mask", CachedMask)
    r = _fast_chunk(x, torch.empty(x.numel() + 2 * (x.shape[-1] + 1), device="meta"), 5.0, 3)
    assert r.device.type == "meta" and r.shape == (len(images),) and moved_to == ["meta"]
    seen = []

    def spy(xc, buf, c, divisor):
        seen.append((xc.device.type, buf.device.type))
        return torch.zeros(len(xc))

    monkeypatch.setattr(d, "_fast_chunk", spy)
    statistic_fast(x, batch_size=4)
    assert seen == [("meta", "meta")] * 2


def test_roc_edge_cases():
    """Catches an AUC for an empty side (NaN: nothing to rank), the FPR floor without its 1e-9 guard
    (0.29·100 = 28.999999999999996 would allow 28 false positives, not 29), fpr = 1 indexing past the
    end, an empty negative set not named, and the ROC thinning that drops the end points or keeps more
    than max_points."""
    assert np.isnan(roc_auc([], [1.0])) and np.isnan(roc_auc([1.0], []))
    assert roc_auc([0.0, 1.0], [1.0, 2.0]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert roc_auc([0.5], [1.0]) == 1.0 and roc_auc([0.5], [0.5, 0.2]) == 0.25  # one score on a side is enough
    neg = np.arange(100.0)
    assert 0.29 * 100 < 29
    assert threshold_at_fpr(neg, 0.29) == 70.0 and (neg > 70.0).sum() == 29
    assert threshold_at_fpr(neg, 1.0) == 0.0 and threshold_at_fpr(neg, 0.0) == 99.0
    with pytest.raises(ValueError, match="^no negative scores$"):
        threshold_at_fpr([], 0.1)
    # by hand: scores 0..6, 9 points (0,0), t=6, 5, ..., 0, (1,1); thinned to 5 they are points 0, 2, 4, 6, 8
    small = roc_curve(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0, 5.0, 6.0]), max_points=5)
    assert small == {"fpr": pytest.approx([0.0, 0.0, 0.0, 1 / 3, 1.0]), "tpr": [0.0, 0.25, 0.75, 1.0, 1.0]}
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 2000), rng.normal(1, 1, 2000)
    c = roc_curve(neg, pos, max_points=60)
    assert len(c["fpr"]) == len(c["tpr"]) == 60
    assert (c["fpr"][0], c["tpr"][0], c["fpr"][-1], c["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(c["fpr"]) >= 0) and np.all(np.diff(c["tpr"]) >= 0)
    full = roc_curve(neg, pos, max_points=10_000)
    assert len(full["fpr"]) == 4002  # 4,000 distinct scores plus the two end points
    # the thinned points are points of the full curve, spread over it (not its first 50)
    pts = set(zip(full["fpr"], full["tpr"]))
    assert all(p in pts for p in zip(c["fpr"], c["tpr"]))


def test_fit_statistics_rules_and_bad_input():
    """Catches the fit summary by hand (mean, sample sd, max, second max, 99th percentile; one image:
    sd 0 and second max = max), the chosen rule not kept, a training image at the threshold flagged
    (> not >=), two images given sd 0, the report's key, and the bad-input lines: no images, an unknown
    rule, NaN pixels, detect before fit."""
    noise = torch.randint(0, 256, (500, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    s = statistic_fast(noise).double().numpy()
    det = SteganalysisDetector().fit(noise, rule="q0.999")
    assert det.rule == "q0.999" and det.n_fit == 500 and det.threshold == det.thresholds["q0.999"]
    fs = det.fit_stats
    assert fs["mean"] == pytest.approx(s.mean(), rel=1e-12) and fs["sd"] == pytest.approx(s.std(ddof=1), rel=1e-12)
    assert fs["max"] == s.max() and fs["second_max"] == np.sort(s)[-2]
    assert fs["p99"] == pytest.approx(np.quantile(s, 0.99), rel=1e-12)
    assert fs["threshold_max"] == s.max() and fs["threshold_q0.999"] == np.sort(s)[-1]  # floor(0.5) = 0 above
    _, flagged = SteganalysisDetector().fit(noise).detect(noise)
    assert flagged.sum() == 0  # the max itself is not above the max
    two = SteganalysisDetector().fit(noise[:2])
    assert two.fit_stats["sd"] == pytest.approx(abs(s[0] - s[1]) / np.sqrt(2), rel=1e-9)
    report, flagged = two.detect(noise[:3])
    assert list(report) == ["statistic"] and np.array_equal(report["statistic"].numpy(), s[:3].astype(np.float32))
    one = SteganalysisDetector().fit(noise[:1])
    assert one.fit_stats["sd"] == 0.0 and one.fit_stats["second_max"] == one.fit_stats["max"] == float(s[0])
    thr = SteganalysisDetector(threshold=float(np.sort(s)[-3]))
    assert int(thr.detect(noise)[1].sum()) == 2
    with pytest.raises(InputError) as e:
        SteganalysisDetector().fit(noise[:0])
    assert str(e.value) == "detector.fit: no training images"
    with pytest.raises(ValueError) as e:
        SteganalysisDetector().fit(noise, rule="q0.95")
    assert str(e.value) == "unknown threshold rule 'q0.95' (one of max, q0.9999, q0.999)"
    bad = noise[:3].float() / 255
    bad[1, 2, 2] = float("nan")
    with pytest.raises(InputError) as e:
        SteganalysisDetector().fit(bad)
    assert str(e.value) == "detector.fit: training images give a non-finite statistic (NaN in the images?)"
    with pytest.raises(RuntimeError, match="^detector is not fitted: call fit\\(\\) or set threshold$"):
        SteganalysisDetector().detect(noise)


def test_round_is_the_default_rule():
    """Catches a default quantisation other than the documented 'round' (nearest 8-bit level) in quantize and
    to_uint8: x = 0.7/255 rounds to level 1 and floors to 0."""
    x = torch.tensor([0.7 / 255, 254.6 / 255], dtype=torch.float64)
    assert quantize(x).tolist() == [1 / 255, 1.0] and to_uint8(x).tolist() == [1, 255]


def test_interior_mask_built_fresh_is_the_interior(images, monkeypatch):
    """Catches a wrong interior mask (border rows/columns scored, interior pixels dropped, weights other than
    0/1) and a broken cache. The mask is cached per image size, so this test empties the cache first:
    otherwise a mask built by an earlier test would hide a fault in building it."""
    import detectlab.adversarial.detector as d

    monkeypatch.setattr(d, "_MASKS", {})
    m = d._interior_mask(4, 5)
    want = torch.zeros(4, 5)
    want[1:3, 1:4] = 1.0
    assert m.shape == (20,) and torch.equal(m, want.reshape(-1))
    assert d._interior_mask(4, 5) is m and list(d._MASKS) == [(4, 5)]
    monkeypatch.setattr(d, "_MASKS", {})
    u8 = torch.from_numpy(images)
    np.testing.assert_allclose(statistic_fast(u8).numpy(), statistic(u8.double() / 255).numpy(), rtol=2e-5)
