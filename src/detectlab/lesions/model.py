"""Lightweight Mask R-CNN (truncated ResNet18/34 + one FPN level) and COVID-CT-Mask-Net.

Built only from torchvision's detection parts (``backbone_utils``, ``AnchorGenerator``,
``MultiScaleRoIAlign``, ``MaskRCNN``), with the sizes of the authors' code (DESIGN.md, notes/stack.md):

- backbone: ResNet18/34 without avgpool/fc; "full" keeps layer4, "t1" stops at layer3, "t2" at layer2;
  one FPN layer of 256 maps on the last kept block and no extra (max-pool) level;
- RPN anchors sizes (2, 4, 8, 16, 32) x ratios (0.1, 0.25, 0.5, 1, 1.5, 2) on that single level;
- box head TwoMLPHead(256*7*7, 128), FastRCNNPredictor(128, 2);
- mask head one 128-channel conv, MaskRCNNPredictor(128, 128, 2).

Normalisation layers: trainable BatchNorm (the authors'), GroupNorm(32) (`norm="group"`, for training
from scratch at batch 2) or FrozenBatchNorm.

COVID-CT-Mask-Net (the authors' train_classifier.py and roi_heads.py): the segmentation model with its
mask branch removed, in eval mode; RoI score threshold -0.01, NMS 0.75, the ranked batch of B=128
detections, each row the class score and the 4 raw box-regression outputs (deltas) of that RoI,
flattened into a 5B vector and fed to S = Linear(5B, s) ReLU Linear(s, s) ReLU Linear(s, 3), s = 512.
Trainable: S and the affine parameters of the backbone's `bn*` normalisation layers (running
statistics stay frozen): 592,387 + 3,712 = 596,099 for ResNet18-T1 (Table 1: 0.6M).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, boxes as box_ops
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from detectlab.lesions.config import ModelConfig

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


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups (fewer when the channels do not divide), as a ResNet `norm_layer`."""

    def __init__(self, num_channels: int):
        groups = 32
        while num_channels % groups:
            groups //= 2
        super().__init__(groups, num_channels)


NORM_LAYERS = {"batch": nn.BatchNorm2d, "group": GroupNorm32, "frozen": FrozenBatchNorm2d}
STRIDES = {"full": 32, "t1": 16, "t2": 8}


def build_backbone(name: str, norm: str = "batch") -> BackboneWithFPN:
    """Truncated ResNet + a single 256-map FPN level named '0' (no pretrained weights exist here)."""
    base, trunc = parse_backbone(name)
    return resnet_fpn_backbone(backbone_name=base, weights=None, norm_layer=NORM_LAYERS[norm], trainable_layers=5,
                               returned_layers=[TRUNCATIONS[trunc]], extra_blocks=NoExtra())


