import numpy as np
import pytest
import torch

from detectlab.lesions.config import ClsTrainConfig, ModelConfig
from detectlab.lesions.model import (PAPER_CLS_PARAMS, PAPER_SEG_PARAMS, ClassifierS, CovidCTMaskNet, anchor_coverage,
                                     build_backbone, build_maskrcnn, count_params, fit_anchors, norm_affine_parameters,
                                     parse_backbone, rank_preserving_pad, ranked_rois, roi_features)

ALL = list(PAPER_SEG_PARAMS)


@pytest.mark.parametrize("name,stride,cin", [("resnet18_full", 32, 512), ("resnet18_t1", 16, 256),
                                              ("resnet18_t2", 8, 128), ("resnet34_t1", 16, 256)])
def test_truncation_gives_one_fpn_level(name, stride, cin):
    """Catches an extra max-pool FPN level, the FPN on the wrong block, and layers kept past the cut."""
    bb = build_backbone(name).eval()
    with torch.no_grad():
        out = bb(torch.zeros(1, 3, 128, 128))
    assert list(out) == ["0"]  # single FPN level, no max-pool 'pool' level
    assert out["0"].shape == (1, 256, 128 // stride, 128 // stride)
    assert bb.fpn.inner_blocks[0][0].in_channels == cin  # FPN input: the last kept block's maps
    layers = {n.split(".")[0] for n, _ in bb.body.named_children()}
    kept = {"full": "layer4", "t1": "layer3", "t2": "layer2"}[name.split("_")[1]]
    assert kept in layers and not any(f"layer{k}" in layers for k in range(int(kept[-1]) + 1, 5))


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_match_table1(name):
    """Catches heads of the wrong size (Table 1 totals within 3 %) and a trainable set other than the
    authors' (S + the backbone's bn* affine parameters, about 0.6M)."""
    seg = count_params(build_maskrcnn(ModelConfig(backbone=name)))
    assert abs(seg / 1e6 / PAPER_SEG_PARAMS[name] - 1) < 0.03
    net = CovidCTMaskNet(ModelConfig(backbone=name))
    assert abs(count_params(net) / 1e6 / PAPER_CLS_PARAMS[name] - 1) < 0.03
    s_params = 640 * 512 + 512 + 512 * 512 + 512 + 512 * 3 + 3
    bn = sum(p.numel() for _, p in norm_affine_parameters(net.seg))
    assert count_params(net, trainable_only=True) == s_params + bn
    assert abs((s_params + bn) / 1e6 / 0.6 - 1) < 0.02
    frozen = CovidCTMaskNet(ModelConfig(backbone=name), train_norm_affine=False)
    assert count_params(frozen, trainable_only=True) == s_params


def test_trainable_norm_parameters_are_the_authors():
    """Catches training the downsample norms, the FPN or the heads, or not training the bn* affine
    parameters (the authors' switch_model_on: names containing 'bn')."""
    net = CovidCTMaskNet(ModelConfig(backbone="resnet18_t1"))
    names = sorted(n for n, p in net.seg.named_parameters() if p.requires_grad)
    assert len(names) == 2 * (1 + 3 * 2 * 2) and all(".bn" in "." + n.split("backbone.body.")[1] for n in names)
    assert sum(p.numel() for n, p in net.seg.named_parameters() if p.requires_grad) == 3712
    assert not any("downsample" in n for n in names)


def test_exact_counts_of_the_two_t1_models():
    """Catches any change to the segmentation model's parameter count (counts from the authors' sizes)."""
    assert count_params(build_maskrcnn(ModelConfig(backbone="resnet18_t1"))) == 6051810
    assert count_params(build_maskrcnn(ModelConfig(backbone="resnet34_t1"))) == 11439330
    # GroupNorm has the same affine parameters as BatchNorm
    assert count_params(build_maskrcnn(ModelConfig(backbone="resnet18_t1", norm="group"))) == 6051810


def test_bad_backbone_name():
    """Catches unknown backbones accepted."""
    with pytest.raises(ValueError):
        parse_backbone("resnet50_t1")
    assert parse_backbone("resnet34") == ("resnet34", "full")


@pytest.mark.parametrize("n,size", [(3, 5), (2, 6), (5, 16), (1, 4), (7, 8)])
def test_rank_preserving_pad_properties(n, size):
    """Catches padding that reorders the ranks, drops a detection, or spreads copies unevenly."""
    det = rank_preserving_pad(n, size)
    assert len(det) == size and (det[1:] >= det[:-1]).all() and set(det.tolist()) == set(range(n))
    counts = np.bincount(det.numpy(), minlength=n)
    assert counts.max() - counts.min() <= 1  # evaluation: copies spread evenly over the ranks
    g = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(20):
        idx = rank_preserving_pad(n, size, g)
        assert len(idx) == size and (idx[1:] >= idx[:-1]).all() and set(idx.tolist()) == set(range(n))
        seen.add(tuple(idx.tolist()))
    assert len(seen) > 1 or n == 1  # training: random copies
    assert rank_preserving_pad(7, 4).tolist() == [0, 1, 2, 3] and rank_preserving_pad(0, 4).numel() == 0


def test_roi_features_sorts_and_pads():
    """Catches S rows not in decreasing score order, values detached from their scores, and padding other
    than zeros without detections."""
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.1, 1.2, 1.3], [5.0, 5.0, 6.0, 6.0]])
    scores = torch.tensor([0.2, 0.9, 0.5])
    f = roi_features(values, scores, 5)
    assert f[:, 0].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5, 0.2])
    assert f[0, 1:].tolist() == pytest.approx([1.0, 1.1, 1.2, 1.3]) and f[4, 1:].tolist() == pytest.approx(
        [0.1, 0.2, 0.3, 0.4])
    z = roi_features(torch.zeros(0, 4), torch.zeros(0), 4)
    assert z.shape == (4, 5) and not z.any()


