"""A pipeline model of one SM running the warps of its resident CTAs through their SASS.

Replays the instruction streams of :mod:`sim.cost.sass` (one per warp: the kernel body with each
loop executed a given number of times) on one streaming multiprocessor, cycle-accurately in the
order the hardware would issue them, as far as the compiler's control codes and the parameters
below describe it:

* 4 sub-partitions (SMSPs), warp ``w`` of a CTA on SMSP ``w % 4``; each SMSP issues at most one
  warp instruction per clock, picking among its ready warps the one that issued last
  (greedy-then-oldest), else the lowest.
* In order per warp: instruction ``i + 1`` issues no earlier than ``stall_i`` clocks after ``i``
  (the compiler's stall count covers every fixed-latency dependency), and not before the
  scoreboards in its wait mask are released.
* Variable-latency instructions release their write scoreboard after a latency (MUFU, XU
  conversions, shared-memory and shuffle round trips, constant and special-register reads,
  global loads) and their read scoreboard after the sources are read (``store``).
* Per-SMSP pipes with a throughput: FMA (FP32 ops at the ``fp32`` rate, packed FP16 at
  ``fp16x2``), ALU (``int32``), XU (MUFU at ``sfu``, conversions at ``cvt``): an instruction
  occupies its pipe for ``32 / (rate_per_SM / 4)`` clocks and waits for it to be free.
* Tensor cores: one per SMSP; a warpgroup MMA (``HGMMA``/``IGMMA``/``QGMMA``, issued by the 4
  warps) or warp MMA (``HMMA``/``IMMA``) occupies the SMSP's tensor core for its share of the
  operations at the dtype's rate, back to back; a wgmma group (up to the instruction carrying
  ``gsb0``) completes ``wgmma`` clocks after its last MMA drains, and ``WARPGROUP.DEPBAR.LE gsb0,
  N`` waits until at most N groups are outstanding.
* Shared memory: one wavefront (128 bytes) per clock per SM, shared by all SMSPs
  (``LDS.128``/``STS.128``/``LDSM .4`` = 4 wavefronts per warp, ``.64`` 2, else 1, times a
  bank-conflict degree); the load completes ``lds`` clocks after its last wavefront.
* Asynchronous copies: ``LDGSTS`` completes after the global latency; ``LDGDEPBAR`` closes a
  group and ``DEPBAR.LE SB0, N`` waits until at most N groups are outstanding.
* ``BAR.SYNC id[, threads]``: a warp waits until every expected warp of its CTA arrived (all of
  the CTA when no thread count is given); released ``bar`` clocks after the last arrival.
  ``BAR.ARV`` arrives without waiting. Every warp runs the same instruction stream, so a barrier
  expecting fewer warps than the CTA has (``bar.sync 0, 128`` in a kernel of two warpgroups) is
  taken as local to consecutive groups of that many warps: pooling arrivals across groups would
  let one group pass on another's arrivals and strand the rest (a deadlock the real kernel,
  whose groups run different code, does not have).

Not modelled (stated, not hidden): register-bank conflicts and the operand reuse cache, the
instruction cache, mbarrier waits (``SYNCS``: issue slot only, so warp-specialized kernels are
not priced here), divergence (every instruction issues for the whole warp; predicated-off ones
too), memory bandwidth (the grid level adds it), and instruction-level latencies not exposed by
the control codes.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field

from . import sass as S

__all__ = ["SMParams", "Decoded", "decode", "simulate"]

# Latency names of SMParams.lat (clocks) and what each covers.
LATENCIES = {
    "mufu": "MUFU result (write scoreboard)",
    "cvt": "XU conversion result (F2I/I2F/F2F/FRND/POPC/FLO)",
    "lds": "shared-memory load / ldmatrix / shuffle result after its last wavefront",
    "const": "constant-cache load (LDC/ULDC) result",
    "s2r": "special register read (S2R/S2UR/CS2R of clocks) result",
    "gmem": "global load (LDG) / async copy (LDGSTS) completion",
    "store": "sources of a store or async copy read (read scoreboard)",
    "wgmma": "warpgroup MMA group completion after its last MMA drains",
    "bar": "CTA barrier release after the last arrival",
    "other": "any other instruction that sets a write scoreboard",
}


@dataclass(frozen=True)
class SMParams:
    """Per-SM rates (per clock) and latencies (clocks) of the model; see the module docstring.

    ``tc``: tensor-core operations per clock per SM by dtype (``fp16``, ``bf16``, ``tf32``,
    ``int8``, ``int4``, ``fp8``, and ``fp16_f32acc``/``fp8_f32acc`` where FP32 accumulation
    runs at another rate); ``smem_conflict``: bank-conflict degree by opcode prefix
    (e.g. ``{"STS.U8": 4}``), 1 for the rest."""

    fp32: float
    fp16x2: float
    int32: float
    sfu: float
    cvt: float
    tc: dict
    smem_bytes: float
    lat: dict
    smem_conflict: dict = field(default_factory=dict)

    def __post_init__(self):
        for n in ("fp32", "fp16x2", "int32", "sfu", "cvt", "smem_bytes"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"SMParams.{n}: expected a rate > 0, got {v!r}")
        missing = set(LATENCIES) - set(self.lat)
        if missing:
            raise ValueError(f"SMParams.lat: missing {sorted(missing)} (clocks)")
        for n, v in self.lat.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"SMParams.lat[{n!r}]: expected clocks >= 0, got {v!r}")

    def key(self) -> tuple:
        return (self.fp32, self.fp16x2, self.int32, self.sfu, self.cvt,
                tuple(sorted(self.tc.items())), self.smem_bytes, tuple(sorted(self.lat.items())),
                tuple(sorted(self.smem_conflict.items())))


# kinds of decoded instructions
PLAIN, MMA, SMEM, GLOAD, CPASYNC, CPCOMMIT, CPWAIT, WGWAIT, BAR, ARV, EXIT = range(11)
_PIPES = {"fma": 0, "alu": 1, "xu": 2}
_XU_SFU = ("MUFU",)
_CONST = ("LDC", "ULDC")
_SREG = ("S2R", "S2UR", "CS2R")
_WAVES = re.compile(r"\.(128|64)\b")
_BAR = re.compile(r"^BAR\.(SYNC|ARV|RED)\S*\s+(0x[0-9a-f]+|\d+)(?:\s*,\s*(0x[0-9a-f]+|\d+))?")
_DEPBAR = re.compile(r"^DEPBAR\.LE\s+SB(\d),\s*(0x[0-9a-f]+|\d+)")
_WGDEP = re.compile(r"^WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*(0x[0-9a-f]+|\d+)")


def _tc_dtype(op: str) -> str:
    """Rate key of ``SMParams.tc`` for a tensor-core opcode. A warp MMA on FP16 or FP8 inputs
    that accumulates in FP32 (``HMMA.16816.F32``, vs ``HMMA.16816.F16``) is ``fp16_f32acc`` /
    ``fp8_f32acc``: GeForce parts run it at half rate (:func:`tc_rate` falls back to the plain
    key where the GPU has no separate rate).

    >>> _tc_dtype("HMMA.16816.F32"), _tc_dtype("HMMA.16816.F16"), _tc_dtype("IMMA.16832.S8.S8")
    ('fp16_f32acc', 'fp16', 'int8')
    """
    base = op.split(".")[0]
    mods = op.split(".")[1:]
    if base in ("IGMMA", "IMMA"):
        return "int4" if any(m in ("S4", "U4") for m in mods) else "int8"
    if base == "QGMMA":
        return "fp8"
    if "TF32" in mods:
        return "tf32"
    if "BF16" in mods:
        return "bf16"
    dt = "fp8" if any(m in ("E4M3", "E5M2") for m in mods) else "fp16"
    return f"{dt}_f32acc" if base == "HMMA" and "F32" in mods else dt


def tc_rate(tc: dict, dtype: str):
    """Rate of ``dtype`` in ``tc`` (``SMParams.tc``); an ``*_f32acc`` key falls back to its
    dtype's rate. None when the GPU has neither."""
    r = tc.get(dtype)
    if r is None and dtype.endswith("_f32acc"):
        r = tc.get(dtype[:-len("_f32acc")])
    return r


