"""``predict``: time of a method on a GPU, from the launches its kernels make.

Per launch (``tier="tiled"``; ``"calibrated"`` is the same on the measured ceilings):

1. Occupancy: CTAs per SM = min over shared memory (+1 KB reserved per CTA), registers,
   threads and the CTA limit. A tile that does not fit one CTA's shared memory raises.
2. Unit busy times per SM: tensor (ops / per-dtype rate), fma (FP32 + FP16x2 instructions),
   alu (INT32, I2FP/F2FP), xu (MUFU + XU conversions), smem (bytes / bandwidth).
3. Overlap: the ``c`` CTAs resident on an SM give ``k = c * warps / schedulers`` warps per
   scheduler. One warp runs its phases in dependency order (QK^T -> softmax -> PV), so with
   k = 1 the units' times add; k warps interleave, so at most k units are busy at once and
   no unit is faster than its own ceiling::

       T_wave = max(max_u c*t_u, sum_u c*t_u / min(k, #busy units))

   (k = 1: the sum, FA2 with one warp per scheduler; k >= #units: the max, perfect
   overlap.) This is why FP16 attention on H100 is far from the tensor-core roofline: MUFU
   time is as long as MMA time and FA2-style kernels cannot hide it (FlashAttention-3, Sec. 3).
4. Waves: rounds = ceil(CTAs / (SMs * c)), compute = T_wave * rounds, at least the longest
   CTA alone (causal imbalance); issue (warp instructions / 4 per clock) is a ceiling too.
5. Memory: K/V tiles stream asynchronously (cp.async / TMA double buffering), so memory
   overlaps compute: t = max(compute, t_HBM, t_L2) + launch overhead. HBM bytes = unique
   bytes + K/V re-reads that miss L2: the in-flight K/V streams (CTAs of one stream are
   consecutive in the grid) must fit in half the L2, else the excess share misses. Bandwidth
   scales with the SMs in use (an SM streams ~1/SMs of the chip's bandwidth).
6. Launches run back to back: the prediction is their sum.

``tier="roofline"``: useful work only (no padding, no re-reads), time = max over units of
ops / chip peak and unique HBM bytes / bandwidth; no occupancy, waves, overlap or launch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..spec import MethodSpec, load_method
from . import methods
from .hardware import Hardware, UnsupportedOnHardware, apply_measured, load_hardware
from .kernels import UNIT_OF, Launch
from .shape import Shape

TIERS = ("roofline", "tiled", "calibrated")
PHASES = ("prefill", "decode")
COMPUTE_UNITS = ("tensor", "fma", "alu", "xu", "smem")


@dataclass(frozen=True)
class Prediction:
    """One row: time, bound, bytes per level, ops per unit, achieved rates, breakdown.

    ``breakdown`` (stage -> seconds, sums to ``time``): ``<launch>.<unit>`` is the unit's share
    of that launch's compute time, ``<launch>.hbm``/``.l2`` the memory time left exposed
    beyond compute, ``<launch>.launch`` its overhead."""

    method: str
    kernel: str
    phase: str
    tier: str
    hardware: str
    shape: Shape
    time: float
    bound: str
    hbm_bytes: float
    l2_bytes: float
    smem_bytes: float
    tensor_ops: dict
    instructions: dict
    useful_ops: float
    breakdown: dict
    launches: tuple = field(default=())   # per launch: (name, ctas, occupancy, waves, time)

    @property
    def intensity(self) -> float:
        """Useful tensor ops per HBM byte."""
        return self.useful_ops / self.hbm_bytes if self.hbm_bytes else math.inf

    @property
    def achieved_tops(self) -> float:
        return self.useful_ops / self.time / 1e12

    @property
    def achieved_gbs(self) -> float:
        return self.hbm_bytes / self.time / 1e9

    def utilization(self, hw: Hardware) -> float:
        """Useful tensor ops / (time x dense FP16 peak) -- the usual 'MFU'-style figure."""
        return self.useful_ops / self.time / hw.peak("tc_fp16")

    def by_unit(self) -> dict:
        out: dict[str, float] = {}
        for k, v in self.breakdown.items():
            u = k.rsplit(".", 1)[-1]
            out[u] = out.get(u, 0.0) + v
        return out

    def to_row(self) -> dict:
        return {"method": self.method, "kernel": self.kernel, "phase": self.phase,
                "tier": self.tier, "hardware": self.hardware, "shape": self.shape.label(),
                "time_us": self.time * 1e6, "bound": self.bound,
                "intensity_op_per_B": self.intensity, "TOPs": self.achieved_tops,
                "GBs": self.achieved_gbs, "hbm_MB": self.hbm_bytes / 1e6,
                "l2_MB": self.l2_bytes / 1e6, "smem_MB": self.smem_bytes / 1e6}


class _Rates:
    """Per-SM rates (per second) of one hardware at one clock, cached per (hw, clock)."""

    __slots__ = ("tc", "fp32", "fp16x2", "int32", "sfu", "cvt", "smem", "issue", "sm", "hbm",
                 "l2", "l2_size", "launch", "smem_sm", "smem_blk", "regs", "threads", "blocks",
                 "hw", "clk")

    def __init__(self, hw: Hardware, clock: str):
        clk = hw.clock_hz(clock)
        self.hw, self.clk = hw, clk
        self.tc = {}
        for dt in ("fp16", "bf16", "tf32", "int8", "int4", "fp8"):
            q = getattr(hw, "tc_" + dt)
            if q is not None:
                self.tc[dt] = q.value * clk
        for n in ("fp32", "fp16x2", "int32", "sfu", "cvt", "issue"):
            setattr(self, n, hw.v(n) * clk)
        self.smem = hw.v("smem_bandwidth") * clk
        self.sm = int(hw.v("sm_count"))
        self.hbm = hw.v("hbm_bandwidth") * 1e9
        self.l2 = hw.v("l2_bandwidth") * 1e9
        self.l2_size = hw.v("l2_size") * 1e6
        self.launch = hw.v("launch_overhead") * 1e-6
        self.smem_sm = hw.v("smem_per_sm") * 1024
        self.smem_blk = hw.v("smem_per_block") * 1024
        self.regs = hw.v("registers_per_sm")
        self.threads = hw.v("max_threads_per_sm")
        self.blocks = hw.v("max_blocks_per_sm")

    def tc_rate(self, dtype: str) -> float:
        r = self.tc.get(dtype)
        if r is None:
            raise UnsupportedOnHardware(
                f"hardware {self.hw.name!r} has no {dtype.upper()} tensor cores "
                f"(tc_{dtype} is null in its YAML); this kernel needs them")
        return r


_RATES: dict = {}


def _rates(hw: Hardware, clock: str) -> _Rates:
    key = (id(hw), clock)
    r = _RATES.get(key)
    if r is None or r.hw is not hw:
        r = _RATES[key] = _Rates(hw, clock)
    return r


def occupancy(r: _Rates, lau: Launch) -> int:
    """Resident CTAs per SM; ValueError when one CTA cannot fit."""
    if lau.smem_cta > r.smem_blk:
        raise ValueError(
            f"shape/tiling: launch {lau.name!r} needs {lau.smem_cta / 1024:.1f} KB of shared "
            f"memory per CTA, {r.hw.name} allows {r.smem_blk / 1024:.0f} KB; use smaller "
            f"tiling.block_m/block_n or head_dim")
    threads = 32 * lau.warps
    occ = min(int(r.smem_sm // (lau.smem_cta + 1024)) if lau.smem_cta else 10 ** 9,
              int(r.regs // (lau.regs * threads)), int(r.threads // threads), int(r.blocks))
    if occ < 1:
        raise ValueError(f"shape/tiling: launch {lau.name!r} does not fit one SM "
                         f"({lau.regs} registers x {threads} threads)")
    return occ


def unit_times(r: _Rates, lau: Launch) -> dict:
    """Chip-total busy seconds of each compute unit for a launch, at one SM's rate."""
    ins = lau.instr
    t_tc = sum(ops / r.tc_rate(dt) for dt, ops in lau.tc.items())
    return {"tensor": t_tc,
            "fma": ins["fp32"] / r.fp32 + ins["fp16x2"] / r.fp16x2,
            "alu": ins["int32"] / r.int32,
            "xu": ins["sfu"] / r.sfu + ins["cvt"] / r.cvt,
            "smem": lau.smem / r.smem}


