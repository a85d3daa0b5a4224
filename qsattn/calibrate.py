"""``qsattn calibrate``: measure this GPU's ceilings and write the cost model's measured overlay.

Runs the microbenchmarks of :mod:`gpu.microbench` (HBM copy, L2 read, MUFU ex2, FP32 FFMA,
FP16x2 HFMA2, tensor-core GEMM per dtype from Triton and torch, empty-kernel launch) and those of
:mod:`gpu.microbench_sm` (int32 ALU, XU conversion and issue rates; FFMA/ALU/IMAD/MUFU/F2I/HFMA2/
LDS/L2/HBM latencies; barrier rounds; shared-memory bank-conflict costs; wgmma latency and
interval; the SM clock under load; HBM read bandwidth; each verified from its SASS) and writes
``configs/hardware/measured/<hardware>.yaml`` in the schema :func:`sim.cost.hardware.apply_measured`
reads: each measured field with the unit of the spec file, ``kind: measured`` and a ``source``
naming the command, date, GPU and versions.

Unit conversion (invariant the cost model relies on): a per-SM, per-clock field is the measured
chip-wide rate divided by ``sm_count x boost_clock`` of the spec description, so
``Hardware.peak(field)`` (which multiplies back by the same two numbers) returns exactly the
measured rate. The measured value is therefore "per clock at the boost clock the spec peaks
use", whatever clock the card actually ran at; the source says so. Latencies (``clk``, from
``%clock64``, i.e. real SM cycles; ``ns``) and the clock (``Hz`` -> MHz) are written as measured.

Without a CUDA GPU the command prints how to run it on the device and exits with status 3.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

from qsattn import provenance

NO_GPU_EXIT = 3

# The GPU run on any CUDA machine (README "GPU runs on any CUDA machine"): calibrate, then
# validate; results land in the checkout (configs/hardware/measured/, reports/validation/).
DEVICE_COMMAND = "qsattn calibrate && qsattn validate"

# torch.cuda.get_device_name() substring -> configs/hardware id; first match wins.
DEVICE_NAMES: list[tuple[str, str]] = [
    ("H200", "h200"),
    ("H100 80GB HBM3", "h100_sxm"),
    ("H100 SXM", "h100_sxm"),
    ("A100-SXM4-80GB", "a100_80gb_sxm"),
    ("A100-SXM4-40GB", "a100_40gb"),
]

# chip-wide unit of a Measurement -> (field unit, factor or "per_clk")
_CONVERT = {
    "B/s": ("GB/s", 1e-9),
    "s": ("us", 1e6),
    "op/s": (None, "per_clk"),
    "inst/s": (None, "per_clk"),
    "warp_inst/s": (None, "per_clk"),
    "clk": ("clk", 1.0),
    "ns": ("ns", 1.0),
    "Hz": ("MHz", 1e-6),
}


def no_gpu_message(command: str) -> str:
    return (f"qsattn {command}: needs a CUDA GPU, and torch sees none on this machine.\n"
            f"On a machine with an NVIDIA GPU, from a clone (python3 bootstrap.py test sets it "
            f"up), run\n\n    {DEVICE_COMMAND}\n\nwhich writes configs/hardware/measured/"
            f"<hardware>.yaml and reports/validation/; commit them. Where you can only copy "
            f"files back from that machine, add --copy-to DIR to collect them in one folder "
            f"(README: 'GPU runs on any CUDA machine').")


def cuda_available() -> bool:
    """True when torch is importable and sees a CUDA device (never raises)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def hardware_for_device(device_name: str) -> str:
    """configs/hardware id for a ``torch.cuda.get_device_name()`` string.

    >>> hardware_for_device("NVIDIA H100 80GB HBM3")
    'h100_sxm'
    """
    if not isinstance(device_name, str):
        raise TypeError(f"device_name: expected a str, got {type(device_name).__name__}")
    for needle, hw in DEVICE_NAMES:
        if needle.lower() in device_name.lower():
            return hw
    raise ValueError(f"device_name: expected a GPU named like one of "
                     f"{[n for n, _ in DEVICE_NAMES]}, got {device_name!r}; pass --hardware")


