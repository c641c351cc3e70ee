"""Diff-Gated network: an RGB branch and a frame-difference branch gated by a sigmoid, 5 conv + 3 FC layers.

Descends from the Flow-Gated Network of RWF-2000 (Cheng et al.), with frame differences in place of
optical flow (as Diff-Gated in Quentin et al. 2023, the paper's [3]). Along every input path there are five
3-D convolutional layers (two per branch, three after the gate) and three fully connected layers:

    input (B, 3, 16, S, S) RGB in [0, 1]; z = (x - 0.45) / 0.25 (``input_norm="fixed"``, the paper preset) or the
    chunk's own per-channel standardisation (``"chunk"``); rgb = z, diff = (z[:, :, 1:] - z[:, :, :-1]) zero-padded to 16
    rgb.conv1  Conv3d(3, w, 1x3x3) ReLU MaxPool(1,2,2)     diff.conv1 Conv3d(3, w, 1x3x3) ReLU MaxPool(1,2,2)
    rgb.conv2  Conv3d(w, 2w, 3x3x3) ReLU MaxPool(1,2,2)    diff.conv2 Conv3d(w, 2w, 3x3x3) Sigmoid MaxPool(1,2,2)
    gate = rgb * diff                                      (the motion branch decides where to look)
    merge.conv3 Conv3d(2w, 4w, 3x3x3) ReLU MaxPool(2,2,2)  16 -> 8 frames
    merge.conv4 Conv3d(4w, 4w, 3x3x3) ReLU MaxPool(2,2,2)  8 -> 4 frames
    merge.conv5 Conv3d(4w, 8w, 3x3x3) ReLU, then max over the remaining 4 frames and mean over space
    head.fc1 Linear(8w, 128) ReLU Dropout   head.fc2 Linear(128, 32) ReLU   head.fc3 Linear(32, 2)

``norm="group"`` puts a GroupNorm (4 groups) after every convolution (before its ReLU / the gate's sigmoid):
normalisation that works at the small batches of a client. The paper preset keeps ``norm="none"``.

FedPer's split: ``base.*`` = the five convolutional layers (shared), ``head.*`` = the three FC layers
(personal). :data:`BASE_PREFIX` / :data:`HEAD_PREFIX` name them.
"""

from __future__ import annotations

import torch
from torch import nn

BASE_PREFIX = "base."
#: frame differences are small next to pixel values; scaled so both branches see unit-scale inputs
DIFF_SCALE = 4.0
HEAD_PREFIX = "head."


#: "group": GroupNorm after every convolution; "group_rgb": only in the RGB (appearance) branch, so the motion
#: branch's gate and the blocks after it keep how much a chunk moves (GroupNorm there divides it out per chunk)
NORMS = ("none", "group", "group_rgb")
INPUT_NORMS = ("fixed", "chunk")


