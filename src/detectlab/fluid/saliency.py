"""Grad-CAM saliency of the "fluid" decision, and whether its peak falls inside the fluid mask.

Grad-CAM (Selvaraju et al. 2017) on the architecture's last feature map: the gradient of the fluid-minus-
no-fluid logit, averaged over the map, weights its channels; the positive part of the weighted sum is the
saliency, one value per cell of the feature map (3 x 7 cells for resnet18 at 80 x 200 px), upsampled to the
input for display. The peak is the cell of largest saliency, placed at that cell's centre in input pixels
(the upsampled map is flat near the borders, so its first maximum would sit on the image edge). On B-scans
with a fluid mask:

* ``hit``: the peak point lies on a fluid pixel; chance: the share of the input covered by fluid;
* ``cell_hit``: the peak cell holds any fluid; chance: the share of cells that hold fluid;
* for a model with a mask head (the mask-supervised variant), the same two for the peak of its fluid map
  (``seg_hits``, ``seg_cell_hits``): where the network itself says the fluid is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def gradcam(model: torch.nn.Module, x: torch.Tensor, coarse: bool = False) -> torch.Tensor:
    """Saliency in [0, 1] (each map divided by its maximum) for inputs x (N, 1, H, W), on x's device:
    (N, h, w) at the feature map's resolution with ``coarse``, else upsampled (bilinear) to (N, H, W)."""
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
        if not coarse:
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[:, 0]
        return cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    finally:
        model.train(was_training)


def peak_points(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 2) input pixel (row, col) of the centre of each map's largest cell; cam (N, h, w), input `size`."""
    h, w = cam.shape[-2:]
    arg = cam.flatten(1).argmax(1)
    rows = ((arg // w).float() + 0.5) * size[0] / h
    cols = ((arg % w).float() + 0.5) * size[1] / w
    return torch.stack([rows.floor().long().clamp(0, size[0] - 1), cols.floor().long().clamp(0, size[1] - 1)], 1)


def peak_in_mask(cam: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    """Per map (cam (N, h, w), any resolution; mask (N, 1, H, W) or (N, H, W), > 0 on fluid pixels):
    ``hit`` (the peak point is a fluid pixel), ``chance`` (fluid share of the input), ``cell_hit`` (the peak
    cell holds fluid), ``cell_chance`` (share of cells holding fluid), ``peak`` (row, col in input pixels).
    A map that is zero everywhere has no peak and is never a hit."""
    n, (hh, ww) = cam.shape[0], mask.shape[-2:]
    m = mask.reshape(n, hh, ww) > 0
    pk = peak_points(cam, (hh, ww))
    has_peak = cam.flatten(1).amax(1) > 0
    hit = m[torch.arange(n, device=m.device), pk[:, 0], pk[:, 1]] & has_peak
    cells = F.adaptive_max_pool2d(m[:, None].float(), cam.shape[-2:])[:, 0] > 0  # cells touching fluid
    arg = cam.flatten(1).argmax(1)
    cell_hit = cells.flatten(1).gather(1, arg[:, None])[:, 0] & has_peak
    return {"hit": hit.cpu().numpy(), "chance": m.flatten(1).float().mean(1).cpu().numpy(),
            "cell_hit": cell_hit.cpu().numpy(), "cell_chance": cells.flatten(1).float().mean(1).cpu().numpy(),
            "peak": pk.cpu().numpy()}


def saliency_on(model: torch.nn.Module, prep: Any, device: torch.device, batch: int = 16) -> dict[str, Any]:
    """Grad-CAM peaks on every B-scan of a Prepared set that has fluid inside the input (masks needed)."""
    if prep.m is None:
        return {"n": 0}
    idx = torch.nonzero(prep.m.flatten(1).amax(1) > 0)[:, 0]
    parts: dict[str, list] = {"hit": [], "chance": [], "cell_hit": [], "cell_chance": [], "seg_hit": [],
                              "seg_cell_hit": []}
    has_seg = getattr(model, "seg", None) is not None
    for i in range(0, len(idx), batch):
        x, _, m = prep.batch(idx[i:i + batch], device)
        r = peak_in_mask(gradcam(model, x, coarse=True), m)
        for k in ("hit", "chance", "cell_hit", "cell_chance"):
            parts[k].append(r[k])
        if has_seg:  # where the mask head (mask-supervised variant) puts the fluid
            was = model.training
            model.eval()
            with torch.no_grad():
                seg = torch.sigmoid(model.forward_all(x)["seg"])[:, 0]
            model.train(was)
            rs = peak_in_mask(seg, m)
            parts["seg_hit"].append(rs["hit"])
            parts["seg_cell_hit"].append(rs["cell_hit"])
    if not parts["hit"]:
        return {"n": 0}
    h, c = np.concatenate(parts["hit"]), np.concatenate(parts["chance"])
    ch, cc = np.concatenate(parts["cell_hit"]), np.concatenate(parts["cell_chance"])
    out = {"n": int(len(h)), "hits": int(h.sum()), "share": float(h.mean()), "chance": float(c.mean()),
           "cell_hits": int(ch.sum()), "cell_share": float(ch.mean()), "cell_chance": float(cc.mean()),
           "index": idx.tolist(), "hit": h.astype(int).tolist()}
    if has_seg:
        sh, sc = np.concatenate(parts["seg_hit"]), np.concatenate(parts["seg_cell_hit"])
        out.update({"seg_hits": int(sh.sum()), "seg_cell_hits": int(sc.sum())})
    return out
