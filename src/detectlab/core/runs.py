"""The run folder: config.toml, metrics.json, tables/ (.md + .csv), figures/ (.png), checkpoints/, log.txt.

A rerun with the same folder resumes: the config must match (runtime fields such as device and
workers may differ) and finished units (see :mod:`detectlab.core.units`) are read back.
"""

from __future__ import annotations

import json
import math
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


class Run:
    """A run folder. Create with the resolved config; reopening an existing folder resumes it."""

    def __init__(self, out: str | Path, config: Any, system: str = "", resume: bool = True):
        self.dir = Path(out)
        self.system = system
        self.config = config
        cfg_dict = config if isinstance(config, dict) else cfgmod.to_dict(config)
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("tables", "figures", "checkpoints", "units"):
            (self.dir / sub).mkdir(exist_ok=True)
        cfg_path = self.dir / "config.toml"
        if cfg_path.exists() and resume:
            try:
                old = tomllib.loads(cfg_path.read_text())
            except tomllib.TOMLDecodeError:
                old = None
            if old is not None and _strip_runtime(old) != _strip_runtime(cfg_dict):
                raise InputError(
                    self.dir,
                    "this folder holds a run with a different config, so it cannot be resumed",
                    "a new --out folder, or the same settings as its config.toml",
                )
            self.resumed = any((self.dir / "units").glob("*.json"))
        else:
            self.resumed = False
        cfg_path.write_text(cfgmod.dumps(cfg_dict))
        self.log_path = self.dir / "log.txt"
        progress.add_log_file(self.log_path)
        self.metrics: dict[str, Any] = {}

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
