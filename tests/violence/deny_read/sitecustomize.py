"""Loaded by every Python process of a SuperLink started for the data-ownership test (PYTHONPATH): the
server side cannot read the folders named in DETECTLAB_DENY_READ (os.pathsep-separated). Any attempt to
open, list or scan a path inside them raises PermissionError and is written to DETECTLAB_DENY_LOG."""

import os
import sys

_DENY = [os.path.realpath(p) for p in os.environ.get("DETECTLAB_DENY_READ", "").split(os.pathsep) if p]
_LOG = os.environ.get("DETECTLAB_DENY_LOG", "")


def _inside(path) -> bool:
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(p == d or p.startswith(d + os.sep) for d in _DENY)


def _hook(event, args):
    if event in ("open", "os.listdir", "os.scandir", "os.chdir", "shutil.copyfile") and args:
        target = args[0]
        if isinstance(target, int) or target is None:
            return
        if _inside(target):
            if _LOG:
                with open(_LOG, "a") as fh:  # the log itself is outside the denied folders
                    fh.write(f"{os.getpid()} {sys.argv[0]} {event} {os.fsdecode(target)}\n")
            raise PermissionError(f"the server may not read {os.fsdecode(target)}")


if _DENY:
    sys.addaudithook(_hook)
