"""The Madry et al. MNIST CNN (the paper's "natural" and "secret" models share it)."""

from __future__ import annotations

import torch
from torch import nn


class MadryCNN(nn.Module):
    """conv 5x5x32 'same' + ReLU + maxpool 2, conv 5x5x64 'same' + ReLU + maxpool 2, fc 1024 + ReLU, fc 10.

    Input (N, 1, 28, 28) in [0, 1]; output logits (N, 10). 3,274,634 parameters.
    """

    def __init__(self, n_outputs: int = 10, in_chans: int = 1, size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 1024), nn.ReLU(inplace=True), nn.Linear(1024, n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
