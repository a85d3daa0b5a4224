"""GPU descriptions for the cost model, loaded from ``configs/hardware/<name>.yaml``.

Every quantity is a mapping ``{value, unit, source, kind}``: ``unit`` must equal the unit the
field declares (a mismatch is a ConfigError, never a silent conversion), ``source`` names the
whitepaper/datasheet table or the command that measured it, ``kind`` is ``spec`` or
``measured``. A tensor-core dtype the GPU lacks is written ``null`` (``tc_int4`` on Hopper,
``tc_fp8`` on Ampere); asking for its rate raises :class:`UnsupportedOnHardware`.

Measured overlay (``configs/hardware/measured/<name>.yaml``, written by the GPU validation
issue; read by the ``calibrated`` tier). Schema: an optional ``name`` (must match) and any
subset of the fields below with the same names and units, each with ``kind: measured`` and a
``source`` naming the command that measured it::

    name: h100_sxm
    sfu: {value: 15.2, unit: inst/clk/SM, source: "qsattn validate --probe mufu (2025-01-02)",
          kind: measured}
    hbm_bandwidth: {value: 3010, unit: GB/s, source: "qsattn validate --probe hbm", kind: measured}

SM pipeline fields (issue 16: ``lat_*`` dependent latencies in clk, ``bar_sync``/``bar_sync_8w``,
``smem_conflict_<d>`` clk per warp-wide LDS at bank-conflict degree d, the wgmma latency and
interval, ``clock_under_load``, ``hbm_read_bandwidth``) are optional (``PIPELINE_FIELDS``): a
description without them loads, ``v()`` of a missing one raises UnsupportedOnHardware naming it;
a given one must be positive and finite, the wgmma ones null on an arch without warpgroup MMA,
and the conflict costs non-decreasing in the degree (ConfigError naming the field otherwise).

>>> hw = load_hardware("a100_80gb_sxm")
>>> round(hw.peak("tc_fp16") / 1e12, 1)     # dense FP16 tensor TFLOP/s at the boost clock
311.9
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import schema
from ..arch import archs
from ..schema import ConfigError, meta
from ..spec import config_dir


class UnsupportedOnHardware(ValueError):
    """The kernel needs a unit or dtype this GPU does not have (e.g. INT4 MMA on Hopper)."""


@dataclass(frozen=True)
class Quantity:
    value: float = field(metadata=meta("the number", min=0))
    unit: str = field(metadata=meta("unit; must equal the field's declared unit"))
    source: str = field(metadata=meta("datasheet/whitepaper table, or the measuring command"))
    kind: Literal["spec", "measured"] = field(metadata=meta("spec sheet value or measured"))


def _q(doc: str, unit: str, *, divides: bool = True, count: bool = False):
    """A quantity field. ``divides``: the cost model divides by it, so its value must be
    ``> 0`` (``meta(gt=0)``, applied to the quantity's value; a rate of 0 is a missing unit:
    write ``null`` where the field allows it); ``count``: a whole number (SMs, registers,
    threads, blocks)."""
    return field(metadata=dict(meta(doc, unit=unit, gt=0 if divides else None), count=count))


def _opt(doc: str, unit: str):
    return field(default=None, metadata=dict(meta(doc, unit=unit, gt=0), count=False))


@dataclass(frozen=True)
class Hardware:
    """One GPU. Rates are per SM per clock (``peak`` multiplies by SMs and the clock)."""

    name: str = field(metadata=meta("hardware id (file stem)"))
    description: str = field(metadata=meta("one line"))
    arch: str = field(metadata=meta("SM generation: an architecture of configs/kernels/archs.yaml"))
    sm_count: Quantity = _q("streaming multiprocessors", "SM", count=True)
    boost_clock: Quantity = _q("clock the datasheet peaks use", "MHz")
    sustained_clock: Quantity = _q("base clock (lower bound of the sustained clock)", "MHz")
    tc_fp16: Quantity = _q("dense FP16 tensor-core rate", "flop/clk/SM")
    tc_bf16: Quantity = _q("dense BF16 tensor-core rate", "flop/clk/SM")
    tc_tf32: Quantity = _q("dense TF32 tensor-core rate", "flop/clk/SM")
    tc_int8: Quantity = _q("dense INT8 tensor-core rate", "op/clk/SM")
    fp32: Quantity = _q("FP32 add/mul/FMA thread instructions", "inst/clk/SM")
    fp16x2: Quantity = _q("packed HFMA2/HADD2/HMUL2 thread instructions (2 results each)",
                          "inst/clk/SM")
    int32: Quantity = _q("32-bit integer add/logic/shift thread instructions", "inst/clk/SM")
    sfu: Quantity = _q("MUFU (ex2, rcp, ...) thread instructions", "inst/clk/SM")
    cvt: Quantity = _q("type conversions (F2F, F2I, I2F) thread instructions", "inst/clk/SM")
    issue: Quantity = _q("warp instructions issued per clock (schedulers)", "warp_inst/clk/SM")
    hbm_bandwidth: Quantity = _q("DRAM bandwidth", "GB/s")
    hbm_size: Quantity = _q("DRAM capacity", "GB")
    l2_size: Quantity = _q("L2 capacity (0: none)", "MB", divides=False)
    l2_bandwidth: Quantity = _q("L2 read bandwidth", "GB/s")
    smem_per_sm: Quantity = _q("shared memory per SM", "KB")
    smem_per_block: Quantity = _q("max shared memory per CTA", "KB")
    smem_bandwidth: Quantity = _q("shared memory bandwidth", "B/clk/SM")
    registers_per_sm: Quantity = _q("32-bit registers per SM", "reg", count=True)
    max_regs_per_thread: Quantity = _q("register limit per thread", "reg", count=True)
    max_threads_per_sm: Quantity = _q("resident threads per SM", "thread", count=True)
    max_blocks_per_sm: Quantity = _q("resident CTAs per SM", "block", count=True)
    launch_overhead: Quantity = _q("per-kernel launch overhead", "us", divides=False)
    l2_latency: Quantity = _q("idle load-to-use latency of an L2 hit", "clk", divides=False)
    hbm_latency: Quantity = _q("idle load-to-use latency of an HBM access", "ns",
                               divides=False)
    tc_int4: Quantity | None = _opt("dense INT4 tensor-core rate (null: none)", "op/clk/SM")
    tc_fp8: Quantity | None = _opt("dense FP8 tensor-core rate (null: none)", "flop/clk/SM")
    # GeForce parts run MMAs that accumulate in FP32 at half the rate of those accumulating in
    # FP16 (GA102/AD102 whitepapers); tc_fp16/tc_fp8 are then the FP16-accumulate rates and
    # these the FP32-accumulate ones. Absent: the same rate (A100, H100, A6000, L40S).
    tc_fp16_f32acc: Quantity | None = _opt("dense FP16 tensor-core rate accumulating in FP32 "
                                           "(absent: tc_fp16)", "flop/clk/SM")
    tc_fp8_f32acc: Quantity | None = _opt("dense FP8 tensor-core rate accumulating in FP32 "
                                          "(absent: tc_fp8)", "flop/clk/SM")
    # -- SM pipeline parameters (issue 16; `qsattn calibrate` measures them, gpu/microbench_sm).
    # Optional: a description without them is valid, the pipeline model then says which it lacks.
    lat_fma: Quantity | None = _opt("dependent FFMA latency (result to next use)", "clk")
    lat_alu: Quantity | None = _opt("dependent IADD3/LOP3 (ALU) latency", "clk")
    lat_imad: Quantity | None = _opt("dependent IMAD latency", "clk")
    lat_mufu: Quantity | None = _opt("dependent MUFU.EX2 latency", "clk")
    lat_cvt: Quantity | None = _opt("dependent F2I.S32 (XU conversion) latency", "clk")
    lat_hfma2: Quantity | None = _opt("dependent HFMA2 latency", "clk")
    lat_lds: Quantity | None = _opt("shared-memory load-to-use latency (LDS pointer chase)", "clk")
    bar_sync: Quantity | None = _opt("one BAR.SYNC round of a 4-warp CTA, all warps arriving "
                                     "together", "clk")
    bar_sync_8w: Quantity | None = _opt("one BAR.SYNC round of an 8-warp CTA", "clk")
    smem_conflict_1: Quantity | None = _opt("SM cycles per warp-wide LDS.32, no bank conflict "
                                            "(throughput, many warps)", "clk")
    smem_conflict_2: Quantity | None = _opt("SM cycles per warp-wide LDS.32, 2-way bank conflict",
                                            "clk")
    smem_conflict_4: Quantity | None = _opt("SM cycles per warp-wide LDS.32, 4-way bank conflict",
                                            "clk")
    smem_conflict_8: Quantity | None = _opt("SM cycles per warp-wide LDS.32, 8-way bank conflict",
                                            "clk")
    smem_conflict_32: Quantity | None = _opt("SM cycles per warp-wide LDS.32, 32-way bank "
                                             "conflict", "clk")
    lat_wgmma_fp16: Quantity | None = _opt("one warpgroup, dependent wgmma m64n128k16 fp16 with a "
                                           "wait after each (null: no wgmma)", "clk")
    lat_wgmma_int8: Quantity | None = _opt("one warpgroup, dependent wgmma m64n128k32 int8 with a "
                                           "wait after each (null: no wgmma)", "clk")
    wgmma_interval_fp16: Quantity | None = _opt("one warpgroup, dependent wgmma m64n128k16 fp16, "
                                                "one kept in flight (null: no wgmma)", "clk")
    clock_under_load: Quantity | None = _opt("SM clock under a sustained full-chip load", "MHz")
    hbm_read_bandwidth: Quantity | None = _opt("DRAM read-only bandwidth (pure read-reduce)",
                                               "GB/s")

    def __post_init__(self):
        known = archs()
        if self.arch not in known:
            raise ConfigError("", "arch", f"one of {sorted(known)} (configs/kernels/archs.yaml)",
                              self.arch)
        for name in PIPELINE_FIELDS:
            q = getattr(self, name)
            if q is not None and not (q.value > 0 and math.isfinite(q.value)):
                raise ConfigError("", f"{name}.value", f"a positive finite number of {q.unit}",
                                  q.value)
        if not known[self.arch].async_mma:
            for name in WGMMA_FIELDS:
                if getattr(self, name) is not None:
                    raise ConfigError("", name, f"null: arch {self.arch!r} has no warpgroup MMA "
                                      "(configs/kernels/archs.yaml async_mma)", getattr(self, name).value)
        for acc, base in (("tc_fp16_f32acc", "tc_fp16"), ("tc_fp8_f32acc", "tc_fp8")):
            q, b = getattr(self, acc), getattr(self, base)
            if q is not None and (b is None or not 0 < q.value <= b.value):
                raise ConfigError("", f"{acc}.value", f"a rate in (0, {base}] (FP32 accumulate "
                                  f"is never faster; null {base}: no such tensor cores)", q.value)
        degrees = [(d, getattr(self, f"smem_conflict_{d}")) for d in SMEM_DEGREES]
        given = [(d, q.value) for d, q in degrees if q is not None]
        for (d0, v0), (d1, v1) in zip(given, given[1:]):
            if v1 < v0:
                raise ConfigError("", f"smem_conflict_{d1}.value",
                                  f">= smem_conflict_{d0} ({v0:g} clk): a higher bank-conflict "
                                  f"degree is never cheaper", v1)
        has = known[self.arch].tensor_dtypes
        for d in ("fp16", "bf16", "tf32", "int8", "int4", "fp8"):
            if getattr(self, f"tc_{d}") is not None and d not in has:
                raise ConfigError("", f"tc_{d}", f"null: {self.arch} tensor cores have no "
                                  f"{d.upper()} (configs/kernels/archs.yaml lists {list(has)})",
                                  getattr(self, f"tc_{d}").value)
        # values the model divides by are > 0, counts are whole: zero, NaN (refused by the
        # schema) or 132.5 SMs never reach the arithmetic
        for f in dataclasses.fields(self):
            q = getattr(self, f.name)
            if not isinstance(q, Quantity):
                continue
            gt = f.metadata.get("gt")
            if gt is not None and not q.value > gt:
                raise ConfigError("", f"{f.name}.value", f"a value > {gt} {q.unit} (the cost "
                                  f"model divides by it)" + ("; write null for a unit the GPU "
                                                             "lacks" if f.default is None else ""),
                                  q.value)
            if f.metadata.get("count") and q.value != int(q.value):
                raise ConfigError("", f"{f.name}.value", f"a whole number of {q.unit}", q.value)

    # -- derived -----------------------------------------------------------------------------
    def v(self, name: str) -> float:
        """Value of field ``name``; UnsupportedOnHardware when the GPU lacks it."""
        q = getattr(self, name)
        if q is None:
            raise UnsupportedOnHardware(
                f"hardware {self.name!r} has no {name} ({_FIELD_DOCS[name]}); "
                f"choose a kernel/dtype this GPU supports")
        return q.value

    def clock_hz(self, clock: str = "boost") -> float:
        if clock not in ("boost", "sustained"):
            raise ValueError(f"clock: expected 'boost' or 'sustained', got {clock!r}")
        return self.v(f"{clock}_clock") * 1e6

    def tc_f32acc(self, dtype: str) -> float:
        """Tensor-core rate (per SM per clock) of an MMA on ``dtype`` accumulating in FP32: the
        ``tc_<dtype>_f32acc`` field where the GPU has one (GeForce), else ``tc_<dtype>``."""
        q = getattr(self, f"tc_{dtype}_f32acc", None)
        return q.value if q is not None else self.v(f"tc_{dtype}")

    def peak(self, name: str, clock: str = "boost") -> float:
        """Chip-wide rate per second of a per-SM-per-clock field (ops/s, inst/s or B/s)."""
        return self.v(name) * self.v("sm_count") * self.clock_hz(clock)

    @property
    def fields(self) -> dict[str, Quantity]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Quantity)}


SMEM_DEGREES = (1, 2, 4, 8, 32)
WGMMA_FIELDS = ("lat_wgmma_fp16", "lat_wgmma_int8", "wgmma_interval_fp16")
PIPELINE_FIELDS = ("lat_fma", "lat_alu", "lat_imad", "lat_mufu", "lat_cvt", "lat_hfma2", "lat_lds",
                   "bar_sync", "bar_sync_8w") + tuple(f"smem_conflict_{d}" for d in SMEM_DEGREES) \
    + WGMMA_FIELDS + ("clock_under_load", "hbm_read_bandwidth")

_FIELD_DOCS = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(Hardware)}
_UNITS = {f.name: f.metadata["unit"] for f in dataclasses.fields(Hardware) if f.metadata.get("unit")}


def _check_units(data: dict, where: str) -> None:
    for name, unit in _UNITS.items():
        q = data.get(name)
        if isinstance(q, dict) and "unit" in q and q["unit"] != unit:
            raise ConfigError(where, f"{name}.unit", f"{unit!r} (units are never converted)",
                              q["unit"])


def available_hardware() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "hardware").glob("*.yaml"))


_SHIPPED: dict = {}


def _resolve(name_or_path) -> Path:
    key = (name_or_path, os.environ.get("QSATTN_CONFIG_DIR")) \
        if isinstance(name_or_path, str) else None
    if key in _SHIPPED:
        return _SHIPPED[key]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    cand = config_dir() / "hardware" / f"{name_or_path}.yaml"
    if cand.exists() and key is not None:
        _SHIPPED[key] = cand
    if not cand.exists():
        raise ValueError(f"hardware: expected one of {available_hardware()} or a path to a YAML "
                         f"file, got {str(name_or_path)!r}")
    return cand


def load_hardware(name_or_path: "str | os.PathLike | Hardware") -> Hardware:
    """Load and validate a GPU description (name in ``configs/hardware`` or a YAML path).

    >>> load_hardware("h100_sxm").tc_int4 is None
    True
    """
    if isinstance(name_or_path, Hardware):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"hardware: expected a name, path or Hardware, "
                        f"got {type(name_or_path).__name__}")
    path = _resolve(name_or_path)
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        key = None
    if key in _CACHE:
        return _CACHE[key]
    hw = _load(path)
    if key is not None:
        _CACHE[key] = hw
    return hw


_CACHE: dict = {}


FILL = "FILL"   # marks a field `qsattn hardware new` left for the user to fill


def unfilled(data: dict) -> list[str]:
    """Fields of a hardware mapping still marked :data:`FILL` (a value, a source or a string
    field starting with it), in file order."""
    out = []
    for key, v in data.items():
        if isinstance(v, str) and v.strip().startswith(FILL):
            out.append(key)
        elif isinstance(v, dict) and any(isinstance(x, str) and x.strip().startswith(FILL)
                                         for x in (v.get("value"), v.get("source"))):
            out.append(key)
    return out


def _load(path: Path) -> Hardware:
    data = schema.load_yaml(path)
    todo = unfilled(data)
    if todo:
        raise ConfigError(str(path), ", ".join(todo),
                          "this GPU's value and its source (datasheet/whitepaper table, or the "
                          "measuring command) in place of each FILL marker",
                          f"{len(todo)} field(s) still marked {FILL}")
    data.setdefault("name", path.stem)
    _check_units(data, str(path))
    try:
        return schema.build(Hardware, data, where=str(path))
    except ConfigError as e:   # cross-field checks of __post_init__ know no file: name it
        if e.where:
            raise
        raise ConfigError(str(path), e.field, e.expected, e.got) from None


def measured_path(hw: Hardware) -> Path:
    return config_dir() / "hardware" / "measured" / f"{hw.name}.yaml"


def apply_measured(hw: Hardware, path: "str | os.PathLike | None" = None) -> Hardware:
    """``hw`` with the fields of its measured overlay replaced (see the module docstring).

    ``path`` defaults to ``configs/hardware/measured/<name>.yaml``; a missing file raises
    FileNotFoundError naming it."""
    path = Path(path) if path is not None else measured_path(hw)
    if not path.exists():
        raise FileNotFoundError(
            f"calibrated tier: no measured values for {hw.name!r}: expected {path} "
            f"(written by the GPU validation run); use tier='tiled' until it exists")
    data = schema.load_yaml(path)
    name = data.pop("name", hw.name)
    if name != hw.name:
        raise ConfigError(str(path), "name", repr(hw.name), name)
    where = str(path)
    _check_units(data, where)
    updates = {}
    for key, raw in data.items():
        if key not in _UNITS:
            raise ConfigError(where, key, f"a quantity field of Hardware ({', '.join(_UNITS)})",
                              "an unknown field")
        q = schema.build(Quantity, raw, where=where, path=key)
        if q.kind != "measured":
            raise ConfigError(where, f"{key}.kind", "'measured' in a measured overlay", q.kind)
        updates[key] = q
    try:
        return dataclasses.replace(hw, **updates)
    except ConfigError as e:   # the Hardware checks know the field, not the overlay file
        raise ConfigError(where, e.field, e.expected, e.got) from None
