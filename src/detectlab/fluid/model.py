"""The ten ImageNet CNNs of Table I with a new 2-class layer (Glorot init), auxiliary heads handled.

Eight come from torchvision (vgg16, alexnet, googlenet, resnet18, densenet201, inception_v3, mobilenet_v2,
squeezenet = squeezenet1_1, the version MATLAB ships) and two from timm (xception = timm ``legacy_xception``,
inception_resnet_v2).

Weights: ``none`` (from scratch), ``imagenet`` (read from the local torch hub cache, timm's or Hugging
Face's offline cache; nothing is downloaded), a file (.pth/.pt/.bin or .safetensors; the format is read
from the file's first bytes, not its name; torch files only with ``weights_only=True``) or a folder holding
the files under their published names. The last classifier is replaced *after* loading, as in the paper.

Input: grey B-scans (N, 1, H, W) in [0, 1]; the model replicates them to RGB and normalises them with the
mean and SD of its weights' metadata (torchvision ``weights.transforms()``, timm ``pretrained_cfg``):
ImageNet mean/SD for vgg16, alexnet, resnet18, densenet201, mobilenet_v2, squeezenet, googlenet and
inception_v3 (whose ``transform_input`` then maps them to the [-1, 1] their Google weights expect, as
torchvision does), 0.5/0.5 ([-1, 1]) for the timm models.

googlenet and inception_v3 are built without their auxiliary classifiers by default (the paper's MATLAB
models have none); ``aux_logits=True`` keeps them with 2-class last layers. ``mask_head=True`` adds a 1x1
convolution on the last feature map that predicts where the fluid is (the mask-supervised variant);
the same feature map gives the Grad-CAM saliency. squeezenet's ReLU after its (replaced) classifier
convolution is dropped: on a new 2-class layer it can zero both logits at initialisation, so that nothing
trains (the old code's squeezenet rows were constant predictors).
"""

from __future__ import annotations

import math
import os
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
    feature_layer: str  # the last spatial feature map (Grad-CAM, mask head)
    feature_channels: int


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("vgg16", "torchvision", "vgg16", 224, 138, 16, 32, 32, "features", 512),
    Arch("alexnet", "torchvision", "alexnet", 227, 61, 8, 64, 63, "features", 256),
    Arch("inception_resnet_v2", "timm", "inception_resnet_v2", 299, 55.9, 164, 16, 75, "conv2d_7b", 1536),
    Arch("inception_v3", "torchvision", "inception_v3", 299, 23.9, 48, 64, 75, "Mixed_7c", 2048),
    Arch("xception", "timm", "legacy_xception", 299, 22.9, 71, 16, 32, "act4", 2048),
    Arch("densenet201", "torchvision", "densenet201", 224, 20, 201, 16, 32, "features", 1920),
    Arch("resnet18", "torchvision", "resnet18", 224, 11.7, 18, 64, 32, "layer4", 512),
    Arch("googlenet", "torchvision", "googlenet", 224, 7, 22, 64, 32, "inception5b", 1024),
    Arch("mobilenet_v2", "torchvision", "mobilenet_v2", 224, 3.5, 53, 64, 32, "features", 1280),
    Arch("squeezenet", "torchvision", "squeezenet1_1", 227, 1.24, 18, 64, 32, "features", 512),
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


# ------------------------------------------------------------- weights' metadata and files
def normalisation(arch: Arch) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, SD, where from) of the inputs the architecture's published weights expect."""
    if arch.library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(arch.builder)
        return tuple(cfg.mean), tuple(cfg.std), f"timm pretrained_cfg of {arch.builder}"
    from torchvision.models import get_model_weights

    w = get_model_weights(arch.builder).DEFAULT
    t = w.transforms()
    return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std), f"torchvision {w}.transforms()"


def _timm_sources(arch: Arch) -> tuple[str, str]:
    """(Hugging Face repo id, url) of a timm model's default pretrained weights."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch.builder)
    tag = getattr(cfg, "tag", None) or "tf_in1k"
    repo = getattr(cfg, "hf_hub_id", None) or f"timm/{arch.builder}.{tag}"
    if repo.endswith("/"):
        repo = f"{repo}{arch.builder}.{tag}"
    return repo, getattr(cfg, "url", None) or ""


def hf_cache_dir() -> Path:
    """Hugging Face's hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_cached_file(repo: str, filename: str) -> Path | None:
    """A file of a Hugging Face repo in the offline cache (models--org--name/snapshots/<rev>/filename)."""
    base = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
    snaps = base / "snapshots"
    if not snaps.is_dir():
        return None
    ref = base / "refs" / "main"
    order = [snaps / ref.read_text().strip()] if ref.is_file() else []
    order += sorted(p for p in snaps.iterdir() if p.is_dir())
    for s in order:
        if (s / filename).is_file():
            return s / filename
    return None


