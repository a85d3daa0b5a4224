"""``qsattn hardware``: the GPU descriptions the cost model prices on, and how to add one.

    qsattn hardware list                         # every description in configs/hardware/
    qsattn hardware show h100_sxm                # every field: value, unit, kind, source
    qsattn hardware show ./l40s.yaml             # any description file
    qsattn hardware new l40s --from a100_80gb_sxm --arch ada

``new`` writes ``configs/hardware/<NAME>.yaml`` (or ``--out PATH``): every field of the
description with its value and source marked ``FILL`` and, in a comment, the value and source of
the ``--from`` GPU as a guide. Every command refuses the file until each ``FILL`` is replaced by
the new GPU's value and the source it comes from (``sim.cost.hardware``: datasheet or
whitepaper table, or ``kind: measured`` with the command that measured it). Tensor-core rates
are asked for exactly the dtypes the architecture has (``configs/kernels/archs.yaml``). ``show``
then validates it and says what else the cost model needs: the architecture's kernel data
(``configs/kernels/<arch>/``) for the tiled tiers, a measured overlay for the calibrated tier.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import re
from pathlib import Path

from qsattn import cliopts

__all__ = ["add_arguments", "run", "list_rows", "show_rows", "new_yaml"]

ACTIONS = ("list", "show", "new")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS, help="list | show ID_OR_PATH | new NAME --from ID")
    p.add_argument("name", nargs="?", help="hardware id or YAML path (show); new id (new)")
    p.add_argument("--from", dest="source", default=None,
                   help="new: the description to copy the layout from (id or path)")
    p.add_argument("--arch", default=None,
                   help="new: the architecture (configs/kernels/archs.yaml); decides which "
                        "tensor-core rates are asked for (default: left to fill)")
    cliopts.add_common(p, out_help="list/show: write the table to this file; new: the YAML "
                                   "file or a folder for NAME.yaml (default configs/hardware/)")


# -- list -------------------------------------------------------------------------------------
def list_rows() -> list[dict]:
    """One row per description in ``configs/hardware/``; a file that does not load (e.g. still
    marked FILL) is listed with the reason."""
    from sim.arch import missing_kernel_data
    from sim.cost.hardware import available_hardware, load_hardware, measured_path

    out = []
    for hid in available_hardware():
        try:
            hw = load_hardware(hid)
        except ValueError as e:
            out.append({"id": hid, "note": f"does not load: {e}"})
            continue
        tc = {d: (hw.peak(f"tc_{d}") / 1e12 if getattr(hw, f"tc_{d}") is not None else None)
              for d in ("fp16", "int8", "fp8", "int4")}
        missing = missing_kernel_data(hw.arch)
        out.append({"id": hw.name, "description": hw.description, "arch": hw.arch,
                    "sm_count": int(hw.v("sm_count")), "boost_MHz": hw.v("boost_clock"),
                    "hbm_TBs": hw.v("hbm_bandwidth") / 1e3, "hbm_GB": hw.v("hbm_size"),
                    "fp16_TFLOPs": tc["fp16"], "int8_TOPs": tc["int8"],
                    "fp8_TFLOPs": tc["fp8"], "int4_TOPs": tc["int4"],
                    "measured": measured_path(hw).is_file(),
                    "kernel_data": "complete" if not missing else
                    f"missing {len(missing)} file(s): qsattn hardware show {hw.name}",
                    "note": ""})
    return out


def _list_md(rows: list[dict]) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)
    lines = ["| id | description | arch | SMs | HBM (TB/s) | FP16 (TFLOP/s) | INT8 (TOP/s) | "
             "FP8 (TFLOP/s) | measured overlay | kernel data |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if r.get("note"):
            lines.append(f"| {r['id']} | {r['note']} | | | | | | | | |")
            continue
        lines.append(f"| {r['id']} | {r['description']} | {r['arch']} | {r['sm_count']} | "
                     f"{r['hbm_TBs']:.2f} | {f(r['fp16_TFLOPs'], '.0f')} | "
                     f"{f(r['int8_TOPs'], '.0f')} | {f(r['fp8_TFLOPs'], '.0f')} | "
                     f"{'yes' if r['measured'] else 'no'} | {r['kernel_data']} |")
    return "\n".join(lines) + "\n"


# -- show -------------------------------------------------------------------------------------
def show_rows(hw) -> list[dict]:
    """Every quantity of ``hw`` (value, unit, kind, source), then its measured overlay's values
    (``measured.<field>``) when one exists."""
    from sim.cost.hardware import apply_measured, measured_path

    rows = [{"field": "name", "value": hw.name}, {"field": "description", "value": hw.description},
            {"field": "arch", "value": hw.arch}]
    for f in dataclasses.fields(hw):
        q = getattr(hw, f.name)
        if f.name in ("name", "description", "arch"):
            continue
        if q is None:
            rows.append({"field": f.name, "value": None, "unit": f.metadata.get("unit"),
                         "kind": "", "source": f"none on {hw.arch}: {f.metadata.get('doc')}"})
            continue
        rows.append({"field": f.name, "value": q.value, "unit": q.unit, "kind": q.kind,
                     "source": q.source})
    if measured_path(hw).is_file():
        m = apply_measured(hw)
        for name, q in m.fields.items():
            if q.kind == "measured":
                rows.append({"field": f"measured.{name}", "value": q.value, "unit": q.unit,
                             "kind": q.kind, "source": q.source})
    return rows


def _show_md(hw, rows: list[dict]) -> str:
    from sim.arch import missing_kernel_data
    from sim.cost.hardware import measured_path

    lines = [f"{hw.name}: {hw.description} (arch {hw.arch})", "",
             "| field | value | unit | kind | source |", "|---|---:|---|---|---|"]
    for r in rows[3:]:
        v = "null" if r["value"] is None else f"{r['value']:g}"
        lines.append(f"| {r['field']} | {v} | {r.get('unit') or ''} | {r.get('kind', '')} | "
                     f"{r.get('source', '')} |")
    peaks = [f"FP16 tensor {hw.peak('tc_fp16') / 1e12:.0f} TFLOP/s",
             f"INT8 {hw.peak('tc_int8') / 1e12:.0f} TOP/s"]
    if hw.tc_fp8 is not None:
        peaks.append(f"FP8 {hw.peak('tc_fp8') / 1e12:.0f} TFLOP/s")
    peaks += [f"HBM {hw.v('hbm_bandwidth') / 1e3:.2f} TB/s",
              f"SFU {hw.peak('sfu') / 1e12:.2f} Tinst/s"]
    lines += ["", "Peaks at the boost clock: " + ", ".join(peaks) + "."]
    missing = missing_kernel_data(hw.arch)
    if missing:
        lines += ["", f"The {hw.arch} kernel data the tiled and calibrated tiers (and the roofline "
                  f"tier's instruction counts) need is missing:"]
        lines += [f"- `{p}`: {how}" for p, how in missing.items()]
    else:
        lines += ["", f"Kernel data of {hw.arch}: complete (configs/kernels/{hw.arch}/)."]
    mp = measured_path(hw)
    lines += ["", f"Measured overlay (calibrated tier): `{mp}`" + (
        "." if mp.is_file() else " is absent; `qsattn calibrate --hardware "
        f"{hw.name}` on such a GPU writes it.")]
    return "\n".join(lines) + "\n"


# -- new --------------------------------------------------------------------------------------
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def new_yaml(name: str, src, arch: str | None, command: str) -> str:
    """The text of a new description ``name`` laid out like ``src`` (a Hardware), every value
    and source marked FILL, ``src``'s value and source in a comment on each line."""
    from sim.arch import TENSOR_DTYPES, archs
    from sim.cost.hardware import FILL, WGMMA_FIELDS, Hardware

    known = archs()
    if arch is not None and arch not in known:
        raise ValueError(f"--arch: expected one of {sorted(known)}, got {arch!r}")
    date = _dt.date.today().isoformat()
    lines = [f"# {name}: written by `{command}` on {date}, laid out like {src.name}.",
             "# Replace every FILL with this GPU's value and its source: the datasheet or "
             "whitepaper table",
             "# (kind: spec), or the command that measured it (kind: measured). Units are fixed "
             "per field",
             "# (never converted). The comment on each line is "
             f"{src.name}'s value and source, a guide only.",
             f"# Every qsattn command refuses this file while a FILL is left; `qsattn hardware "
             f"show PATH-OF-THIS-FILE`",
             "# then checks it and lists what else the cost model needs (kernel data of the "
             "arch, measured overlay).",
             f"name: {name}",
             f"description: {_yaml_str(FILL + ': one line: vendor, product, memory (chip, sm_XX)')}"
             f"   # {src.name}: {src.description}",
             (f"arch: {arch}" if arch else
              f"arch: {_yaml_str(FILL + ': one of ' + ', '.join(known))}") +
             f"   # {src.name}: {src.arch}"]
    dtypes = known[arch].tensor_dtypes if arch else TENSOR_DTYPES
    for f in dataclasses.fields(Hardware):
        if f.name in ("name", "description", "arch"):
            continue
        unit, doc = f.metadata["unit"], f.metadata["doc"]
        q = getattr(src, f.name)
        was = f"{src.name}: " + ("null" if q is None else f"{q.value:g} {q.unit} ({q.source})")
        dt = f.name[3:] if f.name.startswith("tc_") else None
        if dt is not None and dt not in dtypes:
            lines.append(f"{f.name}: null   # {arch} tensor cores have no {dt.upper()} "
                         f"(configs/kernels/archs.yaml)")
            continue
        if f.name in WGMMA_FIELDS and arch and not known[arch].async_mma:
            lines.append(f"{f.name}: null   # {arch} has no warpgroup MMA "
                         f"(configs/kernels/archs.yaml async_mma)")
            continue
        optional = (" Optional: if unknown, replace the whole value by null"
                    f" (`{f.name}: null`)." if f.default is None else "")
        lines.append(f"{f.name}: {{value: {FILL}, unit: {unit}, source: {FILL}, kind: spec}}"
                     f"   # {doc}.{optional} {was}")
    return "\n".join(lines) + "\n"


