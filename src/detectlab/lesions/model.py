"""Lightweight Mask R-CNN (truncated ResNet18/34 + one FPN level) and COVID-CT-Mask-Net.

Built only from torchvision's detection parts (``backbone_utils``, ``AnchorGenerator``,
``MultiScaleRoIAlign``, ``MaskRCNN``), with the sizes of the authors' code (DESIGN.md, notes/stack.md):

- backbone: ResNet18/34 without avgpool/fc; "full" keeps layer4, "t1" stops at layer3, "t2" at layer2;
  one FPN layer of 256 maps on the last kept block and no extra (max-pool) level;
- RPN anchors sizes (2, 4, 8, 16, 32) x ratios (0.1, 0.25, 0.5, 1, 1.5, 2) on that single level;
- box head TwoMLPHead(256*7*7, 128), FastRCNNPredictor(128, 2);
- mask head one 128-channel conv, MaskRCNNPredictor(128, 128, 2).

COVID-CT-Mask-Net: the segmentation model frozen, mask branch removed, RoI score threshold -0.01,
the ranked batch of B=128 detections (score + 4 box values each) flattened into a 5B vector and fed
to S = Linear(5B, s) ReLU Linear(s, s) ReLU Linear(s, 3), s = 512 (about 0.59M parameters).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

BACKBONES = ("resnet18", "resnet34")
TRUNCATIONS = {"full": 4, "t1": 3, "t2": 2}  # last ResNet block kept

#: Table 1 of the paper (millions of parameters).
PAPER_SEG_PARAMS = {"resnet18_full": 14.52, "resnet18_t1": 6.12, "resnet18_t2": 4.02,
                    "resnet34_full": 24.63, "resnet34_t1": 11.45, "resnet34_t2": 4.68}
PAPER_CLS_PARAMS = {"resnet18_full": 14.75, "resnet18_t1": 6.35, "resnet18_t2": 4.25,
                    "resnet34_full": 24.86, "resnet34_t1": 11.74, "resnet34_t2": 4.92}


class NoExtra(ExtraFPNBlock):
    """No extra FPN level (``extra_blocks=None`` would add LastLevelMaxPool)."""

    def forward(self, results, x, names):  # noqa: D401 - torchvision's signature
        return results, names


def parse_backbone(name: str) -> tuple[str, str]:
    """'resnet18_t1' -> ('resnet18', 't1'); ValueError for unknown names."""
    base, _, trunc = name.lower().partition("_")
    trunc = trunc or "full"
    if base not in BACKBONES or trunc not in TRUNCATIONS:
        raise ValueError(f"unknown backbone '{name}' (resnet18|resnet34 + _full|_t1|_t2)")
    return base, trunc


def build_backbone(name: str) -> BackboneWithFPN:
    """Truncated ResNet + a single 256-map FPN level named '0'. Trainable BatchNorm (no pretrained stats)."""
    base, trunc = parse_backbone(name)
    return resnet_fpn_backbone(backbone_name=base, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5,
                               returned_layers=[TRUNCATIONS[trunc]], extra_blocks=NoExtra())


@dataclass
class ModelConfig:
    """Mask R-CNN settings (the authors' train_segmentation.py values as defaults)."""

    backbone: str = "resnet18_t1"
    num_classes: int = 2  # background + lesion
    min_size: int = 512
    max_size: int = 1024
    image_mean: float = 0.5  # global mean / SD of the training images, on the [0, 1] pixel scale
    image_std: float = 0.25
    anchor_sizes: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 1.5, 2.0])
    representation: int = 128  # box head
    mask_channels: int = 128  # the one conv layer of the mask head
    mask_dim: int = 128  # predictor's reduced dimension
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.75
    box_positive_fraction: float = 0.75
    box_fg_iou_thresh: float = 0.75
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 256
    rpn_nms_thresh: float = 0.75  # test-time RPN and RoI NMS, and score threshold (paper, section 3)
    box_nms_thresh: float = 0.75
    box_score_thresh: float = 0.75
    detections_per_img: int = 100
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000


