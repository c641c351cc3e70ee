"""Dataclass configs, TOML presets and `key=value` overrides, with validated fields.

A system's config is a (possibly nested) dataclass that inherits :class:`BaseConfig`.
Presets live in ``detectlab/configs/<system>/<preset>.toml`` and only need to name the fields
they change. Overrides use dotted keys and TOML literals: ``train.lr=1e-3``, ``eps=[0.1,0.2]``,
``arch="resnet18"`` (bare words are taken as strings).

Fields declared with :func:`param` carry their allowed range or choices::

    steps: int = param(40, ge=1)
    lr: float = param(1e-4, gt=0)
    models: list[str] = param(["natural", "secret"], choices=MODELS, nonempty=True)

and a dataclass may define ``validate(self)`` for rules across fields (raise :class:`ConfigError`).
Every check runs whenever a config is loaded (preset, overrides, :func:`from_dict`), so a bad value
ends the command with one line naming the key, the value and what is allowed (exit 2).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from detectlab.core.errors import InputError

C = TypeVar("C")
_MISSING = dataclasses.MISSING
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Fields that say *how* to run, not *what*: they may differ between a run and its resume.
RUNTIME_FIELDS = ("device", "workers", "ray_address")


class ConfigError(InputError):
    """A config value outside what its field allows: ``config key 'k': value v is not allowed (expected ...)``."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key '{key}'", f"value {value!r} is not allowed", allowed)

    def __reduce__(self):  # picklable across worker processes
        return (ConfigError, (self.key, self.value, self.allowed))


def param(default: Any = _MISSING, *, default_factory: Any = _MISSING, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None,
          choices: Any = None, nonempty: bool = False, doc: str = "") -> Any:
    """A dataclass field with validation metadata.

    ``ge/gt/le/lt`` bound numbers (each element of a list); ``choices`` lists the allowed values
    (each element of a list); ``nonempty`` refuses an empty list or string. A list default is copied
    per instance.
    """
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "nonempty": nonempty, "doc": doc,
            "choices": tuple(choices) if choices is not None else None}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _allowed_text(meta: dict[str, Any]) -> str:
    parts = []
    if meta.get("choices") is not None:
        parts.append("one of: " + ", ".join(map(str, meta["choices"])))
    for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(k) is not None:
            parts.append(f"{sym} {meta[k]}")
    if meta.get("nonempty"):
        parts.append("not empty")
    return " and ".join(parts)


def _check_value(key: str, value: Any, meta: dict[str, Any]) -> None:
    if value is None:
        return
    if meta.get("nonempty") and isinstance(value, (list, tuple, str, dict)) and len(value) == 0:
        raise ConfigError(key, value, _allowed_text(meta))
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise ConfigError(key, value if len(items) == 1 else v, _allowed_text(meta))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and v != v:
                raise ConfigError(key, v, "a number, not NaN")
            bad = ((meta.get("ge") is not None and not v >= meta["ge"])
                   or (meta.get("gt") is not None and not v > meta["gt"])
                   or (meta.get("le") is not None and not v <= meta["le"])
                   or (meta.get("lt") is not None and not v < meta["lt"]))
            if bad:
                raise ConfigError(key, v, _allowed_text(meta))


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every :func:`param` field (recursively), then each dataclass's own ``validate()``."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(v) and not isinstance(v, type):
            validate(v, prefix=f"{key}.")
        elif f.metadata:
            _check_value(key, v, dict(f.metadata))
    for klass in reversed(type(cfg).__mro__):  # every class's own rules, without needing super() calls
        own = klass.__dict__.get("validate")
        if callable(own):
            own(cfg)


