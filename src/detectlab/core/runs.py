"""The run folder: config.toml, data.json, metrics.json, tables/ (.md + .csv), figures/ (.png),
checkpoints/, log.txt.

A rerun with the same folder resumes: the config must match (runtime fields such as device and
workers may differ, and the config's GRID_FIELDS, which only add or remove units) and finished units
(see :mod:`detectlab.core.units`) are read back. ``data.json`` pins the run to its data: the resolved
path and a fingerprint (relative file names and sizes, and a hash of every small index file); a
rerun on other data is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import config as cfgmod
from detectlab.core import progress
from detectlab.core.errors import InputError


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (tmp file + rename), NaN/inf stored as null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_\n"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


#: Files up to this size whose content is hashed into the fingerprint (index files: CSV, TXT, JSON, ...).
SMALL_FILE = 256 * 1024
INDEX_SUFFIXES = {".csv", ".txt", ".tsv", ".json", ".toml", ".md", ".xml", ".lst", ".yaml", ".yml", ".mhd"}
#: The ``data`` argument meaning "not given: do not pin" (tests and library use).
UNPINNED = object()


def fingerprint(path: str | Path | None) -> dict[str, Any]:
    """What identifies a data set: for a folder, every file's relative name and size and the SHA-256 of
    small index files, summarised in one digest; for a file, its name, size and (if small) hash.
    ``None`` (built-in data) gives ``{"kind": "builtin"}``: the built-in generator is fixed by the config."""
    if path is None:
        return {"kind": "builtin"}
    p = Path(path)
    if not p.exists():
        raise InputError(p, "data path does not exist")
    h = hashlib.sha256()
    n_files = total = n_hashed = 0
    entries = [(p.name, p)] if p.is_file() else None
    if entries is None:
        entries = []
        for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                full = Path(dirpath) / f
                entries.append((full.relative_to(p).as_posix(), full))
    for rel, full in entries:
        try:
            size = full.stat().st_size
        except OSError:
            continue
        n_files += 1
        total += size
        h.update(f"{rel}\0{size}\n".encode())
        if size <= SMALL_FILE and (full.suffix.lower() in INDEX_SUFFIXES or size <= 4096):
            h.update(hashlib.sha256(full.read_bytes()).digest())
            n_hashed += 1
    return {"kind": "file" if p.is_file() else "folder", "files": n_files, "bytes": total,
            "hashed_files": n_hashed, "sha256": h.hexdigest()}


def _fp_key(fp: dict[str, Any]) -> tuple:
    return (fp.get("kind"), fp.get("files"), fp.get("bytes"), fp.get("sha256"), fp.get("extra"))


class Run:
    """A run folder. Create with the resolved config; reopening an existing folder resumes it.

    ``data``: the resolved data path (``None`` for built-in data) to pin the run to; the CLI passes it.
    """

    def __init__(self, out: str | Path, config: Any, system: str = "", resume: bool = True,
                 data: Any = UNPINNED):
        self.dir = Path(out).absolute()  # units may run in another working directory (Flower, Ray)
        self.system = system
        self.config = config
        cfg_dict = config if isinstance(config, dict) else cfgmod.to_dict(config)
        grid = () if isinstance(config, dict) else cfgmod.grid_fields(config)
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("tables", "figures", "checkpoints", "units"):
            (self.dir / sub).mkdir(exist_ok=True)
        cfg_path = self.dir / "config.toml"
        self.resumed = False
        if cfg_path.exists() and resume:
            try:
                old = tomllib.loads(cfg_path.read_text())
            except tomllib.TOMLDecodeError:
                old = None
            if old is not None and _comparable(old, grid) != _comparable(cfg_dict, grid):
                diff = ", ".join(_differences(_comparable(old, grid), _comparable(cfg_dict, grid))[:4])
                raise InputError(
                    self.dir,
                    f"this folder holds a run with a different config ({diff}), so it cannot be resumed",
                    "a new --out folder, or the same settings as its config.toml",
                )
            self.resumed = any((self.dir / "units").glob("*.json"))
        if data is not UNPINNED:
            self.pin_data(data)
        cfg_path.write_text(cfgmod.dumps(cfg_dict))
        self.log_path = self.dir / "log.txt"
        progress.add_log_file(self.log_path)
        self.metrics: dict[str, Any] = {}

    # ---- data pinning
    def pin_data(self, path: str | Path | None, name: str = "data", extra: dict[str, Any] | None = None,
                 fp: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record (or, on a resume, check) the data this run reads under ``name`` in data.json.

        ``fp`` replaces the computed fingerprint (e.g. a system's own description of remote data);
        ``extra`` adds JSON-able facts that must also match (e.g. a subset's indices digest).
        Raises InputError when the folder was run on other data."""
        fp = dict(fp) if fp is not None else fingerprint(path)
        if extra:
            fp["extra"] = _jsonable(extra)
        rec = {"resolved": str(Path(path).resolve()) if path is not None else "builtin", **fp}
        dpath = self.dir / "data.json"
        pinned: dict[str, Any] = {}
        if dpath.exists():
            try:
                pinned = json.loads(dpath.read_text())
            except json.JSONDecodeError:
                pinned = {}
        old = pinned.get(name)
        if old is not None and _fp_key(old) != _fp_key(rec):
            if _fp_key(old)[:4] == _fp_key(rec)[:4]:  # same files, other data settings: name what changed
                oe, ne = old.get("extra") or {}, rec.get("extra") or {}
                diff = ", ".join(f"{k}: {oe.get(k)!r} -> {ne.get(k)!r}" for k in sorted(set(oe) | set(ne))
                                 if oe.get(k) != ne.get(k))
                raise InputError(
                    self.dir,
                    f"this run read the same files ({rec['resolved']}) with other {name} settings ({diff}), "
                    "so it cannot be resumed",
                    "the same data settings as its data.json, or a new --out folder",
                )
            raise InputError(
                self.dir,
                f"this run was made on other data ({old.get('resolved')}: {old.get('files', 0)} files, "
                f"sha256 {str(old.get('sha256', ''))[:12]}) than now ({rec['resolved']}: {rec.get('files', 0)} "
                f"files, sha256 {str(rec.get('sha256', ''))[:12]}), so it cannot be resumed",
                "the same data as its data.json, or a new --out folder",
            )
        pinned[name] = rec
        write_json(dpath, pinned)
        return rec

    # ---- paths
    def path(self, *parts: str) -> Path:
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def figures(self) -> Path:
        return self.dir / "figures"

    @property
    def tables(self) -> Path:
        return self.dir / "tables"

    # ---- outputs
    def log(self, msg: str) -> None:
        progress.log(msg)

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        self.metrics = dict(metrics)
        p = self.dir / "metrics.json"
        write_json(p, self.metrics)
        return p

    def write_table(
        self,
        name: str,
        rows: Sequence[Mapping[str, Any]],
        title: str | None = None,
        columns: Sequence[str] | None = None,
        note: str | None = None,
    ) -> Path:
        """Write tables/<name>.md and tables/<name>.csv from a list of row dicts."""
        import csv

        cols = list(columns or dict.fromkeys(k for r in rows for k in r))
        md = ""
        if title:
            md += f"### {title}\n\n"
        md += markdown_table(rows, cols)
        if note:
            md += f"\n{note}\n"
        p = self.tables / f"{name}.md"
        p.write_text(md)
        with open(self.tables / f"{name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({c: _jsonable(r.get(c, "")) for c in cols})
        return p

    def save_figure(self, fig: Any, name: str, dpi: int = 120) -> Path:
        """Save a matplotlib figure to figures/<name>.png and close it."""
        import matplotlib.pyplot as plt

        p = self.figures / f"{name}.png"
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return p

    def close(self) -> None:
        progress.remove_log_file(self.log_path)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _strip_runtime(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in cfgmod.RUNTIME_FIELDS}


def _comparable(d: dict[str, Any], grid: Sequence[str]) -> dict[str, Any]:
    """The config without runtime fields and without the grid fields (dotted keys) a resume may change."""
    out = json.loads(json.dumps(_strip_runtime(d), default=str))
    for key in grid:
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def evaluation_run(out: str | Path, system: str, model_run: str | Path, data: str | Path | None,
                   settings: Mapping[str, Any] | None = None) -> Run:
    """A run folder for ``detectlab <system> evaluate``: config.toml names the command, the model run
    and the data (plus ``settings``), data.json pins the data and the model run's checkpoints; a reused
    folder with other inputs is refused."""
    cfg = {"command": "evaluate", "system": system, "model_run": str(Path(model_run).resolve()),
           "data": str(Path(data).resolve()) if data is not None else "builtin", **dict(settings or {})}
    run = Run(out, cfg, system)
    run.pin_data(data)
    ck = Path(model_run) / "checkpoints"
    run.pin_data(ck if ck.is_dir() else Path(model_run), name="model_run")
    return run


def open_run(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Open an existing run folder for prediction: returns (folder, config dict)."""
    p = Path(path)
    cfg = p / "config.toml"
    if not cfg.exists():
        raise InputError(p, "not a detectlab run folder (no config.toml)", "the --out folder of a run or train command")
    try:
        return p, tomllib.loads(cfg.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(cfg, f"invalid TOML: {e}") from None
