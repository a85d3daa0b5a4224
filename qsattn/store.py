"""A small resumable results store: one JSON object per line, keyed by a point id.

Long studies (accuracy sweeps, GPU validation, model runs) write one row per finished point and
flush it at once, so an interrupted run loses at most the point in flight; a rerun opens the same
file and skips every id already present.

File format (``*.jsonl``): each line is ``{"id": "<point id>", ...fields}``, newline-terminated,
strict JSON: a non-finite float (NaN, Inf) is written ``null`` (strict parsers reject ``NaN``),
numpy scalars as their Python values. Invariants checked on open, each reported with its
1-based line number:

- a line that is not a JSON object (typically the last one, cut by an interrupted write), or
  one no parser should accept: an integer of more than 4300 digits, nesting deeper than the
  parser's recursion limit, bytes that are not UTF-8;
- a row without a non-empty string ``"id"`` (the rule :meth:`ResultStore.add` applies);
- an id that appears twice;
- a row without the fields the reader needs, or with a field of the wrong type (``required``:
  the command's row schema).

``on_corrupt="error"`` (default) raises :class:`CorruptStoreError` listing them; ``"quarantine"``
moves the offending lines (with their line numbers) to ``<name>.corrupt.jsonl`` next to the file,
rewrites the file without them, and lists them in :attr:`ResultStore.problems` so the caller can
report them; their points are then recomputed. Nothing is ever dropped silently.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "r.jsonl"
>>> st = ResultStore(path)
>>> pid = point_id(method="int8_flash", L=128, seed=0)
>>> pid in st
False
>>> _ = st.add(pid, {"err": 0.01}); pid in ResultStore(path)
True
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Iterator, Literal

__all__ = ["ResultStore", "CorruptStoreError", "point_id", "strict_json", "dumps",
           "NUMBER", "by_kind"]

# A float field as stored: a number, or null where it was NaN/Inf (bools are not numbers).
NUMBER = (int, float, type(None))


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None and numpy scalars/arrays by Python
    values, so that ``json.dumps(..., allow_nan=False)`` writes strict JSON. Other types are
    left for ``json.dumps`` to accept or refuse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if type(obj).__module__ == "numpy":
        if hasattr(obj, "tolist"):
            return strict_json(obj.tolist())
    return obj


def dumps(obj: Any, **kw) -> str:
    """``json.dumps`` of :func:`strict_json` (``null``, never ``NaN``); every JSON file qsattn
    writes goes through it."""
    return json.dumps(strict_json(obj), allow_nan=False, **kw)


def _type_ok(value: Any, types: Any) -> bool:
    if types is None:
        return True
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_names(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _schema_check(required: Any) -> Callable[[dict], str | None] | None:
    """``required`` (None, field names, a mapping field -> type(s), or a callable) as a callable
    row -> reason (None when the row is fine)."""
    if required is None or callable(required):
        return required
    if isinstance(required, Mapping):
        fields = dict(required)
    elif isinstance(required, Collection) and not isinstance(required, str):
        fields = dict.fromkeys(required)
    else:
        raise TypeError(f"required: expected field names, a mapping field -> type(s) or a "
                        f"callable, got {type(required).__name__}")

    def check(row: dict) -> str | None:
        for name, types in fields.items():
            if name not in row:
                return f"row lacks field {name!r}"
            if not _type_ok(row[name], types):
                return (f"field {name!r}: expected {_type_names(types)}, got "
                        f"{type(row[name]).__name__}")
        return None
    return check


def by_kind(schemas: Mapping[str, Any], key: str = "kind") -> Callable[[dict], str | None]:
    """A ``required`` check for stores holding several kinds of rows: ``row[key]`` selects the
    row's schema (field names or field -> type(s)); an unknown kind is a bad row."""
    checks = {k: _schema_check(v) for k, v in schemas.items()}

    def check(row: dict) -> str | None:
        kind = row.get(key)
        if not isinstance(kind, str) or kind not in checks:
            return f"field {key!r}: expected one of {sorted(checks)}, got {kind!r}"
        return checks[kind](row)
    return check


