"""``qsattn cache``: what qsattn keeps on disk outside the repository, and clearing it.

The cache directory is ``$QSATTN_CACHE`` or ``~/.cache/qsattn`` (:func:`qsattn.model_assets
.cache_dir`). It holds three kinds of entries, each keyed by the content it was made from
(:mod:`qsattn.model_assets`):

- ``models``: the fp32 copy of the embedded SmolLM2 GGUF (~540 MB), keyed by the GGUF's bytes;
  a copy whose key no installed GGUF matches any more is **stale**;
- ``tokens``: token ids of the study text (~8 MB each);
- ``calibration``: per-layer calibrations of ``qsattn model`` (small).

    qsattn cache list                       # entries, sizes, stale ones marked
    qsattn cache clear --stale              # remove the stale model copies only
    qsattn cache clear --only tokens        # one kind
    qsattn cache clear                      # every qsattn entry (recomputed when next needed)

Anything else in the directory is listed as ``other`` and never removed.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from qsattn import cliopts

__all__ = ["add_arguments", "run", "entries", "KINDS"]

KINDS = ("models", "tokens", "calibration")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "clear"), help="list | clear")
    p.add_argument("--only", choices=KINDS, default=None, help="clear: only this kind")
    p.add_argument("--stale", action="store_true",
                   help="clear: only model copies no installed GGUF matches")
    cliopts.add_common(p, out_help="list: write the table to this file instead of stdout")


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _current_models() -> set[str]:
    """Names of the model copies the installed assets map to (empty without them)."""
    from qsattn import model_assets as ma
    try:
        return {ma.fp32_dir(ma.gguf_dir() / ma.GGUF_FILE).name}
    except FileNotFoundError:
        return set()


def entries(root: Path | None = None) -> list[dict]:
    """Every entry of the cache: kind, path, bytes, and for model copies whether they are
    stale (no installed GGUF's content maps to them)."""
    from qsattn import model_assets as ma

    root = Path(root) if root is not None else ma.cache_dir()
    current = _current_models() if root == ma.cache_dir() else set()
    out = []
    if not root.is_dir():
        return out
    for top in sorted(root.iterdir()):
        if top.name in KINDS and top.is_dir():
            for e in sorted(top.iterdir()):
                if top.name == "models" and e.name == "digests.json":
                    continue
                stale = top.name == "models" and e.is_dir() and e.name not in current
                out.append({"kind": top.name, "entry": e.name, "bytes": _size(e),
                            "stale": stale, "path": str(e)})
        else:
            out.append({"kind": "other", "entry": top.name, "bytes": _size(top), "stale": False,
                        "path": str(top)})
    return out


def _md(root: Path, rows: list[dict]) -> str:
    total = sum(r["bytes"] for r in rows)
    lines = [f"qsattn cache `{root}`: {len(rows)} entries, {total / 2**20:,.1f} MiB "
             "(`qsattn cache clear` removes the qsattn kinds; `other` is left alone)", "",
             "| kind | entry | MiB | |", "|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['entry']} | {r['bytes'] / 2**20:,.1f} | "
                     f"{'stale' if r['stale'] else ''} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from qsattn import model_assets as ma

    root = ma.cache_dir()
    rows = entries(root)
    if args.action == "list":
        if args.only or args.stale:
            raise ValueError("--only/--stale: options of `qsattn cache clear`")
        cliopts.emit(cliopts.render(rows, args.format,
                                    columns=("kind", "entry", "bytes", "stale", "path"),
                                    markdown=_md(root, rows)), args.out)
        return 0
    if args.stale and args.only not in (None, "models"):
        raise ValueError("--stale: only model copies can be stale; drop --only or use "
                         "--only models")
    gone = [r for r in rows if r["kind"] in KINDS and (args.only in (None, r["kind"]))
            and (r["stale"] or not args.stale)]
    for r in gone:
        p = Path(r["path"])
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    if not args.stale and args.only in (None, "models"):
        (root / "models" / "digests.json").unlink(missing_ok=True)
    freed = sum(r["bytes"] for r in gone)
    print(f"qsattn cache: removed {len(gone)} entries ({freed / 2**20:,.1f} MiB) from {root}",
          file=sys.stderr)
    cliopts.emit(cliopts.render(gone, args.format, columns=("kind", "entry", "bytes", "path"),
                                markdown=_md(root, gone) if gone else "nothing to remove\n"),
                 args.out)
    return 0