def _field_names() -> frozenset:
    import dataclasses

    from sim.cost.hardware import Hardware
    return frozenset(f.name for f in dataclasses.fields(Hardware))


_FIELD_NAMES = _field_names()


def _get(m: Any, key: str, default=None):
    return m.get(key, default) if isinstance(m, Mapping) else getattr(m, key, default)


def overlay(measurements: Mapping[str, Any], hw, *, command: str, date: str, device: str,
            versions: Mapping[str, str]) -> dict[str, dict]:
    """The measured-overlay mapping for ``hw`` (a :class:`sim.cost.hardware.Hardware`).

    ``measurements`` maps a hardware field to an object or mapping with ``value`` (chip-wide),
    ``unit`` (one of B/s, s, op/s, inst/s, warp_inst/s, or clk, ns, Hz for latencies and
    clocks), ``how`` and optionally ``alternatives`` ({how: chip-wide value}).

    >>> from sim.cost.hardware import load_hardware
    >>> hw = load_hardware("h100_sxm")
    >>> o = overlay({"hbm_bandwidth": {"value": 3.0e12, "unit": "B/s", "how": "copy"}}, hw,
    ...             command="qsattn calibrate", date="2025-01-01", device="H100", versions={})
    >>> o["hbm_bandwidth"]["value"], o["hbm_bandwidth"]["unit"], o["hbm_bandwidth"]["kind"]
    (3000.0, 'GB/s', 'measured')
    """
    if not isinstance(measurements, Mapping):
        raise TypeError(f"measurements: expected a mapping, got {type(measurements).__name__}")
    fields = hw.fields
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    per_clk_div = hw.v("sm_count") * hw.clock_hz("boost")
    out: dict[str, dict] = {"name": hw.name}
    for name, m in measurements.items():
        if name not in fields and name in _FIELD_NAMES and getattr(hw, name, None) is None:
            raise ValueError(f"measurements[{name!r}]: {hw.name} declares no {name} (null in "
                             f"configs/hardware/{hw.name}.yaml), so it cannot be measured there")
        if name not in fields:
            raise ValueError(f"measurements: expected hardware fields ({', '.join(fields)}), "
                             f"got {name!r}")
        value, unit = float(_get(m, "value")), _get(m, "unit")
        if not (value > 0 and value < float("inf")):
            raise ValueError(f"measurements[{name!r}].value: expected a positive finite number, "
                             f"got {value!r}")
        if unit not in _CONVERT:
            raise ValueError(f"measurements[{name!r}].unit: expected one of {sorted(_CONVERT)}, "
                             f"got {unit!r}")
        field_unit, factor = _CONVERT[unit]
        spec_unit = fields[name].unit
        if factor == "per_clk":
            if "/clk/SM" not in spec_unit:
                raise ValueError(f"measurements[{name!r}].unit: {unit} cannot become {spec_unit}")
            conv = value / per_clk_div
            note = (f"{value:.4g} {unit} chip-wide / ({hw.v('sm_count'):g} SM x "
                    f"{hw.v('boost_clock'):g} MHz boost clock of the spec)")
            shown = spec_unit
        else:
            if field_unit != spec_unit:
                raise ValueError(f"measurements[{name!r}].unit: {unit} gives {field_unit}, the "
                                 f"field wants {spec_unit}")
            conv, shown = value * factor, field_unit
            note = ""
        alts = _get(m, "alternatives") or {}
        alt = "; also " + "; ".join(f"{h}: {v:.4g} {unit}" for h, v in alts.items()) if alts else ""
        source = (f"`{command}` on {device}, {date}: {_get(m, 'how')}"
                  f"{' = ' + note if note else ''}{alt}; spec {fields[name].value:g} {spec_unit}; "
                  f"{vers}")
        out[name] = {"value": float(f"{conv:.6g}"), "unit": shown, "source": source,
                     "kind": "measured"}
    return out