@dataclass
class BaseConfig:
    """Fields every system shares (set by the CLI flags of the same name)."""

    preset: str = "smoke"
    seed: int = param(0, ge=0)
    #: "builtin" (generated data), "auto" (DETECTLAB_DATA/<system folder> when present,
    #: else builtin), or a path.
    data: str = "auto"
    device: str = "auto"
    workers: int = param(1, ge=1)
    ray_address: str = ""

    def validate(self) -> None:
        d = (self.device or "auto").lower()
        if not (d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ConfigError("device", self.device, "auto, cpu, cuda or cuda:N")


def data_root() -> Path | None:
    """DETECTLAB_DATA, else ../shared/data beside the checkout when it exists, else None."""
    env = os.environ.get("DETECTLAB_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").exists() and cand.is_dir():
            return cand
    return None


def real_data_path(sub: str) -> Path | None:
    """DETECTLAB_DATA/<sub> if it exists, else None."""
    root = data_root()
    if root is None:
        return None
    p = root / sub
    return p if p.exists() else None


def resolve_data(value: str, sub: str) -> Path | None:
    """Turn a config's `data` value into a path, or None for the built-in data.

    'builtin' -> None; 'auto' -> DETECTLAB_DATA/<sub> when present else None; else the path,
    which must exist.
    """
    if value in ("", "builtin"):
        return None
    if value == "auto":
        return real_data_path(sub)
    p = Path(value).expanduser()
    if not p.exists():
        raise InputError(p, "data path does not exist", f"a folder in the layout of DETECTLAB_DATA/{sub}")
    return p


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert a TOML value to a dataclass field type."""
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        for a in args:
            try:
                return _coerce(value, a, key)
            except InputError:
                continue
        raise InputError(f"config key '{key}'", f"value {value!r} does not fit {typ}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(typ) or (Any,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}'", f"value {value!r} is not a table")
        return dict(value)
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is bool and isinstance(value, bool):
        return value
    if typ is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(typ, type) and isinstance(value, typ):
        return value
    raise InputError(f"config key '{key}'", f"value {value!r} is not of type {getattr(typ, '__name__', typ)}")


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise InputError(
                f"config key '{key}'", "unknown setting", "one of: " + ", ".join(sorted(names))
            )
        cur = getattr(obj, k)
        if is_dataclass(cur) and isinstance(v, dict):
            _apply(cur, v, prefix=f"{key}.")
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}"""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"override '{item}'", "is not key=value", "e.g. train.lr=0.001")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = _parse_value(text.strip())
    return out


def preset_path(system: str, preset: str) -> Path:
    p = Path(preset)
    if p.suffix == ".toml":
        return p
    return CONFIG_DIR / system / f"{preset}.toml"


def load_config(cls: type[C], system: str, preset: str = "smoke", overrides: list[str] | dict | None = None) -> C:
    """Build `cls()` defaults, apply the preset TOML, then the overrides."""
    cfg = cls()
    path = preset_path(system, preset)
    if not path.exists():
        avail = sorted(q.stem for q in (CONFIG_DIR / system).glob("*.toml"))
        raise InputError(path, f"no preset '{preset}' for {system}", "one of: " + ", ".join(avail))
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(path, f"invalid TOML: {e}") from None
    _apply(cfg, data)
    if hasattr(cfg, "preset"):
        cfg.preset = path.stem
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        _apply(cfg, ov)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return _tomlable(d)


def _tomlable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _tomlable(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_tomlable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def dumps(cfg: Any) -> str:
    d = cfg if isinstance(cfg, dict) else to_dict(cfg)
    return tomli_w.dumps(d)


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    cfg = cls()
    _apply(cfg, d)
    validate(cfg)
    return cfg


def grid_fields(cfg: Any) -> tuple[str, ...]:
    """The dotted config keys whose change only adds or removes units (``GRID_FIELDS`` of the config's
    class or of its module); a resume may change them."""
    own = getattr(type(cfg), "GRID_FIELDS", None)
    if own is None:
        import sys

        own = getattr(sys.modules.get(type(cfg).__module__), "GRID_FIELDS", ())
    return tuple(own or ())
