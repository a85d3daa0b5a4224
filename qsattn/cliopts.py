"""Options every ``qsattn`` command shares, and how a command prints a table.

Every command takes the same three options with the same meaning (``tests/qsattn/test_cli.py``
checks it):

- ``--out PATH``: where the command writes. Commands that write reports take a directory (their
  default is under ``reports/``); commands that only print (``predict``, ``hardware``, ``cache``,
  ``specs``) write what they print to the file ``PATH`` instead of stdout.
- ``--format md|csv|json``: the format of the table the command prints (markdown by default;
  ``csv`` and ``json`` carry the same rows with raw numbers). JSON is strict: NaN and infinities
  are written as ``null``.
- ``--no-progress``: no progress bars (they go to stderr; long commands show one per stage).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["FORMATS", "add_common", "render", "emit", "strict_json", "progress"]

FORMATS = ("md", "csv", "json")


def add_common(p: argparse.ArgumentParser, *, out_default: Any = None, out_help: str,
               formats: Sequence[str] = FORMATS) -> None:
    """Add ``--out``, ``--format`` and ``--no-progress`` to a command's parser."""
    p.add_argument("--out", type=Path, default=out_default, help=out_help)
    p.add_argument("--format", choices=tuple(formats), default=formats[0],
                   help="format of the printed table: " + ", ".join(formats) + " (default "
                        f"{formats[0]}); csv/json carry raw numbers")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are written to stderr)")


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def csv_cell(v: Any) -> str:
    """A CSV cell: floats round-trip exact (``repr``), NaN/inf/None empty, bools lower case."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def _md_cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def render(rows: Sequence[Mapping], fmt: str, *, columns: Sequence[str] | None = None,
           markdown: str | None = None) -> str:
    """``rows`` as ``fmt``: ``md`` (``markdown`` when given, else a plain table of ``columns``),
    ``csv`` (raw values, floats round-trip exact) or ``json`` (a list of objects, strict)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {FORMATS}, got {fmt!r}")
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "json":
        return json.dumps(strict_json([{c: r.get(c) for c in columns} for r in rows]),
                          indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_cell(r.get(c)) for c in columns])
        return buf.getvalue()
    if markdown is not None:
        return markdown.rstrip("\n") + "\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def emit(text: str, out: Path | None = None) -> None:
    """Print ``text``, or write it to the file ``out`` (and say so on stderr)."""
    if out is None:
        sys.stdout.write(text)
        return
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out: expected a file path for this command's table, got the "
                         f"directory {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)


def progress(iterable=None, *, enabled: bool = True, **kw):
    """A tqdm bar on stderr (``enabled=False``: none), left on screen when done."""
    from tqdm import tqdm
    return tqdm(iterable, disable=not enabled, leave=True, dynamic_ncols=True, file=sys.stderr,
                **kw)