def _new(args: argparse.Namespace) -> int:
    import sys

    from sim.cost.hardware import available_hardware, load_hardware
    from sim.spec import config_dir

    if not args.name or not _NAME.match(args.name):
        raise ValueError(f"name: expected a new hardware id of lower-case letters, digits and _ "
                         f"(e.g. l40s), got {args.name!r}")
    if args.source is None:
        raise ValueError(f"--from: expected the id or path of a description to copy the layout "
                         f"from (one of {available_hardware()})")
    try:
        src = load_hardware(args.source)
    except ValueError as e:
        raise ValueError(f"--from: {e}") from None
    dest = Path(args.out) if args.out else config_dir() / "hardware" / f"{args.name}.yaml"
    if dest.suffix not in (".yaml", ".yml"):      # a folder (existing or not)
        dest = dest / f"{args.name}.yaml"
    if dest.exists():
        raise ValueError(f"--out: {dest} exists; remove it or choose another name")
    from qsattn import provenance
    text = new_yaml(args.name, src, args.arch, provenance.command_line())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    n = text.count("FILL")
    print(f"wrote {dest}: fill the fields marked FILL (value and source each), then check it "
          f"with `qsattn hardware show {dest if args.out else args.name}`", file=sys.stderr)
    print(f"{dest}\t{n} FILL markers")
    return 0


def run(args: argparse.Namespace) -> int:
    from sim.cost.hardware import load_hardware

    if args.action == "new":
        return _new(args)
    if args.action == "list":
        if args.name is not None:
            raise ValueError(f"name: `qsattn hardware list` takes none, got {args.name!r}")
        rows = list_rows()
        text = cliopts.render(rows, args.format, markdown=_list_md(rows))
    else:
        if args.name is None:
            raise ValueError("name: `qsattn hardware show` needs a hardware id or YAML path")
        try:
            hw = load_hardware(args.name)
        except ValueError as e:
            raise ValueError(f"hardware: {e}") from None
        rows = show_rows(hw)
        text = cliopts.render(rows, args.format, columns=("field", "value", "unit", "kind",
                                                          "source"),
                              markdown=_show_md(hw, rows))
    cliopts.emit(text, args.out)
    return 0
