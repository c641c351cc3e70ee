"""The ten ImageNet CNNs of Table I with a new 2-class layer (Glorot init), auxiliary heads handled.

Eight come from torchvision (vgg16, alexnet, googlenet, resnet18, densenet201, inception_v3, mobilenet_v2,
squeezenet = squeezenet1_0) and two from timm (xception = timm ``legacy_xception``, inception_resnet_v2).

Weights: ``none`` (from scratch), ``imagenet`` (read from the local torch hub cache, never downloaded), or
a file (.pth/.pt read with ``weights_only=True``, or .safetensors) holding the 1000-class ImageNet model's
state dict. The last classifier is replaced *after* loading, as in the paper (the MATLAB models lose their
last FC/softmax/output layers and get a Glorot-initialised 2-class FC layer).

googlenet and inception_v3 are built without their auxiliary classifiers by default, which is what the
paper's MATLAB models are (Table I: googlenet 7.0M, inceptionv3 23.9M parameters). With ``aux_logits=True``
the auxiliary heads are kept, their last layers are replaced by 2-class layers too, and the training loss
adds ``aux_weight`` x their cross-entropy (the torchvision/Szegedy recipe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detectlab.core.errors import InputError


@dataclass(frozen=True)
class Arch:
    name: str
    library: str  # "torchvision" or "timm"
    builder: str  # the library's model name
    input_size: int  # Table I input size (227 for alexnet/squeezenet as in MATLAB)
    paper_params_m: float  # Table I
    paper_depth: int
    paper_batch: int  # Table I: largest batch size on an 11 GB GPU
    min_size: int  # the smallest input the network accepts (for cheap tests)


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("vgg16", "torchvision", "vgg16", 224, 138, 16, 32, 32),
    Arch("alexnet", "torchvision", "alexnet", 227, 61, 8, 64, 63),
    Arch("inception_resnet_v2", "timm", "inception_resnet_v2", 299, 55.9, 164, 16, 75),
    Arch("inception_v3", "torchvision", "inception_v3", 299, 23.9, 48, 64, 75),
    Arch("xception", "timm", "legacy_xception", 299, 22.9, 71, 16, 32),
    Arch("densenet201", "torchvision", "densenet201", 224, 20, 201, 16, 32),
    Arch("resnet18", "torchvision", "resnet18", 224, 11.7, 18, 64, 32),
    Arch("googlenet", "torchvision", "googlenet", 224, 7, 22, 64, 32),
    Arch("mobilenet_v2", "torchvision", "mobilenet_v2", 224, 3.5, 53, 64, 32),
    Arch("squeezenet", "torchvision", "squeezenet1_0", 227, 1.24, 18, 64, 32),
]}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise InputError(f"architecture '{name}'", "unknown architecture", "one of: " + ", ".join(ARCHS))
    return ARCHS[name]


def _glorot(layer: nn.Module) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _new_like(old: nn.Module, n_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return _glorot(nn.Linear(old.in_features, n_classes))
    if isinstance(old, nn.Conv2d):
        return _glorot(nn.Conv2d(old.in_channels, n_classes, old.kernel_size, old.stride))
    raise TypeError(f"cannot replace a {type(old).__name__} classifier")


#: where the last classifier sits in each backbone (attribute path, index for Sequential)
HEAD_PATH = {
    "vgg16": "classifier.6", "alexnet": "classifier.6", "googlenet": "fc", "resnet18": "fc",
    "densenet201": "classifier", "inception_v3": "fc", "mobilenet_v2": "classifier.1",
    "squeezenet": "classifier.1", "xception": "fc", "inception_resnet_v2": "classif",
}
AUX_PATHS = {"googlenet": ["aux1.fc2", "aux2.fc2"], "inception_v3": ["AuxLogits.fc"]}


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    if isinstance(owner, nn.Sequential):
        owner[int(last)] = new
    else:
        setattr(owner, last, new)


def _backbone(arch: Arch) -> nn.Module:
    """The 1000-class network, random init, with aux heads where the architecture has them."""
    if arch.library == "timm":
        import timm

        return timm.create_model(arch.builder, pretrained=False, num_classes=1000)
    import torchvision.models as tvm

    kw: dict[str, Any] = {"weights": None}
    if arch.name in AUX_PATHS:
        kw.update(aux_logits=True, init_weights=True)
    return getattr(tvm, arch.builder)(**kw)


def imagenet_weights_path(arch: Arch) -> tuple[Path, str]:
    """Where `--weights imagenet` looks (torch hub cache), and where the file comes from."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if arch.library == "torchvision":
        from torchvision.models import get_model_weights

        url = get_model_weights(arch.builder).DEFAULT.url
        return hub / url.rsplit("/", 1)[-1], url
    import timm

    cfg = timm.models.get_pretrained_cfg(arch.builder)
    src = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "the timm model hub"
    return hub / "timm" / f"{arch.builder}.safetensors", str(src)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a .pth/.pt/.bin file (weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file does not exist", "a .pth/.pt/.safetensors state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"unreadable weights file ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
                         "a .pth/.pt/.safetensors state dict") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "weights file does not hold a state dict of tensors", "a model state dict")
    return state


