"""Gluon prefill forward for sm_90 (H100/H200), FA3 structure, same integers as ``flash_fwd.py``.

One program (CTA) owns 128 query rows of one (batch, query head) and runs three partitions
(``gl.warp_specialize``):

* producer (1 warp, few registers): TMA loads of the two 64-row Q halves once, then K/V tiles
  of ``BLOCK_N`` keys (and the tile's per-key K scales) into a ring of ``STAGES``
  shared-memory stages; ``ready[s]`` completes on
  the TMA byte count, ``empty[s]`` (count 2) when both consumers are done with the stage;
* two consumers (one warpgroup each, 64 rows each: default partition = rows 0..63, worker =
  rows 64..127). They share every K/V stage (one L2 read of K/V per 128 rows) and run
  unsynchronised with each other, so one consumer's wgmma overlaps the other's softmax.

Per consumer, the main (unmasked) loop is software pipelined and unrolled twice (two score
register sets, so the in-flight ``S`` never aliases the one the softmax reads; ``UNROLL=False``
keeps one step per iteration: half the code, S copied at the back edge, compile-checked only):
``QK(j+1)`` is issued async before the softmax of tile j and ``PV(j)`` after it; both are
waited at the end of the step, so nothing is in flight across the loop's back edge (ptxas
serializes every wgmma of the kernel, C7512, when an accumulator stays in flight across it).
``DEFER_PV`` (default off) is FA3's intra-warpgroup order instead: ``PV(j-1)`` and ``QK(j+1)``
are both issued before softmax(j) and waited after it. It is exact but, for int8 at D = 128,
needs more than the 240 registers of a consumer (ptxas spills ~1 KB) and measured slower;
fp16 fits (measured 2.5% faster at the main shape). Tiles that need masks (causal diagonal,
partial last tile) run afterwards one at a time, synchronously.

Per-key K scales (int8_flash, ``K_GROUP == 1``) come with each K tile through TMA into a
shared-memory ring (``ks_desc``) and are read with 4 LDS.128 per tile. Row maxima (exact in
any order) and, with K_PERM, row sums are reduced as trees rather than one dependent chain.

Numerics: docs/numerics.md, operation by operation as ``flash_fwd.attn_fwd_kernel`` (launch
with ``enable_fp_fusion=False``): integer path ``S_int`` int32 wgmma, ``s = (f32(S_int) * qf) *
ks``, ``m_new = max(m, rowmax(s))``, ``p = EXP(s - m_new)``, ``alpha = EXP(m - m_new)``, P codes
by the same PQUANT (``P_MODE`` 1: fp16 half_up, packed fp16x2 asm; 2: fp32 half_even; 0:
generic), ``O_int = P8 @ V8`` int32 wgmma, ``acc = acc * alpha + f32(O_int) * vf``, ``l = l *
alpha + rowsum``, ``out = acc / l``. f32(int) is ``I2FP.F32.S32`` (exact: |S_int| <= D * 127^2
and |O_int| <= BLOCK_N * 127^2 are below 2^24; one ALU instruction, where the magic-number
trick of ``sas.i2f_exact`` costs two issue slots). fp16 path: ``S = dot(q, k^T)`` f32, ``s = S *
qk_scale``, ``acc = acc * alpha`` then ``acc += dot(f16(p), v)`` inside the wgmma (the dot's
summation order is free in the contract).

``K_PERM`` (integer path): K tiles are loaded by a 5-D TMA box that stores key ``16 b + 4 t +
2 a + e`` at shared row ``16 b + 8 a + 2 t + e``. Score column c of the wgmma accumulator then
holds key ``kidx(c)``, and relabelling the columns back (a reshape/permute that moves no data)
puts every thread's P values exactly where the int8 A-operand fragment of the PV wgmma wants
them: P goes from the accumulator registers to the DotOperandLayout with no shuffle and no
shared memory (the int8 accumulator and A-fragment layouts differ, unlike fp16's). The f32 row
sum then adds a row's values in another order than ``flash_fwd`` (free per the contract), so
outputs may differ in the last bit; S_int, P codes and O_int do not. Needs Lk % 16 == 0.

Fast variants (constexpr, default off; the simulator implements the same arithmetic):
``FMA_SCORES``: ``t = f32(S_int) * ks``, ``m_new = max(m, qf * rowmax(t))``, ``x = fma(t, qf,
-m_new)``. ``P_FMA``: code = ``fma(p, levels, 1.5 * 2^23) - 1.5 * 2^23`` (round-half-even of the
exact product), rowsum of unquantized p. ``V_DEFERRED`` (V scale per head): ``acc = fma(acc,
alpha, f32(O_int))``, ``out = (acc * vf) / l``. ``SKIP_RESCALE``: ``acc * alpha`` is skipped
when every row of the warpgroup has ``alpha == 1`` (bit-identical: x * 1 == x).
``SAS_FAST``: :func:`_sas_exp2_fast`, an exact cheaper sequence for SAS (proof by exhaustive
comparison in benchmarks/gluon_prefill_notes.md).

``TRACE`` writes S (int32 / f32), P (int8 codes / f32 p) and O_int like ``flash_fwd`` (layouts
``[B, Hq, Lq, Lk]`` and ``[B, Hq, NT, Lq, D]``) for the tiles a consumer visits.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

_MAGIC = gl.constexpr(12582912.0)  # 1.5 * 2^23
ROWS = gl.constexpr(64)            # query rows per consumer warpgroup (one wgmma M)

# PQUANT fp16 half_up on packed fp16x2 (same sequence as flash_fwd._p_codes_fp16_half_up):
# t = f16(p); t2 = f16(t * 127); t3 = f16(t2 + 0.5); c = f16(t3 + 1024) = 1024 + rint(t3);
# code = trunc(t3) = (c - 1024) - ((c - 1024) > t3); low byte of c - (k > t3) = code.
_PQ_FP16_ASM = gl.constexpr(
    "{\n"
    ".reg .b32 a, b, ca, cb, ka, kb, lv, hf, mg;\n"
    "mov.b32 lv, 0x57F057F0;\n"
    "mov.b32 hf, 0x38003800;\n"
    "mov.b32 mg, 0x64006400;\n"
    "cvt.rn.f16x2.f32 a, $2, $1;\n"
    "cvt.rn.f16x2.f32 b, $4, $3;\n"
    "mul.rn.f16x2 a, a, lv;\n"
    "mul.rn.f16x2 b, b, lv;\n"
    "add.rn.f16x2 a, a, hf;\n"
    "add.rn.f16x2 b, b, hf;\n"
    "add.rn.f16x2 ca, a, mg;\n"
    "add.rn.f16x2 cb, b, mg;\n"
    "sub.rn.f16x2 ka, ca, mg;\n"
    "sub.rn.f16x2 kb, cb, mg;\n"
    "set.gt.f16x2.f16x2 ka, ka, a;\n"
    "set.gt.f16x2.f16x2 kb, kb, b;\n"
    "sub.rn.f16x2 ca, ca, ka;\n"
    "sub.rn.f16x2 cb, cb, kb;\n"
    "prmt.b32 $0, ca, cb, 0x6420;\n"
    "}")

# P_FMA: four codes, each the low byte of fma(p, levels, 1.5 * 2^23) (bits 0x4B400000 + code).
_PQ_FMA_ASM = gl.constexpr(
    "{\n"
    ".reg .b32 a, b, c, d, lv, mg;\n"
    "mov.b32 lv, 0x42FE0000;\n"
    "mov.b32 mg, 0x4B400000;\n"
    "fma.rn.f32 a, $1, lv, mg;\n"
    "fma.rn.f32 b, $2, lv, mg;\n"
    "fma.rn.f32 c, $3, lv, mg;\n"
    "fma.rn.f32 d, $4, lv, mg;\n"
    "prmt.b32 a, a, b, 0x0040;\n"
    "prmt.b32 c, c, d, 0x0040;\n"
    "prmt.b32 $0, a, c, 0x5410;\n"
    "}")


@gluon.constexpr_function
def _sas_fast_asm(threshold, lut_entries, c0, c1, c2, c3, degree):
    """PTX of :func:`_sas_exp2_fast` for two scores (operands $2, $3 = y >= 0 or +inf; $0, $1 = p).

    Per score y = m - s (the exact negation of x = s - m):
      keep = y <= -THRESHOLD (x >= THRESHOLD), or y < LUT_ENTRIES when that is the tighter
             bound (floor(y) < LUT_ENTRIES <=> y < LUT_ENTRIES); dropped scores take y = 127;
      t    = f32 add of y and 2^23 rounded toward -inf = 2^23 + floor(y) (0 <= y < 2^23: the
             result lies in [2^23, 2^24) where f32 spacing is 1, and RM rounding is the floor);
      n    = t - 2^23 (exact), f = f16(y - n) (y - n exact, Sterbenz), as sas.sas_poly;
      poly = Horner with fma.rn.f16x2 (one rounding per step, both scores at once);
      p    = f32(poly) * 2^-n, exact, as the integer bits(f32(poly)) - (n << 23) (mod 2^32)
             = bits(poly) - (bits(t) << 23) (2^23 << 23 vanishes mod 2^32): one integer
             multiply-add subtracts n from the exponent field (poly > 0 and the product stays
             normal: poly >= 2^(lut_entries - 15), which check_prefill_spec enforces); a dropped
             score has y = 127, n = 127, f = 0, poly = c0 = 1 = 2^0 and so bits 0 = +0.0
             (needs c0 == 1, the contract's; other c0 raise).
    f16(LUT[n] * poly) is skipped as in sas.sas_exp2 (exact when lut_entries <= 13, which the
    launcher checks, as gpu.ops.check_prefill_spec)."""
    import struct

    def _f16_bits(x):
        return struct.unpack("<H", struct.pack("<e", float(x)))[0]

    def _f32_bits(x):
        return struct.unpack("<I", struct.pack("<f", float(x)))[0]

    lut = int(lut_entries)
    thr = float(threshold)
    if float(c0) != 1.0:
        raise ValueError("SAS_FAST: needs c0 == 1 (the dropped scores' bits)")
    if lut <= -thr:
        keep = f"setp.lt.f32 k0, $2, 0f{_f32_bits(float(lut)):08X};\n" \
               f"setp.lt.f32 k1, $3, 0f{_f32_bits(float(lut)):08X};\n"
    else:
        keep = f"setp.le.f32 k0, $2, 0f{_f32_bits(-thr):08X};\n" \
               f"setp.le.f32 k1, $3, 0f{_f32_bits(-thr):08X};\n"
    cs = [_f16_bits(c) for c in (c0, c1, c2, c3)]
    if int(degree) == 3:
        horner = (f"mov.b32 c, 0x{cs[3] * 0x10001:08X};\n"
                  f"mov.b32 d, 0x{cs[2] * 0x10001:08X};\n"
                  "fma.rn.f16x2 q, c, h, d;\n")
    else:
        horner = f"mov.b32 q, 0x{cs[2] * 0x10001:08X};\n"
    horner += (f"mov.b32 c, 0x{cs[1] * 0x10001:08X};\n"
               "fma.rn.f16x2 q, q, h, c;\n"
               f"mov.b32 c, 0x{cs[0] * 0x10001:08X};\n"
               "fma.rn.f16x2 q, q, h, c;\n")
    return ("{\n"
            ".reg .pred k0, k1;\n"
            ".reg .b32 y0, y1, t0, t1, n0, n1, f0, f1, h, q, c, d;\n"
            ".reg .b16 ql, qh;\n"
            + keep +
            "selp.f32 y0, $2, 0f42FE0000, k0;\n"
            "selp.f32 y1, $3, 0f42FE0000, k1;\n"
            "add.rm.f32 t0, y0, 0f4B000000;\n"
            "add.rm.f32 t1, y1, 0f4B000000;\n"
            "sub.f32 n0, t0, 0f4B000000;\n"
            "sub.f32 n1, t1, 0f4B000000;\n"
            "sub.f32 f0, y0, n0;\n"
            "sub.f32 f1, y1, n1;\n"
            "cvt.rn.f16x2.f32 h, f1, f0;\n"
            + horner +
            "mov.b32 {ql, qh}, q;\n"
            "cvt.f32.f16 f0, ql;\n"
            "cvt.f32.f16 f1, qh;\n"
            "mad.lo.u32 f0, t0, 0xFF800000, f0;\n"
            "mad.lo.u32 f1, t1, 0xFF800000, f1;\n"
            "mov.b32 $0, f0;\n"
            "mov.b32 $1, f1;\n"
            "}")


# ---------------------------------------------------------------------------------------------
# elementwise helpers
# ---------------------------------------------------------------------------------------------
@gluon.jit
def _sas_exp2_fast(y, THRESHOLD: gl.constexpr, LUT_ENTRIES: gl.constexpr, C0: gl.constexpr,
                   C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr, DEGREE: gl.constexpr):
    """SAS p = 2^-y for f32 y = m - s >= 0 (+inf allowed), bit-identical to sas.sas_exp2(-y)
    with fp16 polynomial arithmetic (see :func:`_sas_fast_asm`)."""
    return gl.inline_asm_elementwise(
        _sas_fast_asm(THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE),
        "=f,=f,f,f", [y], dtype=gl.float32, is_pure=True, pack=2)


@gluon.jit
def _fma16(a, b, c):
    return gl.fma(a, b, c)


@gluon.jit
def _sas_poly(y, C0: gl.constexpr, C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr,
              DEGREE: gl.constexpr, POLY_FP16: gl.constexpr):
    """(n, poly(f)) for f32 y >= 0 finite: as sas.sas_poly (floor, exact frac, Horner)."""
    nf = gl.floor(y)
    frac = y - nf
    if POLY_FP16:
        f = frac.to(gl.float16)
        if DEGREE == 3:
            poly = gl.full(y.shape, C3, gl.float16, y.type.layout)
            poly = gl.fma(poly, f, gl.full(y.shape, C2, gl.float16, y.type.layout))
        else:
            poly = gl.full(y.shape, C2, gl.float16, y.type.layout)
        poly = gl.fma(poly, f, gl.full(y.shape, C1, gl.float16, y.type.layout))
        poly = gl.fma(poly, f, gl.full(y.shape, C0, gl.float16, y.type.layout))
        polyf = poly.to(gl.float32)
    else:
        if DEGREE == 3:
            polyf = gl.fma(gl.full(y.shape, C3, gl.float32, y.type.layout), frac,
                           gl.full(y.shape, C2, gl.float32, y.type.layout))
        else:
            polyf = gl.full(y.shape, C2, gl.float32, y.type.layout)
        polyf = gl.fma(polyf, frac, gl.full(y.shape, C1, gl.float32, y.type.layout))
        polyf = gl.fma(polyf, frac, gl.full(y.shape, C0, gl.float32, y.type.layout))
    return nf.to(gl.int32), polyf


@gluon.jit
def _pow2_neg(n):
    return ((127 - n) << 23).to(gl.float32, bitcast=True)


@gluon.jit
def _sas_exp2_ref(x, THRESHOLD: gl.constexpr, LUT_ENTRIES: gl.constexpr, C0: gl.constexpr,
                  C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr, DEGREE: gl.constexpr,
                  POLY_FP16: gl.constexpr):
    """sas.sas_exp2 step by step (the portable kernel's sequence)."""
    keep = x >= THRESHOLD
    y = gl.where(keep, -x, 0.0)
    n, poly = _sas_poly(y, C0, C1, C2, C3, DEGREE, POLY_FP16)
    if LUT_ENTRIES <= -THRESHOLD:
        keep = keep & (n < LUT_ENTRIES)
        n = gl.minimum(n, LUT_ENTRIES - 1)
    p = poly * _pow2_neg(n)
    if POLY_FP16 and (LUT_ENTRIES > 13):
        p = p.to(gl.float16).to(gl.float32)
    return gl.where(keep, p, 0.0)


@gluon.jit
def _sas_rescale(x, C0: gl.constexpr, C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr,
                 DEGREE: gl.constexpr, POLY_FP16: gl.constexpr):
    """alpha under SAS (sas.sas_rescale): no threshold or LUT limit, -inf -> 0, n capped 2^20."""
    fin = x > -3.0e38
    y = gl.minimum(gl.where(fin, -x, 0.0), 1048576.0)
    n, poly = _sas_poly(y, C0, C1, C2, C3, DEGREE, POLY_FP16)
    n1 = gl.minimum(n, 126)
    n2 = gl.minimum(n - n1, 126)
    a = poly * _pow2_neg(n1)
    a = gl.where(n - n1 > 126, 0.0, a * _pow2_neg(n2))
    return gl.where(fin, a, 0.0)


@gluon.jit
def _round_f32(y, MODE: gl.constexpr):
    """rounding.round_f32: 0 half_even, 1 half_away, 2 half_up, 3 floor, 4 toward_zero."""
    if MODE == 0:
        r = (y + _MAGIC) - _MAGIC
    elif MODE == 1:
        r = (y + gl.where(y >= 0, 0.5, -0.5)).to(gl.int32).to(gl.float32)
    elif MODE == 2:
        r = (y + 0.5).to(gl.int32).to(gl.float32)
    elif MODE == 3:
        r = gl.floor(y)
    else:
        r = y.to(gl.int32).to(gl.float32)
    return r


@gluon.jit
def _p_codes(p, LEVELS: gl.constexpr, P_FP16: gl.constexpr, P_ROUNDING: gl.constexpr,
             P_SATURATE: gl.constexpr):
    """Generic PQUANT (flash_fwd._p_codes): integer-valued f32 code."""
    if P_FP16:
        t = p.to(gl.float16).to(gl.float32)
        t = (t * LEVELS).to(gl.float16).to(gl.float32)
        if (P_ROUNDING == 1) or (P_ROUNDING == 2):
            r = (t + 0.5).to(gl.float16).to(gl.float32).to(gl.int32).to(gl.float32)
        else:
            r = _round_f32(t, P_ROUNDING)
    else:
        r = _round_f32(p * LEVELS, P_ROUNDING)
    if P_SATURATE:
        r = gl.minimum(gl.maximum(r, 0.0), LEVELS * 1.0)
    return r


@gluon.jit
def _relabel(x, BLOCK_N: gl.constexpr):
    """Columns in K_PERM shared order -> natural key order: element (r, 16b + 8a + 2t + e) of x
    is element (r, 16b + 4t + 2a + e) of the result. A relabelling only: no data moves."""
    R: gl.constexpr = x.shape[0]
    x5 = gl.reshape(x, [R, BLOCK_N // 16, 2, 4, 2])
    return gl.reshape(gl.permute(x5, [0, 1, 3, 2, 4]), [R, BLOCK_N])


@gluon.jit
def _relabel1d(x, BLOCK_N: gl.constexpr):
    """1-D :func:`_relabel` (score column order -> natural key order)."""
    x4 = gl.reshape(x, [BLOCK_N // 16, 2, 4, 2])
    return gl.reshape(gl.permute(x4, [0, 2, 1, 3]), [BLOCK_N])


@gluon.jit
def _unrelabel1d(x, BLOCK_N: gl.constexpr):
    """Inverse of :func:`_relabel1d`: natural key order -> score column order."""
    x4 = gl.reshape(x, [BLOCK_N // 16, 4, 2, 2])
    return gl.reshape(gl.permute(x4, [0, 2, 1, 3]), [BLOCK_N])


@gluon.jit
def _rowmax(s, BLOCK_N: gl.constexpr):
    """Row maximum as a tree (max is exact in any order): a thread's BLOCK_N / 4 values of a
    row (columns 8 j + 2 t + e) reduce as 4 independent chains, then across, then over the
    quad by shuffles, instead of one chain of BLOCK_N / 4 - 1 dependent FMNMX."""
    R: gl.constexpr = s.shape[0]
    s4 = gl.reshape(s, [R, 2, BLOCK_N // 16, 8])
    m = gl.max(gl.max(gl.max(s4, 2), 1), 1)
    return gl.convert_layout(m, gl.SliceLayout(1, s.type.layout))


@gluon.jit
def _rowsum(p, BLOCK_N: gl.constexpr, TREE: gl.constexpr):
    """Row sum of p: as a tree like :func:`_rowmax` (TREE; f32 order differs from a plain
    gl.sum, which the contract allows: rowsum order is free) or gl.sum's order."""
    if TREE:
        R: gl.constexpr = p.shape[0]
        p4 = gl.reshape(p, [R, 2, BLOCK_N // 16, 8])
        r = gl.sum(gl.sum(gl.sum(p4, 2), 1), 1)
        r = gl.convert_layout(r, gl.SliceLayout(1, p.type.layout))
    else:
        r = gl.sum(p, 1)
    return r


@gluon.jit
def _load_ks_smem(ks_smem, st, kidx, BLOCK_N: gl.constexpr, K_PERM: gl.constexpr):
    """Per-key K scales of the tile in stage ``st`` (TMA-loaded by the producer) in the score
    column order: with K_PERM the natural-order row is loaded in the layout that the inverse
    relabelling maps onto the score columns' slice layout (4 contiguous floats per thread)."""
    ks_l: gl.constexpr = kidx.type.layout  # SliceLayout(0, score layout)
    if K_PERM:
        tmp = _relabel1d(gl.arange(0, BLOCK_N, layout=ks_l), BLOCK_N)
        nat_l: gl.constexpr = tmp.type.layout
        ks = _unrelabel1d(ks_smem.index(st).load(nat_l), BLOCK_N)
    else:
        ks = ks_smem.index(st).load(ks_l)
    return gl.convert_layout(ks, ks_l)


@gluon.jit
def _mask(s, start_n, kidx, rows, Lk, coff, CAUSAL: gl.constexpr):
    """-inf at keys beyond Lk and, causal, at keys a row may not see (j > i + Lk - Lq)."""
    kcol = start_n + kidx
    valid = (kcol < Lk)[None, :]
    if CAUSAL:
        valid = valid & (kcol[None, :] <= rows[:, None] + coff)
    return gl.where(valid, s, float("-inf"))


# ---------------------------------------------------------------------------------------------
# one key tile: scores -> P (operand of the PV wgmma), alpha, m, l
# ---------------------------------------------------------------------------------------------
@gluon.jit
def _softmax(S, j, m_i, l_i, qf, ks, kidx, rows, Lq, Lk, coff, qk_scale, TSb, TPb, n_full,
             BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, INT8: gl.constexpr,
             CAUSAL: gl.constexpr, MASKED: gl.constexpr, KS_VEC: gl.constexpr,
             KS_SMEM: gl.constexpr, LEVELS: gl.constexpr, P_FP16: gl.constexpr,
             P_ROUNDING: gl.constexpr,
             P_SATURATE: gl.constexpr, ROWSUM_Q: gl.constexpr, P_MODE: gl.constexpr,
             SAS: gl.constexpr, THRESHOLD: gl.constexpr, LUT_ENTRIES: gl.constexpr,
             C0: gl.constexpr, C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr,
             DEGREE: gl.constexpr, POLY_FP16: gl.constexpr, SAS_FAST: gl.constexpr,
             K_PERM: gl.constexpr, FMA_SCORES: gl.constexpr, P_FMA: gl.constexpr,
             TRACE: gl.constexpr, ABLATE: gl.constexpr = 0):
    KI: gl.constexpr = 32 if INT8 else 16
    s_l: gl.constexpr = S.type.layout
    o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0],
                                                  warps_per_cta=s_l.warps_per_cta,
                                                  instr_shape=[16, HEAD_D, KI])
    p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=4 if INT8 else 2)
    start_n = j * BLOCK_N
    if ABLATE >= 1:  # timing only: no softmax, P = low byte of S_int
        if K_PERM:
            p8 = _relabel(S.to(gl.int8), BLOCK_N)
        else:
            p8 = S.to(gl.int8)
        one = gl.full([S.shape[0]], 1.0, gl.float32, gl.SliceLayout(1, o_l))
        return gl.convert_layout(p8, p_l), one, m_i, l_i + 1.0
    if INT8:
        sf = S.to(gl.float32)  # I2FP.F32.S32, exact (|S_int| < 2^24)
        if KS_VEC:
            ksb = ks[None, :]
        else:
            ksb = ks
        if FMA_SCORES:
            s = sf * ksb
        else:
            s = (sf * qf[:, None]) * ksb
    else:
        s = S * qk_scale
    if MASKED == 1:
        s = _mask(s, start_n, kidx, rows, Lk, coff, CAUSAL)
    elif MASKED == 2:  # mask the tiles from n_full on (a uniform branch around the selects)
        if j >= n_full:
            s = _mask(s, start_n, kidx, rows, Lk, coff, CAUSAL)
    if FMA_SCORES and INT8:
        m_new = gl.maximum(m_i, qf * _rowmax(s, BLOCK_N))  # exact: rounding is monotone, qf > 0
    else:
        m_new = gl.maximum(m_i, _rowmax(s, BLOCK_N))
    if MASKED != 0:
        m_sub = gl.where(m_new == float("-inf"), 0.0, m_new)  # row saw no key yet: p = 0
    else:
        m_sub = m_new
    if SAS:
        if SAS_FAST and POLY_FP16:
            if FMA_SCORES and INT8:
                y = gl.fma(-s, qf[:, None], m_sub[:, None])  # = -fma(s, qf, -m) exactly
            else:
                y = m_sub[:, None] - s                         # = -(s - m) exactly
            p = _sas_exp2_fast(y, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE)
        else:
            if FMA_SCORES and INT8:
                x = gl.fma(s, qf[:, None], -m_sub[:, None])
            else:
                x = s - m_sub[:, None]
            p = _sas_exp2_ref(x, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16)
        alpha = _sas_rescale(m_i - m_sub, C0, C1, C2, C3, DEGREE, POLY_FP16)
    else:
        if FMA_SCORES and INT8:
            x = gl.fma(s, qf[:, None], -m_sub[:, None])
        else:
            x = s - m_sub[:, None]
        p = gl.exp2(x)
        alpha = gl.exp2(m_i - m_sub)
    if INT8:
        if P_FMA or (P_MODE == 1):
            psum = _rowsum(p, BLOCK_N, K_PERM)  # K_PERM reorders the row anyway
            if K_PERM:
                pq = gl.convert_layout(_relabel(p, BLOCK_N), p_l)
            else:
                pq = p
            if P_FMA:
                p8 = gl.inline_asm_elementwise(_PQ_FMA_ASM, "=r,f,f,f,f", [pq], dtype=gl.int8,
                                               is_pure=True, pack=4)
            else:
                p8 = gl.inline_asm_elementwise(_PQ_FP16_ASM, "=r,f,f,f,f", [pq], dtype=gl.int8,
                                               is_pure=True, pack=4)
        else:
            if P_MODE == 2:
                yq = (p * LEVELS) + _MAGIC
                code = yq - _MAGIC
                p8 = yq.to(gl.int32, bitcast=True).to(gl.int8)
            else:
                code = _p_codes(p, LEVELS, P_FP16, P_ROUNDING, P_SATURATE)
                p8 = code.to(gl.int32).to(gl.int8)
            if ROWSUM_Q:
                psum = gl.sum(gl.div_rn(code, gl.full(code.shape, LEVELS * 1.0, gl.float32,
                                                      s_l)), 1)
            else:
                psum = gl.sum(p, 1)
            if K_PERM:
                p8 = _relabel(p8, BLOCK_N)
        pop = gl.convert_layout(p8, p_l)
    else:
        psum = gl.sum(p, 1)
        pop = gl.convert_layout(p.to(gl.float16), p_l)
    l_i = l_i * alpha + psum
    if TRACE:
        if K_PERM:
            St = _relabel(S, BLOCK_N)
        elif INT8:
            St = S
        else:
            St = S * qk_scale  # the simulator's s (scaled, unmasked)
        t_l: gl.constexpr = St.type.layout
        tr = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, t_l))
        trow = gl.convert_layout(rows, gl.SliceLayout(1, t_l))
        tmask = (trow[:, None] < Lq) & (tr[None, :] < Lk)
        gl.store(TSb + trow[:, None] * Lk + tr[None, :], St, mask=tmask)
        if INT8:
            pr = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, p_l))
            prow = gl.convert_layout(rows, gl.SliceLayout(1, p_l))
            gl.store(TPb + prow[:, None] * Lk + pr[None, :], pop,
                     mask=(prow[:, None] < Lq) & (pr[None, :] < Lk))
        else:
            p_t = gl.convert_layout(p, t_l)
            gl.store(TPb + trow[:, None] * Lk + tr[None, :], p_t, mask=tmask)
    return pop, gl.convert_layout(alpha, gl.SliceLayout(1, o_l)), m_new, l_i


@gluon.jit
def _acc_int(acc, O, alpha_o, vf, jt, rows_o, Lq, TOb,
             HEAD_D: gl.constexpr, V_DEFERRED: gl.constexpr, SKIP_RESCALE: gl.constexpr,
             TRACE: gl.constexpr, ABLATE: gl.constexpr = 0):
    """acc = acc * alpha + f32(O_int) * vf (three roundings), or fma(acc, alpha, f32(O_int))."""
    if TRACE:
        o_l: gl.constexpr = O.type.layout
        d = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, o_l))
        gl.store(TOb + (jt * Lq + rows_o[:, None]) * HEAD_D + d[None, :], O,
                 mask=rows_o[:, None] < Lq)
    of = O.to(gl.float32)
    if ABLATE == 2:  # timing only: the combine reduced to one add
        acc = acc + of
    elif V_DEFERRED:
        acc = gl.fma(acc, alpha_o[:, None], of)
    else:
        t2 = of * vf
        if SKIP_RESCALE:
            ones = gl.min(gl.where(alpha_o == 1.0, 1, 0), 0)
            if ones == 1:
                acc = acc + t2
            else:
                acc = acc * alpha_o[:, None] + t2
        else:
            acc = acc * alpha_o[:, None] + t2
    return acc


@gluon.jit
def _load_ks(KSb, j, kidx, Lk, BLOCK_N: gl.constexpr, K_GROUP: gl.constexpr,
             KS_VEC: gl.constexpr, MASKED: gl.constexpr):
    """K scale of tile j: one per key (vector in the score column order) or one per tile."""
    if KS_VEC:
        kcol = j * BLOCK_N + kidx
        if K_GROUP == 1:
            koff = kcol
        else:
            koff = kcol // K_GROUP
        if MASKED:
            ks = gl.load(KSb + koff, mask=kcol < Lk, other=1.0)
        else:
            ks = gl.load(KSb + koff)
    else:
        if K_GROUP == 0:
            ks = gl.load(KSb)
        else:
            ks = gl.load(KSb + (j * BLOCK_N) // K_GROUP)
    return ks


@gluon.jit
def _load_vf(VSb, j, vf_head, LEVELS: gl.constexpr, BLOCK_N: gl.constexpr,
             V_GROUP: gl.constexpr):
    if V_GROUP == 0:
        vf = vf_head
    else:
        vs = gl.load(VSb + (j * BLOCK_N) // V_GROUP)
        vf = gl.div_rn(vs, gl.to_tensor(LEVELS * 1.0))
    return vf


# ---------------------------------------------------------------------------------------------
# consumer warpgroup
# ---------------------------------------------------------------------------------------------
@gluon.jit
def _k_tile(k_smem, s, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, K_PERM: gl.constexpr):
    """K stage s as the [HEAD_D, BLOCK_N] B operand of QK^T."""
    return k_smem.index(s).permute((1, 0))


@gluon.jit
def _v_tile(v_smem, s, INT8: gl.constexpr):
    """V stage s as the [BLOCK_N, HEAD_D] B operand of PV (int8: stored [D, BN], K-major)."""
    if INT8:
        r = v_smem.index(s).permute((1, 0))
    else:
        r = v_smem.index(s)
    return r


@gluon.jit
def _tile_counts(r0, Lq, Lk, coff, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
                 NR: gl.constexpr = 64):
    """(unmasked tiles, all tiles) for the NR rows r0.. of a consumer (flash_fwd's split)."""
    if CAUSAL:
        hi = gl.minimum(r0 + NR + coff, Lk)
        first_vis = gl.maximum(r0 + coff + 1, 0)
        full = gl.minimum(first_vis // BLOCK_N, Lk // BLOCK_N) * BLOCK_N
        full = gl.maximum(gl.minimum(full, hi), 0)
        n_tot = gl.cdiv(gl.maximum(hi, 0), BLOCK_N)
    else:
        full = (Lk // BLOCK_N) * BLOCK_N
        n_tot = gl.cdiv(Lk, BLOCK_N)
    n_tot = gl.where(r0 < Lq, n_tot, 0)
    n_full = gl.minimum(full // BLOCK_N, n_tot)
    return n_full, n_tot


@gluon.jit
def _cta_tiles(start_m, Lq, Lk, coff, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
               CW: gl.constexpr):
    """K/V tiles the producer loads for a CTA: the most any consumer of it visits (two
    64-row consumers, or one 128-row consumer when CW == 8)."""
    if CW == 8:
        nf, n = _tile_counts(start_m, Lq, Lk, coff, BLOCK_N, CAUSAL, 128)
    else:
        n0f, n0 = _tile_counts(start_m, Lq, Lk, coff, BLOCK_N, CAUSAL, 64)
        n1f, n1 = _tile_counts(start_m + 64, Lq, Lk, coff, BLOCK_N, CAUSAL, 64)
        n = gl.maximum(n0, n1)
    return n


@gluon.jit
def _consumer(WG: gl.constexpr, CW: gl.constexpr, q_smem, k_smem, v_smem, ks_smem, ready, empty, q_bar,
              QS, KS, VS, Out, TS, TP, TO, qk_scale, sob, soh, som,
              b, h, bh, bhk, Lq, Lk, NQS, NKS, NVS, NT, start_m,
              HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, INT8: gl.constexpr,
              CAUSAL: gl.constexpr, Q_GROUP: gl.constexpr, K_GROUP: gl.constexpr,
              V_GROUP: gl.constexpr, LEVELS: gl.constexpr, P_FP16: gl.constexpr,
              P_ROUNDING: gl.constexpr, P_SATURATE: gl.constexpr, ROWSUM_Q: gl.constexpr,
              P_MODE: gl.constexpr, SAS: gl.constexpr, THRESHOLD: gl.constexpr,
              LUT_ENTRIES: gl.constexpr, C0: gl.constexpr, C1: gl.constexpr,
              C2: gl.constexpr, C3: gl.constexpr, DEGREE: gl.constexpr,
              POLY_FP16: gl.constexpr, TRACE: gl.constexpr, STAGES: gl.constexpr,
              K_PERM: gl.constexpr, DEFER_PV: gl.constexpr, FMA_SCORES: gl.constexpr,
              P_FMA: gl.constexpr, V_DEFERRED: gl.constexpr, SKIP_RESCALE: gl.constexpr,
              SAS_FAST: gl.constexpr, ABLATE: gl.constexpr, UNROLL: gl.constexpr,
              ONE_LOOP: gl.constexpr):
    KI: gl.constexpr = 32 if INT8 else 16
    RC: gl.constexpr = 16 * CW  # rows of this consumer: 64 (one warpgroup) or 128 (two)
    s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[CW, 1],
                                                  instr_shape=[16, BLOCK_N, KI])
    o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[CW, 1],
                                                  instr_shape=[16, HEAD_D, KI])
    KS_VEC: gl.constexpr = INT8 and (K_GROUP != 0) and (K_GROUP % BLOCK_N != 0)
    KS_SMEM: gl.constexpr = INT8 and (K_GROUP == 1)  # per-key scales: TMA'd with K
    r0 = start_m + WG * RC
    coff = Lk - Lq
    n_full, n_tot = _tile_counts(r0, Lq, Lk, coff, BLOCK_N, CAUSAL, RC)
    n_cta = _cta_tiles(start_m, Lq, Lk, coff, BLOCK_N, CAUSAL, CW)

    rows = r0 + gl.arange(0, RC, layout=gl.SliceLayout(1, s_l))
    rows_o = r0 + gl.arange(0, RC, layout=gl.SliceLayout(1, o_l))
    c = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_l))
    if K_PERM:
        kidx = (c & ~15) | (((c >> 1) & 3) << 2) | (((c >> 3) & 1) << 1) | (c & 1)
        kidx = gl.max_contiguous(gl.multiple_of(kidx, 2), 2)  # keys 4t, 4t+1 of pairs 2t, 2t+1
    else:
        kidx = c
    rmask = rows < Lq
    if INT8:
        if Q_GROUP == 0:
            qs = gl.load(QS + bh * NQS + rows * 0, mask=rmask, other=1.0)
        else:
            qs = gl.load(QS + bh * NQS + rows // Q_GROUP, mask=rmask, other=1.0)
        qf = qs * qk_scale
    else:
        qf = gl.zeros([RC], gl.float32, gl.SliceLayout(1, s_l))
    vf_head = qk_scale
    if INT8:
        if V_GROUP == 0:
            vs_head = gl.load(VS + bhk * NVS)
            vf_head = gl.div_rn(vs_head, gl.to_tensor(LEVELS * 1.0))
    KSb = KS + bhk * NKS
    VSb = VS + bhk * NVS
    TSb = TS + bh * Lq * Lk
    TPb = TP + bh * Lq * Lk
    TOb = TO + bh * NT * Lq * HEAD_D

    m_i = gl.full([RC], float("-inf"), gl.float32, gl.SliceLayout(1, s_l))
    l_i = gl.zeros([RC], gl.float32, gl.SliceLayout(1, s_l))
    acc = gl.zeros([RC, HEAD_D], gl.float32, o_l)
    if INT8:
        zs = gl.zeros([RC, BLOCK_N], gl.int32, s_l)
        zo = gl.zeros([RC, HEAD_D], gl.int32, o_l)
    else:
        zs = gl.zeros([RC, BLOCK_N], gl.float32, s_l)
        zo = gl.zeros([RC, HEAD_D], gl.float32, o_l)

    mbarrier.wait(q_bar.index(0), 0)
    q_s = q_smem.index(WG)

    if ONE_LOOP:
        # ---- every tile in one loop: QK(j+1) in flight under softmax(j), masks by a branch ----
        mbarrier.wait(ready.index(0), 0, pred=n_tot > 0)
        s_tok = warpgroup_mma(q_s, _k_tile(k_smem, 0, BLOCK_N, HEAD_D, K_PERM), zs,
                              use_acc=False, is_async=True)
        S_b = warpgroup_mma_wait(0, deps=(s_tok,))
        if KS_SMEM:
            ks_b = 0.0
        else:
            ks_b = _load_ks(KSb, 0, kidx, Lk, BLOCK_N, K_GROUP, KS_VEC, True)
        if UNROLL:  # two steps per iteration: S alternates between two register sets
            for i in range(gl.cdiv(n_tot, 2)):
                S_x, acc, m_i, l_i, ks_x = _step1(
                    2 * i, n_full, n_tot, S_b, acc, m_i, l_i, ks_b, q_s, k_smem, v_smem,
                    ks_smem, ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff,
                    qk_scale, KSb, VSb, vf_head, TSb, TPb, TOb,
                    HEAD_D, BLOCK_N, INT8, CAUSAL, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS,
                P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES,
                C0, C1, C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, FMA_SCORES,
                P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
                if 2 * i + 1 < n_tot:
                    S_b, acc, m_i, l_i, ks_b = _step1(
                        2 * i + 1, n_full, n_tot, S_x, acc, m_i, l_i, ks_x, q_s, k_smem,
                        v_smem, ks_smem, ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk,
                        coff, qk_scale, KSb, VSb, vf_head, TSb, TPb, TOb,
                        HEAD_D, BLOCK_N, INT8, CAUSAL, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS,
                P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES,
                C0, C1, C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, FMA_SCORES,
                P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
                else:
                    S_b = S_x
                    ks_b = ks_x
        else:
            for j in range(0, n_tot):
                S_b, acc, m_i, l_i, ks_b = _step1(
                    j, n_full, n_tot, S_b, acc, m_i, l_i, ks_b, q_s, k_smem, v_smem, ks_smem,
                    ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, KSb,
                    VSb, vf_head, TSb, TPb, TOb,
                    HEAD_D, BLOCK_N, INT8, CAUSAL, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS,
                P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES,
                C0, C1, C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, FMA_SCORES,
                P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
    else:
        # ---- unmasked tiles [0, n_full): pipelined, unrolled twice ----
        if n_full >= 2:
            mbarrier.wait(ready.index(0), 0)
            s_tok = warpgroup_mma(q_s, _k_tile(k_smem, 0, BLOCK_N, HEAD_D, K_PERM), zs,
                                  use_acc=False, is_async=True)
            S0 = warpgroup_mma_wait(0, deps=(s_tok,))
            if KS_SMEM:
                ks0 = _load_ks_smem(ks_smem, 0, kidx, BLOCK_N, K_PERM)
            else:
                ks0 = _load_ks(KSb, 0, kidx, Lk, BLOCK_N, K_GROUP, KS_VEC, False)
            # tile 0: QK(1) in flight under its softmax, PV(0) left in flight
            mbarrier.wait(ready.index(1 % STAGES), (1 // STAGES) & 1)
            s_tok = warpgroup_mma(q_s, _k_tile(k_smem, 1 % STAGES, BLOCK_N, HEAD_D, K_PERM), zs,
                                  use_acc=False, is_async=True)
            if KS_SMEM:
                ks_b = 0.0
            else:
                ks_b = _load_ks(KSb, 1, kidx, Lk, BLOCK_N, K_GROUP, KS_VEC, False)
            pop, alpha_p, m_i, l_i = _softmax(
                S0, 0, m_i, l_i, qf, ks0, kidx, rows, Lq, Lk, coff, qk_scale, TSb, TPb, 0,
                BLOCK_N, HEAD_D, INT8, CAUSAL, False, KS_VEC, KS_SMEM, LEVELS, P_FP16, P_ROUNDING,
                P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE,
                POLY_FP16, SAS_FAST, K_PERM, FMA_SCORES, P_FMA, TRACE, ABLATE)
            vf_p = _load_vf(VSb, 0, vf_head, LEVELS, BLOCK_N, V_GROUP)
            if DEFER_PV:
                pv_tok = pop  # P(0): its PV is issued at the start of step 1
                acc_c = acc
                S_b = warpgroup_mma_wait(0, deps=(s_tok,))
            else:
                if INT8:
                    tok0 = warpgroup_mma(pop, _v_tile(v_smem, 0, INT8), zo, use_acc=False,
                                         is_async=True)
                else:
                    tok0 = warpgroup_mma(pop, _v_tile(v_smem, 0, INT8), zo, use_acc=False,
                                         is_async=True)
                S_b, O = warpgroup_mma_wait(0, deps=(s_tok, tok0))
                mbarrier.arrive(empty.index(0), count=1)
                if INT8:
                    acc_c = _acc_int(acc, O, alpha_p, vf_p, 0, rows_o, Lq, TOb, HEAD_D, V_DEFERRED,
                                     SKIP_RESCALE, TRACE, ABLATE)
                else:
                    acc_c = O
                pv_tok = 0  # nothing in flight between steps
            if UNROLL:
                n_steady = n_full - 2
                for i in range(n_steady // 2):
                    j = 1 + 2 * i
                    S_x, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_x = _step(
                        j, S_b, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_b, q_s, k_smem, v_smem,
                        ks_smem, ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, KSb,
                        VSb, vf_head, TSb, TPb, TOb,
                        HEAD_D, BLOCK_N, INT8, CAUSAL, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS, P_FP16,
                        P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1,
                        C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, DEFER_PV,
                        FMA_SCORES, P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
                    S_b, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_b = _step(
                        j + 1, S_x, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_x, q_s, k_smem, v_smem,
                        ks_smem, ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, KSb,
                        VSb, vf_head, TSb, TPb, TOb,
                        HEAD_D, BLOCK_N, INT8, CAUSAL, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS, P_FP16,
                        P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1,
                        C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, DEFER_PV,
                        FMA_SCORES, P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
                if n_steady % 2 == 1:
                    S_y, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_y = _step(
                        n_full - 2, S_b, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_b, q_s, k_smem,
                        v_smem, ks_smem, ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale,
                        KSb, VSb, vf_head, TSb, TPb, TOb,
                        HEAD_D, BLOCK_N, INT8, CAUSAL, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS, P_FP16,
                        P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1,
                        C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, DEFER_PV,
                        FMA_SCORES, P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
                    acc, m_i, l_i = _last(
                        n_full - 1, S_y, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_y, v_smem, ks_smem, empty, zo,
                        qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, VSb, vf_head, TSb, TPb, TOb,
                        HEAD_D, BLOCK_N, INT8, CAUSAL, V_GROUP, KS_VEC, KS_SMEM, LEVELS, P_FP16, P_ROUNDING,
                        P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3,
                        DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, DEFER_PV, FMA_SCORES, P_FMA,
                        V_DEFERRED, SKIP_RESCALE, ABLATE)
                else:
                    acc, m_i, l_i = _last(
                        n_full - 1, S_b, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_b, v_smem, ks_smem, empty, zo,
                        qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, VSb, vf_head, TSb, TPb, TOb,
                        HEAD_D, BLOCK_N, INT8, CAUSAL, V_GROUP, KS_VEC, KS_SMEM, LEVELS, P_FP16, P_ROUNDING,
                        P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3,
                        DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, DEFER_PV, FMA_SCORES, P_FMA,
                        V_DEFERRED, SKIP_RESCALE, ABLATE)
            else:  # one step per iteration: the loop carries S (copies) but has half the code
                for j in range(1, n_full - 1):
                    S_b, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_b = _step(
                        j, S_b, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_b, q_s, k_smem, v_smem,
                        ks_smem, ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff,
                        qk_scale, KSb, VSb, vf_head, TSb, TPb, TOb,
                        HEAD_D, BLOCK_N, INT8, CAUSAL, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS,
                        P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD,
                        LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES,
                        K_PERM, DEFER_PV, FMA_SCORES, P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
                acc, m_i, l_i = _last(
                    n_full - 1, S_b, pv_tok, acc_c, m_i, l_i, alpha_p, vf_p, ks_b, v_smem, ks_smem,
                    empty, zo, qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, VSb, vf_head, TSb,
                    TPb, TOb, HEAD_D, BLOCK_N, INT8, CAUSAL, V_GROUP, KS_VEC, KS_SMEM, LEVELS,
                    P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES,
                    C0, C1, C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, DEFER_PV,
                    FMA_SCORES, P_FMA, V_DEFERRED, SKIP_RESCALE, ABLATE)
            lo = n_full
        else:
            lo = 0
        # ---- remaining tiles one at a time (masked ones; an unmasked one when n_full == 1) ----
        for j in range(lo, n_tot):
            if j < n_full:
                acc, m_i, l_i = _sync_tile(
                    j, acc, m_i, l_i, q_s, k_smem, v_smem, ks_smem, ready, empty, zs, zo, qf, kidx, rows,
                    rows_o, Lq, Lk, coff, qk_scale, KSb, VSb, vf_head, TSb, TPb, TOb,
                    HEAD_D, BLOCK_N, INT8, CAUSAL, False, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS, P_FP16,
                    P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1,
                    C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, FMA_SCORES, P_FMA,
                    V_DEFERRED, SKIP_RESCALE, ABLATE)
            else:
                acc, m_i, l_i = _sync_tile(
                    j, acc, m_i, l_i, q_s, k_smem, v_smem, ks_smem, ready, empty, zs, zo, qf, kidx, rows,
                    rows_o, Lq, Lk, coff, qk_scale, KSb, VSb, vf_head, TSb, TPb, TOb,
                    HEAD_D, BLOCK_N, INT8, CAUSAL, True, K_GROUP, V_GROUP, KS_VEC, KS_SMEM, LEVELS, P_FP16,
                    P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1,
                    C2, C3, DEGREE, POLY_FP16, SAS_FAST, TRACE, STAGES, K_PERM, FMA_SCORES, P_FMA,
                    V_DEFERRED, SKIP_RESCALE, ABLATE)
    # ---- stages loaded for the other consumer only: release them ----
    for j in range(n_tot, n_cta):
        mbarrier.wait(ready.index(j % STAGES), (j // STAGES) & 1)
        mbarrier.arrive(empty.index(j % STAGES), count=1)

    # ---- epilogue ----
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_l))
    seen = l_o > 0
    if INT8 and V_DEFERRED:
        acc = acc * vf_head
    o = gl.div_rn(acc, gl.where(seen, l_o, 1.0)[:, None])
    o = gl.where(seen[:, None], o, 0.0)
    d = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, o_l))
    optr = Out + b.to(gl.int64) * sob + h.to(gl.int64) * soh
    gl.store(optr + rows_o[:, None].to(gl.int64) * som + d[None, :],
             o.to(Out.dtype.element_ty), mask=rows_o[:, None] < Lq)


@gluon.jit
def _step1(j, n_full, n_tot, S_cur, acc, m_i, l_i, ks_cur, q_s, k_smem, v_smem, ks_smem, ready,
           empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, KSb, VSb, vf_head,
           TSb, TPb, TOb,
           HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, INT8: gl.constexpr,
           CAUSAL: gl.constexpr, K_GROUP: gl.constexpr, V_GROUP: gl.constexpr,
           KS_VEC: gl.constexpr, KS_SMEM: gl.constexpr, LEVELS: gl.constexpr,
           P_FP16: gl.constexpr, P_ROUNDING: gl.constexpr, P_SATURATE: gl.constexpr,
           ROWSUM_Q: gl.constexpr, P_MODE: gl.constexpr, SAS: gl.constexpr,
           THRESHOLD: gl.constexpr, LUT_ENTRIES: gl.constexpr, C0: gl.constexpr,
           C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr, DEGREE: gl.constexpr,
           POLY_FP16: gl.constexpr, SAS_FAST: gl.constexpr, TRACE: gl.constexpr,
           STAGES: gl.constexpr, K_PERM: gl.constexpr, FMA_SCORES: gl.constexpr,
           P_FMA: gl.constexpr, V_DEFERRED: gl.constexpr, SKIP_RESCALE: gl.constexpr,
           ABLATE: gl.constexpr):
    """Tile j of the one-loop consumer (``ONE_LOOP``): nothing in flight on entry or exit.
    QK(j+1) is issued first and runs under softmax(j); at the last tile it reads whatever the
    next stage holds and is discarded (its ready-wait is predicated off: one extra tensor-core
    tile per consumer, in exchange for one code path). The softmax is the unmasked code for
    tiles < n_full, with the masking selects behind a uniform branch after (one copy of the
    code: a branch merging only the f32 scores, not the packed P codes). PV(j)
    is issued after the softmax and waited with QK(j+1). Returns S(j+1) and the state."""
    st = j % STAGES
    sn = (j + 1) % STAGES
    mbarrier.wait(ready.index(sn), ((j + 1) // STAGES) & 1, pred=j + 1 < n_tot)
    s_tok = warpgroup_mma(q_s, _k_tile(k_smem, sn, BLOCK_N, HEAD_D, K_PERM), zs,
                          use_acc=False, is_async=True)
    if KS_SMEM:
        ks_use = _load_ks_smem(ks_smem, st, kidx, BLOCK_N, K_PERM)
        ks_nxt = 0.0
    else:
        ks_use = ks_cur
        # the next tile's scale (the last tile's again at the end: no read past the scales)
        ks_nxt = _load_ks(KSb, gl.minimum(j + 1, n_tot - 1), kidx, Lk, BLOCK_N, K_GROUP, KS_VEC,
                          True)
    pop, alpha, m_i, l_i = _softmax(
        S_cur, j, m_i, l_i, qf, ks_use, kidx, rows, Lq, Lk, coff, qk_scale, TSb, TPb, n_full,
        BLOCK_N, HEAD_D, INT8, CAUSAL, 2, KS_VEC, KS_SMEM, LEVELS, P_FP16, P_ROUNDING,
        P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE,
        POLY_FP16, SAS_FAST, K_PERM, FMA_SCORES, P_FMA, TRACE, ABLATE)
    vf = _load_vf(VSb, j, vf_head, LEVELS, BLOCK_N, V_GROUP)
    if INT8:
        pv_tok = warpgroup_mma(pop, _v_tile(v_smem, st, INT8), zo, use_acc=False, is_async=True)
        S_nxt, O = warpgroup_mma_wait(0, deps=(s_tok, pv_tok))
        mbarrier.arrive(empty.index(st), count=1)
        acc = _acc_int(acc, O, alpha, vf, j, rows_o, Lq, TOb, HEAD_D, V_DEFERRED, SKIP_RESCALE,
                       TRACE, ABLATE)
    else:
        acc = acc * alpha[:, None]
        pv_tok = warpgroup_mma(pop, _v_tile(v_smem, st, INT8), acc, use_acc=True,
                               is_async=True)
        S_nxt, acc = warpgroup_mma_wait(0, deps=(s_tok, pv_tok))
        mbarrier.arrive(empty.index(st), count=1)
    return S_nxt, acc, m_i, l_i, ks_nxt


@gluon.jit
def _step(j, S_cur, pv_tok, acc, m_i, l_i, alpha_p, vf_p, ks_cur, q_s, k_smem, v_smem,
          ks_smem, ready, empty, zs, zo, qf, kidx, rows, rows_o, Lq, Lk, coff, qk_scale, KSb, VSb,
          vf_head, TSb, TPb, TOb,
          HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, INT8: gl.constexpr,
          CAUSAL: gl.constexpr, K_GROUP: gl.constexpr, V_GROUP: gl.constexpr,
          KS_VEC: gl.constexpr, KS_SMEM: gl.constexpr, LEVELS: gl.constexpr,
          P_FP16: gl.constexpr,
          P_ROUNDING: gl.constexpr, P_SATURATE: gl.constexpr, ROWSUM_Q: gl.constexpr,
          P_MODE: gl.constexpr, SAS: gl.constexpr, THRESHOLD: gl.constexpr,
          LUT_ENTRIES: gl.constexpr, C0: gl.constexpr, C1: gl.constexpr, C2: gl.constexpr,
          C3: gl.constexpr, DEGREE: gl.constexpr, POLY_FP16: gl.constexpr,
          SAS_FAST: gl.constexpr, TRACE: gl.constexpr, STAGES: gl.constexpr,
          K_PERM: gl.constexpr, DEFER_PV: gl.constexpr, FMA_SCORES: gl.constexpr,
          P_FMA: gl.constexpr, V_DEFERRED: gl.constexpr, SKIP_RESCALE: gl.constexpr,
          ABLATE: gl.constexpr):
    """Unmasked tile j with a successor; nothing is in flight on entry or exit.
    Default: QK(j+1) is issued first and runs under softmax(j); PV(j) is issued after it and
    waited with QK(j+1) at the end, then combined into acc. DEFER_PV (FA3's intra-warpgroup
    order): ``pv_tok`` holds P(j-1) (its alpha_p / vf_p); PV(j-1) and QK(j+1) are both issued
    first and run under softmax(j); both are waited at the end and O(j-1) is combined; P(j) is
    returned for the next step. Returns S(j+1) and the state."""
    sn = (j + 1) % STAGES
    if DEFER_PV:
        sp = (j - 1) % STAGES
        if INT8:
            tok = warpgroup_mma(pv_tok, _v_tile(v_smem, sp, INT8), zo, use_acc=False,
                                is_async=True)
        else:
            acc = acc * alpha_p[:, None]
            tok = warpgroup_mma(pv_tok, _v_tile(v_smem, sp, INT8), acc, use_acc=True,
                                is_async=True)
    mbarrier.wait(ready.index(sn), ((j + 1) // STAGES) & 1)
    s_tok = warpgroup_mma(q_s, _k_tile(k_smem, sn, BLOCK_N, HEAD_D, K_PERM), zs,
                          use_acc=False, is_async=True)
    if KS_SMEM:
        ks_use = _load_ks_smem(ks_smem, j % STAGES, kidx, BLOCK_N, K_PERM)
        ks_nxt = 0.0
    else:
        ks_use = ks_cur
        ks_nxt = _load_ks(KSb, j + 1, kidx, Lk, BLOCK_N, K_GROUP, KS_VEC, False)
    pop, alpha, m_i, l_i = _softmax(
        S_cur, j, m_i, l_i, qf, ks_use, kidx, rows, Lq, Lk, coff, qk_scale, TSb, TPb, 0,
        BLOCK_N, HEAD_D, INT8, CAUSAL, False, KS_VEC, KS_SMEM, LEVELS, P_FP16, P_ROUNDING,
        P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE,
        POLY_FP16, SAS_FAST, K_PERM, FMA_SCORES, P_FMA, TRACE, ABLATE)
    vf = _load_vf(VSb, j, vf_head, LEVELS, BLOCK_N, V_GROUP)
    if DEFER_PV:
        # P(j-1), the A operand in registers, is read until this wait: ptxas keeps registers
        # of an in-flight wgmma (int8 tensors cannot be wait deps in triton 3.6)
        S_nxt, O = warpgroup_mma_wait(0, deps=(s_tok, tok))
        mbarrier.arrive(empty.index(sp), count=1)
        if INT8:
            acc = _acc_int(acc, O, alpha_p, vf_p, j - 1, rows_o, Lq, TOb, HEAD_D, V_DEFERRED,
                           SKIP_RESCALE, TRACE, ABLATE)
        else:
            acc = O
        pv_tok = pop
    else:
        if INT8:
            pv_tok = warpgroup_mma(pop, _v_tile(v_smem, j % STAGES, INT8), zo, use_acc=False,
                                   is_async=True)
            S_nxt, O = warpgroup_mma_wait(0, deps=(s_tok, pv_tok))
            mbarrier.arrive(empty.index(j % STAGES), count=1)
            acc = _acc_int(acc, O, alpha, vf, j, rows_o, Lq, TOb, HEAD_D, V_DEFERRED,
                           SKIP_RESCALE, TRACE, ABLATE)
        else:
            acc = acc * alpha[:, None]
            pv_tok = warpgroup_mma(pop, _v_tile(v_smem, j % STAGES, INT8), acc, use_acc=True,
                                   is_async=True)
            S_nxt, acc = warpgroup_mma_wait(0, deps=(s_tok, pv_tok))
            mbarrier.arrive(empty.index(j % STAGES), count=1)
        pv_tok = 0
    return S_nxt, pv_tok, acc, m_i, l_i, alpha, vf, ks_nxt


@gluon.jit
def _last(j, S_cur, pv_tok, acc, m_i, l_i, alpha_p, vf_p, ks_cur, v_smem, ks_smem, empty, zo,
          qf, kidx,
          rows, rows_o, Lq, Lk, coff, qk_scale, VSb, vf_head, TSb, TPb, TOb,
          HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, INT8: gl.constexpr,
          CAUSAL: gl.constexpr, V_GROUP: gl.constexpr, KS_VEC: gl.constexpr,
          KS_SMEM: gl.constexpr, LEVELS: gl.constexpr, P_FP16: gl.constexpr, P_ROUNDING: gl.constexpr,
          P_SATURATE: gl.constexpr, ROWSUM_Q: gl.constexpr, P_MODE: gl.constexpr,
          SAS: gl.constexpr, THRESHOLD: gl.constexpr, LUT_ENTRIES: gl.constexpr,
          C0: gl.constexpr, C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr,
          DEGREE: gl.constexpr, POLY_FP16: gl.constexpr, SAS_FAST: gl.constexpr,
          TRACE: gl.constexpr, STAGES: gl.constexpr, K_PERM: gl.constexpr,
          DEFER_PV: gl.constexpr, FMA_SCORES: gl.constexpr, P_FMA: gl.constexpr,
          V_DEFERRED: gl.constexpr, SKIP_RESCALE: gl.constexpr, ABLATE: gl.constexpr):
    """Last pipelined tile (no successor): DEFER_PV: PV(j-1) under softmax(j); then PV(j)."""
    if DEFER_PV:
        sp = (j - 1) % STAGES
        if INT8:
            tok = warpgroup_mma(pv_tok, _v_tile(v_smem, sp, INT8), zo, use_acc=False,
                                is_async=True)
        else:
            acc = acc * alpha_p[:, None]
            tok = warpgroup_mma(pv_tok, _v_tile(v_smem, sp, INT8), acc, use_acc=True,
                                is_async=True)
    if KS_SMEM:
        ks_use = _load_ks_smem(ks_smem, j % STAGES, kidx, BLOCK_N, K_PERM)
    else:
        ks_use = ks_cur
    pop, alpha, m_i, l_i = _softmax(
        S_cur, j, m_i, l_i, qf, ks_use, kidx, rows, Lq, Lk, coff, qk_scale, TSb, TPb, 0,
        BLOCK_N, HEAD_D, INT8, CAUSAL, False, KS_VEC, KS_SMEM, LEVELS, P_FP16, P_ROUNDING,
        P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE,
        POLY_FP16, SAS_FAST, K_PERM, FMA_SCORES, P_FMA, TRACE, ABLATE)
    vf = _load_vf(VSb, j, vf_head, LEVELS, BLOCK_N, V_GROUP)
    if DEFER_PV:
        O = warpgroup_mma_wait(0, deps=(tok,))
        mbarrier.arrive(empty.index(sp), count=1)
        if INT8:
            acc = _acc_int(acc, O, alpha_p, vf_p, j - 1, rows_o, Lq, TOb, HEAD_D, V_DEFERRED,
                           SKIP_RESCALE, TRACE, ABLATE)
        else:
            acc = O
    if INT8:
        tok = warpgroup_mma(pop, _v_tile(v_smem, j % STAGES, INT8), zo, use_acc=False,
                            is_async=True)
        O = warpgroup_mma_wait(0, deps=(tok,))
        mbarrier.arrive(empty.index(j % STAGES), count=1)
        acc = _acc_int(acc, O, alpha, vf, j, rows_o, Lq, TOb, HEAD_D, V_DEFERRED, SKIP_RESCALE,
                       TRACE, ABLATE)
    else:
        acc = acc * alpha[:, None]
        tok = warpgroup_mma(pop, _v_tile(v_smem, j % STAGES, INT8), acc, use_acc=True,
                            is_async=True)
        acc = warpgroup_mma_wait(0, deps=(tok,))
        mbarrier.arrive(empty.index(j % STAGES), count=1)
    return acc, m_i, l_i


@gluon.jit
def _sync_tile(j, acc, m_i, l_i, q_s, k_smem, v_smem, ks_smem, ready, empty, zs, zo, qf, kidx, rows,
               rows_o, Lq, Lk, coff, qk_scale, KSb, VSb, vf_head, TSb, TPb, TOb,
               HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, INT8: gl.constexpr,
               CAUSAL: gl.constexpr, MASKED: gl.constexpr, K_GROUP: gl.constexpr,
               V_GROUP: gl.constexpr, KS_VEC: gl.constexpr, KS_SMEM: gl.constexpr,
               LEVELS: gl.constexpr,
               P_FP16: gl.constexpr, P_ROUNDING: gl.constexpr, P_SATURATE: gl.constexpr,
               ROWSUM_Q: gl.constexpr, P_MODE: gl.constexpr, SAS: gl.constexpr,
               THRESHOLD: gl.constexpr, LUT_ENTRIES: gl.constexpr, C0: gl.constexpr,
               C1: gl.constexpr, C2: gl.constexpr, C3: gl.constexpr, DEGREE: gl.constexpr,
               POLY_FP16: gl.constexpr, SAS_FAST: gl.constexpr, TRACE: gl.constexpr,
               STAGES: gl.constexpr, K_PERM: gl.constexpr, FMA_SCORES: gl.constexpr,
               P_FMA: gl.constexpr, V_DEFERRED: gl.constexpr, SKIP_RESCALE: gl.constexpr,
               ABLATE: gl.constexpr):
    """One tile, nothing in flight before or after (masked tiles, short rows)."""
    s = j % STAGES
    mbarrier.wait(ready.index(s), (j // STAGES) & 1)
    tok = warpgroup_mma(q_s, _k_tile(k_smem, s, BLOCK_N, HEAD_D, K_PERM), zs, use_acc=False,
                        is_async=True)
    if KS_SMEM:
        ks = _load_ks_smem(ks_smem, s, kidx, BLOCK_N, K_PERM)
    else:
        ks = _load_ks(KSb, j, kidx, Lk, BLOCK_N, K_GROUP, KS_VEC, MASKED)
    S = warpgroup_mma_wait(0, deps=(tok,))
    pop, alpha, m_i, l_i = _softmax(
        S, j, m_i, l_i, qf, ks, kidx, rows, Lq, Lk, coff, qk_scale, TSb, TPb, 0,
        BLOCK_N, HEAD_D, INT8, CAUSAL, MASKED, KS_VEC, KS_SMEM, LEVELS, P_FP16, P_ROUNDING, P_SATURATE,
        ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16,
        SAS_FAST, K_PERM, FMA_SCORES, P_FMA, TRACE, ABLATE)
    vf = _load_vf(VSb, j, vf_head, LEVELS, BLOCK_N, V_GROUP)
    if INT8:
        tok = warpgroup_mma(pop, _v_tile(v_smem, s, INT8), zo, use_acc=False, is_async=True)
        O = warpgroup_mma_wait(0, deps=(tok,))
        mbarrier.arrive(empty.index(s), count=1)
        acc = _acc_int(acc, O, alpha, vf, j, rows_o, Lq, TOb, HEAD_D, V_DEFERRED, SKIP_RESCALE,
                       TRACE, ABLATE)
    else:
        acc = acc * alpha[:, None]
        tok = warpgroup_mma(pop, _v_tile(v_smem, s, INT8), acc, use_acc=True, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(tok,))
        mbarrier.arrive(empty.index(s), count=1)
    return acc, m_i, l_i


# ---------------------------------------------------------------------------------------------
# producer
# ---------------------------------------------------------------------------------------------
@gluon.jit
def _producer(q_desc, k_desc, v_desc, ks_desc, q_smem, k_smem, v_smem, ks_smem, ready, empty,
              q_bar, q_row0, k_row0, v_row0, start_m, Lq, Lk,
              HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, INT8: gl.constexpr,
              CAUSAL: gl.constexpr, STAGES: gl.constexpr, K_PERM: gl.constexpr,
              KS_SMEM: gl.constexpr, CW: gl.constexpr):
    coff = Lk - Lq
    n_cta = _cta_tiles(start_m, Lq, Lk, coff, BLOCK_N, CAUSAL, CW)
    QR: gl.constexpr = q_desc.block_type.shape[0]   # 64 (two consumers) or 128 (one)
    NQ: gl.constexpr = 128 // QR
    mbarrier.expect(q_bar.index(0), NQ * q_desc.block_type.nbytes)
    for i in gl.static_range(NQ):
        tma.async_copy_global_to_shared(q_desc, [q_row0 + i * QR, 0], q_bar.index(0),
                                        q_smem.index(i))
    if KS_SMEM:
        nbytes: gl.constexpr = (k_desc.block_type.nbytes + v_desc.block_type.nbytes
                                + ks_desc.block_type.nbytes)
    else:
        nbytes: gl.constexpr = k_desc.block_type.nbytes + v_desc.block_type.nbytes
    for j in range(n_cta):
        s = j % STAGES
        mbarrier.wait(empty.index(s), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(s), nbytes)
        if KS_SMEM:  # per-key K scales of the tile (KS is [B*Hkv*Lk] f32)
            tma.async_copy_global_to_shared(ks_desc, [k_row0 + j * BLOCK_N], ready.index(s),
                                            ks_smem.index(s))
        if K_PERM:
            k5: gl.constexpr = k_desc.layout
            tma.async_copy_global_to_shared(
                k_desc, [(k_row0 + j * BLOCK_N) // 16, 0, 0, 0, 0], ready.index(s),
                k_smem.index(s)._reinterpret(gl.int8, [BLOCK_N // 16, 2, 4, 2, HEAD_D], k5))
        else:
            tma.async_copy_global_to_shared(k_desc, [k_row0 + j * BLOCK_N, 0], ready.index(s),
                                            k_smem.index(s))
        if INT8:
            tma.async_copy_global_to_shared(v_desc, [v_row0, j * BLOCK_N], ready.index(s),
                                            v_smem.index(s))
        else:
            tma.async_copy_global_to_shared(v_desc, [k_row0 + j * BLOCK_N, 0], ready.index(s),
                                            v_smem.index(s))


# ---------------------------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------------------------
@gluon.jit(do_not_specialize=["Hq", "Hkv", "G", "NQS", "NKS", "NVS", "NT"])
def attn_fwd_sm90_kernel(
        q_desc, k_desc, v_desc, ks_desc, QS, KS, VS, Out, TS, TP, TO, qk_scale,
        sob, soh, som, Hq, Hkv, G, Lq, Lk, NQS, NKS, NVS, NT,
        HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, INT8: gl.constexpr,
        CAUSAL: gl.constexpr, Q_GROUP: gl.constexpr, K_GROUP: gl.constexpr,
        V_GROUP: gl.constexpr, LEVELS: gl.constexpr, P_FP16: gl.constexpr,
        P_ROUNDING: gl.constexpr, P_SATURATE: gl.constexpr, ROWSUM_Q: gl.constexpr,
        P_MODE: gl.constexpr, SAS: gl.constexpr, THRESHOLD: gl.constexpr,
        LUT_ENTRIES: gl.constexpr, C0: gl.constexpr, C1: gl.constexpr, C2: gl.constexpr,
        C3: gl.constexpr, DEGREE: gl.constexpr, POLY_FP16: gl.constexpr,
        TRACE: gl.constexpr = False, STAGES: gl.constexpr = 4, K_PERM: gl.constexpr = False,
        DEFER_PV: gl.constexpr = False, FMA_SCORES: gl.constexpr = False,
        P_FMA: gl.constexpr = False, V_DEFERRED: gl.constexpr = False,
        SKIP_RESCALE: gl.constexpr = False, SAS_FAST: gl.constexpr = True,
        ABLATE: gl.constexpr = 0, UNROLL: gl.constexpr = True, MERGED: gl.constexpr = False,
        ONE_LOOP: gl.constexpr = False, PRODUCER_REGS: gl.constexpr = 24):
    """Grid (cdiv(Lq, 128), B * Hq); launch with enable_fp_fusion=False and
    ``MERGED`` False: num_warps=4, maxnreg=168 (3 warpgroups: consumer 0 = default partition,
    consumer 1, producer); ``MERGED`` True: num_warps=8, maxnreg=168 (one 8-warp consumer
    partition of 128 rows: both warpgroups run one copy of the code; then the producer).

    q_desc: Q codes (int8) / q (f16) as 2-D [B*Hq*Lq, D], block [64, D] ([128, D] with MERGED).
    k_desc: K as 2-D
    [B*Hkv*Lk, D], block [BLOCK_N, D], or with K_PERM the 5-D view [B*Hkv*Lk/16, 2, 4, 2, D],
    strides [16D, 2D, 4D, D, 1], block [BLOCK_N/16, 2, 4, 2, D] (key 16b + 4t + 2a + e at
    box row 16b + 8a + 2t + e). v_desc: int8 V^T codes as 2-D [B*Hkv*D, Lpad], block [D,
    BLOCK_N]; f16 v as 2-D [B*Hkv*Lk, D], block [BLOCK_N, D]. ks_desc: with one K scale per
    key (K_GROUP == 1, int8) the K scales as 1-D [B*Hkv*Lk] f32, block [BLOCK_N], no swizzle
    (loaded with each K tile); otherwise any small f32 descriptor (unused, e.g. block [4] of
    KS). Scales, trace buffers and the
    other arguments as flash_fwd.attn_fwd_kernel (Out: [B, Hq, Lq, D] with unit last stride).
    The launcher is gpu.prefill_sm90."""
    BLOCK_M: gl.constexpr = 2 * ROWS
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    if CAUSAL:  # longest rows first
        pid_m = gl.cdiv(Lq, BLOCK_M) - 1 - pid_m
    b = bh // Hq
    h = bh % Hq
    hk = h // G
    bhk = b * Hkv + hk
    start_m = pid_m * BLOCK_M

    QR: gl.constexpr = q_desc.block_type.shape[0]
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M // QR, QR, HEAD_D], q_desc.layout)
    if K_PERM:
        k_l2: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_D], gl.int8)
        k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, HEAD_D], k_l2)
    else:
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape,
                                           k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape,
                                       v_desc.layout)
    ks_smem = gl.allocate_shared_memory(gl.float32, [STAGES] + ks_desc.block_type.shape,
                                        ks_desc.layout)
    KS_SMEM: gl.constexpr = INT8 and (K_GROUP == 1)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        # one arrive per consumer partition (the arrive's lowering syncs the partition first)
        mbarrier.init(empty.index(i), count=1 if MERGED else 2)
    mbarrier.init(q_bar.index(0), count=1)
    fence_async_shared()

    q_row0 = bh * Lq + start_m
    k_row0 = bhk * Lk
    v_row0 = bhk * HEAD_D
    if MERGED:
        gl.warp_specialize([
            (_consumer, (0, 8, q_smem, k_smem, v_smem, ks_smem, ready, empty, q_bar,
                     QS, KS, VS, Out, TS, TP, TO, qk_scale, sob, soh, som,
                     b, h, bh, bhk, Lq, Lk, NQS, NKS, NVS, NT, start_m,
                     HEAD_D, BLOCK_N, INT8, CAUSAL, Q_GROUP, K_GROUP, V_GROUP, LEVELS, P_FP16,
                     P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0,
                     C1, C2, C3, DEGREE, POLY_FP16, TRACE, STAGES, K_PERM, DEFER_PV, FMA_SCORES,
                     P_FMA, V_DEFERRED, SKIP_RESCALE, SAS_FAST, ABLATE, UNROLL, ONE_LOOP)),
            (_producer, (q_desc, k_desc, v_desc, ks_desc, q_smem, k_smem, v_smem, ks_smem, ready,
                         empty, q_bar, q_row0, k_row0, v_row0, start_m, Lq, Lk,
                         HEAD_D, BLOCK_N, INT8, CAUSAL, STAGES, K_PERM, KS_SMEM, 8)),
        ], [1], [PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (0, 4, q_smem, k_smem, v_smem, ks_smem, ready, empty, q_bar,
                     QS, KS, VS, Out, TS, TP, TO, qk_scale, sob, soh, som,
                     b, h, bh, bhk, Lq, Lk, NQS, NKS, NVS, NT, start_m,
                     HEAD_D, BLOCK_N, INT8, CAUSAL, Q_GROUP, K_GROUP, V_GROUP, LEVELS, P_FP16,
                     P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0,
                     C1, C2, C3, DEGREE, POLY_FP16, TRACE, STAGES, K_PERM, DEFER_PV, FMA_SCORES,
                     P_FMA, V_DEFERRED, SKIP_RESCALE, SAS_FAST, ABLATE, UNROLL, ONE_LOOP)),
            (_consumer, (1, 4, q_smem, k_smem, v_smem, ks_smem, ready, empty, q_bar,
                     QS, KS, VS, Out, TS, TP, TO, qk_scale, sob, soh, som,
                     b, h, bh, bhk, Lq, Lk, NQS, NKS, NVS, NT, start_m,
                     HEAD_D, BLOCK_N, INT8, CAUSAL, Q_GROUP, K_GROUP, V_GROUP, LEVELS, P_FP16,
                     P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, SAS, THRESHOLD, LUT_ENTRIES, C0,
                     C1, C2, C3, DEGREE, POLY_FP16, TRACE, STAGES, K_PERM, DEFER_PV, FMA_SCORES,
                     P_FMA, V_DEFERRED, SKIP_RESCALE, SAS_FAST, ABLATE, UNROLL, ONE_LOOP)),
            (_producer, (q_desc, k_desc, v_desc, ks_desc, q_smem, k_smem, v_smem, ks_smem, ready,
                         empty, q_bar, q_row0, k_row0, v_row0, start_m, Lq, Lk,
                         HEAD_D, BLOCK_N, INT8, CAUSAL, STAGES, K_PERM, KS_SMEM, 4)),
        ], [4, 1], [240, PRODUCER_REGS])