def _norm_layer(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    return nn.Identity()


def standardise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The RGB branch's input. ``fixed``: (x - 0.45) / 0.25 for every chunk (the paper preset);
    ``chunk``: each chunk's own per-channel mean and SD over its frames and pixels (a chunk of a dark camera
    and one of a bright camera look alike; a constant chunk stays 0)."""
    if kind == "chunk":
        m = x.mean((2, 3, 4), keepdim=True)
        sd = x.std((2, 3, 4), keepdim=True)
        return (x - m) / (sd + 1e-2)
    return (x - 0.45) / 0.25


class DiffGatedBase(nn.Module):
    def __init__(self, width: int = 8, norm: str = "none", input_norm: str = "fixed", groups: int = 4):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        w = width
        self.input_norm = input_norm

        def block(cin: int, cout: int, k, last: nn.Module, pool, normed: bool) -> list[nn.Module]:
            pad = tuple(q // 2 for q in k) if isinstance(k, tuple) else k // 2
            layers = [nn.Conv3d(cin, cout, k, padding=pad)]
            if normed:
                layers.append(_norm_layer("group", cout, groups))
            layers.append(last)
            if pool is not None:
                layers.append(nn.MaxPool3d(pool))
            return layers

        def branch(last: nn.Module, normed: bool) -> nn.Sequential:
            return nn.Sequential(*block(3, w, (1, 3, 3), nn.ReLU(inplace=True), (1, 2, 2), normed),
                                 *block(w, 2 * w, 3, last, (1, 2, 2), normed))

        everywhere = norm == "group"
        self.rgb = branch(nn.ReLU(inplace=True), norm != "none")
        self.diff = branch(nn.Sigmoid(), everywhere)
        self.merge = nn.Sequential(*block(2 * w, 4 * w, 3, nn.ReLU(inplace=True), 2, everywhere),
                                   *block(4 * w, 4 * w, 3, nn.ReLU(inplace=True), 2, everywhere),
                                   *block(4 * w, 8 * w, 3, nn.ReLU(inplace=True), None, everywhere))
        self.out_features = 8 * w
        for m in self.modules():  # He init keeps the signal alive through the five conv layers
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = standardise(x, self.input_norm)
        # motion: frame differences of the standardised chunk (``fixed``: 4 (x[t+1] - x[t]), as before)
        d = (z[:, :, 1:] - z[:, :, :-1]) * (DIFF_SCALE * 0.25)
        d = torch.cat([d, torch.zeros_like(z[:, :, :1])], 2)
        g = self.rgb(z) * self.diff(d)
        h = self.merge(g)
        return h.amax(2).mean((2, 3))  # temporal max pooling over the last 4 frames, spatial mean


class DiffGatedHead(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, int] = (128, 32), n_classes: int = 2, dropout: float = 0.2):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], n_classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = self.drop(torch.relu(self.fc1(f)))
        return self.fc3(torch.relu(self.fc2(f)))


class DiffGated(nn.Module):
    """Input (B, 3, 16, S, S) in [0, 1]; output (B, 2) logits (index 1 = fight)."""

    def __init__(self, width: int = 8, hidden: tuple[int, int] = (128, 32), dropout: float = 0.2,
                 norm: str = "none", input_norm: str = "fixed", groups: int = 4):
        super().__init__()
        self.config = {"arch": "DiffGated", "width": width, "hidden": list(hidden), "dropout": dropout,
                       "norm": norm, "input_norm": input_norm, "groups": groups}
        self.base = DiffGatedBase(width, norm, input_norm, groups)
        self.head = DiffGatedHead(self.base.out_features, tuple(hidden), 2, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, T, H, W) input, got {tuple(x.shape)}")
        return self.head(self.base(x))


def build_model(cfg: dict | None = None) -> DiffGated:
    cfg = dict(cfg or {})
    return DiffGated(width=int(cfg.get("width", 8)), hidden=tuple(cfg.get("hidden", (128, 32))),
                     dropout=float(cfg.get("dropout", 0.2)), norm=str(cfg.get("norm", "none")),
                     input_norm=str(cfg.get("input_norm", "fixed")), groups=int(cfg.get("groups", 4)))


def split_state(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base, head) parts of a state dict."""
    base = {k: v for k, v in sd.items() if k.startswith(BASE_PREFIX)}
    head = {k: v for k, v in sd.items() if k.startswith(HEAD_PREFIX)}
    return base, head


def param_counts(model: DiffGated) -> dict[str, int]:
    base = sum(p.numel() for n, p in model.named_parameters() if n.startswith(BASE_PREFIX))
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(HEAD_PREFIX))
    return {"base": base, "head": head, "total": base + head}


def layer_table(model: DiffGated) -> list[dict]:
    """One row per parameterised layer: name, shape of the weight, parameters, part (base/head)."""
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv3d, nn.Linear, nn.GroupNorm)):
            n = sum(p.numel() for p in mod.parameters())
            rows.append({"layer": name, "type": type(mod).__name__, "weight": "x".join(map(str, mod.weight.shape)),
                         "params": n, "part": "base (shared)" if name.startswith("base") else "head (personal)"})
    return rows