def write_overlay(path: str | os.PathLike, data: Mapping[str, dict], header: str = "") -> Path:
    """Write an overlay mapping as YAML (``header`` lines become comments); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(dict(data), sort_keys=False, width=10_000, default_flow_style=None)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(comment + body)
    tmp.replace(path)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qsattn import cliopts
    p.add_argument("--hardware", default=None,
                   help="hardware id or YAML path (default: from the GPU's name)")
    p.add_argument("--copy-to", type=Path, default=None,
                   help="also copy the measured YAML into this folder (for machines you can "
                        "only copy files back from)")
    p.add_argument("--no-sm", action="store_true",
                   help="skip the SM pipeline/latency microbenchmarks (gpu.microbench_sm)")
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes (a smoke run: the numbers are not ceilings, nothing is "
                        "written to configs/)")
    cliopts.add_common(p, out_help="folder for the measured YAML (default: "
                                   "configs/hardware/measured/, which the calibrated tier reads)")


def run(args: argparse.Namespace) -> int:
    if args.hardware is not None:           # a bad id or file is reported on any machine
        from sim.cost.hardware import load_hardware
        load_hardware(args.hardware)
    if not cuda_available():
        print(no_gpu_message("calibrate"), file=sys.stderr)
        return NO_GPU_EXIT
    import torch

    from gpu import microbench, microbench_sm
    from sim.cost.hardware import load_hardware, measured_path

    device = torch.cuda.get_device_name()
    hw = load_hardware(args.hardware or hardware_for_device(device))
    props = torch.cuda.get_device_properties(0)
    l2_bytes = int(getattr(props, "L2_cache_size", hw.v("l2_size") * 1e6))
    print(f"qsattn calibrate: {device} -> {hw.name}; {props.multi_processor_count} SMs, "
          f"L2 {l2_bytes / 1e6:.0f} MB", flush=True)
    progress = (lambda s: None) if args.no_progress else (lambda s: print(s, flush=True,
                                                                           file=sys.stderr))
    meas = microbench.measure_all(sm_count=props.multi_processor_count, l2_bytes=l2_bytes,
                                  quick=args.quick, progress=progress)
    if not args.no_sm:
        meas.update(microbench_sm.measure_sm(sm_count=props.multi_processor_count,
                                             l2_bytes=l2_bytes, quick=args.quick,
                                             progress=progress))
    if not meas:
        print("qsattn calibrate: every measurement failed; nothing written", file=sys.stderr)
        return 1
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = provenance.command_line()
    data = overlay(meas, hw, command=command, date=now, device=device,
                   versions=provenance.versions())
    header = (f"Measured ceilings of {device} ({hw.name}); written by `{command}` {now} at git "
              f"{provenance.git_revision()}. Per-clock fields = chip-wide rate / (sm_count x "
              f"boost_clock) of configs/hardware/{hw.name}.yaml. Read by the cost model's "
              f"calibrated tier (sim.cost.hardware.apply_measured).")
    from qsattn import cliopts
    rows = [{"field": name, "measured": q["value"], "spec": hw.fields[name].value,
             "unit": q["unit"], "source": q["source"]} for name, q in data.items()
            if name != "name"]
    md = "\n".join([f"{'field':20} {'measured':>12} {'spec':>12}  unit"] + [
        f"{r['field']:20} {r['measured']:12.5g} {r['spec']:12.5g}  {r['unit']}" for r in rows])
    cliopts.emit(cliopts.render(rows, args.format, columns=("field", "measured", "spec", "unit",
                                                            "source"), markdown=md))
    folder = args.out if args.out is not None else measured_path(hw).parent
    if args.quick:
        print("--quick: smoke run, configs/ left unchanged", file=sys.stderr)
        targets = [d / f"{hw.name}.quick.yaml" for d in (args.out, args.copy_to) if d]
    else:
        targets = [folder / f"{hw.name}.yaml"] + (
            [args.copy_to / f"{hw.name}.yaml"] if args.copy_to else [])
    for t in targets:
        write_overlay(t, data, header)
        print(f"wrote {t}", file=sys.stderr)
    return 0
