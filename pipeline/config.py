"""One config object per command: a dataclass, loadable from YAML, every field overridable with
`key=value` (dotted keys reach nested configs; values are parsed as YAML scalars)."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.storage import check_location

C = TypeVar("C")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"override {pair!r} is not key=value")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if value else ""
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type[C], values: dict[str, Any], where: str) -> C:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and not isinstance(value, (dict, hint)):
            keys = ", ".join(sorted(f.name for f in dataclasses.fields(hint)))
            raise ValueError(f"config key {where}{name}: a group of settings ({keys}), not {value!r}; "
                             f"set one with {where}{name}.KEY=VALUE")
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            default = fields[name].default_factory
            if default is not dataclasses.MISSING:  # a command's own defaults for the part (a factory) stay
                value = _merge(dataclasses.asdict(default()), value)
            value = _build(hint, value, f"{where}{name}.")
        kwargs[name] = _coerce(value, hint, where + name)
    missing = sorted(n for n, f in fields.items() if n not in kwargs and f.init and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:  # else the dataclass's TypeError: a traceback for a usage error
        raise ValueError(f"missing config key(s) {', '.join(where + k for k in missing)}: give "
                         f"{' '.join(f'--set {where}{k}=...' for k in missing)} or put them in the config file")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """YAML gives ints for floats and scalars for one-element lists; accept those, refuse the rest.
    A URI with credentials in it is refused in any field: a config is recorded and printed."""
    for text in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(text, str):
            check_location(text, f"config key {key}")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if origin in (list, tuple) and not isinstance(value, (list, tuple)):
        value = [value]
    if origin is tuple:
        return tuple(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ValueError(f"config key {key}: expected {hint.__name__}, got {value!r}")
    return value


def require_positive(config: Any, *names: str) -> None:
    """Raises ValueError naming each of `names` (int fields of `config`) that is below 1: a zero
    batch size or logging interval is refused when the config is read, before anything is built."""
    bad = [f"{n}={getattr(config, n)}" for n in names if getattr(config, n) < 1]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be at least 1")


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                **values: Any) -> C:
    """Defaults <- YAML file <- explicit values (from CLI options) <- key=value overrides."""
    merged: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must hold a mapping")
        merged = loaded
    merged = _merge(merged, {k: v for k, v in values.items() if v is not None})
    merged = _merge(merged, parse_overrides(overrides or []))
    return _build(cls, merged, "")


def run_identity(config: Any) -> dict[str, Any]:
    """A config as a dict without its fields marked `speed_only` (at any depth): what a run key
    hashes, so settings that change only pace or placement may change on resume."""
    out = {}
    for f in dataclasses.fields(config):
        if not f.metadata.get("speed_only"):
            value = getattr(config, f.name)
            out[f.name] = run_identity(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out
