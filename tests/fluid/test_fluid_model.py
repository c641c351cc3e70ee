"""Head replacement for the ten architectures, aux heads, normalisation from the weights' metadata, where
the weights of every architecture are found, file formats read from their bytes, GroupNorm, the mask head."""

import math

import pytest
import torch

from detectlab.core.errors import InputError
from detectlab.fluid import model as M
from detectlab.fluid.model import ARCHS, AUX_PATHS, HEAD_PATH, build, count_params


@pytest.mark.parametrize("arch", list(ARCHS))
def test_head_replacement_forward_backward(arch):
    """Catches: a head not replaced (1000 outputs), not Glorot-initialised, a feature map the mask head /
    Grad-CAM cannot use, or a network that does not train on grey input."""
    torch.manual_seed(0)
    model = build(arch, mask_head=True)
    head = model.net.get_submodule(HEAD_PATH[arch])
    w = head.weight
    assert w.shape[0] == 2
    fan_in, fan_out = w[0].numel(), 2 * w[0, 0].numel()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    wmax = float(w.detach().abs().max())
    assert bound / 2 < wmax <= bound + 1e-6
    assert torch.count_nonzero(head.bias) == 0
    size = ARCHS[arch].min_size
    x = torch.rand(2, 1, size, size)  # grey in [0, 1], replicated to RGB by the model
    model.train()
    out = model.forward_all(x)
    assert out["logits"].shape == (2, 2) and out["aux"] == []
    assert out["features"].shape[:2] == (2, ARCHS[arch].feature_channels) and out["seg"].shape[1] == 1
    torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1])).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 2)


@pytest.mark.parametrize("arch", list(AUX_PATHS))
def test_aux_heads(arch):
    """Catches: aux heads kept by default (the MATLAB models have none) or not 2-class when asked for."""
    plain = build(arch)
    assert all(n not in ("aux1", "aux2", "AuxLogits") for n, c in plain.net.named_children() if c is not None)
    model = build(arch, aux_logits=True)
    assert count_params(model) > count_params(plain)
    for p in AUX_PATHS[arch]:
        assert model.net.get_submodule(p).out_features == 2
    model.train()
    size = 299 if arch == "inception_v3" else 64  # inception_v3's aux head needs its native 299 px
    out = model.forward_all(torch.rand(2, 1, size, size))
    assert out["logits"].shape == (2, 2) and len(out["aux"]) == len(AUX_PATHS[arch])
    assert all(a.shape == (2, 2) for a in out["aux"])
    model.eval()
    assert model(torch.rand(2, 1, size, size)).shape == (2, 2)


def test_parameter_counts_table1_and_squeezenet_v1_1():
    """Fault 9 (first half): MATLAB's squeezenet is v1.1 (1,235,496 parameters), not v1.0 (1,248,424)."""
    assert ARCHS["squeezenet"].builder == "squeezenet1_1"
    for arch in ("resnet18", "mobilenet_v2", "squeezenet"):
        full = count_params(M._backbone(ARCHS[arch]))  # the 1000-class ImageNet model of Table I
        assert abs(full / 1e6 - ARCHS[arch].paper_params_m) / ARCHS[arch].paper_params_m < 0.05, (arch, full)
    assert count_params(M._backbone(ARCHS["squeezenet"])) == 1_235_496
    # the 2-class head, counted by hand: resnet18 drops fc 512x1000+1000 and gains 512x2+2
    assert count_params(build("resnet18")) == 11_689_512 - 513_000 + 1_026
    assert count_params(build("squeezenet")) == 1_235_496 - 513_000 + 1_026
    assert count_params(build("resnet18", mask_head=True)) == 11_689_512 - 513_000 + 1_026 + 513


def test_normalisation_comes_from_the_weights_metadata():
    """Fault 6: every input was scaled to [-1, 1]; the torchvision weights of vgg16, alexnet, resnet18,
    densenet201, mobilenet_v2 and squeezenet expect ImageNet mean/SD, the timm ones 0.5/0.5."""
    from torchvision.models import get_model_weights

    grey = torch.full((1, 1, 4, 4), 0.5)
    for name, a in ARCHS.items():
        mean, std, _ = M.normalisation(a)
        if a.library == "torchvision":
            t = get_model_weights(a.builder).DEFAULT.transforms()
            assert list(mean) == pytest.approx(t.mean) and list(std) == pytest.approx(t.std), name
        else:
            assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5), name
    r18 = build("resnet18")
    got = r18.normalise(grey)[0, :, 0, 0]
    want = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(got, want)
    assert torch.allclose(build("xception").normalise(grey), torch.zeros(1, 3, 4, 4))
    # googlenet / inception_v3: ImageNet-normalised in, turned into [-1, 1] by transform_input (as torchvision)
    assert build("googlenet").net.transform_input and build("inception_v3").net.transform_input


