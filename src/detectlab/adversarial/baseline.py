"""The peer detector, feature squeezing (Xu, Evans, Qi, NDSS 2018), and the trivial detector.

Feature squeezing compares the classifier's softmax on an image with its softmax on "squeezed"
copies: bit-depth reduction (MNIST: 1 bit, i.e. `round(x)`) and a median filter (MNIST: 2x2). The
score is the largest L1 distance over the squeezers; the threshold is set on benign training images
so that a chosen share of them (5 % in the paper) is flagged. Their best MNIST detector is exactly
this joint one (1-bit depth + 2x2 median). The median filter follows scipy.ndimage.median_filter
(the authors' implementation): mode 'reflect' (edge repeated), a size-k window covering offsets
-k//2 .. (k-1)//2, and the element of rank k²//2 (the upper median for even k).

The trivial detector flags nothing (the majority class of a benign training set): TPR 0, FPR 0,
AUC 0.5. It is the floor every detector row must beat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from detectlab.adversarial.detector import threshold_at_fpr
from detectlab.core.baselines import majority_scores


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce [0, 1] images to 2**bits levels: round(x * (2^b - 1)) / (2^b - 1), as in Xu et al."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bit depth {bits} outside 1..8")
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def _reflect_index(n: int, before: int, after: int, device) -> torch.Tensor:
    idx = torch.arange(-before, n + after, device=device)
    idx = torch.where(idx < 0, -idx - 1, idx)
    return torch.where(idx >= n, 2 * n - idx - 1, idx)


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """scipy.ndimage.median_filter(x, size=(1, 1, size, size), mode='reflect') for (N, C, H, W) tensors."""
    if size < 1:
        raise ValueError(f"median filter size {size} < 1")
    if size == 1:
        return x.clone()
    n, ch, h, w = x.shape
    before, after = size // 2, (size - 1) // 2
    xp = x[:, :, _reflect_index(h, before, after, x.device)][:, :, :, _reflect_index(w, before, after, x.device)]
    patches = xp.unfold(2, size, 1).unfold(3, size, 1).reshape(n, ch, h, w, size * size)
    return patches.sort(dim=-1).values[..., (size * size) // 2]


@torch.no_grad()
def _softmax(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.cat([torch.softmax(model(x[i: i + batch_size].to(dev)).float(), 1).cpu()
                      for i in range(0, len(x), batch_size)])


@dataclass
class FeatureSqueezing:
    """Joint feature-squeezing detector for one classifier.

    >>> fs = FeatureSqueezing(model).fit(train_images, fpr=0.05)
    >>> scores, flagged = fs.score(test_images), fs.detect(test_images)
    """

    model: nn.Module
    bits: int = 1
    median: tuple[int, ...] = (2,)
    batch_size: int = 1000
    threshold: float | None = None
    fit_fpr: float | None = None
    fit_stats: dict[str, float] = field(default_factory=dict)

    def squeezers(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        if self.bits < 8:
            out.append((f"bit-depth-{self.bits}", lambda t: bit_depth(t, self.bits)))
        out += [(f"median-{k}x{k}", lambda t, k=k: median_filter(t, k)) for k in self.median]
        if not out:
            raise ValueError("feature squeezing needs at least one squeezer")
        return out

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """max over squeezers of ||softmax(x) - softmax(squeeze(x))||_1, per image (CPU float32)."""
        was = self.model.training
        self.model.eval()
        try:
            p = _softmax(self.model, x, self.batch_size)
            best = torch.zeros(len(x))
            for _, sq in self.squeezers():
                d = (p - _softmax(self.model, sq(x), self.batch_size)).abs().sum(1)
                best = torch.maximum(best, d)
        finally:
            self.model.train(was)
        return best

    def fit(self, x: torch.Tensor, fpr: float = 0.05) -> "FeatureSqueezing":
        """Threshold at the (1 - fpr) quantile of the benign training scores (Xu et al. use fpr = 5 %)."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr {fpr} outside (0, 1)")
        s = self.score(x).double()
        self.threshold = threshold_at_fpr(s.numpy(), fpr)
        self.fit_fpr = fpr
        self.fit_stats = {"n": len(x), "mean": float(s.mean()), "threshold": self.threshold,
                          "train_fpr": float((s > self.threshold).double().mean())}
        return self

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise RuntimeError("feature squeezing is not fitted: call fit()")
        return self.score(x) > self.threshold


def trivial_scores(n: int) -> np.ndarray:
    """The detector that flags nothing: a constant score (every image ranks equal: AUC 0.5, TPR 0, FPR 0)."""
    return majority_scores(np.zeros(1, dtype=int), n)  # a benign-only training set: positive share 0
