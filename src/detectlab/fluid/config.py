"""The fluid system's configuration (imported by everything below the CLI; imports only core).

The paper's protocol crosses designs (train 90% / 10%), architectures, batch sizes and folds; the
fields below say which, how each B-scan becomes the network's input (``crop``), how a fold is trained
(``train``) and how its model is chosen (``selection``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectlab.core.config import BaseConfig, ConfigError, param

DATA_SUBDIR = "oct"
#: fields whose change only adds or removes units of work (a resume computes just the new ones)
GRID_FIELDS = ("archs", "batch_sizes", "designs", "variants")

DESIGNS = ("train90", "train10")
#: extra grids beyond the paper: augmentation, 3x3 median denoising, mask supervision (auxiliary loss)
VARIANTS = ("augment", "denoise", "mask")
ARCH_NAMES = ("vgg16", "alexnet", "inception_resnet_v2", "inception_v3", "xception", "densenet201", "resnet18",
              "googlenet", "mobilenet_v2", "squeezenet")
CROPS = ("centre", "retina")
#: "inner": early stopping and model choice on a validation split of the *training* subjects (honest);
#: "test": the paper's rule, the best check on the reported fold itself (optimistic)
SELECTIONS = ("inner", "test")
SELECT_BY = ("accuracy", "loss", "auc")
OPTIMIZERS = ("sgd", "adam")
NORMS = ("batch", "group")


@dataclass
class TrainConfig:
    optimizer: str = param("sgd", choices=OPTIMIZERS)
    lr: float = param(1e-4, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(1e-4, ge=0)  # MATLAB's default L2 regularisation
    max_epochs: int = param(10, ge=1)
    checks_per_epoch: int = param(2, ge=1)  # validation checks per epoch (the paper: twice), unless val_every > 0
    val_every: int = param(0, ge=0)  # > 0: a validation check every N iterations instead
    patience: int = param(5, ge=0)  # stop after more than `patience` checks without a lower validation loss
    select_by: str = param("accuracy", choices=SELECT_BY)  # the check kept (the paper: best validation accuracy)
    eval_batch: int = param(64, ge=1)
    weights: str = "none"  # "imagenet" (local torch hub / timm / Hugging Face caches), a file or folder, "none"
    aux_logits: bool = False  # keep googlenet/inception_v3 auxiliary heads (the MATLAB models have none)
    aux_weight: float = param(0.3, ge=0)
    class_weights: bool = False  # cross-entropy weighted by inverse class frequency of the training part
    bn_recalibrate: bool = True  # re-estimate BatchNorm statistics on the training images before each check
    bn_images: int = param(256, ge=2)  # at most this many training images for the re-estimate
    norm: str = param("batch", choices=NORMS)  # "group": GroupNorm instead of BatchNorm (from scratch only)
    mask_weight: float = param(1.0, ge=0)  # weight of the auxiliary fluid-mask loss in the "mask" variant
    aug_shift: float = param(0.08, ge=0, lt=1)  # augmentation: vertical shift up to this share of the height
    aug_speckle: float = param(0.15, ge=0)  # augmentation: SD of the log of the multiplicative speckle
    aug_gamma: list[float] = param([0.75, 1.35], gt=0)  # augmentation: range of the gamma curve

    def validate(self) -> None:
        if self.norm == "group" and self.weights not in ("", "none"):
            raise ConfigError("train.norm", self.norm, "batch with pretrained weights (GroupNorm replaces their "
                                                       "BatchNorm layers), or train.weights=none")
        if len(self.aug_gamma) != 2 or self.aug_gamma[0] > self.aug_gamma[1]:
            raise ConfigError("train.aug_gamma", self.aug_gamma, "[low, high] with low <= high")


@dataclass
class SyntheticConfig:
    volumes: int = param(6, ge=1)
    slices: int = param(16, ge=2)
    height: int = param(128, ge=16)
    width: int = param(128, ge=16)
    fluid_fraction: float = param(0.6, gt=0, lt=1)


@dataclass
class Config(BaseConfig):
    archs: list[str] = param(list(ARCH_NAMES), choices=ARCH_NAMES, nonempty=True)
    designs: list[str] = param(list(DESIGNS), choices=DESIGNS, nonempty=True)
    batch_sizes: list[int] = param([], ge=1)  # empty: 8, 16, ... up to the largest that fits
    max_batch: int = param(64, ge=8)  # cap of the largest-batch search
    max_memory_gb: float = param(0.0, ge=0)  # CPU budget of the largest-batch search (0: half the available memory)
    folds: int = param(10, ge=2)
    group_by_subject: bool = True
    selection: str = param("test", choices=SELECTIONS)
    inner_val: float = param(0.2, gt=0, lt=1)  # share of the training subjects held out (selection="inner")
    crop: str = param("centre", choices=CROPS)  # "centre": the paper's centre crop; "retina": the retina band
    input_size: int = param(0, ge=0)  # centre crop: 0 = each architecture's Table I size (224/227/299)
    resize: int = param(0, ge=0)  # centre crop: > 0 scales the shorter side to this first (0: crop only)
    band_rows: float = param(0.52, gt=0, le=1)  # retina crop: band height / B-scan height, centred on the retina
    band_cols: float = param(0.84, gt=0, le=1)  # retina crop: band width / B-scan width (centred)
    band_size: list[int] = param([96, 240], ge=8)  # retina crop: network input (rows, cols)
    augment: bool = False
    denoise: bool = False
    variants: list[str] = param([], choices=VARIANTS)  # extra grids: "augment", "denoise", "mask"
    saliency: bool = True  # Grad-CAM peak inside the fluid mask on the test B-scans (when masks are known)
    max_images: int = param(0, ge=0)  # > 0: a stratified subset (quick looks)
    save_checkpoints: bool = True  # fold 0 of every variant x design x arch x batch (predict, evaluate)
    checkpoint_all_folds: bool = False  # also every other fold (<name>-fold=<k>.safetensors)
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        if len(self.band_size) != 2:
            raise ConfigError("band_size", self.band_size, "[rows, cols]")
        if len(set(self.variants)) != len(self.variants) or len(set(self.archs)) != len(self.archs):
            raise ConfigError("variants" if len(set(self.variants)) != len(self.variants) else "archs",
                              self.variants if len(set(self.variants)) != len(self.variants) else self.archs,
                              "each name once")
