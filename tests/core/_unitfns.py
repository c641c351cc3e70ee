"""Unit functions for the core tests: a real module, so spawned workers and Ray tasks can import them."""

import os
from pathlib import Path

from detectlab.core.config import ConfigError
from detectlab.core.errors import InputError


def square(x: int, log: str = "") -> dict:
    """x*x; appends x to the file `log` (one line per call, from whichever process ran it)."""
    if log:
        with open(log, "a") as fh:
            fh.write(f"{x} {os.getpid()}\n")
    return {"sq": x * x}


def bad_input(path: str) -> dict:
    raise InputError(path, "is not a recording", "an EDF file")


def bad_config() -> dict:
    raise ConfigError("attack.steps", -1, ">= 1")


def crash(x: int) -> dict:
    raise RuntimeError(f"boom {x}")


def calls(log: str) -> list[int]:
    p = Path(log)
    return sorted(int(line.split()[0]) for line in p.read_text().splitlines()) if p.exists() else []