def weight_names(arch: Arch) -> list[str]:
    """The file names the published weights go by (torch hub file name, then Hugging Face names)."""
    if arch.library == "torchvision":
        from torchvision.models import get_model_weights

        return [get_model_weights(arch.builder).DEFAULT.url.rsplit("/", 1)[-1]]
    repo, url = _timm_sources(arch)
    names = [url.rsplit("/", 1)[-1]] if url else []
    return names + [f"{repo.split('/')[-1]}.safetensors", "model.safetensors", "pytorch_model.bin"]


def weights_locations(arch: Arch) -> list[tuple[Path, str]]:
    """Every place `weights=imagenet` looks, in order, with where that file comes from."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if arch.library == "torchvision":
        from torchvision.models import get_model_weights

        url = get_model_weights(arch.builder).DEFAULT.url
        return [(hub / url.rsplit("/", 1)[-1], url)]
    repo, url = _timm_sources(arch)
    out = []
    for fn in ("model.safetensors", "pytorch_model.bin"):
        p = hf_cached_file(repo, fn)
        out.append((p if p is not None else hf_cache_dir() / ("models--" + repo.replace("/", "--")) / "snapshots"
                    / "<revision>" / fn, f"Hugging Face {repo}"))
    if url:
        out.append((hub / url.rsplit("/", 1)[-1], url))
    return out


def find_weights(arch: Arch, weights: str) -> Path | None:
    """The weights file for `weights` (none -> None); a missing one is an InputError saying where to put it."""
    if weights in ("", "none"):
        return None
    if weights == "imagenet":
        locs = weights_locations(arch)
        for p, _ in locs:
            if p.is_file():
                return p
        p, src = locs[0]
        raise InputError(p, f"ImageNet weights for {arch.name} are in none of the local caches "
                            f"({'; '.join(str(q) for q, _ in locs)}); nothing is downloaded",
                         f"the file from {src} at that path, or train.weights=FILE|FOLDER|none")
    path = Path(weights).expanduser()
    if path.is_dir():
        for name in weight_names(arch) + [f"{arch.name}.safetensors", f"{arch.name}.pth"]:
            if (path / name).is_file():
                return path / name
        raise InputError(path, f"no weights file for {arch.name} in this folder",
                         "one of " + ", ".join(weight_names(arch) + [f"{arch.name}.safetensors", f"{arch.name}.pth"]))
    if not path.is_file():
        raise InputError(path, "weights file does not exist", "a .pth/.pt/.safetensors state dict")
    return path


def sniff_format(path: Path) -> str:
    """'safetensors' or 'torch' from the file's first bytes (a name's suffix is not trusted)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    size = path.stat().st_size
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"  # zip archive (torch.save) or a legacy torch file
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    raise InputError(path, "neither a safetensors nor a torch weights file (unrecognised first bytes)",
                     "a .safetensors or torch.save state dict")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file (weights_only: no code runs), whatever its name."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file does not exist", "a .pth/.pt/.safetensors state dict")
    fmt = sniff_format(path)
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with open(path, "rb") as fh:  # a file object: torch.load must not go by the name either
                state = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"unreadable {fmt} weights file ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
                         "a .pth/.pt/.safetensors state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "weights file does not hold a state dict of tensors", "a model state dict")
    return state


