"""What each kernel does, tile by tile: operation counts and bytes of one launch.

A kernel is described by a :class:`Launch`: its grid (CTAs, warps, shared memory and registers
per CTA, which decide occupancy) and its totals over the grid: tensor-core ops per dtype,
CUDA-core thread instructions per class (``fp32``, ``fp16x2``, ``int32``, ``sfu`` = MUFU,
``cvt`` = XU conversions), MMA warp instructions, and bytes at HBM (unique traffic), L2 (every
tile load) and shared memory (cp.async writes + each warp's operand reads).

Conventions (every builder follows them):

* Tile level: a CTA computes full ``block_m x block_n`` tiles, padding rows past ``q_len`` and
  keys past ``kv_len``; causal CTAs skip tiles above the diagonal and pay the mask
  (compare + select) on the tiles it cuts (``tile_counts``).
* Per-element softmax counts are listed in ``SOFTMAX_*`` tables with the SASS they stand for.
  ``I2FP`` (int32 -> fp32) and ``F2FP`` (packed fp32 -> fp16) run on the integer/FMA pipes
  (sm_80+), counted as ``int32``; ``F2I`` / ``F2F`` scalar conversions run on the XU with MUFU,
  counted as ``cvt``.
* ``ideal=True`` (the pure roofline tier) counts only useful work: exactly the visible
  (row, key) pairs, no padding, HBM = unique bytes, L2 and shared memory not counted.
* Inputs of integer methods arrive pre-quantized (the papers time the attention kernel only),
  except ``sage_v1`` whose Q/K quantization pre-pass is a launch of its own.
"""
from __future__ import annotations

import math

import numpy as np

from ..arch import kernel_data

# Thread-instruction classes and the pipe ("unit") that executes each.
# ``other``: instructions that only take an issue slot in this model (MMA, copies, shuffles,
# barriers, uniform-datapath ops), counted by the SASS mixes of ``mixes``.
UNIT_OF = {"fp32": "fma", "fp16x2": "fma", "int32": "alu", "sfu": "xu", "cvt": "xu",
           "other": "issue"}
INSTR = ("fp32", "fp16x2", "int32", "sfu", "cvt", "other")

# Per score element of the online softmax (FA2 / Triton tutorial, exp2 domain):
#   FFMA s*scale - m, FMNMX row max, MUFU.EX2, FADD row sum, F2FP pack P to 16 bit (2 per instr).
SOFTMAX_FP16 = {"fp32": 3.0, "sfu": 1.0, "int32": 0.5}
# FP8: same, P packed to fp8 by F2FP (2 per instr).
SOFTMAX_FP8 = {"fp32": 3.0, "sfu": 1.0, "int32": 0.5}
# INT-FlashAttention: I2FP S, 2 FMUL (q_scale row x k_scale col), FFMA -m, FMNMX, MUFU.EX2,
# FADD, P quant: F2FP pack (0.5), HFMA2 p*127+0.5 (0.5), F2I.S8 (1, XU), PRMT pack (0.25).
SOFTMAX_INT8 = {"int32": 1.0 + 0.5 + 0.25, "fp32": 5.0, "sfu": 1.0, "fp16x2": 0.5, "cvt": 1.0}
# SageAttention v1: I2FP S, FFMA (block scale and -m folded), FMNMX, MUFU.EX2, FADD, F2FP.
SOFTMAX_SAGE = {"int32": 1.5, "fp32": 3.0, "sfu": 1.0}
# Per row per K/V tile: alpha = exp2(m_old - m_new) (1 MUFU), m/l updates (4 FP32); the
# accumulator rescale (Dv FMUL per row) is added by the builder.
ROW_TILE_EXP = {"sfu": 1.0, "fp32": 4.0}
# Causal mask on a cut tile: ISETP + FSEL per element.
MASK = {"int32": 1.0, "fp32": 1.0}


