"""Typed, validated construction of frozen dataclasses from YAML data.

Every config in ``configs/`` (methods, hardware, experiments) is read through :func:`build`:
unknown keys, missing fields, wrong types and out-of-range values raise :class:`ConfigError`
naming the file, the dotted field, what was expected and what was found.

Field constraints live in the dataclass field's metadata, next to the field:

    block_m: int = field(metadata=meta("query rows per tile", min=1, max=256))
    sm_count: float = field(metadata=meta("divides a rate", gt=0))

What a value must be, by its declared type (the same rules for every config):

- ``int``: a Python or numpy integer (never a bool, never ``16.0``) in the int64 range;
- ``float``: a finite real (never a bool, NaN or Inf);
- ``bool``: ``true``/``false`` only (never ``'no'``, ``0`` or ``1``);
- ``str``, ``Literal[...]``, tuples, mappings and nested dataclasses as declared;
- ``min``/``max`` inclusive bounds, ``gt`` an exclusive lower bound (for values that divide).

:func:`load_yaml` bounds what a file may ask for before anything is built: its size, the values
it expands to through anchors and aliases (a YAML "billion laughs" is refused, not expanded), and
its nesting depth (self-referencing aliases included).

``__post_init__`` checks that span several fields raise ``ValueError``; :func:`build` re-raises
them as ConfigError with the file and the section they came from.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import yaml


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range.

    The message is ``"<file>: field '<dotted.field>': expected <what>, got <value>"`` (the file
    part absent when the data came from code, ``top level`` for the file as a whole)."""

    def __init__(self, where: str, field: str, expected: str, got: Any, *,
                 detail: str | None = None):
        self.where, self.field, self.expected, self.got = where, field, expected, got
        self.detail = detail
        loc = f"{where}: " if where else ""
        fld = f"field '{field}'" if field else "top level"
        what = detail if detail is not None else f"expected {expected}, got {_show(got)}"
        super().__init__(f"{loc}{fld}: {what}")


def _show(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for a message, bounded: a huge integer by its size (its repr may be
    megabytes, or refused by Python), anything else cut at ``limit`` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):   # int-to-str limit, self-referencing containers
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def meta(doc: str = "", *, min: float | None = None, max: float | None = None,
         gt: float | None = None, unit: str | None = None) -> dict[str, Any]:
    """Field metadata: a one-line doc, optional inclusive bounds ``min``/``max`` and an exclusive
    lower bound ``gt`` (``gt=0`` for a value that divides: zero is refused, not a
    ZeroDivisionError later)."""
    return {"doc": doc, "min": min, "max": max, "gt": gt, "unit": unit}


# What one config file may ask for before anything is built from it. The shipped configs are a
# few KB with a handful of values; these bounds are orders of magnitude above them.
MAX_FILE_BYTES = 4 << 20     # bytes of YAML text
MAX_VALUES = 200_000         # scalars + containers after expanding anchors and aliases
MAX_DEPTH = 64               # nesting of mappings and lists

