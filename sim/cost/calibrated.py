"""The calibrated tier: each launch priced from the SASS of the kernel that would run.

For a launch whose builder attached a :class:`Program` (the kernel request and every CTA's loop
trip counts, in launch order):

1. the counted kernel (:func:`sim.cost.counted.lookup`: compiled for this point's
   specialization, launch and architecture) gives registers, shared memory and warps, hence the
   occupancy (CTAs per SM);
2. the pipeline model (:mod:`sim.cost.pipeline`) runs ``k`` co-resident CTAs through the SASS
   for every ``k`` up to the occupancy and gives each CTA's clocks as a linear function of its
   loop trips (:class:`sim.cost.counted.CtaTiming`);
3. the block scheduler (:mod:`sim.cost.grid`) hands the CTAs to the SMs in launch order;
4. memory: the launch's HBM bytes at the read bandwidth; the slower of compute and memory is
   the launch's time, plus the launch overhead.

Parameters (:func:`sm_params`): the per-SM rates of the hardware description (its measured
overlay first), the latencies of ``configs/kernels/<arch>/pipeline.yaml`` unless the hardware
has its own (``lat_*`` fields), global-load latency from ``l2_latency``/``hbm_latency`` by the
launch's share of HBM traffic, and the clock: ``clock_under_load`` when measured, else the
requested clock. Nothing is fitted to attention timings.

Launches without a program (helper passes the cost paths still describe analytically) keep the
tiled formula and are listed in ``Prediction.analytical``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..arch import kernel_data
from . import grid
from .counted import KernelRequest, lookup
from .pipeline import LATENCIES, SMParams

__all__ = ["Program", "sm_params", "program_time"]


@dataclass(frozen=True)
class Program:
    """What one launch runs: ``request`` (the kernel), ``ctas`` (per CTA in launch order, its
    loop trips as a tuple indexed by loop program order) and ``name`` for the breakdown."""

    request: KernelRequest
    ctas: tuple
    name: str = ""


_FIELD_LAT = {"mufu": "lat_mufu", "cvt": "lat_cvt", "lds": "lat_lds"}


def _hw_value(hw, name):
    q = getattr(hw, name, None)
    return None if q is None else q.value


def sm_params(hw, clock_hz: float, hbm_share: float, *, warps: int = 4,
              smem_conflict=None) -> SMParams:
    """The pipeline model's parameters for ``hw`` at ``clock_hz`` (see the module docstring).

    Per-SM rates are the description's per-clock fields; a measured overlay's per-clock fields
    are normalized at the boost clock (qsattn.calibrate), so they are rescaled to ``clock_hz``
    here: a rate measured under load at a lower clock is more work per actual clock."""
    boost = hw.clock_hz("boost")
    scale = boost / clock_hz

    def rate(name):
        q = getattr(hw, name)
        if q is None:
            return None
        return q.value * (scale if q.kind == "measured" else 1.0)

    tc = {}
    for dt in ("fp16", "bf16", "tf32", "int8", "int4", "fp8", "fp16_f32acc", "fp8_f32acc"):
        v = rate("tc_" + dt)
        if v:
            tc[dt] = v
    lat = dict(kernel_data(hw.arch, "pipeline")["latency"])
    for k, f in _FIELD_LAT.items():
        v = _hw_value(hw, f)
        if v is not None:
            lat[k] = v
    # a CTA barrier round: the 8-warp figure for CTAs of more than 4 warps
    v = _hw_value(hw, "bar_sync_8w" if warps > 4 else "bar_sync")
    if v is not None:
        lat["bar"] = v
    # the wgmma group's tail after its last MMA drains: the measured dependent-wgmma latency
    # less its issue interval (both of the m64n128k16 fp16 chain)
    lw, iv = _hw_value(hw, "lat_wgmma_fp16"), _hw_value(hw, "wgmma_interval_fp16")
    if lw is not None and iv is not None:
        lat["wgmma"] = max(0.0, lw - iv)
    l2 = hw.v("l2_latency")
    hbm = hw.v("hbm_latency") * 1e-9 * clock_hz
    lat["gmem"] = (1.0 - hbm_share) * l2 + hbm_share * hbm
    missing = set(LATENCIES) - set(lat)
    if missing:
        raise ValueError(f"configs/kernels/{hw.arch}/pipeline.yaml: latency needs "
                         f"{sorted(missing)}")
    return SMParams(fp32=rate("fp32"), fp16x2=rate("fp16x2"), int32=rate("int32"),
                    sfu=rate("sfu"), cvt=rate("cvt"), tc=tc,
                    smem_bytes=rate("smem_bandwidth"), lat=lat,
                    smem_conflict=dict(smem_conflict or {}))


def occupancy(hw, ck) -> int:
    """Resident CTAs per SM of a counted kernel: shared memory (+1 KB reserved per CTA),
    registers (allocated per warp in units of 256), threads and the CTA limit."""
    smem_sm = hw.v("smem_per_sm") * 1024
    if ck.shared > hw.v("smem_per_block") * 1024:
        raise ValueError(f"kernel {ck.name!r} needs {ck.shared / 1024:.1f} KB of shared memory "
                         f"per CTA, {hw.name} allows {hw.v('smem_per_block'):.0f} KB")
    regs_warp = math.ceil(ck.registers * 32 / 256) * 256
    by_regs = int(hw.v("registers_per_sm") // (regs_warp * ck.warps))
    by_smem = int(smem_sm // (ck.shared + 1024)) if ck.shared else 10 ** 9
    occ = min(by_regs, by_smem, int(hw.v("max_threads_per_sm") // (32 * ck.warps)),
              int(hw.v("max_blocks_per_sm")))
    if occ < 1:
        raise ValueError(f"kernel {ck.name!r} does not fit one SM of {hw.name} "
                         f"({ck.registers} registers x {32 * ck.warps} threads, "
                         f"{ck.shared} B shared)")
    return occ


def clock_of(hw, clock: str) -> float:
    """Clock of the calibrated tier: the measured clock under load when the hardware has one,
    else ``clock`` (boost | sustained)."""
    v = _hw_value(hw, "clock_under_load")
    return v * 1e6 if v else hw.clock_hz(clock)


def program_time(hw, prog: Program, *, clock: str, hbm_bytes: float, l2_bytes: float,
                 launch_overhead: float, read_bandwidth: float) -> dict:
    """Time of one launch (see the module docstring): ``{"time", "compute", "memory", "bound",
    "occupancy", "waves", "kernel", "issued"}``."""
    ck = lookup(prog.request)
    clk = clock_of(hw, clock)
    share = min(1.0, hbm_bytes / l2_bytes) if l2_bytes > 0 else 1.0
    # quarters: the latency is an estimate at that resolution, and equal parameters share the
    # pipeline model's cached timings across the points of a sweep
    params = sm_params(hw, clk, round(share * 4) / 4, warps=ck.sim_warps)
    occ = occupancy(hw, ck)
    n_loops = len(ck.loops)
    for t in prog.ctas[:1]:
        if len(t) != n_loops:
            raise ValueError(f"program {prog.name!r}: the kernel {ck.name!r} ({ck.key}) has "
                             f"{n_loops} loops in its SASS, the cost path gives trips for "
                             f"{len(t)}")
    slots = max(1, min(occ, math.ceil(len(prog.ctas) / hw.v("sm_count"))))
    base = {lp.index: 2 for lp in ck.loops}
    vary = tuple(lp.index for lp in ck.loops)
    timings = {k: ck.timing(params, k, base, vary) for k in range(1, slots + 1)}

    def cycles(k, trips):
        return timings[k].cycles(dict(enumerate(trips)))

    sched = grid.schedule(prog.ctas, int(hw.v("sm_count")), slots, cycles)
    compute = sched["cycles"] / clk
    rb = _hw_value(hw, "hbm_read_bandwidth")
    if rb:                                   # a read stream's ceiling, scaled to the SMs in use
        read_bandwidth = rb * 1e9 * min(1.0, len(prog.ctas) / hw.v("sm_count"))
    memory = hbm_bytes / read_bandwidth if read_bandwidth > 0 else 0.0
    body = max(compute, memory)
    return {"time": body + launch_overhead, "compute": compute, "memory": memory,
            "bound": "pipeline" if compute >= memory else "hbm", "occupancy": occ,
            "slots": slots, "waves": sched["waves"], "kernel": ck.key,
            "issued": timings[slots].issued, "clock_hz": clk}


# -- what the model is made of ------------------------------------------------------------
_MODEL_FILES = ("sass.py", "pipeline.py", "grid.py", "counted.py", "calibrated.py",
                "foreign.py", "kernels.py", "paths.py", "model.py")
# hardware fields the counted-kernel tiers read (sm_params, occupancy, program_time, model.py)
PARAMETERS = ("boost_clock", "clock_under_load", "sm_count", "fp32", "fp16x2", "int32", "sfu",
              "cvt", "tc_fp16", "tc_bf16", "tc_int8", "tc_fp8", "tc_int4", "smem_bandwidth",
              "lat_mufu", "lat_cvt", "lat_lds", "bar_sync", "bar_sync_8w", "lat_wgmma_fp16",
              "wgmma_interval_fp16", "l2_latency", "hbm_latency", "hbm_read_bandwidth",
              "hbm_bandwidth", "l2_size", "launch_overhead", "smem_per_sm", "smem_per_block",
              "registers_per_sm", "max_threads_per_sm", "max_blocks_per_sm")


def model_digest(hw) -> str:
    """SHA-256 (16 hex) of everything a counted-tier prediction on ``hw`` depends on besides the
    kernels' own SASS: the model's source files, the architecture's pipeline latencies and
    every hardware value it reads (measured overlay applied). A validation run records it
    before it measures; its summary states it."""
    import hashlib
    import json
    from pathlib import Path
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _MODEL_FILES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    h.update(json.dumps(kernel_data(hw.arch, "pipeline"), sort_keys=True, default=str).encode())
    for name in PARAMETERS:
        q = getattr(hw, name, None)
        h.update(f"{name}={None if q is None else (q.value, q.unit, q.kind)}".encode())
    return h.hexdigest()[:16]


def parameter_sources(hw) -> list[dict]:
    """Every parameter the counted-kernel tiers read for ``hw``, with where its value comes
    from: ``measured`` (the microbenchmarks of `qsattn calibrate`), ``datasheet`` (the hardware
    description's sourced value; ``estimate`` when its source says ESTIMATE), or the
    architecture's pipeline table (configs/kernels/<arch>/pipeline.yaml). Instruction counts,
    dependencies, registers, shared memory and loop structure come from each kernel's compile
    (SASS) and are not parameters."""
    out = []
    for name in PARAMETERS:
        q = getattr(hw, name, None)
        if q is None:
            continue
        kind = "measured" if q.kind == "measured" else (
            "estimate" if "ESTIMATE" in q.source else "datasheet")
        out.append({"name": name, "value": q.value, "unit": q.unit, "kind": kind,
                    "source": q.source})
    pipe = kernel_data(hw.arch, "pipeline")
    covered = {"mufu": "lat_mufu", "cvt": "lat_cvt", "lds": "lat_lds"}
    for k, v in pipe["latency"].items():
        if k in covered and getattr(hw, covered[k], None) is not None:
            continue
        if k == "bar" and getattr(hw, "bar_sync", None) is not None:
            continue
        if k == "wgmma" and getattr(hw, "lat_wgmma_fp16", None) is not None:
            continue
        out.append({"name": f"latency.{k}", "value": v, "unit": "clk", "kind": "estimate",
                    "source": f"configs/kernels/{hw.arch}/pipeline.yaml: {pipe['source']}"})
    return out