def sas_counts(degree: int) -> tuple[dict, dict]:
    """Per-element and per-row-tile counts of TurboAttention's SAS softmax on CUDA cores.

    Per element: I2FP S (int32), FFMA scale-and-shift, FMNMX (fp32), F2FP to fp16 (0.5 int32);
    in packed fp16x2 (each instr = 2 elements): magic-number floor, fraction, ``degree`` Horner
    HFMA2, LUT x poly HMUL2, threshold HSET2/select (``degree + 4`` per pair); LUT index
    shift/and and PRMT table lookup (1.5 int32); FADD row sum; P quant HFMA2 (0.5), F2I.S8 (XU),
    PRMT pack (0.25). No MUFU. Per row per tile alpha is SAS too (~degree + 4 FP16 ops)."""
    elem = {"int32": 1.0 + 0.5 + 1.5 + 0.25, "fp32": 3.0, "fp16x2": (degree + 4) / 2 + 0.5,
            "cvt": 1.0}
    row = {"fp16x2": float(degree + 4), "fp32": 4.0}
    return elem, row


class Launch:
    """Totals of one kernel launch (see module docstring)."""

    __slots__ = ("name", "ctas", "warps", "smem_cta", "regs", "tc", "instr", "mma", "hbm",
                 "l2", "smem", "max_share", "useful_tc", "reread", "serial", "program")

    def __init__(self, name, ctas, warps, smem_cta, regs):
        self.name, self.ctas, self.warps, self.smem_cta, self.regs = name, ctas, warps, smem_cta, regs
        self.tc: dict[str, float] = {}
        self.instr = dict.fromkeys(INSTR, 0.0)
        self.mma = 0.0
        self.hbm = self.l2 = self.smem = 0.0
        self.max_share = 1.0   # longest CTA / mean CTA (causal imbalance)
        self.useful_tc = 0.0
        # (K/V bytes re-read beyond the unique ones, bytes of one K/V stream, CTAs per stream):
        # model.py turns it into HBM traffic with the L2 reuse model.
        self.reread = (0.0, 0.0, 1)
        # (loop iterations of one CTA, load round trips per iteration, HBM share of the loads):
        # the CTA's dependent chain for latency-bound launches (``serial_chain``); None: unmodeled.
        self.serial = None
        # the kernel that runs and its CTAs' loop trips (sim.cost.calibrated.Program), priced
        # from its SASS at the calibrated tier; None: priced by the tiled formula there too
        self.program = None

    def add_tc(self, dtype: str, ops: float) -> None:
        self.tc[dtype] = self.tc.get(dtype, 0.0) + ops
        self.mma += ops / (8192.0 if dtype in ("int8", "fp8", "int4") else 4096.0)

    def add(self, counts: dict, times: float) -> None:
        ins = self.instr
        for k, c in counts.items():
            ins[k] += c * times


