import math

import numpy as np
import pytest
import torch

from detectlab.seizure.model import CNNBiLSTM, CNNFeatures, DANN, count_parameters, dann_lambda, grad_reverse
from detectlab.seizure.train import class_weights, threshold_from_training, weighted_bce


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0])
def test_grl_is_identity_forward_and_reverses_scaled_gradient(lam):
    """Catches a GRL that changes the forward pass or scales the gradient by anything but -lambda."""
    x = torch.randn(5, 40, requires_grad=True)
    w = torch.randn(5, 40)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -lam * w)


def test_dann_feature_gradient_from_domain_loss_is_reversed():
    """Catches the GRL placed wrongly in the DANN: the domain loss's gradient at G_f must be -lambda times
    the un-reversed one, G_d's own gradient unchanged, and zero at lambda = 0 (the probe cannot shape G_f)."""
    torch.manual_seed(0)
    m = DANN(n_domains=3, n_chans=18).train()
    x = torch.randn(8, 18, 64)
    d = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def grad_of_features(lam):
        m.zero_grad()
        _, dl = m(x, lam)
        torch.nn.functional.cross_entropy(dl, d).backward()
        return m.features.body[0].weight.grad.clone(), m.domain.net[0].weight.grad.clone()

    g_plain_f, g_plain_d = grad_of_features(-1.0)  # lambda = -1: the GRL multiplies by +1
    g_rev_f, g_rev_d = grad_of_features(0.5)
    assert torch.allclose(g_rev_f, -0.5 * g_plain_f, atol=1e-6)
    assert torch.allclose(g_rev_d, g_plain_d, atol=1e-6)  # the domain classifier itself is not reversed
    g0_f, _ = grad_of_features(0.0)
    assert torch.count_nonzero(g0_f) == 0


def test_lambda_schedule():
    """Catches a wrong GRL schedule (Eq. 8: 2/(1+exp(-10p)) - 1, rising from 0)."""
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.4621
    vals = [dann_lambda(p) for p in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in zip(vals, vals[1:]))


def test_class_weights_eqs_2_3():
    """Catches class weights not following Eqs. 2-3 (w_c = N / (2 N_c))."""
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # N=8, 6 negatives, 2 positives
    w0, w1 = class_weights(y)
    assert w0 == pytest.approx(8 / 12) and w1 == pytest.approx(8 / 4)
    # balanced total weight: w0 * n0 == w1 * n1 == N / 2
    assert w0 * 6 == pytest.approx(4) and w1 * 2 == pytest.approx(4)


def test_weighted_bce_by_hand():
    """Catches the class weight applied to the wrong class or the mean taken over the wrong count."""
    logits = torch.tensor([0.0, 2.0, -1.0])
    y = torch.tensor([1, 0, 0])
    w = (0.5, 3.0)
    p = torch.sigmoid(logits)
    expect = -(3.0 * torch.log(p[0]) + 0.5 * torch.log(1 - p[1]) + 0.5 * torch.log(1 - p[2])) / 3
    assert weighted_bce(logits, y, w).item() == pytest.approx(expect.item(), rel=1e-6)


def test_threshold_maximises_training_f1():
    """Catches a threshold that is not the F1-optimal point of the given (training) predictions."""
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    # thresholds 0.9/0.7/0.6/0.4/0.1 give F1 0.5/0.8/0.667/0.857/0.75
    assert threshold_from_training(y, p) == pytest.approx(0.4)


def test_cnn_shapes_and_parameter_count():
    """Catches a CNN that differs from the paper's (4 blocks of 2 conv, 5/10/20/40 channels) by its size."""
    f = CNNFeatures(18)
    assert f(torch.randn(3, 18, 500)).shape == (3, 40)
    # hand count: conv (c_in*c_out*3 + c_out) + BN (2*c_out) per sub-block
    chans = [(18, 5), (5, 5), (5, 10), (10, 10), (10, 20), (20, 20), (20, 40), (40, 40)]
    assert count_parameters(f) == sum(i * o * 3 + o + 2 * o for i, o in chans) == 10_245
    m = DANN(19)
    yl, dl = m(torch.randn(4, 18, 500), 0.3)
    assert yl.shape == (4,) and dl.shape == (4, 19)
    assert count_parameters(m.label) == 40 * 20 + 20 + 20 + 1
    assert count_parameters(m.domain) == 2 * (40 * 40 + 40 + 80) + 40 * 19 + 19


def test_bilstm_padding_does_not_change_valid_outputs():
    """Catches padding leaking into a shorter sequence's outputs, or a unidirectional LSTM."""
    torch.manual_seed(0)
    m = CNNBiLSTM(18).eval()
    a, b = torch.randn(7, 18, 64), torch.randn(4, 18, 64)
    with torch.no_grad():
        both = m([a, b])
        alone = m([b])
    assert both.shape == (2, 7)
    assert torch.allclose(both[1, :4], alone[0], atol=1e-5)
    # bidirectional: the first output depends on the last window
    b2 = b.clone()
    b2[-1] += 5
    with torch.no_grad():
        assert not torch.allclose(m([b2])[0, 0], alone[0, 0])


def test_fused_features_equal_unfused():
    """Catches BatchNorm folded into the convolutions with the wrong statistics (inference speed path)."""
    torch.manual_seed(0)
    f = CNNFeatures(18)
    f.train()(torch.randn(64, 18, 128))  # move the running statistics away from their defaults
    f.eval()
    x = torch.randn(7, 18, 128)
    with torch.no_grad():
        assert torch.allclose(f.fused()(x), f(x), atol=1e-5)


def test_lstm_blocks_equal_whole_pass_and_are_local():
    """Catches streaming prediction that differs from one BiLSTM pass on short sequences, or blocks whose
    outputs are not taken from the block where the window is central."""
    from detectlab.seizure.train import lstm_blocks

    torch.manual_seed(0)
    m = CNNBiLSTM(18).eval()
    f = torch.randn(50, 40)
    with torch.no_grad():
        whole = torch.sigmoid(m.sequence_logits([f])[0])
        assert torch.allclose(lstm_blocks(m, f, 0), whole, atol=1e-6)
        assert torch.allclose(lstm_blocks(m, f, 64), whole, atol=1e-6)
        blk = lstm_blocks(m, f, 20)  # blocks 0-20, 10-30, 20-40, 30-50: window 25 comes from block 20-40
        ref = torch.sigmoid(m.sequence_logits([f[20:40]])[0])
        assert torch.allclose(blk[25], ref[5], atol=1e-6)
        assert torch.allclose(blk[:15], torch.sigmoid(m.sequence_logits([f[:20]])[0])[:15], atol=1e-6)
        assert torch.allclose(blk[45:], torch.sigmoid(m.sequence_logits([f[30:50]])[0])[15:], atol=1e-6)
        assert not torch.allclose(blk, whole, atol=1e-4)


def test_inference_runs_on_the_data_device():
    """Catches an input left on the CPU while the model is elsewhere (the meta device stands in for a GPU:
    mixing devices raises there as it would on CUDA)."""
    from detectlab.seizure.train import cnn_features, lstm_blocks

    m = CNNBiLSTM(18).eval().to("meta")
    f = cnn_features(m, np.zeros((30, 18, 128), np.float32), "meta")
    assert f.device.type == "meta" and f.shape == (30, 40)
    p = lstm_blocks(m, f, 10)
    assert p.device.type == "meta" and p.shape == (30,)
    with pytest.raises(RuntimeError):
        cnn_features(m, np.zeros((3, 18, 128), np.float32), "cpu")  # inputs on the wrong device fail loudly
