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


#: changed by a test in the parent process: a forked worker would see the change, a spawned one does not
MARKER = "as imported"


def probe(x: int, wait_for: str = "", started: str = "", together: int = 0, timeout: float = 20.0) -> dict:
    """Where and how a unit ran: its process id, torch's thread count there, this module's MARKER there.

    wait_for: wait (up to `timeout` s) for that file to exist; `saw` says whether it did. started/together:
    mark ``started/<x>`` at the start and ``started/done-<x>`` at the end, and wait until `together` units run
    at once (or the timeout); `peers` is the most seen running side by side."""
    import time

    import torch

    t_end = time.monotonic() + timeout
    saw, peers = False, 0
    if started:
        Path(started, str(x)).touch()
    while time.monotonic() < t_end:
        saw = bool(wait_for) and Path(wait_for).exists()
        if started:
            names = [p.name for p in Path(started).iterdir()]
            peers = max(peers, sum(not n.startswith("done-") for n in names) - sum(n.startswith("done-") for n in names))
        if (not wait_for or saw) and (not started or peers >= together):
            break
        time.sleep(0.05)
    if started:
        Path(started, f"done-{x}").touch()
    return {"x": x, "pid": os.getpid(), "threads": torch.get_num_threads(), "marker": MARKER, "saw": saw,
            "peers": peers}
