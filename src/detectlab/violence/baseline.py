"""Hand-crafted baselines on the same splits: the majority class per client and a motion-energy logistic
regression (ViF-like).

Motion-energy features of a 16-frame chunk (grey levels in [0, 1], d_t = |g[t+1] - g[t]|, e_t = mean d_t):
log mean, SD and max of e_t; log mean |e[t+1] - e[t]| (how abruptly the motion changes); log mean of each
d_t's 90th percentile; the moving share (d_t > 0.06); the spatial concentration SD/mean of the mean motion
map; and, as in Violent Flows (Hassner et al. 2012) with frame differences in place of optical-flow
magnitudes, a 5-bin histogram of the per-pixel frequency of "significant" magnitude changes
(|d[t+1] - d[t]| above that pair's mean change) and the log mean change. A standardised L2 logistic regression on these features
(scikit-learn) gives a fight probability per chunk; a clip's score is the mean of its chunks' scores, as for the
networks.
"""

from __future__ import annotations

import numpy as np

from detectlab.core.baselines import majority_scores
from detectlab.violence.data import CHUNK, ClipSet

N_FEATURES = 13
_GREY = np.asarray([0.299, 0.587, 0.114], np.float32)


def motion_features(chunks: np.ndarray) -> np.ndarray:
    """(N, 16, H, W, 3) uint8 chunks -> (N, 13) float features (see the module docstring)."""
    x = np.asarray(chunks)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected (N, T, H, W, 3) chunks, got {x.shape}")
    out = np.zeros((len(x), N_FEATURES), np.float64)
    for i, c in enumerate(x):
        g = (c.astype(np.float32) @ _GREY) / 255.0  # (T, H, W)
        d = np.abs(np.diff(g, axis=0))  # (T-1, H, W)
        e = d.mean((1, 2))
        dd = np.abs(np.diff(d, axis=0))  # change of motion magnitude
        sig = dd > dd.mean((1, 2), keepdims=True)
        vif = sig.mean(0)  # per-pixel frequency of significant changes
        hist = np.histogram(vif, bins=5, range=(0.0, 1.0))[0] / vif.size
        mmap = d.mean(0)
        out[i] = [np.log(e.mean() + 1e-4), np.log(e.std() + 1e-4), np.log(e.max() + 1e-4),
                  np.log(np.abs(np.diff(e)).mean() + 1e-4),
                  np.log(np.percentile(d.reshape(len(d), -1), 90, axis=1).mean() + 1e-4),
                  float((d > 0.06).mean()), float(mmap.std() / (mmap.mean() + 1e-4)), *hist,
                  np.log(dd.mean() + 1e-4)]
    return out


def clip_chunk_features(clips: ClipSet, stride: int = CHUNK, batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, clip index) of the fixed chunks of `clips`."""
    cl, st = clips.chunk_index(stride)
    feats = [motion_features(clips.windows(cl[i:i + batch], st[i:i + batch])) for i in range(0, len(cl), batch)]
    f = np.concatenate(feats) if feats else np.zeros((0, N_FEATURES))
    return f, clips.label[cl], cl


class MotionLR:
    """Standardised features + L2 logistic regression; constant (training share) when one class is present."""

    def __init__(self, c: float = 1.0):
        self.c = float(c)
        self.model = None
        self.const: float | None = None

    def fit(self, f: np.ndarray, y: np.ndarray) -> "MotionLR":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        y = np.asarray(y, int)
        if len(np.unique(y)) < 2:
            self.const = float(majority_scores(y, 1)[0])
            return self
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=2000)).fit(f, y)
        return self

    def predict_proba(self, f: np.ndarray) -> np.ndarray:
        if self.model is None:
            if self.const is None:
                raise RuntimeError("MotionLR is not fitted")
            return np.full(len(f), self.const)
        return self.model.predict_proba(f)[:, 1]


def majority_client_scores(y_train: np.ndarray, n_test: int) -> np.ndarray:
    """The majority baseline of one client: the fight share of its own training chunks, for every test chunk."""
    return majority_scores(y_train, n_test)
