"""Head replacement for the ten architectures, auxiliary heads, and weight loading (files the tests write)."""

import math

import pytest
import torch

from detectlab.core.errors import InputError
from detectlab.fluid.model import ARCHS, AUX_PATHS, HEAD_PATH, build, count_params


@pytest.mark.parametrize("arch", list(ARCHS))
def test_head_replacement_forward_backward(arch):
    torch.manual_seed(0)
    model = build(arch)
    head = model.net.get_submodule(HEAD_PATH[arch])
    # a 2-class layer with Glorot (uniform) init and zero bias
    w = head.weight
    assert w.shape[0] == 2
    fan_in = w[0].numel()
    bound = math.sqrt(6.0 / (fan_in + 2 * (w[0, 0].numel())))
    wmax = float(w.detach().abs().max())
    assert bound / 2 < wmax <= bound + 1e-6
    assert torch.count_nonzero(head.bias) == 0
    size = ARCHS[arch].min_size
    x = torch.rand(2, 1, size, size) * 2 - 1  # grey in [-1, 1], replicated to RGB by the model
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 2)


@pytest.mark.parametrize("arch", list(AUX_PATHS))
def test_aux_heads(arch):
    plain = build(arch)
    assert all(n.split(".")[0] not in ("aux1", "aux2", "AuxLogits") for n, _ in plain.net.named_children()
               if getattr(plain.net, n) is not None)
    model = build(arch, aux_logits=True)
    assert count_params(model) > count_params(plain)
    for p in AUX_PATHS[arch]:
        assert model.net.get_submodule(p).out_features == 2
    model.train()
    size = 299 if arch == "inception_v3" else 64  # inception_v3's aux head needs its native 299 px
    main, aux = model(torch.rand(2, 1, size, size))
    assert main.shape == (2, 2) and len(aux) == len(AUX_PATHS[arch]) and all(a.shape == (2, 2) for a in aux)
    model.eval()
    assert model(torch.rand(2, 1, size, size)).shape == (2, 2)


def test_parameter_counts_table1_and_head():
    from detectlab.fluid.model import _backbone

    for arch in ("resnet18", "mobilenet_v2", "squeezenet"):
        full = count_params(_backbone(ARCHS[arch]))  # the 1000-class ImageNet model of Table I
        assert abs(full / 1e6 - ARCHS[arch].paper_params_m) / ARCHS[arch].paper_params_m < 0.05, (arch, full)
    # the 2-class head, counted by hand: resnet18 drops fc 512x1000+1000 and gains 512x2+2
    assert count_params(build("resnet18")) == 11_689_512 - 513_000 + 1_026
    # squeezenet: the 1x1 conv 512->1000 becomes 512->2
    assert count_params(build("squeezenet")) == 1_248_424 - 513_000 + 1_026


def test_weights_from_files(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = torchvision.models.resnet18(weights=None)
    state = src.state_dict()
    torch.save(state, tmp_path / "r18.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    for f in ("r18.pth", "r18.safetensors"):
        m = build("resnet18", weights=str(tmp_path / f))
        assert torch.equal(m.net.conv1.weight, state["conv1.weight"])
        assert torch.equal(m.net.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
        assert m.net.fc.weight.shape == (2, 512)  # the head is replaced after loading
    with pytest.raises(InputError, match="do not fit resnet18"):
        build("resnet18", weights=str(_squeezenet_file(tmp_path)))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="unreadable weights file"):
        build("resnet18", weights=str(tmp_path / "junk.pth"))


def _squeezenet_file(tmp_path):
    import torchvision

    p = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_0(weights=None).state_dict(), p)
    return p


def test_imagenet_weights_from_local_hub_cache(tmp_path, monkeypatch):
    import torchvision

    from detectlab.fluid.model import get_arch, imagenet_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    path, url = imagenet_weights_path(get_arch("squeezenet"))
    assert str(path).startswith(str(tmp_path)) and path.name == url.rsplit("/", 1)[-1]
    with pytest.raises(InputError, match="not in the local torch hub cache") as e:
        build("squeezenet", weights="imagenet")
    assert str(path) in e.value.line() and url in e.value.line()
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    state = torchvision.models.squeezenet1_0(weights=None).state_dict()
    torch.save(state, path)
    m = build("squeezenet", weights="imagenet")
    assert torch.equal(m.net.features[0].weight, state["features.0.weight"])