def build_maskrcnn(mc: ModelConfig | dict[str, Any] | None = None) -> MaskRCNN:
    mc = _mc(mc)
    backbone = build_backbone(mc.backbone)
    anchors = AnchorGenerator(sizes=(tuple(mc.anchor_sizes),), aspect_ratios=(tuple(mc.aspect_ratios),))
    c = backbone.out_channels
    return MaskRCNN(
        backbone, num_classes=None,
        min_size=mc.min_size, max_size=mc.max_size,
        image_mean=[mc.image_mean] * 3, image_std=[mc.image_std] * 3,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=mc.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=mc.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=mc.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=mc.rpn_post_nms_top_n_test,
        rpn_nms_thresh=mc.rpn_nms_thresh,
        rpn_batch_size_per_image=mc.rpn_batch_size_per_image, rpn_positive_fraction=mc.rpn_positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(c * 7 * 7, mc.representation),
        box_predictor=FastRCNNPredictor(mc.representation, mc.num_classes),
        box_score_thresh=mc.box_score_thresh, box_nms_thresh=mc.box_nms_thresh,
        box_detections_per_img=mc.detections_per_img,
        box_fg_iou_thresh=mc.box_fg_iou_thresh, box_bg_iou_thresh=mc.box_bg_iou_thresh,
        box_batch_size_per_image=mc.box_batch_size_per_image, box_positive_fraction=mc.box_positive_fraction,
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        mask_head=MaskRCNNHeads(c, [mc.mask_channels], 1),
        mask_predictor=MaskRCNNPredictor(mc.mask_channels, mc.mask_dim, mc.num_classes),
    )


def _mc(mc: ModelConfig | dict[str, Any] | None) -> ModelConfig:
    if mc is None:
        return ModelConfig()
    if isinstance(mc, dict):
        return ModelConfig(**{k: v for k, v in mc.items() if k in ModelConfig.__dataclass_fields__})
    return mc


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------- COVID-CT-Mask-Net


def rank_preserving_pad(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices into n ranked detections that fill a batch of `size`, keeping the rank order.

    Each replicated detection sits right after its original: for n=3 and replicas of 0 and 2 the
    batch is [0, 0, 1, 2, 2]. With a generator the replicas are sampled at random (training);
    without, they are spread evenly over the ranks (deterministic, for evaluation). n >= size keeps
    the first `size`. n == 0 returns an empty tensor (the caller fills zeros).
    """
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    if n >= size:
        return torch.arange(size)
    extra = size - n
    if generator is not None:
        rep = torch.randint(0, n, (extra,), generator=generator)
    else:
        rep = torch.from_numpy(np.floor(np.arange(extra) * n / extra).astype(np.int64))
    return torch.sort(torch.cat([torch.arange(n), rep]), stable=True).values


def roi_features(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], batch: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, 5) rows [score, x1/W, y1/H, x2/W, y2/H] in decreasing score order, rank-preserving padded."""
    h, w = image_size
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores = boxes[order], scores[order]
    idx = rank_preserving_pad(len(scores), batch, generator)
    out = torch.zeros(batch, 5, dtype=torch.float32, device=scores.device)
    if len(idx):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        out[:, 0] = scores[idx]
        out[:, 1:] = boxes[idx].float() / scale
    return out


class ClassifierS(nn.Module):
    """S: the flattened ranked RoI batch (5B) -> s -> s -> 3 classes."""

    def __init__(self, roi_batch: int = 128, hidden: int = 512, n_classes: int = 3):
        super().__init__()
        self.roi_batch = roi_batch
        self.net = nn.Sequential(nn.Linear(5 * roi_batch, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_classes))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (N, B, 5) or (N, 5B)
        return self.net(feats.reshape(feats.shape[0], -1))


def strip_mask_branch(seg: MaskRCNN, roi_batch: int = 128, score_thresh: float = -0.01,
                      nms: float = 0.75) -> MaskRCNN:
    """The segmentation model as COVID-CT-Mask-Net's frozen feature extractor (in place)."""
    rh = seg.roi_heads
    rh.mask_roi_pool = None
    rh.mask_head = None
    rh.mask_predictor = None
    rh.score_thresh = score_thresh
    rh.nms_thresh = nms
    rh.detections_per_img = roi_batch
    seg.rpn.nms_thresh = nms
    for p in seg.parameters():
        p.requires_grad_(False)
    return seg.eval()


class CovidCTMaskNet(nn.Module):
    """Frozen Mask R-CNN (no mask branch) + trainable S."""

    def __init__(self, mc: ModelConfig | dict[str, Any] | None = None, roi_batch: int = 128, hidden: int = 512,
                 n_classes: int = 3, score_thresh: float = -0.01):
        super().__init__()
        self.seg = strip_mask_branch(build_maskrcnn(mc), roi_batch, score_thresh)
        self.s = ClassifierS(roi_batch, hidden, n_classes)
        self.roi_batch = roi_batch

    def train(self, mode: bool = True):  # the segmentation part always stays in eval mode
        super().train(mode)
        self.seg.eval()
        return self

    @torch.no_grad()
    def detections(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Raw ranked RoIs (boxes, scores) of the frozen model, before padding."""
        return self.seg(images)

    def features(self, images: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        dets = self.detections(images)
        return torch.stack([roi_features(d["boxes"], d["scores"], tuple(im.shape[-2:]), self.roi_batch, generator)
                            for d, im in zip(dets, images)])

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.s(self.features(images))


def describe(mc: ModelConfig) -> dict[str, Any]:
    return asdict(mc)
