"""The lesions configuration: Mask R-CNN settings, segmentation and classifier training, data and splits.

Imported by everything below the CLI (data, model, baseline, train, experiment, evaluate, predict); it
imports only the core. Every field is checked when a config loads (`core.config.param` ranges and
choices, plus the cross-field rules in `validate`), so a bad value exits 2 with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectlab.core.config import BaseConfig

try:  # the validated-field helper of the shared core (issue 11)
    from detectlab.core.config import ConfigError, param
except ImportError:  # pragma: no cover - older core without validated fields: checked by `check` below
    from detectlab.core.errors import InputError

    def param(default, **checks):  # type: ignore[no-redef]
        if isinstance(default, (list, dict)):
            return field(default_factory=lambda d=default: type(d)(d), metadata={"checks": checks})
        return field(default=default, metadata={"checks": checks})

    class ConfigError(InputError):  # type: ignore[no-redef]
        def __init__(self, key: str, value, allowed: str):
            super().__init__(f"config key '{key}'", f"value {value!r} is not allowed", f"{allowed}")


def _check_value(key: str, v, c: dict) -> None:
    vals = v if isinstance(v, list) else [v]
    if c.get("nonempty") and isinstance(v, list) and not v:
        raise ConfigError(key, v, "a non-empty list")
    for x in vals:
        if "choices" in c and x not in c["choices"]:
            raise ConfigError(key, x, "one of " + ", ".join(map(str, c["choices"])))
        for op, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                             ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            if op in c and isinstance(x, (int, float)) and not ok(x, c[op]):
                raise ConfigError(key, x, f"{word} {c[op]}")


def check(cfg, prefix: str = "") -> None:
    """Range/choice checks of every field (with a core that lacks validated fields) and every `validate`."""
    from dataclasses import fields, is_dataclass

    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            check(v, f"{prefix}{f.name}.")
        elif "checks" in f.metadata:
            _check_value(f"{prefix}{f.name}", v, f.metadata["checks"])
    if hasattr(cfg, "validate"):
        cfg.validate()


DATA_SUBDIR = "ct"
CLASS_NAMES = ("normal", "pneumonia", "covid")  # 0, 1, 2 (COVIDx-CT / CNCB convention)
#: Changing only these adds or removes units (one segmentation + one classifier unit per backbone).
GRID_FIELDS = ("backbones",)
ALL_BACKBONES = ["resnet18_full", "resnet18_t1", "resnet18_t2", "resnet34_full", "resnet34_t1", "resnet34_t2"]
NORMS = ("batch", "group", "frozen")
SCHEDULES = ("constant", "cosine", "step")
MEDSEG_USE = ("split", "train", "off")
CLS_LOSSES = ("bce", "ce")
BOX_VALUES = ("deltas", "boxes")
VOLUME_PREPROCESS = ("window", "clahe")


@dataclass
class ModelConfig:
    """Mask R-CNN settings (the authors' train_segmentation.py values as defaults)."""

    backbone: str = param("resnet18_t1", choices=ALL_BACKBONES)
    num_classes: int = param(2, ge=2)  # background + lesion
    #: "batch": trainable BatchNorm (the authors'); "group": GroupNorm(32) (small batches from scratch);
    #: "frozen": torchvision's FrozenBatchNorm (only sensible with pretrained statistics).
    norm: str = param("batch", choices=NORMS)
    min_size: int = param(512, ge=16)
    max_size: int = param(1024, ge=16)
    image_mean: float = param(0.5, ge=0, le=1)  # global mean / SD of the training images, [0, 1] pixel scale
    image_std: float = param(0.25, gt=0)
    anchor_sizes: list[int] = param([2, 4, 8, 16, 32], nonempty=True)
    aspect_ratios: list[float] = param([0.1, 0.25, 0.5, 1.0, 1.5, 2.0], nonempty=True)
    #: fit the anchor sizes (quantiles of sqrt(box area)) and ratios (quantiles of h/w) to the training boxes
    fit_anchors: bool = False
    representation: int = param(128, ge=1)  # box head
    mask_channels: int = param(128, ge=1)  # the one conv layer of the mask head
    mask_dim: int = param(128, ge=1)  # predictor's reduced dimension
    rpn_batch_size_per_image: int = param(256, ge=1)
    rpn_positive_fraction: float = param(0.75, gt=0, le=1)
    box_positive_fraction: float = param(0.75, gt=0, le=1)
    box_fg_iou_thresh: float = param(0.75, gt=0, le=1)
    box_bg_iou_thresh: float = param(0.5, ge=0, le=1)
    box_batch_size_per_image: int = param(256, ge=1)
    rpn_nms_thresh: float = param(0.75, gt=0, le=1)  # test-time RPN and RoI NMS, and score threshold (section 3)
    box_nms_thresh: float = param(0.75, gt=0, le=1)
    box_score_thresh: float = param(0.75, ge=-1, le=1)
    detections_per_img: int = param(100, ge=1)
    rpn_pre_nms_top_n_train: int = param(2000, ge=1)
    rpn_post_nms_top_n_train: int = param(2000, ge=1)
    rpn_pre_nms_top_n_test: int = param(1000, ge=1)
    rpn_post_nms_top_n_test: int = param(1000, ge=1)

    def validate(self) -> None:
        if self.max_size < self.min_size:
            raise ConfigError("model.max_size", self.max_size, f">= model.min_size ({self.min_size})")
        if self.box_bg_iou_thresh > self.box_fg_iou_thresh:
            raise ConfigError("model.box_bg_iou_thresh", self.box_bg_iou_thresh,
                              f"<= model.box_fg_iou_thresh ({self.box_fg_iou_thresh})")
        if any(s <= 0 for s in self.anchor_sizes):
            raise ConfigError("model.anchor_sizes", self.anchor_sizes, "positive sizes in pixels")
        if any(r <= 0 for r in self.aspect_ratios):
            raise ConfigError("model.aspect_ratios", self.aspect_ratios, "positive ratios (height / width)")


@dataclass
class SegTrainConfig:
    iterations: int = param(20000, ge=1)
    batch_size: int = param(2, ge=1)
    lr: float = param(1e-5, gt=0)
    weight_decay: float = param(1e-3, ge=0)
    warmup: int = param(0, ge=0)  # linear learning-rate warm-up iterations
    schedule: str = param("constant", choices=SCHEDULES)  # after the warm-up
    min_lr_factor: float = param(0.05, ge=0, le=1)  # cosine floor / step factor
    hflip: bool = False  # random horizontal flips (left-right lungs)
    zoom: float = param(1.0, ge=1, le=2)  # random zoom-in: crop a window of 1/U(1, zoom) of the side (1: off)
    intensity_jitter: float = param(0.0, ge=0, le=0.5)  # random contrast, brightness and gamma of this strength
    grad_clip: float = param(0.0, ge=0)  # max gradient norm (0: off)
    log_every: int = param(100, ge=1)
    checkpoint_every: int = param(500, ge=0)  # in-unit resume points (model + Adam + RNG state); 0: none
    eval_every: int = param(0, ge=0)  # validation AP/Dice during training (the learning curve); 0: end only
    dice_score_thresh: float = param(0.5, ge=0, le=1)  # detections kept for the Dice mask


@dataclass
class ClsTrainConfig:
    enabled: bool = True
    data: str = "builtin"  # "builtin" (three-class synthetic slices) or a folder of labelled slices
    split_file: str = ""  # optional COVIDx-CT split file naming the images of `data`
    test_fraction: float = param(0.3, gt=0, lt=1)
    epochs: int = param(50, ge=1)
    batch_size: int = param(8, ge=1)
    lr: float = param(1e-5, gt=0)
    weight_decay: float = param(1e-3, ge=0)
    roi_batch: int = param(128, ge=1)
    hidden: int = param(512, ge=1)
    score_thresh: float = param(-0.01, ge=-1, le=1)
    #: "bce": BCE-with-logits on one-hot labels (the authors' train_classifier.py); "ce": softmax cross-entropy
    loss: str = param("bce", choices=CLS_LOSSES)
    #: the 4 box values per RoI fed to S: "deltas" (raw box-regression outputs, the authors') or "boxes"
    #: (decoded boxes divided by the image size)
    box_values: str = param("deltas", choices=BOX_VALUES)
    #: train the normalisation layers' affine parameters with S (the authors'); needs the frozen model's
    #: forward at every step. False: S alone on a cached RoI batch per image (much cheaper on a CPU)
    train_norm_affine: bool = True


@dataclass
class SplitConfig:
    """Validation split of the segmentation data, grouped by volume (or patient)."""

    val_fraction: float = param(0.2, gt=0, lt=1)
    #: MedSeg slices carry no patient ids (each is its own group): "split" puts them on both sides,
    #: "train" in training only, "off" leaves them out
    medseg: str = param("split", choices=MEDSEG_USE)
    #: COVID-19-CT-Seg volume boundaries are recovered where the lung mask jumps: Jaccard distance at
    #: least `boundary_jump` and at least `boundary_ratio` times the median of the neighbouring steps
    boundary_jump: float = param(0.5, gt=0, le=1)
    boundary_ratio: float = param(2.0, ge=1)
    #: training slices within this many positions of a validation volume are dropped (guards against
    #: a missed boundary)
    guard: int = param(1, ge=0)


@dataclass
class SynthConfig:
    seg_patients: int = param(60, ge=2)  # patients cycle through normal / pneumonia / COVID-19
    cls_patients: int = param(90, ge=3)
    slices_per_patient: int = param(3, ge=1)
    size: int = param(512, ge=32)


@dataclass
class Config(BaseConfig):
    backbones: list[str] = param(list(ALL_BACKBONES), choices=ALL_BACKBONES, nonempty=True)
    image_size: int = param(512, ge=0)  # longer side of every slice (0: keep); the model's min/max should match
    min_area: int = param(100, ge=0)  # lesion components of this many pixels or fewer (native resolution) dropped
    max_per_source: int = param(0, ge=0)  # cap on slices per real-data source (0: all)
    #: a folder with more COVID-19-CT-Seg slices (the full dstaroff snapshot, ct/ covid/ lungs/ with the same
    #: index names): slices lying inside a training volume are added to training; "" = none
    extra_slices: str = ""
    #: how volume slices (NIfTI/MetaImage, HU) become 8-bit: "window" ([-1000, 400] HU) or "clahe" (per-slice
    #: min-max then CLAHE with clip limit 7, the preprocessing of the COVID-19-CT-Seg PNG slices)
    volume_preprocess: str = param("window", choices=VOLUME_PREPROCESS)
    figure_examples: int = param(4, ge=0)
    model: ModelConfig = field(default_factory=ModelConfig)
    seg: SegTrainConfig = field(default_factory=SegTrainConfig)
    cls: ClsTrainConfig = field(default_factory=ClsTrainConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SynthConfig = field(default_factory=SynthConfig)
