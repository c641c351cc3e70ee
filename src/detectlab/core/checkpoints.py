"""Weights as safetensors with a small JSON header (system, model config, detectlab version).

Never pickle: loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import detectlab
from detectlab.core.errors import InputError

HEADER_KEY = "detectlab"


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor] | torch.nn.Module, system: str,
                    model_config: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Save a state dict (or a module's) with a JSON header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # safetensors refuses shared storage; clone tensors that alias one another
    seen: dict[int, str] = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen and ptr != -1:
            tensors[k] = v.clone()
        seen[ptr] = k
    header = {"system": system, "model_config": model_config or {}, "version": detectlab.__version__, **extra}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header)})
    tmp.replace(path)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(path, f"not a readable safetensors checkpoint ({e})") from None
    if HEADER_KEY not in meta:
        raise InputError(path, "safetensors file has no detectlab header", "a checkpoint written by detectlab")
    return json.loads(meta[HEADER_KEY])


def load_checkpoint(path: str | Path, system: str | None = None, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, header). Checks the header's system when `system` is given."""
    header = read_header(path)
    if system is not None and header.get("system") != system:
        raise InputError(path, f"checkpoint is for system '{header.get('system')}'", f"a {system} checkpoint")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise InputError(path, f"corrupt checkpoint ({e})") from None
    return state, header


def load_into(module: torch.nn.Module, path: str | Path, system: str | None = None, strict: bool = True) -> dict[str, Any]:
    """Load a checkpoint into `module`; mismatched keys/shapes become an InputError."""
    state, header = load_checkpoint(path, system)
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(path, f"weights do not fit the model ({first})") from None
    return header