INT64_MAX = (1 << 63) - 1


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only ``true``/``false`` (any case) are
    booleans; ``yes``, ``no``, ``on``, ``off`` stay strings, so a schema bool refuses them
    instead of reading ``no`` as false (or a quoted ``'no'`` as true)."""


StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                   re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def parse_value(text: str) -> Any:
    """One YAML value as :func:`load_yaml` reads values (a ``--set FIELD=VALUE`` override);
    ValueError naming what could not be parsed."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ValueError(f"expected a YAML value, got {_show(text)} "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping through the safe loader.

    ConfigError (naming the file) for: a missing or unreadable file, a file over
    :data:`MAX_FILE_BYTES`, a syntax error, a top level that is not a mapping, and a document
    that expands to more than :data:`MAX_VALUES` values or nests deeper than :data:`MAX_DEPTH`
    (an alias bomb or a self-referencing alias is refused before anything walks it)."""
    path = Path(path)
    where = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(where, "", f"a YAML file of at most {MAX_FILE_BYTES} bytes",
                              f"{size} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(where, "", "an existing YAML file", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(where, "", "a YAML file", "a directory") from None
    except UnicodeDecodeError as e:
        raise ConfigError(where, "", "UTF-8 text", f"undecodable byte at offset {e.start}") \
            from None
    except OSError as e:
        raise ConfigError(where, "", "a readable YAML file", e.strerror or str(e)) from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(where, "", "valid YAML", str(e).splitlines()[0]) from None
    except RecursionError:
        raise ConfigError(where, "", f"nesting at most {MAX_DEPTH} levels deep",
                          "deeper nesting") from None
    except ValueError as e:   # a value the safe loader cannot build (a 5000-digit integer)
        raise ConfigError(where, "", "valid YAML values", str(e).splitlines()[0]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, "", "a mapping at the top level", type(data).__name__)
    check_size(data, where)
    return data


def check_size(data: Any, where: str = "") -> None:
    """Refuse data that expands to more than :data:`MAX_VALUES` values or nests deeper than
    :data:`MAX_DEPTH`. Walks the data as a tree (an alias shared n times counts n times), so its
    cost is bounded by the limits, not by what a malicious document would expand to."""
    stack = [(data, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(where, "", f"at most {MAX_VALUES} values after expanding YAML "
                              f"anchors and aliases", "more (an alias bomb?)")
        if isinstance(node, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise ConfigError(where, "", f"nesting at most {MAX_DEPTH} levels deep",
                                  "deeper nesting (or a self-referencing alias)")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children)


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
        # numpy bools are bools; strings ('no'), 0 and 1 are not
        if not _is_bool(value):
            raise ConfigError(where, path, "true/false", value)
        return bool(value)
    if tp is int:
        if _is_bool(value) or not isinstance(value, numbers.Integral):
            raise ConfigError(where, path, "an integer", value)
        if abs(int(value)) > INT64_MAX:
            raise ConfigError(where, path, "an integer in the int64 range", int(value))
        return int(value)
    if tp is float:
        if _is_bool(value) or not isinstance(value, numbers.Real):
            raise ConfigError(where, path, "a finite number", value)
        try:
            f = float(value)
        except OverflowError:   # an int beyond the float range
            raise ConfigError(where, path, "a finite number", value) from None
        if not math.isfinite(f):
            raise ConfigError(where, path, "a finite number", value)
        return f
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, path, "a string", value)
        return value
    if tp is Any:
        return value
    raise TypeError(f"schema: unsupported field type {tp!r} at {path}")


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _check_range(f: dataclasses.Field, value: Any, where: str, path: str) -> None:
    """The field's bounds on a number, or on every number inside a list or mapping value."""
    lo, hi, gt = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("gt")
    if lo is None and hi is None and gt is None:
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
    unit = f" {f.metadata['unit']}" if f.metadata.get("unit") else ""
    if gt is not None and not value > gt:
        raise ConfigError(where, path, f"a value > {gt}{unit} (it divides)", value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
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
    except ConfigError as e:
        if e.where or not where:
            raise
        # a check inside the dataclass knows the field, not the file or the enclosing section
        field_path = ".".join(p for p in (path, e.field) if p)
        raise ConfigError(where, field_path, e.expected, e.got, detail=e.detail) from None
    except (ValueError, TypeError) as e:
        # a cross-field check whose message starts with the field it is about ("q_heads: ...",
        # "prefill_methods[1]: ...") names that field; others name the section
        m = _FIELD_MESSAGE.match(str(e))
        if m:
            field_path = ".".join(p for p in (path, m[1]) if p)
            raise ConfigError(where, field_path, "", None, detail=m[2]) from None
        raise ConfigError(where, path or cls.__name__, "consistent fields", str(e)) from None


_FIELD_MESSAGE = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*): (.+)$",
                            re.S)


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
                raise ConfigError("overrides", ".".join(parts), "a mapping to descend into",
                                  child)
            node[part] = child = dict(child)  # copy on descent: never mutate ``base``
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
            node[leaf] = merge(node[leaf], value)
        else:
            node[leaf] = value
    return out