_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _fix_keys(arch: Arch, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if arch.name == "densenet201":  # torchvision's published densenet files use 'norm.1' for 'norm1'
        out = {}
        for k, v in state.items():
            m = _DENSENET_OLD.match(k)
            out[m.group(1) + m.group(2) if m else k] = v
        return out
    return state


def load_weights(net: nn.Module, arch: Arch, weights: str) -> str:
    """Load 'imagenet' or a file into the 1000-class network; returns a description."""
    if weights in ("", "none"):
        return "none (from scratch)"
    if weights == "imagenet":
        path, src = imagenet_weights_path(arch)
        if not path.is_file():
            raise InputError(path, f"ImageNet weights for {arch.name} are not in the local torch hub cache "
                                   "(nothing is downloaded)", f"the file from {src} saved at that path, "
                                                               "or --weights FILE, or --weights none")
    else:
        path = Path(weights)
    state = _fix_keys(arch, read_state_dict(path))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(path, f"weights do not fit {arch.name} ({first[:200]})",
                         f"the 1000-class ImageNet {arch.name} state dict") from None
    return f"{weights}: {path}"


class FluidNet(nn.Module):
    """A backbone with a 2-class head. Takes (N, 1 or 3, H, W) in [-1, 1]; grey is replicated to RGB.

    In training mode with aux heads it returns (logits, [aux logits...]); otherwise the logits.
    """

    def __init__(self, arch: str, n_classes: int = 2, weights: str = "none", aux_logits: bool = False):
        super().__init__()
        a = get_arch(arch)
        self.arch = a.name
        net = _backbone(a)
        self.weights_source = load_weights(net, a, weights)
        self.aux_logits = bool(aux_logits and a.name in AUX_PATHS)
        if a.name in AUX_PATHS and not self.aux_logits:
            net.aux_logits = False
            if a.name == "googlenet":
                net.aux1 = None
                net.aux2 = None
            else:
                net.AuxLogits = None
        _set(net, HEAD_PATH[a.name], _new_like(_get(net, HEAD_PATH[a.name]), n_classes))
        if self.aux_logits:
            for p in AUX_PATHS[a.name]:
                _set(net, p, _new_like(_get(net, p), n_classes))
        if a.name == "googlenet":
            net.transform_input = False  # inputs are already in [-1, 1]
        if a.name == "inception_v3":
            net.transform_input = False
        self.net = net

    def forward(self, x: torch.Tensor):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.net(x)
        if isinstance(out, tuple):  # GoogLeNetOutputs / InceptionOutputs in training mode
            main, *aux = [o for o in out if o is not None]
            return (main, aux) if self.training and self.aux_logits else main
        return out


def logits_and_aux(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if isinstance(out, tuple):
        return out[0], list(out[1])
    return out, []


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(arch: str, weights: str = "none", aux_logits: bool = False, n_classes: int = 2) -> FluidNet:
    return FluidNet(arch, n_classes, weights, aux_logits)
