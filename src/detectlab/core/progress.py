"""rich progress bars and log lines; log lines also go to the active run's log.txt."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
_log_files: list[Path] = []
T = TypeVar("T")


def add_log_file(path: Path) -> None:
    if path not in _log_files:
        _log_files.append(path)


def remove_log_file(path: Path) -> None:
    if path in _log_files:
        _log_files.remove(path)


def log(msg: str) -> None:
    """A timestamped log line on stderr and in every active log.txt."""
    stamp = time.strftime("%H:%M:%S")
    console.print(Text.assemble((stamp, "dim"), " ", str(msg)))
    for p in list(_log_files):
        try:
            with open(p, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {msg}\n")
        except OSError:  # the run folder is gone (a Run never closed): stop writing there, never fail the caller
            remove_log_file(p)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not sys.stderr.isatty(),
        disable=not sys.stderr.isatty(),
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar (shown on a terminal; silent in CI logs)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as prog:
        task = prog.add_task(description, total=total)
        for item in items:
            yield item
            prog.advance(task)


@contextmanager
def timed(what: str):
    """Log how long a block took."""
    t0 = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - t0:.1f} s")
