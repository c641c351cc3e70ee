"""The paper's networks: CNN feature extractor G_f, label predictor G_y, domain classifier G_d behind a
gradient-reversal layer (stage 1), and the CNN-BiLSTM (stage 2).

Signal-shape arguments follow braindecode: ``n_chans`` (18), window length ``n_times`` (fs samples).
Heads output logits; the sigmoid / softmax of the paper are applied in the losses
(BCE-with-logits and cross-entropy: the same functions, numerically stable).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -lambda backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lam = float(lam)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    return GradReverse.apply(x, lam)


def dann_lambda(p: float, gamma: float = 10.0) -> float:
    """lambda = 2 / (1 + exp(-gamma p)) - 1 for training progress p in [0, 1] (Eq. 8)."""
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class CNNFeatures(nn.Module):
    """4 blocks of 2 x (Conv1d k3 s1 p1, BatchNorm, LeakyReLU 0.1) + MaxPool 2; global average pooling."""

    def __init__(self, n_chans: int = 18, channels: tuple[int, ...] = (5, 10, 20, 40), slope: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = n_chans
        for c in channels:
            for _ in range(2):
                layers += [nn.Conv1d(c_in, c, 3, 1, 1), nn.BatchNorm1d(c), nn.LeakyReLU(slope)]
                c_in = c
            layers.append(nn.MaxPool1d(2, 2))
        self.body = nn.Sequential(*layers)
        self.n_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> (B, 40)
        return self.body(x).mean(dim=-1)

    def fused(self) -> nn.Module:
        """An inference copy with every BatchNorm folded into its convolution (eval statistics): the same
        outputs, one pass over memory less per layer. Parameters stay on this module's device."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        layers, out, i = list(self.body), [], 0
        while i < len(layers):
            if isinstance(layers[i], nn.Conv1d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d):
                out.append(fuse_conv_bn_eval(layers[i].eval(), layers[i + 1].eval()))
                i += 2
            else:
                out.append(layers[i])
                i += 1
        return _MeanPool(nn.Sequential(*out)).eval()


class _MeanPool(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=-1)


class LabelPredictor(nn.Module):
    """Two FC layers without activation, 40 -> 20 -> 1 (a logit)."""

    def __init__(self, n_in: int = 40, hidden: int = 20):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(n_in, hidden), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f).squeeze(-1)


class DomainClassifier(nn.Module):
    """MLP 40 -> 40 (BN, LeakyReLU) -> 40 (BN, LeakyReLU) -> K patient logits."""

    def __init__(self, n_domains: int, n_in: int = 40, slope: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, n_in), nn.BatchNorm1d(n_in), nn.LeakyReLU(slope),
            nn.Linear(n_in, n_in), nn.BatchNorm1d(n_in), nn.LeakyReLU(slope),
            nn.Linear(n_in, n_domains),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class DANN(nn.Module):
    """Stage 1: G_f, G_y and (behind the GRL) G_d."""

    def __init__(self, n_domains: int, n_chans: int = 18, channels: tuple[int, ...] = (5, 10, 20, 40)):
        super().__init__()
        self.features = CNNFeatures(n_chans, channels)
        self.label = LabelPredictor(self.features.n_features)
        self.domain = DomainClassifier(max(1, n_domains), self.features.n_features)

    def forward(self, x: torch.Tensor, lam: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.label(f), self.domain(grad_reverse(f, lam))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        self.eval()
        return torch.cat([torch.sigmoid(self.label(self.features(x[i: i + batch])))
                          for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0, device=x.device)


class CNNBiLSTM(nn.Module):
    """Stage 2: the CNN per window, a 2-layer BiLSTM (20 units) over the window sequence, FC -> logit."""

    def __init__(self, n_chans: int = 18, channels: tuple[int, ...] = (5, 10, 20, 40), hidden: int = 20,
                 layers: int = 2):
        super().__init__()
        self.features = CNNFeatures(n_chans, channels)
        self.lstm = nn.LSTM(self.features.n_features, hidden, num_layers=layers, batch_first=True,
                            bidirectional=True)
        self.fc = nn.Linear(2 * hidden, 1)

    def forward(self, seqs: list[torch.Tensor]) -> torch.Tensor:
        """seqs: list of (T_k, C, L) sequences -> (B, T_max) logits (padding positions are junk)."""
        lengths = [len(s) for s in seqs]
        f = self.features(torch.cat(seqs))  # the CNN sees all windows of the batch at once
        return self.sequence_logits(list(torch.split(f, lengths)))

    def sequence_logits(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """BiLSTM + FC over CNN feature sequences [(T_k, 40)] -> (B, T_max) logits (padding positions 0).

        Sequences of equal length run as one LSTM batch; each length group separately, so no sequence
        ever sees padding (the same as packing, and it works on every device)."""
        t_max = max(len(f) for f in feats)
        out = feats[0].new_zeros(len(feats), t_max)
        by_len: dict[int, list[int]] = {}
        for k, f in enumerate(feats):
            by_len.setdefault(len(f), []).append(k)
        for n, ks in by_len.items():
            h = self.lstm(torch.stack([feats[k] for k in ks]))[0]
            out[ks, :n] = self.fc(h).squeeze(-1)
        return out

    @torch.no_grad()
    def predict_proba(self, seq: torch.Tensor) -> torch.Tensor:
        """(T, C, L) one whole sequence -> (T,) probabilities (short sequences; train.predict_sequence
        streams long ones)."""
        self.eval()
        return torch.sigmoid(self([seq])[0])


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def parameter_table(n_domains: int = 19, n_chans: int = 18) -> list[dict]:
    d, s = DANN(n_domains, n_chans), CNNBiLSTM(n_chans)
    return [
        {"part": "CNN feature extractor G_f", "parameters": count_parameters(d.features)},
        {"part": "label predictor G_y (40-20-1)", "parameters": count_parameters(d.label)},
        {"part": f"domain classifier G_d (40-40-40-{n_domains})", "parameters": count_parameters(d.domain)},
        {"part": "BiLSTM (2 layers, 20 units, bidirectional)", "parameters": count_parameters(s.lstm)},
        {"part": "stage-2 FC (40-1)", "parameters": count_parameters(s.fc)},
        {"part": "CNN-BiLSTM total", "parameters": count_parameters(s)},
    ]
