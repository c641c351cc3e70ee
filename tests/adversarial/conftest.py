import pytest
import torch

from detectlab.adversarial.data import builtin_digits


@pytest.fixture(scope="session")
def digits():
    return builtin_digits(seed=0)


@pytest.fixture(scope="session")
def trained_model(digits):
    """A Madry CNN trained naturally on the built-in digits for a few epochs (a few seconds)."""
    from types import SimpleNamespace

    from detectlab.adversarial.train import train_model

    train, _ = digits
    cfg = SimpleNamespace(seed=0, train=SimpleNamespace(lr=1e-3, batch_size=50, epochs=4, iterations=0))
    model, hist = train_model("natural", train, cfg, torch.device("cpu"), log_every=10**9)
    return model.eval()