def test_weights_found_for_every_architecture(tmp_path, monkeypatch):
    """Fault 5: weights for all ten architectures from the torch hub cache (torchvision files) or the
    Hugging Face / torch hub caches (timm), under the names the libraries publish; xception's message used to
    point at a Cadene .pth while the loader looked elsewhere."""
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for name, a in ARCHS.items():
        with pytest.raises(InputError, match="in none of the local caches") as e:
            M.find_weights(a, "imagenet")
        first, src = M.weights_locations(a)[0]
        assert str(first) in e.value.line() and src in e.value.line()
        if a.library == "timm":
            repo = "timm/legacy_xception.tf_in1k" if name == "xception" else "timm/inception_resnet_v2.tf_in1k"
            assert src == f"Hugging Face {repo}" and ".pth" not in str(first)
            snap = tmp_path / "hf" / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc123"
            snap.mkdir(parents=True)
            (snap / "model.safetensors").write_bytes(b"x")
            assert M.find_weights(a, "imagenet") == snap / "model.safetensors"
        else:
            assert first.parent == tmp_path / "torch" / "hub" / "checkpoints"
            first.parent.mkdir(parents=True, exist_ok=True)
            first.write_bytes(b"x")
            assert M.find_weights(a, "imagenet") == first
    # timm's torch hub file (legacy_xception's url) is found too when the HF cache has none
    import shutil

    shutil.rmtree(tmp_path / "hf")
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "xception-43020ad28.pth"
    hub_file.write_bytes(b"x")
    assert M.find_weights(ARCHS["xception"], "imagenet") == hub_file


def test_timm_weights_load_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """Fault 5: a timm model (xception) really loads from the offline Hugging Face cache layout."""
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(4)
    state = timm.create_model("legacy_xception", pretrained=False).state_dict()
    snap = tmp_path / "hf" / "models--timm--legacy_xception.tf_in1k" / "snapshots" / "r1"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    assert M.check_weights("xception", "imagenet") == str(snap / "model.safetensors")
    m = build("xception", weights="imagenet")
    assert torch.equal(m.net.conv1.weight, state["conv1.weight"]) and m.net.fc.out_features == 2


def test_weight_files_any_name_any_format(tmp_path):
    """Fault 5: the format was guessed from the suffix; a safetensors file named .pth and a torch file named
    .safetensors must both load, a folder of published names works, junk and misfits are one-line errors."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "sq_safetensors.pth"))
    torch.save(state, tmp_path / "sq_torch.safetensors")
    for f in ("sq_safetensors.pth", "sq_torch.safetensors"):
        m = build("squeezenet", weights=str(tmp_path / f))
        assert torch.equal(m.net.features[0].weight, state["features.0.weight"])
        assert m.net.classifier[1].out_channels == 2  # the head is replaced after loading
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(state, folder / "squeezenet1_1-b8a52dc0.pth")
    assert M.check_weights("squeezenet", str(folder)) == str(folder / "squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(InputError, match="weights do not fit resnet18"):
        M.check_weights("resnet18", str(tmp_path / "sq_torch.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="neither a safetensors nor a torch"):
        build("resnet18", weights=str(tmp_path / "junk.pth"))


def test_groupnorm_option():
    """Fault 2 (alternative): GroupNorm instead of BatchNorm leaves no running statistics to go stale."""
    m = build("resnet18", norm="group")
    assert not M.has_batchnorm(m) and sum(isinstance(x, torch.nn.GroupNorm) for x in m.modules()) == 20
    m.eval()
    x = torch.rand(4, 1, 32, 32)
    assert torch.allclose(m(x)[0], m(x[:1])[0], atol=1e-5)  # no batch statistics in either mode
    with pytest.raises(InputError, match="GroupNorm replaces the BatchNorm"):
        build("resnet18", weights="imagenet", norm="group")
