import numpy as np
import pytest
import torch
from torch import nn

from detectlab.adversarial.baseline import FeatureSqueezing, bit_depth, median_filter, trivial_scores


@pytest.mark.parametrize("size", [2, 3])
def test_median_filter_is_scipys(size):
    """Xu et al. squeeze with scipy.ndimage.median_filter (mode 'reflect'); faults: the window anchored on
    the other side for even sizes, the lower instead of the upper median, zero padding at the border."""
    from scipy import ndimage

    x = torch.rand(3, 1, 9, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    np.testing.assert_array_equal(median_filter(x, size).numpy(), ref)


def test_bit_depth_levels():
    """1 bit is round(x); 3 bits has the 8 levels k/7 (fault: 2**bits instead of 2**bits - 1 levels)."""
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 1.0, 0.3])
    assert bit_depth(x, 1).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert torch.allclose(bit_depth(x, 3) * 7, torch.tensor([0.0, 1, 3, 4, 7, 2]))


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 0, 0, 0], [0, 4, 0, 0], [0, 0, 1, 1]]))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_score_is_max_l1_of_softmaxes():
    """The joint score is the largest L1 distance over the squeezers (faults: their sum, an L2 distance,
    logits instead of softmax)."""
    x = torch.tensor([[[[0.3, 0.8], [0.6, 0.1]]]])
    fs = FeatureSqueezing(Linear(), bits=1, median=(2,))
    with torch.no_grad():
        p = torch.softmax(Linear()(x), 1)
        d_bits = (p - torch.softmax(Linear()(bit_depth(x, 1)), 1)).abs().sum()
        d_med = (p - torch.softmax(Linear()(median_filter(x, 2)), 1)).abs().sum()
    assert abs(float(d_bits) - float(d_med)) > 0.05  # the two squeezers disagree here
    assert float(fs.score(x)) == pytest.approx(max(float(d_bits), float(d_med)), rel=1e-6)


def test_fit_threshold_flags_the_chosen_share():
    """fit(fpr) lets exactly floor(fpr·n) benign images above the threshold (fault: the quantile of the
    wrong tail, which flags 95 % instead of 5 %)."""
    x = torch.rand(400, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    fs = FeatureSqueezing(Linear(), bits=1, median=(2,)).fit(x, fpr=0.05)
    assert int(fs.detect(x).sum()) == 20
    assert fs.fit_stats["train_fpr"] == 0.05
    with pytest.raises(ValueError, match="fpr"):
        fs.fit(x, fpr=0.0)


def test_feature_squeezing_flags_fgsm_on_a_trained_model(trained_model, digits):
    """On the built-in digits the squeezers move attacked images' softmax far more than clean ones':
    the AUC of its score is high at eps 0.3 (fault: squeezing the wrong image, scoring the clean copy)."""
    from detectlab.adversarial.attack import fgsm
    from detectlab.adversarial.detector import roc_auc

    _, test = digits
    x, y = test.x[:150], test.y[:150]
    fs = FeatureSqueezing(trained_model)
    adv = fgsm(trained_model, x, y, 0.3)
    assert roc_auc(fs.score(x).numpy(), fs.score(adv).numpy()) > 0.8


def test_trivial_detector_flags_nothing():
    """The baseline that flags nothing: a constant score below 0.5 (fault: a score that ranks images)."""
    s = trivial_scores(5)
    assert s.shape == (5,) and np.all(s == s[0]) and s[0] < 0.5
