"""The one error type for bad user input: the CLI turns it into one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: names the file (or setting), what is wrong, and what was expected.

    >>> str(InputError("a.edf", "channel T3 is flat", "non-constant signal"))
    'a.edf: channel T3 is flat (expected non-constant signal)'
    """

    def __init__(self, source: str | Path | None, problem: str, expected: str | None = None):
        self.source = str(source) if source is not None else None
        self.problem = problem
        self.expected = expected
        super().__init__(self.line())

    def __reduce__(self):  # picklable, so it crosses worker processes and Ray tasks intact
        return (InputError, (self.source, self.problem, self.expected))

    def line(self) -> str:
        msg = f"{self.source}: {self.problem}" if self.source else self.problem
        if self.expected:
            msg += f" (expected {self.expected})"
        return " ".join(msg.split())  # always one line


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path if it is an existing file, else raise InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, f"{what} does not exist")
    if not p.is_file():
        raise InputError(p, f"{what} is not a regular file")
    return p


def require_dir(path: str | Path, what: str = "folder") -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputError(p, f"{what} does not exist or is not a folder")
    return p