def point_id(**parts: Any) -> str:
    """Deterministic id of a point from its defining parts (JSON-serializable values).

    The id is a readable prefix plus a 16-hex digest of the parts in sorted-key JSON, so equal
    parts give equal ids whatever the keyword order.

    >>> point_id(b=1, a="x") == point_id(a="x", b=1)
    True
    """
    if not parts:
        raise ValueError("parts: expected at least one keyword part, got none")
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    except TypeError as e:
        raise TypeError(f"parts: expected JSON-serializable values ({e})") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CorruptStoreError(ValueError):
    """A store file has bad lines; ``problems`` lists ``(line_number, reason)``."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]):
        self.path = path
        self.problems = problems
        shown = "; ".join(f"line {n}: {why}" for n, why in problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(
            f"path: results store {path} has {len(problems)} bad line(s): {shown}{more}; fix or "
            f"delete them, or open it with on_corrupt='quarantine' to set them aside and recompute")


class ResultStore:
    """Rows keyed by point id in a JSONL file; see the module docstring.

    Args:
        path: the ``.jsonl`` file (created with its parent directories on first write).
        rerun: start from an empty store; the previous file is kept as ``<name>.prev.jsonl``.
        on_corrupt: "error" or "quarantine" (see module docstring).
        required: the rows' schema, checked on open and on :meth:`add`: field names every row
            has, a mapping field -> type or tuple of types (:data:`NUMBER` for a float that may
            be stored as null), or a callable ``row -> reason | None`` (:func:`by_kind`). A row
            that fails it is a bad line like a JSON error.
    """

    def __init__(self, path: str | os.PathLike, *, rerun: bool = False,
                 on_corrupt: Literal["error", "quarantine"] = "error", required: Any = None):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or PathLike, got {type(path).__name__}")
        if on_corrupt not in ("error", "quarantine"):
            raise ValueError(f"on_corrupt: expected 'error' or 'quarantine', got {on_corrupt!r}")
        self._check = _schema_check(required)
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"path: expected a .jsonl file, got the directory {self.path}")
        self.problems: list[tuple[int, str]] = []
        self._rows: dict[str, dict] = {}
        if rerun and self.path.exists():
            self.path.replace(self.path.with_name(self.path.stem + ".prev.jsonl"))
        if self.path.exists():
            self._load(on_corrupt)

    # -- reading ---------------------------------------------------------------------------
    def _load(self, on_corrupt: str) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        ended = raw.endswith(b"\n")
        if ended:
            lines = lines[:-1]
        good: list[bytes] = []
        bad: list[tuple[int, str, bytes]] = []
        for n, line in enumerate(lines, start=1):
            why = None
            if not line.strip():
                why = "empty line"
            else:
                try:
                    row = json.loads(line)
                except (ValueError, UnicodeDecodeError) as e:
                    # JSONDecodeError, and what else parsing refuses: undecodable bytes, an
                    # integer beyond Python's int-to-str limit
                    row, why = None, f"not valid JSON ({getattr(e, 'msg', None) or e})"
                except RecursionError:
                    row, why = None, "not valid JSON (nesting too deep to parse)"
                if why is None and not isinstance(row, dict):
                    why = f"expected a JSON object, got {type(row).__name__}"
                elif why is None and not (isinstance(row.get("id"), str) and row["id"]):
                    why = "row has no non-empty string 'id'"
                elif why is None and row["id"] in self._rows:
                    why = f"duplicate id {row['id']!r}"
                elif why is None and self._check is not None:
                    why = self._check(row)
                if why is None and n == len(lines) and not ended:
                    why = "last line not newline-terminated (interrupted write)"
            if why is None:
                self._rows[row["id"]] = row
                good.append(line)
            else:
                bad.append((n, why, line))
        self.problems = [(n, why) for n, why, _ in bad]
        if not bad:
            return
        if on_corrupt == "error":
            raise CorruptStoreError(self.path, self.problems)
        side = self.path.with_name(self.path.stem + ".corrupt.jsonl")
        with open(side, "a", encoding="utf-8") as f:
            for n, why, line in bad:
                f.write(dumps({"line": n, "reason": why,
                               "text": line.decode("utf-8", "replace")}) + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(g + b"\n" for g in good))
        tmp.replace(self.path)

    def __contains__(self, pid: str) -> bool:
        return pid in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(list(self._rows.values()))

    def get(self, pid: str) -> dict | None:
        return self._rows.get(pid)

    def rows(self) -> list[dict]:
        """All rows in file order (a copy of the list)."""
        return list(self._rows.values())

    # -- writing ---------------------------------------------------------------------------
    def add(self, pid: str, fields: dict) -> dict:
        """Append the row ``{"id": pid, **fields}`` and flush it to disk; returns the row as
        stored (non-finite floats as None, see the module docstring).

        Raises ValueError if ``pid`` is already stored (a finished point is never rewritten),
        or the row fails ``required``. A refused row leaves the store and its file unchanged;
        a write that fails midway leaves at most an unterminated last line, which the next open
        reports (the row is not in memory either)."""
        if not isinstance(pid, str) or not pid:
            raise TypeError(f"pid: expected a non-empty str, got {pid!r}")
        if not isinstance(fields, dict):
            raise TypeError(f"fields: expected a dict, got {type(fields).__name__}")
        if "id" in fields:
            raise ValueError("fields: must not contain the key 'id' (it is the point id)")
        if pid in self._rows:
            raise ValueError(f"pid: point {pid!r} is already in {self.path}")
        try:
            row = strict_json({"id": pid, **fields})
            line = json.dumps(row, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"fields: expected JSON-serializable values ({e})") from None
        except RecursionError:
            raise ValueError("fields: nested too deeply to store") from None
        if self._check is not None:
            why = self._check(row)
            if why is not None:
                raise ValueError(f"fields: {why} (the store's required fields)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._rows[pid] = row
        return row
