"""The hand-crafted baseline every Table I carries: the 8-30 Hz log-RMS of a window + logistic regression,
thresholded at the F1-optimal point of its own training predictions; and the majority-class baseline.

The feature is one number per window: the log of the RMS over all 18 channels and samples of the
CNN's input (band-passed, standardised the same way), i.e. "how large is the 8-30 Hz activity". One
feature keeps the baseline patient-independent: a per-channel version (18 weights) learns the
training patients' focal channels and inverts on a new patient (held-out AUC 0.00-0.04 for two of four
built-in patients, measured). The fitted model is three numbers saved as JSON beside the checkpoints,
so `evaluate` can score it on other data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core.baselines import majority_scores as core_majority
from detectlab.core.metrics import f1_optimal_threshold

NAME = "log-RMS 8-30 Hz + LR"
MAJORITY = "majority class"


def log_rms(X: np.ndarray, batch: int = 4096, norm: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(N, C, L) windows (an array or a memory map, read `batch` windows at a time) -> (N, 1): natural log
    of the RMS over all channels and samples of each window (a floor of 1e-6 keeps it finite), after the
    per-channel standardisation `norm` (centre, scale) when given."""
    out = np.empty((len(X), 1), np.float64)
    for i in range(0, len(X), batch):
        x = np.asarray(X[i: i + batch], dtype=np.float32)
        if norm is not None:
            x = (x - np.asarray(norm[0], np.float32)[None, :, None]) / np.asarray(norm[1], np.float32)[None, :, None]
        ms = np.einsum("ncl,ncl->n", x, x) / (x.shape[1] * x.shape[2])
        out[i: i + batch, 0] = 0.5 * np.log(np.maximum(ms, 1e-12))
    return out


class LogRMSBaseline:
    """The log-RMS feature standardised with the training mean/SD, class-balanced logistic regression
    (L2, C = 1), threshold = F1-optimal on the training predictions."""

    def __init__(self, c: float = 1.0):
        self.c = c
        self.mu: np.ndarray | None = None
        self.sd: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.threshold = 0.5

    def fit(self, F: np.ndarray, y: np.ndarray) -> "LogRMSBaseline":
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y).astype(int)
        self.mu, self.sd = F.mean(axis=0), F.std(axis=0)
        self.sd = np.where(self.sd > 0, self.sd, 1.0)
        if np.unique(y).size < 2:  # one class in training: a constant score of that class
            self.coef, self.intercept = np.zeros(F.shape[1]), (8.0 if y.mean() > 0.5 else -8.0)
        else:
            lr = LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000)
            lr.fit((F - self.mu) / self.sd, y)
            self.coef, self.intercept = lr.coef_[0].astype(float), float(lr.intercept_[0])
        self.threshold = f1_optimal_threshold(y, self.scores(F))
        return self

    def scores(self, F: np.ndarray) -> np.ndarray:
        z = ((F - self.mu) / self.sd) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": NAME, "mu": self.mu.tolist(), "sd": self.sd.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept, "threshold": self.threshold, "c": self.c}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LogRMSBaseline":
        b = cls(d.get("c", 1.0))
        b.mu, b.sd, b.coef = (np.asarray(d[k], float) for k in ("mu", "sd", "coef"))
        b.intercept, b.threshold = float(d["intercept"]), float(d["threshold"])
        return b


def save_baselines(path: Path, logrms: LogRMSBaseline, y_train: np.ndarray, **extra: Any) -> Path:
    """baselines.json: the fitted log-RMS LR and the training positive share (the majority baseline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {"logrms_lr": logrms.to_dict(), "majority": {"name": MAJORITY, "positive_share": float(np.mean(y_train))},
         **extra}
    path.write_text(json.dumps(d, indent=1))
    return path


def majority_scores(y_train: np.ndarray, n: int) -> np.ndarray:
    """The majority baseline's scores: the training positive share for every window (at threshold 0.5 it
    predicts the training majority class); core.baselines.majority_scores."""
    return core_majority(y_train, n)
