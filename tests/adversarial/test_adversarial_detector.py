import numpy as np
import pytest
import torch

from detectlab.adversarial.detector import SteganalysisDetector, statistic, statistic_batched


def reference(img: np.ndarray, c: float = 5.0) -> float:
    """Eq. 3 written pixel by pixel, on the 0-255 scale, interior pixels only."""
    x = img.astype(np.float64) * 255
    K = np.array([[-0.25, 0.5, -0.25], [0.5, 0, 0.5], [-0.25, 0.5, -0.25]])
    ws, rs = [], []
    for i in range(1, x.shape[0] - 1):
        for j in range(1, x.shape[1] - 1):
            patch = x[i - 1:i + 2, j - 1:j + 2]
            xhat = (patch * K).sum()
            nb = np.array([x[i - 1, j], x[i + 1, j], x[i, j - 1], x[i, j + 1]])
            ws.append(1 / (nb.var() + c))
            rs.append(x[i, j] - xhat)
    w = np.array(ws) / np.sum(ws)
    return float(np.mean(np.abs(w * np.array(rs))))


def test_single_interior_pixel_by_hand():
    # 3x3 image: one interior pixel. neighbours 10,20,30,40 (var 125), diagonals 0, centre 100.
    img = np.array([[0, 10, 0], [30, 100, 40], [0, 20, 0]], float) / 255
    xhat = 0.5 * (10 + 20 + 30 + 40)  # = 50
    # w is normalised to 1 (one pixel), n = 1: p = |100 - 50| = 50
    assert float(statistic(torch.tensor(img)[None])) == pytest.approx(50.0, rel=1e-5)
    assert float(statistic_batched(torch.tensor(img, dtype=torch.float32)[None])) == pytest.approx(50.0, rel=1e-4)
    assert reference(img) == pytest.approx(50.0)


def test_matches_pixel_loop_reference_on_random_images():
    rng = np.random.default_rng(1)
    imgs = rng.random((4, 9, 11))
    ours = statistic(torch.tensor(imgs)).numpy()
    fast = statistic_batched(torch.tensor(imgs, dtype=torch.float32)).numpy()
    ref = np.array([reference(im) for im in imgs])
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    np.testing.assert_allclose(fast, ref, rtol=1e-3)
    # batching does not change a result
    np.testing.assert_allclose(statistic_batched(torch.tensor(imgs, dtype=torch.float32), batch_size=1).numpy(),
                               fast, rtol=1e-6)


def test_smooth_images_score_low_and_constant_image_zero():
    assert float(statistic(torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-9)
    yy, xx = torch.meshgrid(*(torch.linspace(0, 1, 16, dtype=torch.float64),) * 2, indexing="ij")
    ramp = (0.3 * xx + 0.5 * yy)[None, None]  # linear images are predicted exactly
    assert float(statistic(ramp)) == pytest.approx(0.0, abs=1e-9)


def test_fit_gives_no_false_positive_and_flags_noise(digits):
    train, test = digits
    det = SteganalysisDetector().fit(train.x)
    _, flagged_train = det.detect(train.x)
    assert not flagged_train.any()
    g = torch.Generator().manual_seed(0)
    noisy = (test.x + 0.2 * torch.sign(torch.randn(test.x.shape, generator=g))).clamp(0, 1)
    _, flagged_noisy = det.detect(noisy)
    assert flagged_noisy.float().mean() > 0.95
    with pytest.raises(RuntimeError, match="not fitted"):
        SteganalysisDetector().detect(test.x)


def test_statistic_is_differentiable():
    x = torch.rand(3, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: statistic(t), (x,), eps=1e-6, atol=1e-6)
