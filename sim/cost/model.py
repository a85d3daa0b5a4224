"""``predict``: time of a method on a GPU, from the launches its kernels make.

Per launch at ``tier="tiled"`` (the last two tiers price counted kernels instead, see below):

1. Occupancy: CTAs per SM = min over shared memory (+1 KB reserved per CTA), registers,
   threads and the CTA limit. A tile that does not fit one CTA's shared memory raises.
2. Unit busy times per SM: tensor (ops / per-dtype rate), fma (FP32 + FP16x2 instructions),
   alu (INT32, I2FP/F2FP), xu (MUFU + XU conversions), smem (bytes / bandwidth).
3. Overlap. Within a CTA, tensor-core and CUDA-core work serialize: the kernels are
   FA2-style without warp specialization, each warpgroup waits for its QK^T wgmma before the
   softmax and issues PV after it (SASS: ``WARPGROUP.DEPBAR.LE gsb0, 0x0`` after QK^T, a CTA
   ``BAR.SYNC`` every K/V tile). The CUDA-core pipes (fma, alu, xu; smem on Ampere, where
   operands go through ldmatrix) run concurrently, but every instruction needs an issue slot
   of the SM's 4 schedulers (1 warp instruction/clk each), so their joint time is
   ``max(issue, max_u pipe_u)``. Co-resident CTAs share the SM without overlapping each
   other's phases (measured: int8_flash at 2 CTAs/SM runs 4330 clk per pair of tiles,
   tensor + issue = 4256, max = 2460; reports/roofline/README.md)::

       T_cta  = t_tensor + max(t_issue, max_u t_u)
       T_wave = c * T_cta

   ``overlap`` (the max/sum interpolation over warps per scheduler) is kept for callers.
4. Waves: rounds = ceil(CTAs / (SMs * c)), compute = T_wave * rounds, at least the longest
   CTA alone (causal imbalance).
5. Memory: K/V tiles stream asynchronously (cp.async / TMA double buffering), so memory
   overlaps compute: t = max(compute, t_HBM, t_L2) + launch overhead. HBM bytes = unique
   bytes + K/V re-reads that miss L2: the in-flight K/V streams (CTAs of one stream are
   consecutive in the grid) must fit in half the L2, else the excess share misses. Bandwidth
   scales with the SMs in use (an SM streams ~1/SMs of the chip's bandwidth).
6. Latency chains (our decode kernels, ``Launch.serial``): a CTA that walks a loop of
   dependent global-load round trips (loads consumed before the next ones are issued, as the
   SASS of gpu/kernels/decode.py shows) takes at least ``iterations x (rounds x load latency
   + its warp's instructions)`` per wave (:func:`_chain_time`); the launch takes the max of
   that, compute and memory, and reports ``bound = "latency"`` when the chain binds.
7. Launches run back to back: the prediction is their sum.

``tier="roofline"``: useful work only (no padding, no re-reads), time = max over units of
ops / chip peak and unique HBM bytes / bandwidth; no occupancy, waves, overlap or launch.

``tier="pipeline"`` and ``tier="calibrated"``: every launch of a kernel qsattn can count is priced
from that kernel's SASS, compiled for this point (:mod:`sim.cost.calibrated`: the SM pipeline
model, the block scheduler, memory); ``pipeline`` on the hardware description's datasheet
values, ``calibrated`` on its measured overlay. Launches nothing counts keep the formula above
(``Prediction.analytical`` says which and why).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..arch import arch
from ..checks import check_launch
from ..methods import SIMULATORS
from ..spec import resolve_spec
from .calibrated import program_time
from .hardware import (Hardware, UnsupportedOnHardware, apply_measured, load_hardware,
                       measured_path)
from .kernels import UNIT_OF, Launch, load_latency_clk
from .methods import COST_PATHS, BuildContext
from .paths import foreign_launches
from .shape import Shape

TIERS = ("roofline", "tiled", "pipeline", "calibrated")
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
    # calibrated tier: launches priced by the tiled formula because no counted kernel prices
    # them, as (launch name, reason); empty when every launch ran through its SASS
    analytical: tuple = field(default=())
    # calibrated tier: the counted kernels' record keys, per launch priced from SASS
    counted: tuple = field(default=())

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
                 "hw", "clk", "async_mma", "lat_l2", "lat_hbm")

    def __init__(self, hw: Hardware, clock: str):
        clk = hw.clock_hz(clock)
        self.hw, self.clk = hw, clk
        self.tc = {}
        for dt in ("fp16", "bf16", "tf32", "int8", "int4", "fp8"):
            q = getattr(hw, "tc_" + dt)
            if q is not None:
                # the FP16/FP8 MMAs of the cost paths accumulate in FP32 (attention's S and O):
                # on a GeForce part that is its own, halved rate (Hardware.tc_f32acc)
                self.tc[dt] = (hw.tc_f32acc(dt) if dt in ("fp16", "fp8") else q.value) * clk
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
        self.async_mma = arch(hw.arch).async_mma
        self.lat_l2 = hw.v("l2_latency")
        self.lat_hbm = hw.v("hbm_latency")

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
    if r.async_mma:
        # wgmma reads its shared-memory operands itself (no ldmatrix through the LSU path);
        # cp.async/LDGSTS and LDS instructions are counted as issue slots by the mixes
        ut["smem"] = 0.0
    warp_instr = sum(lau.instr.values()) / 32.0 + lau.mma
    t_issue = warp_instr / r.issue            # SM-seconds, as unit_times
    cuda = max(t_issue, *(t for u, t in ut.items() if u != "tensor"))
    per_cta = (ut["tensor"] + cuda) / lau.ctas
    wave = c * per_cta
    longest = per_cta * lau.max_share
    compute = max(wave * rounds, longest)
    chain = _chain_time(r, lau, c, rounds, warp_instr)
    active = min(r.sm, lau.ctas) / r.sm
    hbm = lau.hbm + lau.reread[0] * l2_miss(r, lau, r.sm * c)
    t_hbm = hbm / (r.hbm * active)
    t_l2 = lau.l2 / (r.l2 * active)
    body = max(compute, chain, t_hbm, t_l2)
    # breakdown: compute split over units by busy share; exposed memory; launch
    bd = {}
    ser = ut["tensor"] + cuda
    cu = {u: t for u, t in ut.items() if u != "tensor" and t > 0}
    cu["issue"] = t_issue
    top = max(cu, key=cu.get)       # the CUDA-core share goes to its binding pipe
    if ser > 0:
        if ut["tensor"] > 0:
            bd["tensor"] = compute * ut["tensor"] / ser
        if cuda > 0:
            bd[top] = compute * cuda / ser
    mem = max(t_hbm, t_l2)
    if chain > compute and chain >= mem:
        bd["latency"] = body - compute
    elif body > compute:
        bd["hbm" if t_hbm >= t_l2 else "l2"] = body - compute
    bd["launch"] = r.launch
    if body == compute:
        bound = "tensor" if ut["tensor"] >= cuda else top
    elif chain >= mem:
        bound = "latency"
    else:
        bound = "hbm" if t_hbm >= t_l2 else "l2"
    if r.launch > body:
        bound = "launch"
    return body + r.launch, bound, bd, hbm, occ, rounds


def _chain_time(r: _Rates, lau: Launch, c: int, rounds: int, warp_instr: float) -> float:
    """Latency-bound time of a launch whose CTAs walk a loop of dependent load round trips
    (``Launch.serial``, set by the decode builders). One iteration of one CTA takes its
    ``load_rounds`` round trips plus its own instructions (a warp issues one per clock), or, when
    longer, the schedulers' time for the ``c`` co-resident CTAs' instructions:

        t_iter = max(load_rounds * latency + I_warp, c * warps * I_warp / schedulers)

    with ``latency`` the L2 / HBM load-to-use estimate of ``kernels`` (weighted by the share
    of the loads that come from HBM). 0 when the launch has no recorded chain."""
    if lau.serial is None:
        return 0.0
    iters, load_rounds, share = lau.serial
    if iters <= 0:
        return 0.0
    lat = load_latency_clk(share, r.clk, r.lat_l2, r.lat_hbm)
    per_warp = warp_instr / (lau.ctas * lau.warps * iters)
    sched = r.issue / r.clk
    t_iter = max(load_rounds * lat + per_warp, c * lau.warps * per_warp / sched)
    return rounds * iters * t_iter / r.clk


def _roofline_time(r: _Rates, lau: Launch):
    sm = r.sm
    ut = unit_times(r, lau)
    ut.pop("smem")
    chip = {u: t / sm for u, t in ut.items()}
    chip["hbm"] = lau.hbm / r.hbm
    bound = max(chip, key=chip.get)
    return chip[bound], bound, {bound: chip[bound]}


def infer_phase(shape: Shape, phase: str | None = None) -> str:
    """The phase a shape is priced as: ``phase`` checked against the shape, or (None) inferred
    from it -- ``"decode"`` when ``q_len == 1`` (one new token per sequence over ``kv_len``
    cached keys), else ``"prefill"``. :func:`predict` refuses ``"decode"`` with ``q_len != 1``
    (the decode kernels take one query row); ``"prefill"`` of a single token stays allowed.

    >>> infer_phase(Shape(8, 32, 8, 1, 4096, 128)), infer_phase(Shape(1, 8, 8, 64, 64, 64))
    ('decode', 'prefill')
    """
    if phase is None:
        return "decode" if shape.q_len == 1 else "prefill"
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES} or None (inferred from q_len), "
                         f"got {phase!r}")
    return phase


def predict(spec, shape: Shape, hardware, *, phase: str | None = None, kernel: str | None = None,
            tier: str = "tiled", clock: str = "boost", launch: dict | None = None) -> Prediction:
    """Predict one attention call.

    ``spec``: a MethodSpec, spec name or path; ``hardware``: a Hardware or its name/path;
    ``phase``: ``"prefill"``, ``"decode"`` or None to infer it from the shape
    (:func:`infer_phase`: ``q_len == 1`` is a decode step);
    ``kernel``: None for the method's default (``COST_PATHS.get(method).kernels`` lists the
    choices, e.g. ``"sage_v1"`` on fp16_flash); ``tier``: roofline | tiled | pipeline |
    calibrated; ``clock``:
    boost | sustained; ``launch`` (prefill): the kernel's program config ``{"block_m",
    "num_warps", "num_stages"}`` (any subset, checked by ``sim.checks.check_launch`` as the
    kernels check it; the kernels' default is sim.arch.prefill_launch), default
    ``tiling.block_m``, one warp per 32 rows (at least 4), 2 stages. A decode prices the
    kernels' default launch (``launch`` is refused there) for one query row per sequence
    (``shape.q_len == 1``, as ``gpu.decode`` runs). The method's problem checks
    (``SimMethod.check_problem``, e.g. double_sparse's token budget) apply as in the simulator.

    >>> p = predict("fp16_flash", Shape(4, 32, 32, 4096, 4096, 64), "a100_80gb_sxm")
    >>> p.bound, round(p.time * 1e3, 2) > 0
    ('tensor', True)
    """
    spec = resolve_spec(spec)
    if not isinstance(shape, Shape):
        raise TypeError(f"shape: expected a sim.cost.Shape, got {type(shape).__name__}")
    phase = infer_phase(shape, phase)
    if tier not in TIERS:
        raise ValueError(f"tier: expected one of {TIERS}, got {tier!r}")
    if phase == "decode":
        if shape.q_len != 1:
            raise ValueError(f"shape.q_len: a decode step prices one query row per sequence "
                             f"(the decode kernels take q_len 1), got q_len={shape.q_len}; "
                             f"price several new rows as phase='prefill'")
        if launch is not None:
            raise ValueError(f"launch: the cost model prices the decode kernels' default "
                             f"launch; expected None for phase='decode', got {launch!r}")
    launch = _check_launch(launch) if launch is not None else None
    check = SIMULATORS.get(spec.method).check_problem
    if check is not None:
        check(spec, q_len=shape.q_len, kv_len=shape.kv_len, head_dim=shape.head_dim)
    hw = load_hardware(hardware)
    if tier == "calibrated":
        hw = _calibrated(hw)
    path = COST_PATHS.get(spec.method)
    if kernel is None:
        kernel = path.default_kernel(phase)
    elif kernel not in path.kernels.get(phase, ()):
        raise ValueError(f"kernel: expected one of {list(path.kernels.get(phase, ()))} for "
                         f"method {spec.method!r} phase {phase!r}, got {kernel!r}")
    r = _rates(hw, clock)
    ideal = tier == "roofline"
    counted = tier in ("pipeline", "calibrated")
    ctx = BuildContext(sm_count=r.sm, arch=hw.arch, ideal=ideal,
                       launch=launch if phase == "prefill" else None, counted=counted)
    launches = path.build(spec, shape, phase, kernel, ctx)

    def why(lau):
        return _why_analytical(path, spec, phase, kernel, lau)

    return _price(launches, r, hw, clock, ideal, counted, why,
                  (spec.method, kernel, phase, tier, hw.name, shape))


def predict_foreign(name: str, shape: Shape, hardware, *, tier: str = "pipeline",
                    clock: str = "boost") -> Prediction:
    """Predict one call of a described foreign kernel (``configs/kernels/foreign/<name>.yaml``,
    :mod:`sim.cost.foreign`) at ``shape``, every Triton launch priced from its counted SASS as
    :func:`predict` prices it at the same ``tier`` (``pipeline``: datasheet values;
    ``calibrated``: the measured overlay); other launches as their HBM traffic (listed in
    ``Prediction.analytical``). The records come from the package
    (``configs/kernels/<arch>/counted/``), the user cache or the registered counter, so a
    foreign kernel whose source is not installed is priced from its shipped records.
    ``Prediction.method`` is ``"foreign"``, ``kernel`` the description's name.

    >>> p = predict_foreign("int_fa_full_int8", Shape(4, 32, 32, 1024, 1024, 64), "a100_80gb_sxm")
    >>> p.kernel, p.counted[0][0], p.time > 0
    ('int_fa_full_int8', 'int_fa_full_int8.attn', True)
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a foreign kernel name, got {type(name).__name__}")
    if not isinstance(shape, Shape):
        raise TypeError(f"shape: expected a sim.cost.Shape, got {type(shape).__name__}")
    if tier not in ("pipeline", "calibrated"):
        raise ValueError(f"tier: a foreign kernel is priced from its counted SASS: expected "
                         f"'pipeline' or 'calibrated', got {tier!r}")
    hw = load_hardware(hardware)
    if tier == "calibrated":
        hw = _calibrated(hw)
    r = _rates(hw, clock)
    ctx = BuildContext(sm_count=r.sm, arch=hw.arch, ideal=False, counted=True)
    launches = foreign_launches(name, shape, ctx)

    def why(lau):
        return "not a Triton kernel (e.g. a torch operation): priced as its HBM traffic"

    return _price(launches, r, hw, clock, False, True, why,
                  ("foreign", name, "prefill", tier, hw.name, shape))


def _price(launches, r, hw, clock, ideal, counted, why, head) -> Prediction:
    """Sum the launches' times (the module docstring's per-launch pricing) into a Prediction
    whose leading fields are ``head`` (method, kernel, phase, tier, hardware, shape)."""
    analytical, keys = [], []
    total, bd, tc, ins = 0.0, {}, {}, dict.fromkeys(UNIT_OF, 0.0)
    hbm = l2 = smem = useful = 0.0
    worst, bound, info = -1.0, "", []
    multi = len(launches) > 1
    for lau in launches:
        if ideal:
            t, b, lbd = _roofline_time(r, lau)
            lh, occ, rounds = lau.hbm, 0, 0
        elif counted and lau.program is not None:
            t, b, lbd, lh, occ, rounds, key = _counted_time(r, hw, lau, clock)
            keys.append((lau.name, key))
        else:
            t, b, lbd, lh, occ, rounds = _launch_time(r, lau)
            if counted:
                analytical.append((lau.name, why(lau)))
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
    return Prediction(*head, total, bound, hbm, l2, smem, tc, ins, useful, bd, tuple(info),
                      tuple(analytical), tuple(keys))


def _why_analytical(path, spec, phase: str, kernel: str, lau=None) -> str:
    if lau is not None and lau.instr and not any(lau.instr.values()) and not lau.tc:
        return "not a Triton kernel (e.g. a torch operation): priced as its HBM traffic"
    if kernel not in path.ours and not (phase == "prefill" and kernel == spec.method):
        return (f"{kernel!r} is not a kernel qsattn counts: priced by the tiled formula on "
                f"measured ceilings")
    return "no counted program for this launch: priced by the tiled formula on measured ceilings"


def _counted_time(r: _Rates, hw: Hardware, lau: Launch, clock: str):
    """A launch priced from its kernel's SASS (sim.cost.calibrated)."""
    active = min(r.sm, lau.ctas) / r.sm
    hbm = lau.hbm + lau.reread[0] * l2_miss(r, lau, r.sm)
    res = program_time(hw, lau.program, clock=clock, hbm_bytes=hbm, l2_bytes=lau.l2,
                       launch_overhead=r.launch, read_bandwidth=r.hbm * active)
    bd = {"pipeline": res["compute"]}
    if res["memory"] > res["compute"]:
        bd["hbm"] = res["memory"] - res["compute"]
    bd["launch"] = r.launch
    return (res["time"], res["bound"], bd, hbm, res["occupancy"], res["waves"], res["kernel"])


def _check_launch(launch) -> dict:
    """The kernels' own launch rules (``sim.checks.check_launch``, which ``gpu`` applies too);
    ``pipe`` (a kernel variant) changes no count the model prices."""
    out = check_launch(launch, "prefill")
    out.pop("pipe", None)
    return out


_CAL: dict = {}


def _calibrated(hw: Hardware) -> Hardware:
    """``hw`` with its measured overlay, re-read when the overlay file changes."""
    path = measured_path(hw)
    try:
        stamp = (str(path), path.stat().st_mtime_ns)
    except OSError:
        stamp = None                          # apply_measured names the missing file
    got = _CAL.get(hw.name)
    if got is None or got[0] is not hw or got[1] != stamp:
        got = _CAL[hw.name] = (hw, stamp, apply_measured(hw))
    return got[2]
