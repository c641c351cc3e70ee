"""The dark-pocket baseline (retina region, features, logistic regression) and Grad-CAM / peak-in-mask, on
small hand-made inputs (fast: these tests also drive the mutation runs of baseline.py and saliency.py)."""

import numpy as np
import pytest
import torch

from detectlab.fluid import baseline as B
from detectlab.fluid.saliency import gradcam, peak_in_mask, peak_points, saliency_on


def _bscan(pocket: bool, seed: int = 0, top: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(0.1, 0.02, (64, 96))
    img[top:top + 24] = rng.normal(0.55, 0.03, (24, 96))  # the retina
    img[top + 24:top + 27] = 0.95  # the RPE, the brightest row
    if pocket:
        img[top + 8:top + 16, 30:50] = 0.15  # a dark fluid pocket inside the retina
    return np.clip(img, 0, 1)


def test_retina_region_between_ilm_and_rpe():
    """Catches: a retina region that starts above the inner limiting membrane or ends off the RPE."""
    for top in (10, 25):
        region, ilm, rpe = B.retina_region(_bscan(False, top=top))
        assert np.median(ilm) == pytest.approx(top, abs=2) and np.median(rpe) == pytest.approx(top + 25, abs=2)
        assert region[top + 12].all() and not region[top - 5].any() and not region[top + 32].any()


def test_pocket_features_see_a_dark_pocket():
    """Catches: features that do not respond to fluid (dark shares, pocket count and area, low quantile)."""
    f0, f1 = B.pocket_features(_bscan(False)), B.pocket_features(_bscan(True))
    k = {n: i for i, n in enumerate(B.FEATURES)}
    # the pocket is 8 x 20 of the 24 x 96 retina: about 7% of it
    assert f1[k["dark65"]] > f0[k["dark65"]] + 0.05 and f1[k["dark50"]] > 0.05 and f0[k["dark50"]] < 0.01
    assert f1[k["dark80"]] > f0[k["dark80"]] + 0.05
    assert f1[k["pockets"]] == 1 and f0[k["pockets"]] == 0 and f1[k["pocket_area"]] == pytest.approx(160 / 2304, rel=0.2)
    assert f1[k["largest_pocket"]] == pytest.approx(f1[k["pocket_area"]], rel=0.3)
    assert f1[k["q05"]] < f0[k["q05"]] - 0.3
    assert f0[k["thick_mean"]] == pytest.approx(24 / 64, abs=0.02) and f0[k["thick_sd"]] < 0.02
    assert f0[k["thick_max"]] == pytest.approx(24 / 64, abs=0.02) and f1[k["sd"]] > f0[k["sd"]]
    assert f1[k["q50_abs"]] == pytest.approx(0.55, abs=0.05)


def test_pocket_lr_ranks_pockets_and_matches_sklearn():
    """Catches: a logistic regression whose stored parameters do not reproduce the fitted model, and a
    baseline that cannot separate B-scans with pockets from those without."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f = np.stack([B.pocket_features(_bscan(i % 2 == 1, seed=i)) for i in range(16)])
    y = np.arange(16) % 2
    p = B.pocket_scores(f[:10], y[:10], f[10:])
    assert (p[y[10:] == 1].min() > p[y[10:] == 0].max())
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000,
                                                             random_state=0)).fit(f[:10], y[:10])
    assert np.allclose(p, clf.predict_proba(f[10:])[:, 1], atol=1e-9)
    const = B.fit_pocket_lr(f[:4], np.ones(4, int))
    assert const == {"constant": 1.0} and B.apply_pocket_lr(const, f[:3]).tolist() == [1.0, 1.0, 1.0]
    assert B.majority_scores([1, 1, 0], 2).tolist() == pytest.approx([2 / 3, 2 / 3])


class Cam(torch.nn.Module):
    """features = the input's two channels; fluid logit margin = mean(ch0) - mean(ch1)."""

    def forward_all(self, x):
        f = x * 1.0
        m = f[:, 0].mean((1, 2)) - f[:, 1].mean((1, 2))
        return {"features": f, "logits": torch.stack([-m / 2, m / 2], 1), "aux": [], "seg": None}


def test_gradcam_weights_channels_by_their_gradient():
    """Catches: Grad-CAM without the gradient weighting (a channel that argues against fluid must not light
    up), without the ReLU, or not normalised to a maximum of 1."""
    x = torch.zeros(1, 2, 8, 10)
    x[0, 0, 2, 3] = 1.0  # for fluid
    x[0, 1, 6, 8] = 3.0  # against fluid, and brighter
    cam = gradcam(Cam(), x)
    assert cam.shape == (1, 8, 10) and float(cam.max()) == pytest.approx(1.0)
    assert tuple(np.unravel_index(int(cam.argmax()), (8, 10))) == (2, 3)
    assert float(cam[0, 6, 8]) == 0.0  # the negative evidence is cut by the ReLU


class Pool(torch.nn.Module):
    """A 4x coarser feature map (average pooling), as a CNN's last layer: saliency per 4x4 cell."""

    def forward_all(self, x):
        f = torch.nn.functional.avg_pool2d(x * 1.0, 4)
        m = f[:, 0].mean((1, 2))
        return {"features": f, "logits": torch.stack([-m, m], 1), "aux": [], "seg": None}


def test_peak_is_the_centre_of_the_largest_cell():
    """Catches the bias found on Duke: the first maximum of the upsampled map lies on the image border (the
    map is flat there), so every peak fell on row 0 and none in the fluid; the peak is the largest cell's
    centre, and the coarse map keeps the feature map's resolution."""
    x = torch.zeros(2, 1, 12, 16)
    x[0, 0, 5, 9] = 1.0  # cell (1, 2) of the 3 x 4 map
    x[1, 0, 0, 0] = 1.0  # cell (0, 0)
    coarse = gradcam(Pool(), x, coarse=True)
    assert coarse.shape == (2, 3, 4) and float(coarse[0, 1, 2]) == 1.0
    assert peak_points(coarse, (12, 16)).tolist() == [[6, 10], [2, 2]]
    up = gradcam(Pool(), x)
    assert up.shape == (2, 12, 16)
    assert tuple(np.unravel_index(int(up[1].argmax()), (12, 16))) == (0, 0)  # the border bias, upsampled


def test_peak_in_mask_hits_chance_and_empty_maps():
    """Catches: a hit counted off the peak, chance levels that are not the fluid shares (pixels, cells), and
    an all-zero map (no peak) counted as a hit."""
    cam = torch.zeros(3, 2, 2)  # 2 x 2 cells over a 4 x 6 input: cells of 2 x 3 pixels
    cam[0, 0, 1] = 1.0  # peak cell (0, 1): centre pixel (1, 4)
    cam[1, 1, 0] = 1.0  # peak cell (1, 0): centre pixel (3, 1)
    mask = torch.zeros(3, 1, 4, 6)
    mask[:, 0, 1, 4] = 1.0  # fluid on the centre of cell (0, 1)
    mask[:, 0, 2, 2] = 1.0  # and inside cell (1, 0), off its centre
    r = peak_in_mask(cam, mask)
    assert r["hit"].tolist() == [True, False, False]
    assert r["cell_hit"].tolist() == [True, True, False]
    assert r["chance"].tolist() == pytest.approx([2 / 24] * 3) and r["cell_chance"].tolist() == pytest.approx([0.5] * 3)
    assert r["peak"][:2].tolist() == [[1, 4], [3, 1]]


class Cam1(torch.nn.Module):
    """One-channel version for grey inputs: the feature map is the input itself, the fluid margin its mean."""

    def __init__(self):
        super().__init__()
        self.training = True

    def forward_all(self, x):
        f = x * 1.0
        m = f[:, 0].mean((1, 2))
        return {"features": f, "logits": torch.stack([-m, m], 1), "aux": [], "seg": None}


def test_saliency_on_counts_the_fluid_bscans_in_view():
    """Catches: B-scans without fluid in view counted, hits that are not at the peak, chance levels that are
    not the mean fluid shares, batches that drop B-scans, and a model left in eval mode afterwards."""
    from detectlab.fluid.data import Prepared

    x = torch.zeros(5, 1, 6, 8, dtype=torch.uint8)
    m = torch.zeros(5, 1, 6, 8, dtype=torch.uint8)
    for i in range(4):
        x[i, 0, 1 + i, 2] = 200  # the brightest pixel is the saliency peak
        m[i, 0, 1, 2] = 255  # fluid at (1, 2): a hit only for B-scan 0
    m[1, 0, 2, 2] = 255  # B-scan 1 also has fluid at its peak (2, 2)
    model = Cam1()
    out = saliency_on(model, Prepared(x, torch.tensor([1, 1, 1, 1, 0]), m), torch.device("cpu"), batch=3)
    assert out["n"] == 4 and out["index"] == [0, 1, 2, 3] and out["hit"] == [1, 1, 0, 0]
    assert out["hits"] == 2 and out["share"] == 0.5 and out["cell_hits"] == 2  # cells are pixels here
    assert out["chance"] == pytest.approx((1 + 2 + 1 + 1) / 4 / 48) and out["cell_chance"] == out["chance"]
    assert model.training  # restored
    assert saliency_on(model, Prepared(x, torch.zeros(5, dtype=torch.long)), torch.device("cpu")) == {"n": 0}


def test_otsu_threshold_maximises_the_between_class_variance():
    """Catches: a wrong histogram (bins, range), a wrong between-class variance or an off-by-one edge in the
    Otsu threshold that draws the retina region: checked against a brute-force search over the same edges."""
    v = np.concatenate([np.full(50, 0.1), np.full(30, 0.5), np.full(20, 0.9)])
    edges = np.linspace(0, 1, 65)
    best, arg = -1.0, 0
    for i, t in enumerate(edges[1:-1], start=1):
        lo, hi = v[v < t], v[v >= t]
        if lo.size and hi.size:
            bv = lo.size * hi.size / v.size ** 2 * (lo.mean() - hi.mean()) ** 2
            if bv > best + 1e-12:
                best, arg = bv, i
    assert B._otsu(v) == pytest.approx(edges[arg])
    assert B._otsu(np.concatenate([np.full(100, 0.2), np.full(100, 0.8)])) == pytest.approx(13 / 64)


def test_features_of_a_prepared_set_in_batches():
    """Catches: features computed on the wrong scale (uint8 instead of [0, 1]), rows dropped or repeated
    across batches."""
    from detectlab.fluid.data import Prepared

    imgs = [_bscan(i % 2 == 1, seed=i) for i in range(5)]
    x = torch.from_numpy(np.stack([np.round(im * 255) for im in imgs]).astype(np.uint8))[:, None]
    f = B.features_of(Prepared(x, torch.arange(5) % 2), batch=2)
    want = np.stack([B.pocket_features(np.round(im * 255) / 255) for im in imgs])
    assert f.shape == (5, len(B.FEATURES)) and np.allclose(f, want, atol=1e-5)


class CamSeg(Cam1):
    """Cam1 with a mask head whose fluid map is bright where the input is dark (the opposite of Grad-CAM)."""

    seg = True

    def forward_all(self, x):
        out = super().forward_all(x)
        out["seg"] = (1.0 - out["features"])
        return out


def test_saliency_on_reports_where_the_mask_head_puts_the_fluid():
    """Catches: the mask head's localisation not reported, or computed from the Grad-CAM map instead."""
    from detectlab.fluid.data import Prepared

    x = torch.full((2, 1, 4, 4), 200, dtype=torch.uint8)
    x[:, 0, 0, 0] = 255  # Grad-CAM peak at (0, 0)
    x[:, 0, 3, 3] = 0  # mask-head peak at (3, 3)
    m = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    m[0, 0, 3, 3] = 255
    m[1, 0, 0, 0] = 255
    out = saliency_on(CamSeg(), Prepared(x, torch.tensor([1, 1]), m), torch.device("cpu"))
    assert out["hit"] == [0, 1] and out["seg_hits"] == 1 and out["seg_cell_hits"] == 1
    x[1, 0, 3, 3] = 200  # the second map's mask-head peak moves off (3, 3): still misses the fluid at (0, 0)
    out = saliency_on(CamSeg(), Prepared(x, torch.tensor([1, 1]), m), torch.device("cpu"))
    assert out["seg_hits"] == 1


def test_saliency_figure_draws_no_cell_result_where_none_was_measured():
    """Catches: a saliency figure that draws a missing cell-level share and its chance marker at 0 (the
    cpu-real resnet18 run, whose older units have no cell-level results, showed a 'chance' tick at 0)."""
    import matplotlib

    matplotlib.use("Agg")
    from detectlab.fluid.figures import saliency_figure

    class Capture:
        fig = None

        def save_figure(self, fig, name):
            self.fig = fig

    sal = {"plain": {"train90": {"a": {"n": 10, "hits": 1, "share": 0.1, "chance": 0.05}}},
           "mask": {"train90": {"b": {"n": 10, "hits": 2, "share": 0.2, "chance": 0.05, "cell_hits": 4,
                                      "cell_share": 0.4, "cell_chance": 0.3}}}}
    run = Capture()
    saliency_figure(run, sal)
    ax = run.fig.axes[0]
    cell_ticks = [c for c in ax.collections if c.get_label().startswith("chance (share of cells")][0]
    xs = np.ma.filled(np.ma.asarray(cell_ticks.get_offsets(), dtype=float)[:, 0], np.nan)
    assert np.isnan(xs[0]) and xs[1] == pytest.approx(0.3)  # row "a" has no cell result: no tick at all
    widths = [p.get_width() for p in ax.patches]
    assert widths[:2] == pytest.approx([0.1, 0.2]) and np.isnan(widths[2]) and widths[3] == pytest.approx(0.4)
    import matplotlib.pyplot as plt

    plt.close(run.fig)