def fit_anchors(boxes: np.ndarray, n_sizes: int = 5, n_ratios: int = 3) -> tuple[list[int], list[float]]:
    """Anchors fitted to ground-truth boxes (N, 4) x1 y1 x2 y2: sizes spaced geometrically from the 2nd to
    the 98th percentile of sqrt(w*h) (rounded to pixels, distinct), aspect ratios h/w spaced geometrically
    from the 5th to the 95th percentile (2 decimals)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    ok = (w > 0) & (h > 0)
    if not ok.any():
        raise ValueError("no non-empty box to fit anchors to")
    w, h = w[ok], h[ok]
    side = np.sqrt(w * h)
    sizes = sorted({max(2, int(round(v))) for v in np.geomspace(np.percentile(side, 2), np.percentile(side, 98),
                                                                   n_sizes)})
    r = h / w
    ratios = sorted({round(float(v), 2) for v in np.geomspace(np.percentile(r, 5), np.percentile(r, 95), n_ratios)})
    return sizes, ratios


def anchor_coverage(boxes_per_image: list[np.ndarray], image_sizes: list[tuple[int, int]], sizes: list[int],
                    ratios: list[float], stride: int, iou: float = 0.5) -> float:
    """Share of ground-truth boxes that have an anchor (on the stride grid) at IoU >= `iou`."""
    gen = AnchorGenerator(sizes=(tuple(sizes),), aspect_ratios=(tuple(ratios),))
    base = gen.generate_anchors(sizes, ratios)
    hit = tot = 0
    for bx, (h, w) in zip(boxes_per_image, image_sizes):
        bx = torch.as_tensor(np.asarray(bx, np.float32)).reshape(-1, 4)
        if not len(bx):
            continue
        ys = torch.arange(0, h, stride, dtype=torch.float32)
        xs = torch.arange(0, w, stride, dtype=torch.float32)
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], -1).reshape(-1, 1, 4)
        anchors = (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)
        best = box_ops.box_iou(bx, anchors).max(1).values
        hit += int((best >= iou).sum())
        tot += len(bx)
    return hit / tot if tot else float("nan")


def build_maskrcnn(mc: ModelConfig | dict[str, Any] | None = None) -> MaskRCNN:
    mc = _mc(mc)
    backbone = build_backbone(mc.backbone, mc.norm)
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


def rank_preserving_pad(n: int, size: int, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Indices into n ranked detections that fill a batch of `size`, keeping the rank order.

    Each replicated detection sits right after its original: for n=3 and replicas of 0 and 2 the
    batch is [0, 0, 1, 2, 2]. With a generator the replicas are sampled at random (training);
    without, they are spread evenly over the ranks (deterministic, for evaluation). n >= size keeps
    the first `size`. n == 0 returns an empty tensor (the caller fills zeros). The indices are drawn
    on the generator's device and returned on `device` (the detections' device).
    """
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if n >= size:
        return torch.arange(size, device=device)
    extra = size - n
    if generator is not None:
        rep = torch.randint(0, n, (extra,), generator=generator, device=generator.device)
    else:
        rep = torch.from_numpy(np.floor(np.arange(extra) * n / extra).astype(np.int64))
    idx = torch.sort(torch.cat([torch.arange(n, device=rep.device), rep]), stable=True).values
    return idx.to(device) if device is not None else idx


