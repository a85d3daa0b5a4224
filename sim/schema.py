"""Typed, validated construction of frozen dataclasses from YAML data.

Every config in ``configs/`` (methods, hardware, experiments) is read through :func:`build`:
unknown keys, missing fields, wrong types and out-of-range values raise :class:`ConfigError`
naming the file, the dotted field, what was expected and what was found.

Field constraints live in the dataclass field's metadata, next to the field:

    block_m: int = field(metadata=meta("query rows per tile", min=1, max=256))

``__post_init__`` checks that span several fields raise ``ValueError``; :func:`build` re-raises
them as ConfigError with the file and the section they came from.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, where: str, field: str, expected: str, got: Any):
        self.where, self.field, self.expected, self.got = where, field, expected, got
        loc = f"{where}: " if where else ""
        fld = f"field '{field}'" if field else "top level"
        super().__init__(f"{loc}{fld}: expected {expected}, got {got!r}")


def meta(doc: str = "", *, min: float | None = None, max: float | None = None,
         unit: str | None = None) -> dict[str, Any]:
    """Field metadata: a one-line doc and optional inclusive bounds."""
    return {"doc": doc, "min": min, "max": max, "unit": unit}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a syntax error or a non-mapping top level is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "an existing YAML file", "no such file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "", "valid YAML", str(e).splitlines()[0]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "a mapping at the top level", type(data).__name__)
    return data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, where: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(where, path, _type_name(tp), value)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != any(
                isinstance(a, bool) for a in typing.get_args(tp) if a == value):
            raise ConfigError(where, path, _type_name(tp), value)
        return value
    if origin is tuple:
        (elem, *rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, path, _type_name(tp), value)
        return tuple(_convert(elem, v, where, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        _, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(where, path, _type_name(tp), value)
        return {str(k): _convert(vt, v, where, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where=where, path=path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, path, "true/false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, path, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ConfigError(where, path, "a finite number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, path, "a string", value)
        return value
    if tp is Any:
        return value
    raise TypeError(f"schema: unsupported field type {tp!r} at {path}")


def _check_range(f: dataclasses.Field, value: Any, where: str, path: str) -> None:
    """The field's bounds on a number, or on every number inside a list or mapping value."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is None and hi is None:
        return
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _check_range(f, v, where, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_range(f, v, where, f"{path}.{k}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        unit = f" {f.metadata['unit']}" if f.metadata.get("unit") else ""
        raise ConfigError(where, path, f"a value in {rng}{unit}", value)


def build(cls: type, data: Any, *, where: str = "", path: str = "") -> Any:
    """Build dataclass ``cls`` from mapping ``data``, validating every field."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, path, f"a mapping ({cls.__name__})", data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        p = f"{path}.{unknown[0]}" if path else unknown[0]
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(where, p, f"a known field of {cls.__name__} ({', '.join(fields)})"
                          f"{hint}", "an unknown field")
    kwargs = {}
    for name, f in fields.items():
        p = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(where, p, _type_name(hints[name]), "nothing (missing field)")
            continue
        value = _convert(hints[name], data[name], where, p)
        _check_range(f, value, where, p)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(where, path or cls.__name__, "consistent fields", str(e)) from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def to_dict(obj: Any, *, drop_defaults: bool = False) -> Any:
    """Inverse of :func:`build`: plain dicts/lists suitable for YAML or JSON.
    ``drop_defaults``: leave out fields equal to their default (a content key that stays the
    same when a field with a default is added to a schema)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            v = getattr(obj, f.name)
            if drop_defaults and v == _default(f):
                continue
            out[f.name] = to_dict(v, drop_defaults=drop_defaults)
        return out
    if isinstance(obj, tuple):
        return [to_dict(v, drop_defaults=drop_defaults) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, drop_defaults=drop_defaults) for k, v in obj.items()}
    return obj


def merge(base: Mapping, overrides: Mapping) -> dict:
    """Deep-merge ``overrides`` into ``base``. Keys may be dotted ("p.rounding") or use "__"."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in overrides.items():
        parts = key.replace("__", ".").split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            if not isinstance(child, Mapping):
                raise ConfigError("overrides", key, "a mapping to descend into", child)
            node[part] = child = dict(child)  # copy on descent: never mutate ``base``
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
            node[leaf] = merge(node[leaf], value)
        else:
            node[leaf] = value
    return out