def overlap(times: dict, k: float) -> float:
    """max(max_u t_u, sum_u t_u / min(k, #busy units)): see the module docstring.

    >>> overlap({"tensor": 2.0, "xu": 1.0}, 1), overlap({"tensor": 2.0, "xu": 1.0}, 4)
    (3.0, 2.0)
    """
    busy = [t for t in times.values() if t > 0]
    if not busy:
        return 0.0
    return max(max(busy), sum(busy) / max(1.0, min(k, len(busy))))


def l2_miss(r: _Rates, lau: Launch, slots: int) -> float:
    """Share of K/V re-reads that miss L2: the streams in flight (slots / CTAs per stream, +1
    partially started) must fit in half the L2."""
    extra, stream_bytes, ctas_per_stream = lau.reread
    if extra <= 0:
        return 0.0
    streams = min(math.ceil(lau.ctas / ctas_per_stream), slots / ctas_per_stream + 1)
    ws = streams * stream_bytes
    cap = 0.5 * r.l2_size
    return 0.0 if ws <= cap else (ws - cap) / ws


def _launch_time(r: _Rates, lau: Launch):
    occ = occupancy(r, lau)
    c = max(1, min(occ, math.ceil(lau.ctas / r.sm)))
    rounds = math.ceil(lau.ctas / (r.sm * c))
    ut = unit_times(r, lau)
    per_cta = {u: t / lau.ctas for u, t in ut.items()}
    k = c * lau.warps / 4.0
    wave = overlap({u: c * t for u, t in per_cta.items()}, k)
    longest = overlap({u: t * lau.max_share for u, t in per_cta.items()}, lau.warps / 4.0)
    warp_instr = sum(lau.instr.values()) / 32.0 + lau.mma
    t_issue = warp_instr / (r.issue * r.sm)
    compute = max(wave * rounds, longest, t_issue)
    active = min(r.sm, lau.ctas) / r.sm
    hbm = lau.hbm + lau.reread[0] * l2_miss(r, lau, r.sm * c)
    t_hbm = hbm / (r.hbm * active)
    t_l2 = lau.l2 / (r.l2 * active)
    body = max(compute, t_hbm, t_l2)
    # breakdown: compute split over units by busy share; exposed memory; launch
    bd = {}
    tot = sum(ut.values())
    for u, t in ut.items():
        if t > 0:
            bd[u] = compute * t / tot if tot else 0.0
    if tot == 0 and compute > 0:
        bd["issue"] = compute
    if body > compute:
        bd["hbm" if t_hbm >= t_l2 else "l2"] = body - compute
    bd["launch"] = r.launch
    if body == compute:
        if t_issue >= wave * rounds and t_issue >= longest:
            bound = "issue"
        else:
            bound = max(ut, key=ut.get)
    else:
        bound = "hbm" if t_hbm >= t_l2 else "l2"
    if r.launch > body:
        bound = "launch"
    return body + r.launch, bound, bd, hbm, occ, rounds


