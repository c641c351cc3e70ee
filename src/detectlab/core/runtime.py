"""Seeding, determinism, device choice and thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from detectlab.core.errors import InputError


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def choose_device(pref: str = "auto") -> torch.device:
    """'auto' picks cuda when available, else cpu. 'cuda' without a GPU is an input error."""
    pref = (pref or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device", f"'{pref}' was asked for but no CUDA GPU is available", "cpu or auto")
        return torch.device(pref)
    if pref == "cpu":
        return torch.device("cpu")
    raise InputError("--device", f"unknown device '{pref}'", "auto, cpu or cuda[:N]")


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default: all cores); returns the number set."""
    n = n or int(os.environ.get("DETECTLAB_THREADS", 0)) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def generator(where: "torch.Tensor | torch.device | str", seed: int) -> torch.Generator:
    """A torch.Generator seeded with `seed` on the device of `where` (a tensor, a device or its name), so
    random draws into that device's tensors never meet a generator on another device."""
    dev = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    if dev.type == "meta":  # shape-only runs (device tests): draws happen on the CPU generator
        dev = torch.device("cpu")
    g = torch.Generator(device=dev)
    g.manual_seed(int(seed))
    return g