def state_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a weights file, cheaply (safetensors header, or a memory-mapped torch file)."""
    if sniff_format(path) == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # noqa: BLE001
            raise InputError(path, f"unreadable safetensors file ({str(e)[:120]})", "a safetensors state dict") from None
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _fix_keys(arch: Arch, state: dict[str, Any]) -> dict[str, Any]:
    if arch.name == "densenet201":  # torchvision's published densenet files use 'norm.1' for 'norm1'
        out = {}
        for k, v in state.items():
            m = _DENSENET_OLD.match(k)
            out[m.group(1) + m.group(2) if m else k] = v
        return out
    return state


def check_weights(arch_name: str, weights: str) -> str:
    """Find the weights of `arch_name` and check every key and shape against the 1000-class model, without
    building it (meta device). Returns the file (or 'none'); bad or missing weights are an InputError."""
    arch = get_arch(arch_name)
    path = find_weights(arch, weights)
    if path is None:
        return "none"
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in _backbone(arch).state_dict().items()}
    have = _fix_keys(arch, state_shapes(path))
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    bad = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or bad:
        what = (f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else
                f"{len(extra)} unexpected keys (e.g. {extra[0]})" if extra else
                f"shape of {bad[0]} is {have[bad[0]]}, not {want[bad[0]]}")
        raise InputError(path, f"weights do not fit {arch.name}: {what}", f"the 1000-class ImageNet {arch.name} state dict")
    return str(path)


def load_weights(net: nn.Module, arch: Arch, weights: str) -> str:
    """Load 'imagenet', a file or a folder into the 1000-class network; returns a description."""
    path = find_weights(arch, weights)
    if path is None:
        return "none (from scratch)"
    state = _fix_keys(arch, read_state_dict(path))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(path, f"weights do not fit {arch.name} ({first[:200]})",
                         f"the 1000-class ImageNet {arch.name} state dict") from None
    return f"{weights}: {path}"


# ------------------------------------------------------------- the network
def to_group_norm(module: nn.Module, groups: int = 32) -> int:
    """Replace every BatchNorm2d by a GroupNorm of the same width; returns how many were replaced."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(groups, c), c, eps=child.eps))
            n += 1
        else:
            n += to_group_norm(child, groups)
    return n


class FluidNet(nn.Module):
    """A backbone with a 2-class head. Takes grey (N, 1, H, W) in [0, 1] (or RGB (N, 3, H, W)).

    ``forward`` returns the class logits; ``forward_all`` also returns the auxiliary logits (training mode,
    aux heads on), the last feature map and the mask head's fluid map (mask_head=True).
    """

    def __init__(self, arch: str, n_classes: int = 2, weights: str = "none", aux_logits: bool = False,
                 norm: str = "batch", mask_head: bool = False):
        super().__init__()
        a = get_arch(arch)
        self.arch = a.name
        if norm == "group" and weights not in ("", "none"):
            raise InputError("train.norm", "GroupNorm replaces the BatchNorm layers of pretrained weights",
                             "train.norm=batch with weights, or train.weights=none")
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
        _set(net, HEAD_PATH[a.name], _new_like(net.get_submodule(HEAD_PATH[a.name]), n_classes))
        if self.aux_logits:
            for p in AUX_PATHS[a.name]:
                _set(net, p, _new_like(net.get_submodule(p), n_classes))
        if a.name == "squeezenet":
            # squeezenet puts a ReLU after its classifier convolution; on a freshly initialised 2-class
            # layer it zeroes both logits for about a quarter of initialisations (and one of them for half),
            # and then no gradient flows: the logits stay linear here
            net.classifier[2] = nn.Identity()
        if a.name in ("googlenet", "inception_v3"):
            net.transform_input = True  # ImageNet-normalised input -> the [-1, 1] the Google weights expect
        if norm == "group":
            to_group_norm(net)
        mean, std, self.norm_source = normalisation(a)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.net = net
        self.seg = nn.Conv2d(a.feature_channels, 1, 1) if mask_head else None
        self._feat: torch.Tensor | None = None
        net.get_submodule(a.feature_layer).register_forward_hook(self._keep_features)

    def _keep_features(self, module, inputs, output) -> None:
        self._feat = output

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward_all(self, x: torch.Tensor) -> dict[str, Any]:
        self._feat = None
        out = self.net(self.normalise(x))
        aux: list[torch.Tensor] = []
        if isinstance(out, tuple):  # GoogLeNetOutputs / InceptionOutputs in training mode
            out, *rest = [o for o in out if o is not None]
            aux = rest if self.training and self.aux_logits else []
        feats = self._feat
        self._feat = None
        seg = self.seg(feats) if self.seg is not None else None
        return {"logits": out, "aux": aux, "features": feats, "seg": seg}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)["logits"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(arch: str, weights: str = "none", aux_logits: bool = False, n_classes: int = 2, norm: str = "batch",
          mask_head: bool = False) -> FluidNet:
    return FluidNet(arch, n_classes, weights, aux_logits, norm, mask_head)
