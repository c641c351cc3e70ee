"""The fluid system's configuration (imported by everything below the CLI; imports only core).

The paper's protocol crosses designs (train 90% / 10%), architectures, batch sizes and folds; the
fields below say which, how each B-scan becomes the network's input (``crop``), how a fold is trained
(``train``) and how its model is chosen (``selection``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectlab.core.config import BaseConfig

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
    optimizer: str = "sgd"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4  # MATLAB's default L2 regularisation
    max_epochs: int = 10
    checks_per_epoch: int = 2  # validation checks per epoch (the paper: twice), unless val_every > 0
    val_every: int = 0  # > 0: a validation check every N iterations instead
    patience: int = 5  # stop after more than `patience` checks without a lower validation loss
    select_by: str = "accuracy"  # the check whose weights are kept (the paper: best validation accuracy)
    eval_batch: int = 64
    weights: str = "none"  # "imagenet" (local torch hub / timm / Hugging Face caches), a file or folder, "none"
    aux_logits: bool = False  # keep googlenet/inception_v3 auxiliary heads (the MATLAB models have none)
    aux_weight: float = 0.3
    class_weights: bool = False  # cross-entropy weighted by inverse class frequency of the training part
    bn_recalibrate: bool = True  # re-estimate BatchNorm statistics on the training images before each check
    bn_images: int = 256  # at most this many training images for the re-estimate
    norm: str = "batch"  # "group": GroupNorm instead of BatchNorm (from scratch only)
    mask_weight: float = 1.0  # weight of the auxiliary fluid-mask loss in the "mask" variant


@dataclass
class SyntheticConfig:
    volumes: int = 6
    slices: int = 16
    height: int = 128
    width: int = 128
    fluid_fraction: float = 0.6


@dataclass
class Config(BaseConfig):
    archs: list[str] = field(default_factory=lambda: list(ARCH_NAMES))
    designs: list[str] = field(default_factory=lambda: list(DESIGNS))
    batch_sizes: list[int] = field(default_factory=list)  # empty: 8, 16, ... up to the largest that fits
    max_batch: int = 64  # cap of the largest-batch search
    max_memory_gb: float = 0.0  # CPU budget of the largest-batch search (0: half the available memory)
    folds: int = 10
    group_by_subject: bool = True
    selection: str = "test"
    inner_val: float = 0.2  # share of the training subjects held out for early stopping (selection="inner")
    crop: str = "centre"  # "centre": the paper's centre crop; "retina": the retina band
    input_size: int = 0  # centre crop: 0 = each architecture's Table I size (224/227/299)
    resize: int = 0  # centre crop: > 0 scales the shorter side to this first (0: crop only, the paper)
    band_rows: float = 0.52  # retina crop: band height as a share of the B-scan height, centred on the retina
    band_cols: float = 0.84  # retina crop: band width as a share of the B-scan width (centred)
    band_size: list[int] = field(default_factory=lambda: [96, 240])  # retina crop: network input (rows, cols)
    augment: bool = False
    denoise: bool = False
    variants: list[str] = field(default_factory=list)  # extra grids: "augment", "denoise", "mask"
    saliency: bool = True  # Grad-CAM peak inside the fluid mask on the test B-scans (when masks are known)
    max_images: int = 0  # > 0: a stratified subset (quick looks)
    save_checkpoints: bool = True  # fold 0 of every design x arch x batch
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
