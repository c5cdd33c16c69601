"""Dataclass configs from YAML files and dotted `key=value` overrides; unknown keys are errors.

    cfg = load_config(RunConfig, "experiments/configs/dpo_synthetic.yaml", ["optim.learning_rate=3e-4", "steps=50"])
    save_config(cfg, run_dir / "config.yaml")

Values are parsed as YAML scalars (`3e-4`, `true`, `[1, 2]`, `null`) and checked against the field's type. Every
number must be finite, and a field declared with `number(default, ge=..., gt=..., le=..., lt=...)` must lie in its
range: the range sits beside the field it constrains, and `check_settings` checks them all, naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config file or override; the message names the dotted key."""


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def number(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> Any:
    """A numeric config field with the range it must lie in (a tuple field: each element); None stays allowed when
    the field's type admits it."""
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def _check_field(f: dataclasses.Field, value: Any, key: str) -> None:
    """A field's value (not a nested section, not None) finite and within the field's declared range."""
    if value is not None and not dataclasses.is_dataclass(value):
        _check_number(value, f.metadata.get("bounds", {}), key)


def _check_number(value: Any, bounds: dict, key: str) -> None:
    if isinstance(value, dict):  # e.g. a per-domain budget
        for k, v in value.items():
            _check_number(v, bounds, f"{key}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_number(v, bounds, f"{key}[{i}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value}")
    for name, bound in bounds.items():
        if not _BOUNDS[name][1](value, bound):
            rule = " and ".join(f"{_BOUNDS[n][0]} {b}" for n, b in bounds.items())
            raise ConfigError(f"{key}: must be {rule}, got {value}")


def check_settings(cfg: Any, prefix: str = "") -> None:
    """Every number of config dataclass `cfg` (nested sections included) finite and within its field's declared
    range (`number`); ConfigError naming the dotted key otherwise. `from_dict` checks the values it is given; this
    checks a config built in Python."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_settings(value, f"{prefix}{f.name}.")
        _check_field(f, value, prefix + f.name)


def _check(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_check(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return origin(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, *, prefix: str = ""):
    """Build dataclass `cls` from a (nested) dict, checking names and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"{cls.__name__} has {', '.join(sorted(names))}")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in data.items()}
    for f in dataclasses.fields(cls):  # ranges before the class's own cross-field checks see the values
        if f.name in kwargs:
            _check_field(f, kwargs[f.name], prefix + f.name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__ + ': '}{e}") from None


def to_dict(cfg) -> dict:
    """A plain nested dict (tuples as lists), the inverse of `from_dict`."""
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` overrides applied to a nested dict (values parsed as YAML)."""
    data = yaml.safe_load(yaml.safe_dump(data, sort_keys=False)) or {}  # a deep copy that keeps the file's order
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = node[part]
        node[parts[-1]] = value
    return data


def read_mapping(path: str | Path | None = None, overrides: list[str] = ()) -> dict:
    """The nested dict of a YAML file (optional) with dotted overrides applied; errors name the file."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return apply_overrides(data, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def load_config(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """`cls` from a YAML file (optional) plus dotted overrides."""
    data = read_mapping(path, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