def tile_counts(q_len: int, kv_len: int, bm: int, bn: int, causal: bool):
    """(query blocks, K/V tiles summed over blocks, cut (masked) tiles, max tiles per block,
    visible (row, key) pairs) for one (batch, head).

    >>> tile_counts(128, 128, 64, 64, True)
    (2, 3, 2, 2, 8256)
    """
    nq = -(-q_len // bm)
    nkv = -(-kv_len // bn)
    if not causal:
        return nq, nq * nkv, 0, nkv, q_len * kv_len
    off = kv_len - q_len
    if nq <= 8:
        tiles = masked = tmax = 0
        for i in range(nq):
            r0, r1 = i * bm, min((i + 1) * bm, q_len) - 1
            vis = min(nkv, max(0, -(-(r1 + off + 1) // bn)))
            full = min(vis, max(0, (r0 + off + 1) // bn))
            tiles += vis
            masked += vis - full
            tmax = max(tmax, vis)
    else:  # same arithmetic, vectorized (sweeps must run >= 10k predictions/s)
        i = np.arange(nq, dtype=np.int64)
        r1 = np.minimum((i + 1) * bm, q_len) - 1
        vis = np.clip(-(-(r1 + off + 1) // bn), 0, nkv)
        full = np.minimum(vis, np.maximum(0, (i * bm + off + 1) // bn))
        tiles, masked, tmax = int(vis.sum()), int((vis - full).sum()), int(vis.max())
    # visible pairs: row i sees clamp(i + off + 1, 0, kv_len) keys
    lo = max(0, -off)                                   # first row that sees a key
    n = q_len - lo
    first, last = lo + off + 1, q_len - 1 + off + 1     # counts for rows lo .. q_len-1
    pairs = (first + last) * n // 2 if n > 0 else 0
    return nq, tiles, masked, tmax, pairs


def prefill_trips(cols: int, q_len: int, kv_len: int, bm: int, bn: int,
                  causal: bool) -> tuple:
    """Loop trips of every CTA of gpu/kernels/flash_fwd.py ``attn_fwd_kernel`` in launch order
    (grid ``(cdiv(q_len, bm), cols)``, ``program_id(0)`` fastest): ``(unmasked tiles, masked
    tiles)``, the kernel's two loops in program order. Causal grids run the longest row blocks
    first (the kernel reverses ``program_id(0)``); the masked loop covers the tiles the diagonal
    cuts and, without causality, the key tail past the last whole tile.

    >>> prefill_trips(1, 256, 256, 128, 64, True)
    ((2, 2), (0, 2))
    """
    nq = -(-q_len // bm)
    coff = kv_len - q_len
    per = []
    for pid in range(nq):
        pm = nq - 1 - pid if causal else pid
        start = pm * bm
        if causal:
            hi = min(start + bm + coff, kv_len)
            first = max(start + coff + 1, 0)
            full = max(min(min(first // bn, kv_len // bn) * bn, hi), 0)
        else:
            hi, full = kv_len, (kv_len // bn) * bn
        per.append((full // bn, max(0, -(-(hi - full) // bn))))
    return tuple(per) * cols


def _gluon_tiles(r0: int, rows: int, q_len: int, kv_len: int, bn: int,
                 causal: bool) -> tuple[int, int]:
    """(unmasked tiles, all tiles) of the ``rows`` query rows from ``r0`` (the sm_90 kernel's
    ``_tile_counts``, flash_fwd's split)."""
    if r0 >= q_len:
        return 0, 0
    coff = kv_len - q_len
    if causal:
        hi = min(r0 + rows + coff, kv_len)
        first = max(r0 + coff + 1, 0)
        full = max(min(min(first // bn, kv_len // bn) * bn, hi), 0)
        n_tot = -(-max(hi, 0) // bn)
    else:
        full, n_tot = (kv_len // bn) * bn, -(-kv_len // bn)
    return min(full // bn, n_tot), n_tot


def gluon_prefill_trips(cols: int, q_len: int, kv_len: int, bn: int, causal: bool, *,
                        merged: bool, one_loop: bool, unroll: bool) -> tuple:
    """Loop trips of every CTA of gpu/kernels/flash_fwd_sm90.py ``attn_fwd_sm90_kernel`` (grid
    ``(cdiv(q_len, 128), cols)``, causal grids longest rows first) for its consumer partition's
    loops in program order:

    * ``one_loop``: the tile loop (``n_tot`` trips; ``cdiv(n_tot, 2)`` when ``unroll``), then (two
      consumers) the release of stages loaded for the other consumer (``n_cta - n_tot``);
    * two loops: the unmasked loop after its two-tile prologue (``(n_full - 2) // 2`` trips
      unrolled, ``n_full - 2`` rolled; none when ``n_full < 2``), the remaining tiles one at a time
      (``n_tot - n_full``, all ``n_tot`` when ``n_full < 2``), then (two consumers) the release
      loop.

    Two 64-row consumers (not ``merged``) run one code path: the model runs both with the trips
    of the one with more tiles (the CTA ends with it).

    >>> gluon_prefill_trips(1, 256, 256, 64, True, merged=True, one_loop=True, unroll=False)
    ((4,), (2,))
    """
    nq = -(-q_len // 128)
    per = []
    for pid in range(nq):
        start = (nq - 1 - pid if causal else pid) * 128
        if merged:
            n_full, n_tot = _gluon_tiles(start, 128, q_len, kv_len, bn, causal)
            n_cta = n_tot
        else:
            parts = [_gluon_tiles(start + 64 * w, 64, q_len, kv_len, bn, causal) for w in (0, 1)]
            n_full, n_tot = max(parts, key=lambda t: (t[1], t[0]))
            n_cta = max(t[1] for t in parts)
        # merged: the consumer's tiles are the CTA's, so the release loop compiles away
        rel = () if merged else (n_cta - n_tot,)
        if one_loop:
            per.append((-(-n_tot // 2) if unroll else n_tot,) + rel)
        elif n_full >= 2:
            main = (n_full - 2) // 2 if unroll else n_full - 2
            per.append((main, n_tot - n_full) + rel)
        else:
            per.append((0, n_tot) + rel)
    return tuple(per) * cols


def _regs(bm: int, bn: int, d: int, dv: int, threads: int, q_bytes: float) -> int:
    # fp32 accumulator + fp32 score tile + Q fragment + ~40 for addresses, m, l, loop state.
    r = (bm * dv + bm * bn + bm * d * q_bytes / 4) / threads + 40
    return min(255, int(math.ceil(r / 8) * 8))


def flash(name: str, *, ctas_cols: int, kv_heads_total: int, group_cols: int, q_len: int,
          kv_len: int, bm: int, bn: int, d: int, causal: bool, qk: str, pv: str, qb: float,
          kb: float, vb: float, kv_row_extra: float, elem: dict, row_tile: dict,
          rows_real: int | None = None, ideal: bool = False, out_bytes: float = 2.0,
          extra_unique: float = 0.0, stages: int = 2, warps_split_keys: bool = False,
          warps: int | None = None, mix=None) -> Launch:
    """A FlashAttention-style forward: one CTA per (column, query block), K/V streamed in
    ``bn`` tiles through ``stages`` shared-memory buffers.

    ``ctas_cols``: (batch x heads) columns of CTAs; each owns ``q_len`` rows. ``group_cols``:
    columns that read the same K/V (GQA group, or 1); ``kv_heads_total`` = ctas_cols /
    group_cols K/V streams read once from HBM. ``qb, kb, vb``: bytes per element;
    ``kv_row_extra``: scale bytes per K/V row. ``rows_real``: useful rows of a CTA (decode
    packs a GQA group into one padded tile). ``warps``: warps per CTA (default: one per 32
    rows, at least 4). ``mix``: a :class:`.mixes.Mix` of SASS counts per thread per tile,
    which replaces ``elem``/``row_tile`` and the accumulator/epilogue counts of the loop."""
    dv = d
    warps = warps or max(4, bm // 32)
    threads = 32 * warps
    smem_cta = bm * d * qb + stages * bn * (d * kb + dv * vb + kv_row_extra)
    nq, tiles, masked, tmax, pairs = tile_counts(q_len, kv_len, bm, bn, causal)
    lau = Launch(name, ctas_cols * nq, warps, smem_cta, _regs(bm, bn, d, dv, threads, qb))
    rows = rows_real if rows_real is not None else q_len
    useful = ctas_cols * pairs * (rows / q_len if rows_real is not None else 1)
    lau.useful_tc = 2.0 * useful * (d + dv)
    kv_unique = kv_heads_total * kv_len * (d * kb + dv * vb + kv_row_extra)
    q_o_unique = ctas_cols * rows * (d * qb + dv * out_bytes)
    per_tile = None
    if mix is not None:
        # scores and accumulator elements one thread holds per K/V tile
        x = bm * bn / threads
        per_tile = mix.per_thread_tile(x, bm * dv / threads)
    if ideal:
        e = useful
        lau.add_tc(qk, 2.0 * e * d)
        lau.add_tc(pv, 2.0 * e * dv)
        if per_tile is not None:
            lau.add(per_tile, e / x)
            lau.mma = 0.0                       # the MMA instructions are in the mix's "other"
            lau.hbm = kv_unique + q_o_unique + extra_unique
            return lau
        lau.add(elem, e)
        lau.add(row_tile, e / bn)
        lau.instr["fp32"] += dv * e / bn        # acc rescale, per row per tile
        lau.hbm = kv_unique + q_o_unique + extra_unique
        return lau
    n_tiles = ctas_cols * tiles
    e = n_tiles * bm * bn
    lau.add_tc(qk, 2.0 * e * d)
    lau.add_tc(pv, 2.0 * e * dv)
    lau.add(MASK, ctas_cols * masked * bm * bn)
    # epilogue per CTA row: 1/l (MUFU.RCP), Dv FMUL, F2FP pack of O
    lau.add({"sfu": 1.0, "fp32": dv, "int32": dv / 2}, lau.ctas * bm)
    if per_tile is not None:
        lau.add(per_tile, n_tiles * threads)
        lau.mma = 0.0                            # the MMA instructions are in the mix's "other"
    else:
        lau.add(elem, e)
        lau.add(row_tile, n_tiles * bm)
        lau.instr["fp32"] += n_tiles * bm * dv   # acc *= alpha
        if pv == "int8":                         # int32 PV partials -> fp32 acc every tile
            lau.add({"int32": dv, "fp32": dv}, n_tiles * bm)
    kv_tile = bn * (d * kb + dv * vb + kv_row_extra)
    lau.l2 = lau.ctas * bm * d * qb + n_tiles * kv_tile + q_o_unique - ctas_cols * rows * d * qb
    # each warp reads the whole K/V tile (warps split rows) unless they split keys (decode)
    lau.smem = lau.ctas * 2 * bm * d * qb + n_tiles * kv_tile * (2 if warps_split_keys else 1 + warps)
    lau.max_share = tmax * nq / tiles if tiles else 1.0
    # HBM: unique traffic + K/V re-reads that miss L2 (set by model.l2_miss)
    lau.hbm = kv_unique + q_o_unique + extra_unique
    lau.reread = (max(0.0, n_tiles * kv_tile - kv_unique), kv_unique / kv_heads_total,
                  nq * group_cols)
    return lau


def _pad16(n: int) -> int:
    return max(16, -(-n // 16) * 16)


def _splits(cols: int, kv_len: int, bn: int, sm_count: int) -> int:
    """Split-K factor of flash-decode: enough CTAs for ~2 per SM, at least one tile each."""
    return max(1, min(-(-kv_len // bn), -(-2 * sm_count // cols)))


def _combine(cols_q: int, splits: int, dv: int) -> Launch:
    """Split-K reduction: read splits x (Dv fp32 partial + lse) per query row, write fp16 O."""
    lau = Launch("combine", max(1, cols_q // 4), 4, 0, 32)
    per_row = splits * (dv + 1) * 4
    lau.hbm = lau.l2 = cols_q * (per_row + dv * 2)
    lau.add({"sfu": splits, "fp32": splits * (dv + 3)}, cols_q)
    return lau


def decode(name: str, *, B: int, Hq: int, Hkv: int, q_len: int, kv_len: int, bn: int, d: int,
           qk: str, pv: str, qb: float, kb: float, vb: float, kv_row_extra: float, elem: dict,
           row_tile: dict, sm_count: int, ideal: bool, extra_unique: float = 0.0,
           per_kv_elem: dict | None = None, share_group: bool = True) -> list[Launch]:
    """Split-K flash-decode: one CTA per (batch, kv head, split) holding the GQA group's query
    rows padded to a 16-row MMA tile (``share_group=False``: one CTA per query head, for
    per-head token selections). ``per_kv_elem``: instructions per K/V element loaded (dequant)."""
    heads = Hkv if share_group else Hq
    rows = (Hq // Hkv) * q_len if share_group else q_len
    cols = B * heads
    s = 1 if ideal else _splits(cols, kv_len, bn, sm_count)
    kv_split = -(-kv_len // s)
    partial_bytes = 4.0 + 4.0 / d if s > 1 else 2.0
    lau = flash(name, ctas_cols=cols * s, kv_heads_total=cols * s, group_cols=1, q_len=rows,
                kv_len=kv_split, bm=_pad16(rows), bn=bn, d=d, causal=False, qk=qk, pv=pv, qb=qb,
                kb=kb, vb=vb, kv_row_extra=kv_row_extra, elem=elem, row_tile=row_tile,
                rows_real=rows, ideal=ideal, out_bytes=partial_bytes, extra_unique=extra_unique,
                warps_split_keys=True)
    if per_kv_elem:
        lau.add(per_kv_elem, cols * s * kv_split * 2 * d)
    out = [lau]
    if s > 1 and not ideal:
        out.append(_combine(B * Hq * q_len, s, d))
    return out


# ---- our Triton decode kernels (gpu/kernels/decode.py, gpu/kernels/labels.py) ---------------
def decode_sass(arch: str) -> dict:
    """The decode kernels' SASS tables of ``arch`` (``configs/kernels/<arch>/decode.yaml``, via
    :func:`sim.arch.kernel_data`): per kernel loop, instructions per thread per iteration by
    class, registers, shared memory and ``rounds`` (load round trips per iteration)."""
    doc = kernel_data(arch, "decode")
    return {k: v for k, v in doc.items() if k != "source"}


def default_splits(n_tiles: int, programs: int, sm_count: int, per_sm: int = 4) -> int:
    """gpu.decode.default_decode_launch: splits so that ~``per_sm`` programs run per SM.

    >>> default_splits(512, 256, 132)
    3
    """
    return max(1, min(n_tiles, -(-per_sm * sm_count // max(programs, 1))))


def load_latency_clk(hbm_share: float, clk_hz: float, l2_clk: float, hbm_ns: float) -> float:
    """Load latency in clocks when ``hbm_share`` of the bytes come from HBM, the rest from L2
    (``l2_clk``: an L2 hit in SM clocks; ``hbm_ns``: an HBM access; the hardware's idle
    latencies)."""
    hbm = hbm_ns * 1e-9 * clk_hz
    return l2_clk + hbm_share * max(0.0, hbm - l2_clk)


def serial_chain(lau: Launch, iters: float, rounds: float, hbm_share: float) -> None:
    """Record the per-CTA dependent chain: ``iters`` loop iterations, each waiting ``rounds``
    load round trips (model.py adds the CTA's own issue time per iteration)."""
    lau.serial = (float(iters), float(rounds), float(hbm_share))


def ours_flash_decode(name: str, *, B: int, Hq: int, Hkv: int, count: int, bn: int, d: int,
                      sm_count: int, gather: bool, sass: dict, per_sm: int = 4,
                      dot: bool = False) -> list[Launch]:
    """gpu.decode._flash_decode: ``flash_decode_kernel`` on grid (splits, B*Hq) -- one program
    per QUERY head and split, CUDA-core f32 products (no tl.dot), K/V of the head's KV head
    read by each of the G query heads (HBM once when the group's programs, adjacent in the grid,
    hit L2; L2->SM once per query head) -- then ``flash_combine_kernel`` (grid B*Hq, 1 warp),
    always launched. ``gather``: slot i reads key IDX[i] (double_sparse), the selections differ
    per head so every gathered row is unique HBM traffic; ``count`` slots per row. ``dot``
    (with gather): ``flash_decode_gather_kernel``, the same grid with tensor-core dots (M = 1
    padded to 16) and cp.async-pipelined gathers (table ``flash_decode_gather_dot``)."""
    programs = B * Hq
    nt = -(-count // bn)
    s = default_splits(nt, programs, sm_count, per_sm)
    sps = -(-nt // s) * bn
    s = -(-count // sps)
    iters = sps // bn
    mix = sass["flash_decode_gather_dot" if gather and dot else
               "flash_decode_gather" if gather else "flash_decode"]
    lau = Launch(name, s * programs, 4, mix["smem"], mix["regs"])
    tiles = programs * s * iters                 # every program walks full BN-slot tiles
    # per thread per tile x 128 threads; the table is the BN=64, D=128 compile, other tiles
    # scale by their elements per thread (an estimate, not a compile)
    lau.add(mix["instr"], tiles * 128 * bn * d / (64 * 128))
    row = 2 * d * 2                              # K + V bytes of one slot, fp16
    slots = programs * count
    idx = slots * 4 if gather else 0
    if gather:
        uniq = slots * row
    else:
        uniq = B * Hkv * count * row
    partial = programs * s * (d + 2) * 4
    lau.hbm = uniq + idx + programs * d * 2 + partial
    lau.l2 = slots * row + idx + programs * d * 2 + partial
    if gather and dot:
        lau.add_tc("fp16", 2 * 2.0 * 16 * bn * d * tiles)    # QK^T + PV, M = 1 padded to 16
        lau.mma = 0.0                            # the HMMA are in the mix's "other"
        lau.useful_tc = 2 * 2.0 * slots * d
        # cp.async keeps stages - 1 gathered tiles in flight (indices a stage ahead)
        serial_chain(lau, iters, mix["waits"] / (mix["stages"] - 1), uniq / (slots * row))
    else:
        lau.useful_tc = 0.0
        serial_chain(lau, iters, mix["rounds"], uniq / (slots * row))
    return [lau, _flash_combine(programs, s, d, partial)]


def _flash_combine(rows: int, s: int, d: int, partial: float) -> Launch:
    """``flash_combine_kernel`` over ``rows`` = B*Hq query rows of ``s`` splits (grid rows,
    1 warp), reading the ``partial`` bytes of m, l, acc and writing the fp16 output."""
    comb = Launch("combine", rows, 1, 0, 40)
    comb.hbm = comb.l2 = partial + rows * d * 2
    # per split: exp2 weight, D FMUL + FADD (acc), l; division per D
    comb.add({"sfu": s, "fp32": s * (2 * d + 3) + d}, rows)
    serial_chain(comb, 1, 2, 0.0)                     # m/l/acc vector loads, then the store
    return comb


def ours_flash_decode_group(name: str, *, B: int, Hq: int, Hkv: int, count: int, bn: int,
                            d: int, sm_count: int, sass: dict, per_sm: int = 4) -> list[Launch]:
    """gpu.decode._flash_decode (default, grouped): ``flash_decode_group_kernel`` on grid
    (splits, B*Hkv) -- one program per KV head and split holding the G = Hq/Hkv query heads
    padded to BG >= 16 rows, S = QK^T and PV by tl.dot on tensor cores (fp16, f32 accumulate),
    each K/V tile read once per KV head (HBM and L2->SM) -- then ``flash_combine_kernel`` (grid
    B*Hq, 1 warp) as :func:`ours_flash_decode`. Splits: gpu.decode's default over B*Hkv programs.

    >>> [l.ctas for l in ours_flash_decode_group("fd", B=8, Hq=32, Hkv=8, count=32768, bn=64,
    ...                                          d=128, sm_count=132, sass=decode_sass("hopper"))]
    [576, 256]
    """
    G = Hq // Hkv
    BG = max(16, 1 << (G - 1).bit_length())
    programs = B * Hkv
    nt = -(-count // bn)
    s = default_splits(nt, programs, sm_count, per_sm)
    sps = -(-nt // s) * bn
    s = -(-count // sps)
    iters = sps // bn
    mix = sass["flash_decode_group_bg16"]
    lau = Launch(name, s * programs, 4, mix["smem"] * bn * d / (64 * 128), mix["regs"])
    tiles = programs * s * iters                 # every program walks full BN-slot tiles
    # the table is the BG=16, BN=64, D=128 compile; other tiles scale by their elements per
    # thread (an estimate, not a compile)
    lau.add(mix["instr"], tiles * 128 * bn * d / (64 * 128) * (BG // 16))
    lau.add_tc("fp16", 2 * 2.0 * BG * bn * d * tiles)    # QK^T + PV over the padded rows
    lau.mma = 0.0                                # the HMMA are in the mix's "other"
    lau.useful_tc = 2 * 2.0 * B * Hq * count * d
    row = 2 * d * 2                              # K + V bytes of one slot, fp16
    uniq = programs * count * row
    partial = B * Hq * s * (d + 2) * 4
    lau.hbm = lau.l2 = uniq + B * Hq * d * 2 + partial
    # cp.async keeps stages - 1 tiles in flight: one wait per iteration on a tile issued
    # stages - 1 iterations earlier, i.e. 1 / (stages - 1) round trips per iteration
    serial_chain(lau, iters, mix["waits"] / (mix["stages"] - 1), 1.0)
    return [lau, _flash_combine(B * Hq, s, d, partial)]
