import pytest
import torch

from detectlab.lesions.model import (PAPER_CLS_PARAMS, PAPER_SEG_PARAMS, ClassifierS, CovidCTMaskNet, ModelConfig,
                                     build_backbone, build_maskrcnn, count_params, parse_backbone,
                                     rank_preserving_pad, roi_features)

ALL = list(PAPER_SEG_PARAMS)


@pytest.mark.parametrize("name,stride,cin", [("resnet18_full", 32, 512), ("resnet18_t1", 16, 256),
                                              ("resnet18_t2", 8, 128), ("resnet34_t1", 16, 256)])
def test_truncation_gives_one_fpn_level(name, stride, cin):
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
    seg = count_params(build_maskrcnn(ModelConfig(backbone=name)))
    assert abs(seg / 1e6 / PAPER_SEG_PARAMS[name] - 1) < 0.03
    net = CovidCTMaskNet(ModelConfig(backbone=name))
    assert abs(count_params(net) / 1e6 / PAPER_CLS_PARAMS[name] - 1) < 0.03
    # S = Linear(640, 512) + Linear(512, 512) + Linear(512, 3): about the paper's 0.6M trainable
    assert count_params(net, trainable_only=True) == 640 * 512 + 512 + 512 * 512 + 512 + 512 * 3 + 3 == 592387


def test_exact_counts_of_the_two_t1_models():
    assert count_params(build_maskrcnn(ModelConfig(backbone="resnet18_t1"))) == 6051810
    assert count_params(build_maskrcnn(ModelConfig(backbone="resnet34_t1"))) == 11439330


def test_bad_backbone_name():
    with pytest.raises(ValueError):
        parse_backbone("resnet50_t1")
    assert parse_backbone("resnet34") == ("resnet34", "full")


def test_rank_preserving_pad_deterministic_and_random():
    assert rank_preserving_pad(3, 5).tolist() == [0, 0, 1, 1, 2]
    assert rank_preserving_pad(2, 6).tolist() == [0, 0, 0, 1, 1, 1]
    assert rank_preserving_pad(7, 4).tolist() == [0, 1, 2, 3]
    assert rank_preserving_pad(0, 4).numel() == 0
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        idx = rank_preserving_pad(5, 16, g)
        assert len(idx) == 16 and set(idx.tolist()) == set(range(5))
        assert (idx[1:] >= idx[:-1]).all()  # replicas sit next to their original: rank order kept


def test_roi_features_sorts_pads_and_scales():
    boxes = torch.tensor([[0, 0, 10, 20], [10, 10, 50, 50], [5, 5, 6, 6]], dtype=torch.float32)
    scores = torch.tensor([0.2, 0.9, 0.5])
    f = roi_features(boxes, scores, (100, 50), 5)  # H=100, W=50
    assert f.shape == (5, 5)
    assert f[:, 0].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5, 0.2])
    assert f[0, 1:].tolist() == pytest.approx([10 / 50, 10 / 100, 50 / 50, 50 / 100])
    assert roi_features(torch.zeros(0, 4), torch.zeros(0), (10, 10), 4).abs().sum() == 0


def test_covid_ct_mask_net_is_frozen_without_mask_branch():
    mc = ModelConfig(backbone="resnet18_t2", min_size=96, max_size=96)
    net = CovidCTMaskNet(mc, roi_batch=16, hidden=32)
    assert not net.seg.roi_heads.has_mask()
    assert all(not p.requires_grad for p in net.seg.parameters())
    net.train()
    assert not net.seg.training  # the frozen model stays in eval mode
    assert net.seg.roi_heads.score_thresh == -0.01 and net.seg.roi_heads.detections_per_img == 16
    logits = net([torch.rand(3, 96, 96), torch.rand(3, 80, 96)])
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.s.parameters())


def test_one_training_step_lowers_the_loss():
    import tempfile

    from detectlab.lesions.data import load_classification_folder, to_target, to_tensor
    from detectlab.lesions.synthetic import generate

    with tempfile.TemporaryDirectory() as d:
        sl = [s for s in load_classification_folder(generate(d, 3, 1, 128, seed=3)) if s.mask.any()][:1]
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