@dataclass(frozen=True)
class Decoded:
    """Instructions of one kernel turned into the tuples :func:`simulate` replays, for one
    :class:`SMParams`: ``(kind, pipe, busy, stall, wbar, rbar, wait_bits, lat_w, lat_r, arg)``."""

    ops: tuple
    params_key: tuple
    lat_wgmma: float
    lat_gmem: float
    lat_bar: float


def decode(instrs: list, p: SMParams) -> Decoded:
    """Resolve every instruction's pipe, occupancy and latencies under ``p``."""
    out = []
    lat = p.lat
    for x in instrs:
        op, base = x.opcode, x.base
        pipe = S.pipe(op)
        kind, pid, busy, arg = PLAIN, -1, 0.0, None
        lat_w = lat["other"]
        if pipe in _PIPES:
            pid = _PIPES[pipe]
            cls = S.classify(op)
            rate = {"fp32": p.fp32, "fp16x2": p.fp16x2, "int32": p.int32, "sfu": p.sfu,
                    "cvt": p.cvt}[cls]
            busy = 32.0 / (rate / 4.0)
            lat_w = lat["mufu"] if base in _XU_SFU else lat["cvt"] if pipe == "xu" else lat["other"]
        elif pipe == "tensor":
            m, n, k, threads = S.mma_shape(op)
            dt = _tc_dtype(op)
            rate = tc_rate(p.tc, dt)
            if not rate:
                raise ValueError(f"SMParams.tc: no {dt} tensor-core rate for {op!r}")
            kind = MMA
            # this SMSP's share of the operations at a quarter of the SM's rate
            busy = 2.0 * m * n * k * (32.0 / threads) / (rate / 4.0)
            arg = "gsb0" in x.operands
        elif pipe == "smem":
            kind = SMEM
            mw = _WAVES.search(op)
            waves = 4 if (mw and mw.group(1) == "128") or op.endswith(".4") else \
                2 if (mw and mw.group(1) == "64") or op.endswith(".2") else 1
            conflict = next((d for pre, d in p.smem_conflict.items() if op.startswith(pre)), 1)
            arg = float(waves * conflict)
            lat_w = lat["lds"]
        elif base == "LDGSTS":
            kind = CPASYNC
        elif base == "LDGDEPBAR":
            kind = CPCOMMIT
        elif pipe == "gmem":
            kind = GLOAD
            lat_w = lat["gmem"]
        elif base == "DEPBAR":
            m = _DEPBAR.match(x.text)
            if m:
                kind, arg = CPWAIT, int(m.group(2), 0)
        elif base == "WARPGROUP":
            m = _WGDEP.match(x.text)
            if m:
                kind, arg = WGWAIT, int(m.group(1), 0)
        elif base == "BAR":
            m = _BAR.match(x.text)
            if m and m.group(1) in ("SYNC", "RED"):
                kind = BAR
                arg = (int(m.group(2), 0), int(m.group(3), 0) // 32 if m.group(3) else 0)
            elif m and m.group(1) == "ARV":
                kind = ARV
                arg = (int(m.group(2), 0), int(m.group(3), 0) // 32 if m.group(3) else 0)
        elif base == "EXIT" and not x.guard:
            kind = EXIT
        if base in _CONST:
            lat_w = lat["const"]
        elif base in _SREG:
            lat_w = lat["s2r"]
        wait_bits = tuple(b for b in range(6) if x.wait >> b & 1)
        out.append((kind, pid, busy, max(1, x.stall), x.wbar, x.rbar, wait_bits, lat_w,
                    lat["store"], arg))
    return Decoded(tuple(out), p.key(), lat["wgmma"], lat["gmem"], lat["bar"])


class _Warp:
    __slots__ = ("stream", "pc", "t", "sb", "smsp", "cta", "wg", "wg_open", "cp", "cp_open",
                 "blocked", "done", "end", "index")

    def __init__(self, stream, smsp, cta, index):
        self.stream, self.pc, self.t, self.smsp, self.cta = stream, 0, 0.0, smsp, cta
        self.index = index                     # warp number within its CTA
        self.sb = [0.0] * 6
        self.wg, self.wg_open = [], None       # wgmma groups: completion times
        self.cp, self.cp_open = [], None       # cp.async groups
        self.blocked = self.done = False
        self.end = 0.0


def _outstanding_ready(groups: list, n: int, t: float) -> float:
    """Earliest time >= t at which at most ``n`` of ``groups`` (completion times) are pending."""
    pend = sorted(g for g in groups if g > t)
    if len(pend) <= n:
        return t
    return pend[len(pend) - n - 1]


def simulate(dec: Decoded, stream: list, *, ctas: int, warps: int, marks: tuple = ()) -> dict:
    """Run ``ctas`` CTAs of ``warps`` warps, every warp executing ``stream`` (instruction
    indices into ``dec``), from clock 0 on one SM.

    Returns ``{"cycles": time the last warp finished, "issued": warp instructions issued,
    "marks": {position: latest clock any warp issued stream[position]}}`` for the positions in
    ``marks`` (used to time regions)."""
    if ctas < 1 or warps < 1:
        raise ValueError(f"simulate: ctas and warps must be >= 1, got {ctas}, {warps}")
    ops = dec.ops
    lat_wg, lat_gm, lat_b = dec.lat_wgmma, dec.lat_gmem, dec.lat_bar
    n_warps = ctas * warps
    ws = [_Warp(stream, (w % warps) % 4, w // warps, w % warps) for w in range(n_warps)]
    by_smsp = [[w for w in ws if w.smsp == s] for s in range(4)]
    pipe_free = [[0.0, 0.0, 0.0] for _ in range(4)]
    tc_free = [0.0] * 4
    issue_free = [0.0] * 4
    last = [None] * 4
    smem_free = 0.0
    bars: dict = {}            # (cta, id) -> [arrived warps, expected, latest arrival]
    mark_set = set(marks)
    mark_t = {m: 0.0 for m in marks}
    issued = 0
    n_stream = len(stream)

    def ready(w):
        kind, pid, busy, stall, wbar, rbar, wbits, lw, lr, arg = ops[stream[w.pc]]
        t = w.t
        sb = w.sb
        for b in wbits:
            if sb[b] > t:
                t = sb[b]
        if pid >= 0:
            f = pipe_free[w.smsp][pid]
            if f > t:
                t = f
        elif kind == CPWAIT:
            groups = w.cp + ([w.cp_open] if w.cp_open is not None else [])
            t = _outstanding_ready(groups, arg, t)
        elif kind == WGWAIT:
            groups = w.wg + ([w.wg_open] if w.wg_open is not None else [])
            t = _outstanding_ready(groups, arg, t)
        return t

    heap = []
    version = [0] * 4

    def push(s):
        best, bt = None, None
        for w in by_smsp[s]:
            if w.done or w.blocked:
                continue
            t = ready(w)
            if bt is None or t < bt or (t == bt and w is last[s]):
                best, bt = w, t
        version[s] += 1
        if best is not None:
            heapq.heappush(heap, (max(bt, issue_free[s]), s, version[s], best))

    for s in range(4):
        push(s)
    while heap:
        t0, s, ver, w = heapq.heappop(heap)
        if ver != version[s] or w.done or w.blocked:
            continue
        t = max(ready(w), issue_free[s])
        if t > t0:
            # the state changed since this entry was made: requeue with the fresh time
            version[s] += 1
            heapq.heappush(heap, (t, s, version[s], w))
            continue
        kind, pid, busy, stall, wbar, rbar, wbits, lw, lr, arg = ops[stream[w.pc]]
        if w.pc in mark_set:
            if t > mark_t[w.pc]:
                mark_t[w.pc] = t
        issued += 1
        issue_free[s] = t + 1.0
        last[s] = w
        # done_at: when this instruction's result (or effect) is complete
        done_at = t + lw if wbar is not None else t + 1.0
        if pid >= 0:
            pipe_free[s][pid] = t + busy
            done_at = t + lw if wbar is not None else t + stall
        elif kind == MMA:
            start = max(t, tc_free[s])
            tc_free[s] = start + busy
            done_at = tc_free[s] + lat_wg
            w.wg_open = done_at if w.wg_open is None else max(w.wg_open, done_at)
            if arg:                                   # gsb0: the group is committed
                w.wg.append(w.wg_open)
                w.wg_open = None
        elif kind == SMEM:
            start = max(t, smem_free)
            smem_free = start + arg
            done_at = smem_free + lw
        elif kind == CPASYNC:
            done_at = t + lat_gm
            w.cp_open = done_at if w.cp_open is None else max(w.cp_open, done_at)
        elif kind == CPCOMMIT:
            w.cp.append(w.cp_open if w.cp_open is not None else t)
            w.cp_open = None
        if wbar is not None:
            if done_at > w.sb[wbar]:
                w.sb[wbar] = done_at
        if rbar is not None:
            r = t + lr
            if r > w.sb[rbar]:
                w.sb[rbar] = r
        w.t = t + stall
        if done_at > w.end:
            w.end = done_at
        w.pc += 1
        if kind in (BAR, ARV):
            bid, need = arg
            need = need or warps
            key = (w.cta, bid, w.index // need)
            st = bars.get(key)
            if st is None:
                st = bars[key] = [[], need, t]
            st[2] = max(st[2], t)
            if kind == BAR:
                st[0].append(w)
                w.blocked = True
            else:
                st[0].append(None)
            if len(st[0]) >= st[1]:
                rel = st[2] + lat_b
                for x in st[0]:
                    if x is not None:
                        x.blocked = False
                        x.t = max(x.t, rel)
                del bars[key]
                for s2 in range(4):
                    push(s2)
        if kind == EXIT or w.pc >= n_stream:
            w.done = True
        push(s)
    stuck = [w for w in ws if not w.done]
    if stuck:
        raise RuntimeError(f"pipeline: {len(stuck)} warps never finished (a barrier whose "
                           f"expected count is never reached)")
    return {"cycles": max(w.end for w in ws), "issued": issued, "marks": mark_t}