def roi_features(values: torch.Tensor, scores: torch.Tensor, batch: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, 5) rows [score, v1..v4] in decreasing score order, rank-preserving padded (zeros when no
    detection); `values` (N, 4) are the RoIs' raw box deltas or normalised boxes. Follows the device of
    the detections."""
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    idx = rank_preserving_pad(len(scores), batch, generator, scores.device)
    if not len(idx):
        return torch.zeros(batch, 5, dtype=torch.float32, device=scores.device)
    sel = order[idx]
    return torch.cat([scores[sel].float()[:, None], values[sel].float()], 1)


class ClassifierS(nn.Module):
    """S: the flattened ranked RoI batch (5B) -> s -> s -> 3 classes (the authors' S2Predictor)."""

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


def norm_affine_parameters(seg: MaskRCNN) -> list[tuple[str, nn.Parameter]]:
    """The backbone's `bn*` normalisation affine parameters (the authors' switch_model_on: names with 'bn';
    the downsample branches' norms are not among them)."""
    return [(n, p) for n, p in seg.backbone.body.named_parameters() if "bn" in n.split(".")[-2]]


def ranked_rois(seg: MaskRCNN, images: list[torch.Tensor], box_values: str = "deltas") -> list[dict[str, torch.Tensor]]:
    """The authors' RoI batch per image: the lesion-class score and 4 values per kept detection, ranked.

    As in their roi_heads.postprocess_detections: softmax scores, decoded boxes clipped to the image,
    empty boxes removed, score > the RoI score threshold (-0.01 keeps every RoI), NMS, the first
    `detections_per_img`. `box_values`: "deltas" returns the raw box-regression outputs of the kept RoIs
    (their S input), "boxes" the decoded boxes divided by the image width and height. Differentiable in
    the scores and values (the model's normalisation affine parameters may train); runs in eval mode.
    """
    sizes = [tuple(im.shape[-2:]) for im in images]
    il, _ = seg.transform(images)
    return ranked_rois_from_features(seg, il, seg.backbone(il.tensors), sizes, box_values)


def ranked_rois_from_features(seg: MaskRCNN, il, feats: dict, sizes: list[tuple[int, int]],
                              box_values: str = "deltas") -> list[dict[str, torch.Tensor]]:
    """`ranked_rois` on backbone features already computed (`il`: the transformed ImageList)."""
    rh = seg.roi_heads
    proposals, _ = seg.rpn(il, feats)
    bf = rh.box_head(rh.box_roi_pool(feats, proposals, il.image_sizes))
    logits, reg = rh.box_predictor(bf)
    n_cls = logits.shape[-1]
    decoded = rh.box_coder.decode(reg.detach(), proposals)
    scores_all = torch.softmax(logits, -1)
    out = []
    start = 0
    for props, isz, osz in zip(proposals, il.image_sizes, sizes):
        k = len(props)
        boxes = box_ops.clip_boxes_to_image(decoded[start:start + k, 1], isz)
        sc = scores_all[start:start + k, 1]
        deltas = reg[start:start + k].reshape(k, n_cls, 4)[:, 1]
        start += k
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = torch.nonzero((area > 0) & (sc.detach() > rh.score_thresh)).squeeze(1)
        keep = keep[box_ops.nms(boxes[keep], sc.detach()[keep], rh.nms_thresh)][:rh.detections_per_img]
        rh_, rw_ = osz[0] / isz[0], osz[1] / isz[1]
        b = boxes[keep] * torch.tensor([rw_, rh_, rw_, rh_], device=boxes.device)
        if box_values == "deltas":
            vals = deltas[keep]
        else:
            vals = b / torch.tensor([osz[1], osz[0], osz[1], osz[0]], dtype=b.dtype, device=b.device)
        out.append({"scores": sc[keep], "values": vals, "boxes": b})
    return out


class CovidCTMaskNet(nn.Module):
    """Mask R-CNN without its mask branch (eval mode throughout) + S. Trainable: S and, when
    `train_norm_affine`, the backbone's `bn*` affine parameters (the authors' setting)."""

    def __init__(self, mc: ModelConfig | dict[str, Any] | None = None, roi_batch: int = 128, hidden: int = 512,
                 n_classes: int = 3, score_thresh: float = -0.01, box_values: str = "deltas",
                 train_norm_affine: bool = True):
        super().__init__()
        self.seg = strip_mask_branch(build_maskrcnn(mc), roi_batch, score_thresh)
        if train_norm_affine:
            for _, p in norm_affine_parameters(self.seg):
                p.requires_grad_(True)
        self.s = ClassifierS(roi_batch, hidden, n_classes)
        self.roi_batch = roi_batch
        self.box_values = box_values
        self.train_norm_affine = train_norm_affine

    def train(self, mode: bool = True):  # the segmentation part always stays in eval mode
        super().train(mode)
        self.seg.eval()
        return self

    def detections(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Ranked RoIs (scores, values, boxes) of the segmentation part, before padding."""
        return ranked_rois(self.seg, images, self.box_values)

    def features(self, images: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([roi_features(d["values"], d["scores"], self.roi_batch, generator)
                            for d in self.detections(images)])

    def forward(self, images: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        return self.s(self.features(images, generator))


def segment(seg: MaskRCNN, images: list[torch.Tensor], cls: "CovidCTMaskNet | None" = None,
            share_backbone: bool = False) -> tuple[list[dict], list[dict] | None]:
    """Segmentation detections of `images` and, with `cls`, its ranked RoI batches. With `share_backbone`
    (the classifier's backbone has the segmentation model's weights) the backbone runs once for both."""
    sizes = [tuple(im.shape[-2:]) for im in images]
    il, _ = seg.transform(images)
    feats = seg.backbone(il.tensors)
    props, _ = seg.rpn(il, feats)
    dets, _ = seg.roi_heads(feats, props, il.image_sizes)
    dets = seg.transform.postprocess(dets, il.image_sizes, sizes)
    if cls is None:
        return dets, None
    if share_backbone:
        rois = ranked_rois_from_features(cls.seg, il, feats, sizes, cls.box_values)
    else:
        rois = cls.detections(images)
    return dets, rois


def describe(mc: ModelConfig) -> dict[str, Any]:
    return asdict(mc)
