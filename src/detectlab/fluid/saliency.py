"""Grad-CAM saliency of the "fluid" decision, and whether its peak falls inside the fluid mask.

Grad-CAM (Selvaraju et al. 2017) on the architecture's last feature map: the gradient of the fluid-minus-
no-fluid logit, averaged over the map, weights its channels; the positive part of the weighted sum,
upsampled to the input, is the saliency. On B-scans with a fluid mask, the peak of the saliency is a
"hit" when that input pixel holds fluid; the chance level is the share of the input that holds fluid
(where a uniformly random peak would land).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def gradcam(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) saliency in [0, 1] (each map divided by its maximum) for inputs x (N, 1, H, W), on x's device."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # the input requires grad, so the feature map does even when the parameters do not (frozen layers)
            out = model.forward_all(x.detach().requires_grad_(True))
            feats, logits = out["features"], out["logits"]
            score = (logits[:, 1] - logits[:, 0]).sum()
            (grad,) = torch.autograd.grad(score, feats)
        w = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((w * feats).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        return cam / peak
    finally:
        model.train(was_training)


def peak_in_mask(cam: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: (hit: the peak pixel holds fluid, chance: share of the input holding fluid, peak (row, col)).

    cam (N, H, W); mask (N, 1, H, W) or (N, H, W), > 0 where an input pixel holds fluid. A map that is zero
    everywhere has no peak and is never a hit.
    """
    m = (mask.reshape(cam.shape) > 0)
    flat = cam.flatten(1)
    arg = flat.argmax(1)
    hit = m.flatten(1).gather(1, arg[:, None])[:, 0] & (flat.amax(1) > 0)
    rows, cols = arg // cam.shape[-1], arg % cam.shape[-1]
    return (hit.cpu().numpy(), m.flatten(1).float().mean(1).cpu().numpy(),
            torch.stack([rows, cols], 1).cpu().numpy())


def saliency_on(model: torch.nn.Module, prep: Any, device: torch.device, batch: int = 16) -> dict[str, Any]:
    """Grad-CAM peaks on every B-scan of a Prepared set that has fluid inside the input (masks needed)."""
    if prep.m is None:
        return {"n": 0}
    idx = torch.nonzero(prep.m.flatten(1).amax(1) > 0)[:, 0]
    hits, chance = [], []
    for i in range(0, len(idx), batch):
        x, _, m = prep.batch(idx[i:i + batch], device)
        h, c, _ = peak_in_mask(gradcam(model, x), m)
        hits.append(h)
        chance.append(c)
    if not hits:
        return {"n": 0}
    h, c = np.concatenate(hits), np.concatenate(chance)
    return {"n": int(len(h)), "hits": int(h.sum()), "share": float(h.mean()), "chance": float(c.mean()),
            "index": idx.tolist(), "hit": h.astype(int).tolist()}
