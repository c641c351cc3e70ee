"""The weighted-stego linear-predictor statistic (paper's Eq. 3), its threshold detector and its ROC.

For each interior pixel i (valid convolution: the one-pixel border is not scored), on the 0-255 scale

    x̂_i = x_i * K,   K = [[-1/4, 1/2, -1/4], [1/2, 0, 1/2], [-1/4, 1/2, -1/4]]
    σ²_i = Σ_4-neighbours (v - mean)² / d      d = 3 (the authors' weight matrix, default) or 4
    w_i  = 1 / (σ²_i + 5), normalised so that Σ_i w_i = 1 over the image
    p̂    = (1/n) Σ_i |w_i (x_i - x̂_i)|

An image is flagged adversarial when p̂ exceeds the threshold; `fit` sets it to the maximum over the
training images (the paper's choice) and also keeps the 0.9999 and 0.999 quantiles.

Two implementations: `statistic` (autograd, float64-safe, for the adaptive attacker and as the readable
reference) and `statistic_fast` (no autograd, the detector's hot path). The fast one works on 8-bit
images: 4(x - x̂) is the separable second difference [1,-2,1]ᵀ⊗[1,-2,1], computed on the flattened
chunk with ±1/±28 shifts so that every elementwise op runs on contiguous memory, and the border
positions get weight 0. With `compiled=True` the same formula is fused into one loop by torch.compile.

Images are delivered as 8-bit files, so scored images are quantised first: `quantize(x, "round")`
(nearest 8-bit value, default), "floor" (the authors: `(adv * 255).astype(int)`) or "none".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from detectlab.core.errors import InputError

PIXEL_SCALE = 255.0
VARIANCE_CONSTANT = 5.0
VARIANCE_DIVISOR = 3  # the authors' getWeightMatrix divides the 4-neighbour sum of squares by 3
QUANTIZE = ("round", "floor", "none")
THRESHOLDS = {"max": 1.0, "q0.9999": 0.9999, "q0.999": 0.999}


def quantize(x: torch.Tensor, mode: str = "round") -> torch.Tensor:
    """Images in [0, 1] as a valid 8-bit image would store them (returned in [0, 1], x's dtype).

    'round': nearest level; 'floor': `floor(x * 255)` in float32 as the authors' numpy code did;
    'none': x unchanged.
    """
    if mode == "none":
        return x
    if mode == "round":
        return torch.round(x * PIXEL_SCALE).div_(PIXEL_SCALE)
    if mode == "floor":
        return torch.floor(x.float() * PIXEL_SCALE).div_(PIXEL_SCALE).to(x.dtype)
    raise ValueError(f"unknown quantisation '{mode}' (one of {', '.join(QUANTIZE)})")


def to_uint8(x: torch.Tensor, mode: str = "round") -> torch.Tensor:
    """[0, 1] floats -> uint8 levels with the given rule ('none' rounds: a uint8 image must hold integers)."""
    if x.dtype == torch.uint8:
        return x
    if mode == "floor":
        return torch.floor(x.float() * PIXEL_SCALE).clamp_(0, 255).to(torch.uint8)
    return torch.round(x * PIXEL_SCALE).clamp_(0, 255).to(torch.uint8)


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected grayscale images (N,1,H,W), got {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3 or x.shape[-1] < 3 or x.shape[-2] < 3:
        raise ValueError(f"expected images of at least 3x3, got {tuple(x.shape)}")
    return x


def statistic(x: torch.Tensor, scale: float = PIXEL_SCALE, c: float = VARIANCE_CONSTANT,
              divisor: int = VARIANCE_DIVISOR) -> torch.Tensor:
    """p̂ for each image of a batch (N, 1, H, W) or (N, H, W) in [0, 1]; differentiable in x.

    Returns a (N,) tensor in the dtype of x (uint8 input is read as 0-255 levels).
    """
    x = _check(x)
    x = x.float() if x.dtype == torch.uint8 else x * scale
    ctr = x[:, 1:-1, 1:-1]
    up, down = x[:, :-2, 1:-1], x[:, 2:, 1:-1]
    left, right = x[:, 1:-1, :-2], x[:, 1:-1, 2:]
    cross = up + down + left + right
    diag = x[:, :-2, :-2] + x[:, :-2, 2:] + x[:, 2:, :-2] + x[:, 2:, 2:]
    pred = 0.5 * cross - 0.25 * diag
    mean4 = cross * 0.25
    var = ((up - mean4) ** 2 + (down - mean4) ** 2 + (left - mean4) ** 2 + (right - mean4) ** 2) / divisor
    w = 1.0 / (var + c)
    w = w / w.sum(dim=(1, 2), keepdim=True)
    return (w * (ctr - pred)).abs().mean(dim=(1, 2))


_MASKS: dict[tuple[int, int], torch.Tensor] = {}


def _interior_mask(h: int, w: int) -> torch.Tensor:
    if (h, w) not in _MASKS:
        m = torch.zeros(h, w)
        m[1:-1, 1:-1] = 1.0
        _MASKS[(h, w)] = m.reshape(-1)
    return _MASKS[(h, w)]


def _fast_chunk(xc: torch.Tensor, buf: torch.Tensor, c: float, divisor: int) -> torch.Tensor:
    """p̂ of a chunk (m, H, W) of 0-255 levels (uint8 or float), through a flat work buffer.

    Position k of the flattened chunk has neighbours k±1 (left/right) and k±W (up/down); the
    buffer holds W+1 zeros of margin on each side, so every shift is an in-bounds contiguous slice.
    Values computed at border positions mix neighbouring images: their weight is set to 0.
    """
    m, h, w = xc.shape
    p = h * w
    n_inner = (h - 2) * (w - 2)
    L = m * p
    o = w + 1
    x = buf[: L + 2 * o]
    x[:o].zero_()
    x[o + L:].zero_()
    x[o: o + L].copy_(xc.reshape(-1))
    # |4(x - x̂)| = |D_v D_h x| with D = [1, -2, 1]
    dh = x[o - 1 - w: o - 1 + L + w] + x[o + 1 - w: o + 1 + L + w]
    dh.sub_(x[o - w: o + L + w], alpha=2.0)
    r = dh[:L] + dh[2 * w:]
    r.sub_(dh[w: w + L], alpha=2.0).abs_()
    # (4 σ² d / 4) · 4 = 4 Σv² - (Σv)² = 16 · Σ(v - mean)² / 4
    cross = x[o - 1: o - 1 + L] + x[o + 1: o + 1 + L]
    cross += x[o - w: o - w + L]
    cross += x[o + w: o + w + L]
    sq = x * x
    s2 = sq[o - 1: o - 1 + L] + sq[o + 1: o + 1 + L]
    s2 += sq[o - w: o - w + L]
    s2 += sq[o + w: o + w + L]
    # w ∝ 1 / (Σ(v-mean)²/d + c) = 4d / (4Σv² - (Σv)² + 4dc); the factor 4d cancels in the normalisation
    wt = s2.mul_(4.0).addcmul_(cross, cross, value=-1.0).clamp_min_(0.0).add_(4.0 * divisor * c).reciprocal_()
    wt = wt.view(m, p).mul_(_interior_mask(h, w).to(wt.device))
    return torch.linalg.vecdot(wt, r.view(m, p)) / wt.sum(1) / (4.0 * n_inner)


def _fused(x: torch.Tensor, c: float, divisor: int) -> torch.Tensor:
    """The formula in one expression for torch.compile (x: (m, H, W) float 0-255 levels)."""
    ctr = x[:, 1:-1, 1:-1]
    up, down = x[:, :-2, 1:-1], x[:, 2:, 1:-1]
    left, right = x[:, 1:-1, :-2], x[:, 1:-1, 2:]
    cross = up + down + left + right
    s2 = up * up + down * down + left * left + right * right
    diag = x[:, :-2, :-2] + x[:, :-2, 2:] + x[:, 2:, :-2] + x[:, 2:, 2:]
    r = (4.0 * ctr - 2.0 * cross + diag).abs()
    wt = 1.0 / ((4.0 * s2 - cross * cross).clamp_min(0.0) + 4.0 * divisor * c)
    n_inner = (x.shape[1] - 2) * (x.shape[2] - 2)
    return (wt * r).sum((1, 2)) / wt.sum((1, 2)) / (4.0 * n_inner)


_COMPILED = None


def _compiled_kernel():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_fused, dynamic=True)
    return _COMPILED


def statistic_fast(x: torch.Tensor, batch_size: int = 256, c: float = VARIANCE_CONSTANT,
                   divisor: int = VARIANCE_DIVISOR, compiled: bool = False) -> torch.Tensor:
    """p̂ for a large set without autograd (float32 result on the CPU, one value per image).

    x: uint8 levels (N,[1,]H,W) (the fast path: exact integer arithmetic in float32) or floats in
    [0, 1] (scaled by 255). `compiled=True` fuses the formula with torch.compile (a one-off compile of
    ~30 s; worth it for millions of images).
    """
    x = _check(x)
    n, h, w = x.shape
    out = torch.empty(n, dtype=torch.float32)
    if n == 0:
        return out
    scale = 1.0 if x.dtype == torch.uint8 else PIXEL_SCALE
    with torch.no_grad():
        if compiled:
            kern = _compiled_kernel()
            step = max(batch_size, 1000)
            for i in range(0, n, step):
                xc = x[i: i + step].float()
                out[i: i + len(xc)] = kern(xc if scale == 1.0 else xc * scale, c, divisor).cpu()
            return out
        buf = torch.empty(min(batch_size, n) * h * w + 2 * (w + 1), device=x.device)
        for i in range(0, n, batch_size):
            xc = x[i: i + batch_size]
            if scale != 1.0:
                xc = xc.float() * scale
            out[i: i + len(xc)] = _fast_chunk(xc, buf, c, divisor).cpu()
    return out


# ---------------------------------------------------------------------------------------------- ROC


def roc_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Area under the ROC curve of 'score > t means positive': P(pos > neg) + ½ P(pos = neg)."""
    neg, pos = np.asarray(neg, float).ravel(), np.asarray(pos, float).ravel()
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    not_above = np.searchsorted(neg_sorted, pos, side="right")
    return float((below.sum() + 0.5 * (not_above - below).sum()) / (len(neg) * len(pos)))


def threshold_at_fpr(neg: np.ndarray, fpr: float) -> float:
    """The smallest threshold t with mean(neg > t) <= fpr (t is one of the negative scores)."""
    neg = np.sort(np.asarray(neg, float).ravel())[::-1]
    if len(neg) == 0:
        raise ValueError("no negative scores")
    k = int(math.floor(fpr * len(neg) + 1e-9))  # false positives allowed
    return float(neg[min(k, len(neg) - 1)])


def tpr_at_fpr(neg: np.ndarray, pos: np.ndarray, fpr: float) -> dict[str, float]:
    """TPR and the FPR actually reached at the threshold `threshold_at_fpr(neg, fpr)`."""
    t = threshold_at_fpr(neg, fpr)
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    return {"threshold": t, "fpr": float((neg > t).mean()), "tpr": float((pos > t).mean())}


def roc_curve(neg: np.ndarray, pos: np.ndarray, max_points: int = 400) -> dict[str, list[float]]:
    """(fpr, tpr) at every distinct score, thinned to at most `max_points` points for plotting/JSON."""
    neg, pos = np.asarray(neg, float).ravel(), np.asarray(pos, float).ravel()
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    neg_s, pos_s = np.sort(neg), np.sort(pos)
    fpr = 1.0 - np.searchsorted(neg_s, thr, side="right") / len(neg)
    tpr = 1.0 - np.searchsorted(pos_s, thr, side="right") / len(pos)
    fpr, tpr = np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


# ------------------------------------------------------------------------------------------ detector


@dataclass
class SteganalysisDetector:
    """Threshold detector on the linear-predictor statistic.

    >>> det = SteganalysisDetector().fit(train_images)       # threshold = max over training images
    >>> report, flagged = det.detect(test_images)             # report["statistic"], bool tensor
    """

    threshold: float | None = None
    c: float = VARIANCE_CONSTANT
    divisor: int = VARIANCE_DIVISOR
    rule: str = "max"
    n_fit: int = 0
    thresholds: dict[str, float] = field(default_factory=dict)
    fit_stats: dict[str, float] = field(default_factory=dict)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return statistic_fast(x, c=self.c, divisor=self.divisor)

    def fit(self, x: torch.Tensor, rule: str | None = None) -> "SteganalysisDetector":
        """Set the threshold from benign training images: their max ('max', the paper's) or the 0.9999 / 0.999
        quantile ('q0.9999', 'q0.999': at most 0.01 % / 0.1 % of the training images above it)."""
        if len(x) == 0:
            raise InputError("detector.fit", "no training images")
        rule = rule or self.rule
        if rule not in THRESHOLDS:
            raise ValueError(f"unknown threshold rule '{rule}' (one of {', '.join(THRESHOLDS)})")
        s = self.score(x).double()
        if not torch.isfinite(s).all():
            raise InputError("detector.fit", "training images give a non-finite statistic (NaN in the images?)")
        # the quantile rules: the smallest training value with at most (1 - q)·n training images above it
        self.thresholds = {name: float(s.max()) if q >= 1.0 else threshold_at_fpr(s.numpy(), 1.0 - q)
                           for name, q in THRESHOLDS.items()}
        self.rule = rule
        self.threshold = self.thresholds[rule]
        self.n_fit = len(x)
        top = torch.topk(s, min(2, len(s))).values
        self.fit_stats = {"mean": float(s.mean()), "sd": float(s.std()) if len(s) > 1 else 0.0,
                          "max": float(top[0]), "second_max": float(top[-1]),
                          "p99": float(torch.quantile(s, 0.99)), **{f"threshold_{k}": v for k, v in self.thresholds.items()}}
        return self

    def detect(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.threshold is None:
            raise RuntimeError("detector is not fitted: call fit() or set threshold")
        s = self.score(x)
        return {"statistic": s}, s > self.threshold
