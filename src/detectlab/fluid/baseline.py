"""Baselines on the same folds as the networks: the majority class, and dark-pocket intensity features of
the retina band with logistic regression (the hand-crafted detector of this system).

Dark-pocket features, computed on the same input the networks see (the prepared B-scan, grey 0-1):
the retina is the region between the inner limiting membrane (the first row per column brighter than
Otsu's threshold of the smoothed image) and the RPE (the brightest row per column below it). Inside it:
intensity quantiles relative to its median, the shares of pixels darker than 0.5 / 0.65 / 0.8 x that
median, the number, total and largest area of dark connected pockets (< 0.65 x median, >= 4 pixels), and
the mean, SD and maximum retinal thickness. Fluid is hypo-reflective: it lowers the low quantiles and
raises the dark shares and pocket areas. A standardised L2 logistic regression (balanced class weights)
is fitted on the fold's training side and scores its test side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectlab.core.baselines import majority_scores

__all__ = ["FEATURES", "features_of", "majority_scores", "pocket_features", "pocket_scores", "retina_region"]

FEATURES = ("q05", "q25", "q50_abs", "q75", "sd", "dark50", "dark65", "dark80", "pockets", "pocket_area",
            "largest_pocket", "thick_mean", "thick_sd", "thick_max")


def _otsu(v: np.ndarray) -> float:
    hist, edges = np.histogram(v, bins=64, range=(0.0, 1.0))
    p = hist.astype(float) / max(hist.sum(), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def retina_region(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region mask, ILM row per column, RPE row per column) of a grey (H, W) image in [0, 1]."""
    from scipy import ndimage as ndi

    h, w = img.shape
    g = ndi.gaussian_filter(img, 1.5)
    thr = _otsu(g)
    bright = g > thr
    any_col = bright.any(0)
    ilm = np.where(any_col, bright.argmax(0), h // 2)
    gg = ndi.gaussian_filter(img, (2.0, 4.0))
    rows = np.arange(h)[:, None]
    below = np.where(rows >= ilm[None, :], gg, -1.0)
    rpe = below.argmax(0)
    region = (rows >= ilm[None, :]) & (rows <= rpe[None, :]) & any_col[None, :]
    return region, ilm, rpe


def pocket_features(img: np.ndarray) -> np.ndarray:
    """The dark-pocket feature vector (FEATURES) of one grey (H, W) image in [0, 1]."""
    from scipy import ndimage as ndi

    region, ilm, rpe = retina_region(img)
    g = ndi.gaussian_filter(img, 1.0)
    v = g[region]
    if v.size < 16:
        return np.zeros(len(FEATURES))
    med = max(float(np.median(v)), 1e-3)
    q05, q25, q75 = (np.quantile(v, q) / med for q in (0.05, 0.25, 0.75))
    dark = region & (g < 0.65 * med)
    lab, n = ndi.label(dark)
    areas = np.bincount(lab.ravel())[1:] if n else np.zeros(0)
    areas = areas[areas >= 4]
    thick = (rpe - ilm).astype(float)
    return np.array([q05, q25, med, q75, float(v.std() / med), float((v < 0.5 * med).mean()),
                     float((v < 0.65 * med).mean()), float((v < 0.8 * med).mean()), float(areas.size),
                     float(areas.sum() / region.sum()), float(areas.max() / region.sum()) if areas.size else 0.0,
                     float(thick.mean() / img.shape[0]), float(thick.std() / img.shape[0]),
                     float(thick.max() / img.shape[0])])


def features_of(prep: Any, batch: int = 64) -> np.ndarray:
    """Features of every B-scan of a Prepared set (read batch by batch for lazy sets)."""
    import torch

    out = []
    for i in range(0, len(prep), batch):
        x, _, _ = prep.batch(torch.arange(i, min(i + batch, len(prep))), torch.device("cpu"))
        out += [pocket_features(im[0].numpy()) for im in x]
    return np.asarray(out, dtype=np.float64)


def fit_pocket_lr(f_train: np.ndarray, y_train: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Fit the standardised logistic regression; returns its parameters as plain lists (JSON-able, so a
    checkpoint can carry the baseline fitted on the same training part as its network)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y_train).astype(int)
    if np.unique(y).size < 2:
        return {"constant": float(y.mean()) if y.size else 0.5}
    sc = StandardScaler().fit(f_train)
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    lr.fit(sc.transform(f_train), y)
    return {"mean": sc.mean_.tolist(), "scale": sc.scale_.tolist(), "coef": lr.coef_[0].tolist(),
            "intercept": float(lr.intercept_[0]), "features": list(FEATURES)}


def apply_pocket_lr(params: dict[str, Any], f: np.ndarray) -> np.ndarray:
    """Fluid probability of feature rows `f` under fitted parameters (fit_pocket_lr)."""
    f = np.asarray(f, dtype=np.float64)
    if "constant" in params:
        return np.full(len(f), params["constant"])
    z = (f - np.asarray(params["mean"])) / np.asarray(params["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(params["coef"]) + params["intercept"])))


def pocket_scores(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fluid probability of the test B-scans from a logistic regression fitted on the training features."""
    return apply_pocket_lr(fit_pocket_lr(f_train, y_train, seed), f_test)
