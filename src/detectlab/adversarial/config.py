"""The adversarial system's configuration (every field validated when a config loads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from detectlab.core.config import BaseConfig, ConfigError, param

DATA_SUBDIR = "mnist"
MODELS = ("natural", "secret")
#: attacks of the protocol: the paper's PGD, FGSM, APGD-CE and CW-L2 (torchattacks), the adaptive attacker
ATTACKS = ("pgd", "fgsm", "apgd", "cw", "adaptive")
ADAPTIVE_VARIANTS = ("penalty", "margin", "restart", "maxnorm")
QUANTIZE = ("round", "floor", "none")
THRESHOLD_RULES = ("max", "q0.9999", "q0.999")
#: fields whose change only adds or removes units (a rerun computes only the new ones)
GRID_FIELDS = ("models", "attack.eps", "attack.attacks", "attack.apgd_eps", "adaptive.eps", "hist_eps")

PAPER_EPS_ALL = [round(0.01 * i, 2) for i in range(1, 51)]


@dataclass
class TrainConfig:
    epochs: int = param(2, ge=1)
    iterations: int = param(0, ge=0)  # > 0 overrides epochs
    batch_size: int = param(50, ge=1)
    lr: float = param(1e-4, gt=0)
    n_train: int = param(0, ge=0)  # 0: all training images


@dataclass
class AdvTrainConfig(TrainConfig):
    eps: float = param(0.3, gt=0, le=1)
    steps: int = param(40, ge=1)
    step_size: float = param(0.01, gt=0)
    init_from_natural: bool = False
    eps_warmup: float = param(0.0, ge=0, le=1)  # fraction of the iterations over which eps ramps up from 0


@dataclass
class AttackConfig:
    attacks: list[str] = param(list(ATTACKS), choices=ATTACKS, nonempty=True)
    eps: list[float] = param(list(PAPER_EPS_ALL), ge=0, le=1, nonempty=True)
    steps: int = param(40, ge=1)  # MadryLab's attack config: k = 40
    step_size: float = param(0.01, gt=0)  # a = 0.01
    random_start: bool = True
    n_test: int = param(0, ge=0)  # attacked test images (class-stratified subset); 0: the whole test set
    batch_size: int = param(1000, ge=1)
    apgd_eps: list[float] = param([], ge=0, le=1)  # empty: attack.eps
    apgd_steps: int = param(40, ge=1)
    cw_c: float = param(1.0, gt=0)
    cw_steps: int = param(100, ge=1)
    cw_lr: float = param(0.01, gt=0)


@dataclass
class AdaptiveConfig:
    eps: list[float] = param([], ge=0, le=1)  # empty: attack.eps
    variants: list[str] = param(list(ADAPTIVE_VARIANTS), choices=ADAPTIVE_VARIANTS, nonempty=True)
    restarts: int = param(1, ge=0)  # random restarts of the 'restart' variant
    restart_radius: float = param(0.02, gt=0, le=1)  # its start: x + U(-r, r), r = min(eps, restart_radius)
    weight: float = param(10.0, ge=0)  # of relu(statistic / threshold - margin) against the loss
    margin: float = param(0.9, gt=0)
    steps: int = param(0, ge=0)  # 0: attack.steps
    step_size: float = param(0.0, ge=0)  # 0: attack.step_size


@dataclass
class DetectorConfig:
    divisor: int = param(3, choices=(3, 4))  # 4-neighbour variance / 3 (the authors' weight matrix) or / 4
    constant: float = param(5.0, gt=0)  # w = 1 / (σ² + constant), 0-255 scale
    quantize: str = param("round", choices=QUANTIZE)  # attacked images -> 8 bits before scoring
    threshold: str = param("max", choices=THRESHOLD_RULES)  # operating threshold from the training statistic
    threshold_images: int = param(0, ge=0)  # training images that set it; 0: all


@dataclass
class SqueezeConfig:
    """Feature squeezing (Xu et al. 2018), the peer detector: their best MNIST joint detector by default."""

    enabled: bool = True
    bits: int = param(1, ge=1, le=8)
    median: list[int] = param([2], ge=1, le=5)
    fpr: float = param(0.05, gt=0, lt=1)  # share of benign training images above its threshold
    n_fit: int = param(10000, ge=0)  # benign training images that set the threshold; 0: all


@dataclass
class Config(BaseConfig):
    models: list[str] = param(list(MODELS), choices=MODELS, nonempty=True)
    #: a finished `train`/`run` folder whose checkpoints are used instead of training (same data)
    models_from: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    adv_train: AdvTrainConfig = field(default_factory=AdvTrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    squeeze: SqueezeConfig = field(default_factory=SqueezeConfig)
    n_benign: int = param(0, ge=0)  # clean test images as the ROC's negatives; 0: the whole test set
    hist_eps: list[float] = param([0.1, 0.3], ge=0, le=1)

    def validate(self) -> None:
        if self.models_from:
            ck = Path(self.models_from).expanduser() / "checkpoints"
            missing = [m for m in self.models if not (ck / f"{m}.safetensors").exists()]
            if missing:
                raise ConfigError("models_from", self.models_from,
                                  f"a run folder holding checkpoints/{missing[0]}.safetensors")