def _roofline_time(r: _Rates, lau: Launch):
    sm = r.sm
    ut = unit_times(r, lau)
    ut.pop("smem")
    chip = {u: t / sm for u, t in ut.items()}
    chip["hbm"] = lau.hbm / r.hbm
    bound = max(chip, key=chip.get)
    return chip[bound], bound, {bound: chip[bound]}


def predict(spec, shape: Shape, hardware, *, phase: str = "prefill", kernel: str | None = None,
            tier: str = "tiled", clock: str = "boost") -> Prediction:
    """Predict one attention call.

    ``spec``: a MethodSpec or method name; ``hardware``: a Hardware or its name/path;
    ``kernel``: None for the method's default (``sim.cost.methods.KERNELS`` lists the choices,
    e.g. ``"sage_v1"`` on fp16_flash); ``tier``: roofline | tiled | calibrated; ``clock``:
    boost | sustained.

    >>> p = predict("fp16_flash", Shape(4, 32, 32, 4096, 4096, 64), "a100_80gb_sxm")
    >>> p.bound, round(p.time * 1e3, 2) > 0
    ('tensor', True)
    """
    if not isinstance(spec, MethodSpec):
        spec = _spec(spec)
    if not isinstance(shape, Shape):
        raise TypeError(f"shape: expected a sim.cost.Shape, got {type(shape).__name__}")
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
    if tier not in TIERS:
        raise ValueError(f"tier: expected one of {TIERS}, got {tier!r}")
    hw = load_hardware(hardware)
    if tier == "calibrated":
        hw = _calibrated(hw)
    if kernel is None:
        kernel = methods.default_kernel(spec, phase)
    r = _rates(hw, clock)
    ideal = tier == "roofline"
    launches = methods.build(spec, shape, phase=phase, kernel=kernel, sm_count=r.sm, ideal=ideal)
    total, bd, tc, ins = 0.0, {}, {}, dict.fromkeys(UNIT_OF, 0.0)
    hbm = l2 = smem = useful = 0.0
    worst, bound, info = -1.0, "", []
    multi = len(launches) > 1
    for lau in launches:
        if ideal:
            t, b, lbd = _roofline_time(r, lau)
            lh, occ, rounds = lau.hbm, 0, 0
        else:
            t, b, lbd, lh, occ, rounds = _launch_time(r, lau)
        total += t
        for u, v in lbd.items():
            key = f"{lau.name}.{u}" if multi else u
            bd[key] = bd.get(key, 0.0) + v
        if t > worst:
            worst, bound = t, (f"{lau.name}:{b}" if multi else b)
        for dt, ops in lau.tc.items():
            tc[dt] = tc.get(dt, 0.0) + ops
        for kk, v in lau.instr.items():
            ins[kk] += v
        hbm += lh
        l2 += lau.l2
        smem += lau.smem
        useful += lau.useful_tc
        info.append((lau.name, lau.ctas, occ, rounds, t))
    return Prediction(spec.method, kernel, phase, tier, hw.name, shape, total, bound, hbm, l2,
                      smem, tc, ins, useful, bd, tuple(info))


_SPECS: dict = {}


def _spec(name) -> MethodSpec:
    # shipped specs by name are immutable files for the life of a process
    got = _SPECS.get(name) if isinstance(name, str) else None
    if got is None:
        got = load_method(name)
        if isinstance(name, str):
            _SPECS[name] = got
    return got


_CAL: dict = {}


def _calibrated(hw: Hardware) -> Hardware:
    got = _CAL.get(hw.name)
    if got is None or got[0] is not hw:
        got = _CAL[hw.name] = (hw, apply_measured(hw))
    return got[1]