def test_roi_features_follow_the_detections_device():
    """Catches a CPU generator's indices or a CPU zero batch meeting detections on another device (the
    padding must follow the detections; checked with the `meta` device, which refuses mixing)."""
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(3, 4, device="meta")
    s = torch.zeros(3, device="meta")
    assert roi_features(v, s, 8, g).device.type == "meta"
    assert roi_features(v, s, 8).device.type == "meta"
    assert roi_features(torch.zeros(0, 4, device="meta"), torch.zeros(0, device="meta"), 8).device.type == "meta"
    assert rank_preserving_pad(3, 8, g, "meta").device.type == "meta"


def test_ranked_rois_feed_s_the_score_and_raw_box_deltas():
    """Catches S fed decoded boxes instead of the authors' raw box-regression outputs, the background
    score instead of the lesion score, and unranked RoIs."""
    torch.manual_seed(0)
    mc = ModelConfig(backbone="resnet18_t2", min_size=64, max_size=64, rpn_post_nms_top_n_test=40)
    net = CovidCTMaskNet(mc, roi_batch=16, hidden=8)
    seen = {}
    net.seg.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.update(logits=o[0], reg=o[1]))
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        d = ranked_rois(net.seg, x, "deltas")[0]
    assert len(d["scores"]) > 0 and (d["scores"][1:] <= d["scores"][:-1]).all()
    probs = torch.softmax(seen["logits"], -1)[:, 1]
    deltas = seen["reg"].reshape(-1, 2, 4)[:, 1]
    for sc, v in zip(d["scores"], d["values"]):
        k = int(torch.argmin((probs - sc).abs()))
        assert float(probs[k]) == pytest.approx(float(sc), abs=1e-6)
        assert torch.allclose(deltas[k], v, atol=1e-6)
    with torch.no_grad():
        b = ranked_rois(net.seg, x, "boxes")[0]
    assert float(b["values"].max()) <= 1.0 and float(b["values"].min()) >= 0.0  # boxes / image size


def test_classifier_loss_is_bce_with_logits_on_one_hot():
    """Catches the loss silently switched from the authors' BCE-with-logits to cross-entropy."""
    from detectlab.lesions.train import cls_loss

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    y = torch.tensor([0, 2])
    onehot = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    expected = -(onehot * torch.log(torch.sigmoid(logits)) + (1 - onehot) * torch.log(1 - torch.sigmoid(logits))).mean()
    assert float(cls_loss(logits, y, "bce")) == pytest.approx(float(expected), rel=1e-6)
    assert float(cls_loss(logits, y, "ce")) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))


def _slices(n, size=64, seed=3):
    import tempfile

    from detectlab.lesions.data import load_classification_folder
    from detectlab.lesions.synthetic import generate

    with tempfile.TemporaryDirectory() as d:
        return load_classification_folder(generate(d, n, 1, size, seed=seed))


def test_norm_affine_training_moves_bn_weights_not_running_stats():
    """Catches the authors' setting not followed: the bn* affine parameters must change with S while the
    running statistics and every other segmentation weight stay frozen."""
    from detectlab.lesions.train import train_classifier

    torch.manual_seed(0)
    net = CovidCTMaskNet(ModelConfig(backbone="resnet18_t2", min_size=64, max_size=64, rpn_post_nms_top_n_test=30),
                         roi_batch=8, hidden=16)
    before = {k: v.clone() for k, v in net.seg.state_dict().items()}
    sl = _slices(3)
    train_classifier(net, sl, ClsTrainConfig(epochs=2, batch_size=3, lr=1e-2), seed=0)
    after = net.seg.state_dict()
    trainable = {f"backbone.body.{n}" for n, _ in norm_affine_parameters(net.seg)}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    assert not any("running" in k for k in changed)


class _RecordingS(torch.nn.Module):
    """Stands in for S on a device of its own (`meta`, first parameter) and records where its inputs are;
    the logits come from a real CPU S on zeros, so the training loop still runs."""

    def __init__(self, roi_batch):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1, device="meta"), requires_grad=False)
        self.real = ClassifierS(roi_batch, 8)
        self.roi_batch = roi_batch
        self.seen = []

    def forward(self, x):
        self.seen.append(x.device.type)
        return self.real(torch.zeros(x.shape))


def test_classifier_s_gets_its_inputs_on_its_own_device():
    """Catches the GPU crash of the classifier stage: S on the device while the cached RoI batches stay
    on the CPU (training and evaluation must move each batch to S's device)."""
    from detectlab.lesions.train import classify, roi_cache, train_classifier

    net = CovidCTMaskNet(ModelConfig(backbone="resnet18_t2", min_size=64, max_size=64, rpn_post_nms_top_n_test=30),
                         roi_batch=8, hidden=8, train_norm_affine=False)
    sl = _slices(3)
    cache = roi_cache(net, sl, torch.device("cpu"))
    assert all(c["scores"].device.type == "cpu" for c in cache)
    net.s = _RecordingS(8)
    train_classifier(net, sl, ClsTrainConfig(epochs=1, batch_size=2), cache=cache)
    probs = classify(net, cache=cache)
    assert net.s.seen and set(net.s.seen) == {"meta"}
    assert probs.shape == (3, 3)


def test_fitted_anchors_cover_more_boxes():
    """Catches anchors fitted away from the boxes (coverage must rise over the paper's tiny anchors on
    lesion-sized boxes) and a coverage that ignores the stride grid."""
    rng = np.random.default_rng(0)
    side = np.minimum(rng.lognormal(np.log(35), 0.7, 300), 150)
    ratio = rng.lognormal(0, 0.3, 300)
    w, h = side / np.sqrt(ratio), side * np.sqrt(ratio)
    x, y = rng.uniform(0, 256 - w), rng.uniform(0, 256 - h)
    boxes = np.stack([x, y, x + w, y + h], 1)
    sizes, ratios = fit_anchors(boxes)
    assert len(sizes) == 5 and sizes == sorted(sizes) and sizes[0] >= 6 and sizes[-1] <= 150
    assert min(ratios) < 1 < max(ratios)
    paper = anchor_coverage([boxes], [(256, 256)], [2, 4, 8, 16, 32], [0.1, 0.25, 0.5, 1, 1.5, 2], 8)
    ours = anchor_coverage([boxes], [(256, 256)], sizes, ratios, 8)
    assert ours > paper + 0.15 and ours > 0.8
    one = np.array([[0.0, 0.0, 16.0, 16.0]])
    assert anchor_coverage([one], [(64, 64)], [16], [1.0], 8) == 1.0
    assert anchor_coverage([one + 4], [(64, 64)], [16], [1.0], 8) == 0.0  # IoU 0.39 with the nearest anchors


def test_covid_ct_mask_net_forward_backward():
    """Catches the segmentation part leaving eval mode, lost mask-branch removal, and S without gradients."""
    mc = ModelConfig(backbone="resnet18_t2", min_size=96, max_size=96)
    net = CovidCTMaskNet(mc, roi_batch=16, hidden=32)
    assert not net.seg.roi_heads.has_mask()
    net.train()
    assert not net.seg.training  # the frozen model stays in eval mode
    assert net.seg.roi_heads.score_thresh == -0.01 and net.seg.roi_heads.detections_per_img == 16
    logits = net([torch.rand(3, 96, 96), torch.rand(3, 80, 96)])
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.s.parameters())


def test_one_training_step_lowers_the_loss():
    """Catches targets the loss cannot learn from (wrong boxes/masks) or an optimiser that does not step."""
    from detectlab.lesions.data import to_target, to_tensor

    sl = [s for s in _slices(3, 128) if s.mask.any()][:1]
    imgs, tgts = [to_tensor(s.image) for s in sl], [to_target(s) for s in sl]
    assert len(tgts[0]["boxes"]) >= 1
    torch.manual_seed(0)
    model = build_maskrcnn(ModelConfig(backbone="resnet18_t1", min_size=128, max_size=128, image_mean=0.2,
                                       image_std=0.23, box_batch_size_per_image=16, rpn_post_nms_top_n_train=100))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def loss_now():
        torch.manual_seed(1)  # the same RPN/RoI sampling draws before and after the step
        return model(imgs, tgts)

    parts = loss_now()
    assert set(parts) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    before = sum(parts.values())
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = sum(loss_now().values())
    assert float(after) < 0.97 * float(before)


def test_classifier_s_learns_a_separable_ranking():
    """Catches an S that cannot use the rank order of its input (the class sits in the top row's score)."""
    torch.manual_seed(0)
    s = ClassifierS(roi_batch=8, hidden=32)
    x = torch.rand(60, 8, 5)
    y = torch.arange(60) % 3
    x[:, 0, 0] = y.float() / 2  # the top score tells the class
    opt = torch.optim.Adam(s.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(s(x), y)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first
    assert (s(x).argmax(1) == y).float().mean() > 0.9
