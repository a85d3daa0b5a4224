"""turbo decode kernels over the progressive cache (docs/numerics.md "turbo" and "turbo KV cache").

Reading the flushed store. A flushed key/value tile of ``BN`` tokens is read as ``PER = 8 / BITS``
*planes*: plane ``i`` of byte column ``j`` is the code of channel ``j * PER + i`` (the
``sim.numerics.pack`` layout puts it at bits ``i * BITS``). Each plane is turned into the INT8
read-back ``min(c * s + z, 127)`` held exactly in fp16, four bytes at a time in registers
(:func:`_planes4` / :func:`_planes2`, SWAR on a 32-bit word): bytes spread to 16-bit lanes
(``PRMT``), the code shifted to bits ``[b, b + BITS)`` of the lane's low byte and OR-ed with the
fp16 bit pattern of 1024 (``0x6400``: the lane is then the fp16 value ``1024 + c 2^b``, exact),
and one ``fma.rn.f16x2`` with ``s' = s 2^-b`` and ``k' = z - 1024 s'`` gives ``c s + z``: the
exact product ``(1024 + c 2^b) s 2^-b`` plus ``k'`` rounds once to a representable integer, and
``k'`` itself is exact because ``|1024 s'| <= 64 * 17`` (INT4, ``b = 4``) or ``16 * 85`` (INT2,
``b = 6``) stays below 2048; ``min.f16x2`` with 127 is the read-back clamp. ``CLAMP_MODE`` 2
(default) clamps every tile (branch-free: the loop software-pipelines), 1 only the blocks the
flush kernel flagged (an element above 127; a branch per tile, which stops the pipelining and
measured slower), 0 never (a timing variant). No division.

The dots then run on tensor cores in fp16 with f32 accumulation, which is exact here: INT8 values
and P codes (<= 127) are exact in fp16, products <= 127^2, and every partial sum is an integer
below ``D * 127^2 < 2^24`` (scores) or ``BN * 127^2`` (PV), so ``S`` and ``O`` come out as the
f32 images of the simulator's int32 ``S_int`` and ``O_int`` in any summation order. The query
row and the P codes are the dots' other operand, split by plane (``q[:, j * PER + i]``): no
layout shuffle of the codes, one dot per plane. Rows are the ``G`` query heads of one KV head
(``BG = next_pow2(G)``, any ``BG >= 1``: Triton pads small dots internally).

Scales: per-channel groups (one scale/zero per channel over the block's ``BN`` tokens) are
``[BN]``-wide vectors broadcast along tokens; per-token groups (one per token over ``VG``
channels) are ``[BN, NG]`` broadcast along each group's byte columns (a 4-byte word never
straddles two groups: ``VG * BITS / 8 >= 4``).

Passes (split-K that keeps the sequential tile walk's integers):

1. :func:`turbo_scores_kernel`: per key tile ``S`` (f32, exact), ``s = (S * qf) * k_scale``
   written to a score scratch with the tile's row max.
2. :func:`turbo_pv_kernel`: split ``j`` starts from ``m = max`` of the tile maxima before it (the
   running max of the sequential walk there) and walks its tiles as the engine does: ``m_new``,
   SAS ``p``, ``alpha``, PQUANT, ``O`` (f32, exact), ``acc = acc * alpha + O * vf``, ``l = l *
   alpha + psum``, and keeps ``A_j`` = the product of its alphas.
3. :func:`turbo_combine_kernel`: ``acc = acc * A_j + acc_j`` over splits in order (the
   sequential recurrence regrouped: only f32 rounding differs), ``out = acc / l``.

One launch per stored bit width (``BITS`` constexpr, heads listed in HEADS). Under the Triton
interpreter (``INTERP``) the in-register unpacking is written with tensor ops (same values), and
the dots take f32 operands (exact copies) in IEEE f32.
"""
import triton
import triton.language as tl

from .flash_fwd import p_codes
from .sas import sas_exp2, sas_rescale

_MAGIC = tl.constexpr(1024.0)


def _planes_asm(bits: int, clamp: bool) -> str:
    """PTX of :func:`_planes4` / :func:`_planes2` for four bytes ``$x`` (one 32-bit word)."""
    per = 8 // bits
    b = 4 if bits == 4 else 6                     # the code moved to bits [b, b + BITS)
    mask = "0x00F000F0" if bits == 4 else "0x00C000C0"
    x = 2 * per                                   # operand index of the input word
    lines = ["{ .reg .b32 t01, t23, a, m; mov.b32 m, 0x57F057F0;",     # m = (127, 127)
             f"prmt.b32 t01, ${x}, 0, 0x4140; prmt.b32 t23, ${x}, 0, 0x4342;"]  # lanes (b0,b1), (b2,b3)
    for i in range(per):                          # plane i: bits [i * BITS, (i + 1) * BITS)
        sh = b - i * bits
        s0, k0 = x + 1 + 4 * i, x + 3 + 4 * i     # s' and k' of plane i: two registers each
        for half, lanes in ((0, "t01"), (1, "t23")):
            src = f"shl.b32 a, {lanes}, {sh}; and.b32 a, a, {mask};" if sh else \
                f"and.b32 a, {lanes}, {mask};"
            lines.append(f"{src} or.b32 a, a, 0x64006400; "
                         f"fma.rn.f16x2 ${2 * i + half}, a, ${s0 + half}, ${k0 + half};")
            if sh:
                lines[-1] = (f"shl.b32 a, {lanes}, {sh}; lop3.b32 a, a, {mask}, 0x64006400, 0xEA;"
                             f" fma.rn.f16x2 ${2 * i + half}, a, ${s0 + half}, ${k0 + half};")
            else:
                lines[-1] = (f"lop3.b32 a, {lanes}, {mask}, 0x64006400, 0xEA;"
                             f" fma.rn.f16x2 ${2 * i + half}, a, ${s0 + half}, ${k0 + half};")
    if clamp:
        lines.append(" ".join(f"min.f16x2 ${r}, ${r}, m;" for r in range(2 * per)))
    return "\n".join(lines) + "}"


_ASM4 = tl.constexpr(_planes_asm(4, False))
_ASM4_CLAMP = tl.constexpr(_planes_asm(4, True))
_ASM2 = tl.constexpr(_planes_asm(2, False))
_ASM2_CLAMP = tl.constexpr(_planes_asm(2, True))
_CONSTRAINTS4 = tl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 9))
_CONSTRAINTS2 = tl.constexpr(",".join(["=r"] * 8) + "," + ",".join(["r"] * 17))


@triton.jit
def _planes4(x, s0, k0, s1, k1, CLAMP: tl.constexpr):
    """INT4: fp16 read-back of the low-nibble (plane 0) and high-nibble (plane 1) codes of the
    bytes ``x`` (uint8), with per-element ``s' = s / 16`` and ``k' = z - 64 s`` (fp16) of each
    plane; both nibbles are moved to bits 4..7 (``b = 4``)."""
    if CLAMP:
        return tl.inline_asm_elementwise(_ASM4_CLAMP, _CONSTRAINTS4, [x, s0, k0, s1, k1],
                                         dtype=(tl.float16, tl.float16), is_pure=False, pack=4)
    return tl.inline_asm_elementwise(_ASM4, _CONSTRAINTS4, [x, s0, k0, s1, k1],
                                     dtype=(tl.float16, tl.float16), is_pure=False, pack=4)


@triton.jit
def _planes2(x, s0, k0, s1, k1, s2, k2, s3, k3, CLAMP: tl.constexpr):
    """INT2: fp16 read-back of the four 2-bit planes (bits 0, 2, 4, 6) of the bytes ``x``,
    each moved to bits 6..7 (``b = 6``: ``s' = s / 64``, ``k' = z - 16 s``)."""
    dt: tl.constexpr = (tl.float16, tl.float16, tl.float16, tl.float16)
    if CLAMP:
        return tl.inline_asm_elementwise(_ASM2_CLAMP, _CONSTRAINTS2,
                                         [x, s0, k0, s1, k1, s2, k2, s3, k3], dtype=dt,
                                         is_pure=False, pack=4)
    return tl.inline_asm_elementwise(_ASM2, _CONSTRAINTS2, [x, s0, k0, s1, k1, s2, k2, s3, k3],
                                     dtype=dt, is_pure=False, pack=4)


@triton.jit
def _plane_ref(x, s, k, SH: tl.constexpr, BITS: tl.constexpr, CLAMP: tl.constexpr):
    """Interpreter form of one plane (same values): ``c s + z`` from ``s'``/``k'`` in f32
    (``s' 2^b = s`` and ``k' + 1024 s' = z`` exactly), clamped, as fp16."""
    B: tl.constexpr = 4 if BITS == 4 else 6
    c = ((x.to(tl.int32) >> SH) & ((1 << BITS) - 1)).to(tl.float32)
    sf = s.to(tl.float32)
    v = c * (sf * (1 << B)) + (k.to(tl.float32) + _MAGIC * sf)
    if CLAMP:
        v = tl.minimum(v, 127.0)
    return v.to(tl.float16)


@triton.jit
def _scale_pair(s, z, BITS: tl.constexpr):
    """``(s', k')`` fp16 of integer scales ``s`` (uint8) and zeros ``z`` (int8): ``s 2^-b`` and
    ``z - 1024 s 2^-b`` (exact integers / dyadic values)."""
    B: tl.constexpr = 4 if BITS == 4 else 6
    si = s.to(tl.int32)
    sp = (si.to(tl.float32) * (1.0 / (1 << B))).to(tl.float16)
    kp = (z.to(tl.int32) - si * (1 << (10 - B))).to(tl.float32).to(tl.float16)
    return sp, kp


@triton.jit
def _bcast(ptrs, BN: tl.constexpr):
    """The [RB] row at ``ptrs`` broadcast to [BN, RB]."""
    v = tl.load(ptrs)
    return tl.broadcast_to(v[None, :], [BN, v.shape[0]])


@triton.jit
def _read_tile(CB, SB, ZB, t, rows, nmask, BN: tl.constexpr, D: tl.constexpr,
               BITS: tl.constexpr, PC: tl.constexpr, GS: tl.constexpr, CLAMP: tl.constexpr,
               INTERP: tl.constexpr):
    """fp16 read-back planes of flushed tile ``t`` (tokens ``rows``) of one head's store: codes
    CB [token, RB] bytes; scale/zero grid SB/ZB per channel ([block, D] fp16 (s', k'), plane
    major: gpu.kernels.cache._store_grid) or per token ([token, D/GS] uint8 / int8). Returns
    four tensors [BN, RB] (plane i = channels j*PER + i; INT4 repeats planes 0 and 1)."""
    PER: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D // PER
    j = tl.arange(0, RB)
    x = tl.load(CB + rows[:, None] * RB + j[None, :], mask=nmask[:, None], other=0)
    if PC:   # one scale/zero per channel, stored as fp16 (s', k') planes: broadcast along tokens
        row = t * D + j
        s0, k0 = _bcast(SB + row, BN), _bcast(ZB + row, BN)
        s1, k1 = _bcast(SB + row + RB, BN), _bcast(ZB + row + RB, BN)
        if BITS == 2:
            s2, k2 = _bcast(SB + row + 2 * RB, BN), _bcast(ZB + row + 2 * RB, BN)
            s3, k3 = _bcast(SB + row + 3 * RB, BN), _bcast(ZB + row + 3 * RB, BN)
    else:    # one scale/zero per token and GS channels: [BN, NG] broadcast over each group
        NG: tl.constexpr = D // GS
        GB: tl.constexpr = RB // NG
        g = tl.arange(0, NG)
        goff = rows[:, None] * NG + g[None, :]
        sg, kg = _scale_pair(tl.load(SB + goff, mask=nmask[:, None], other=1),
                             tl.load(ZB + goff, mask=nmask[:, None], other=0), BITS)
        s0 = tl.reshape(tl.broadcast_to(sg[:, :, None], [BN, NG, GB]), [BN, RB])
        k0 = tl.reshape(tl.broadcast_to(kg[:, :, None], [BN, NG, GB]), [BN, RB])
        s1, k1, s2, k2, s3, k3 = s0, k0, s0, k0, s0, k0
    if INTERP:
        p0 = _plane_ref(x, s0, k0, 0, BITS, CLAMP)
        p1 = _plane_ref(x, s1, k1, BITS, BITS, CLAMP)
        if BITS == 2:
            p2 = _plane_ref(x, s2, k2, 4, BITS, CLAMP)
            p3 = _plane_ref(x, s3, k3, 6, BITS, CLAMP)
        else:
            p2, p3 = p0, p1
    elif BITS == 4:
        p0, p1 = _planes4(x, s0, k0, s1, k1, CLAMP)
        p2, p3 = p0, p1
    else:
        p0, p1, p2, p3 = _planes2(x, s0, k0, s1, k1, s2, k2, s3, k3, CLAMP)
    return p0, p1, p2, p3


@triton.jit
def _read_flushed(CB, SB, ZB, FL, t, rows, nmask, BN: tl.constexpr, D: tl.constexpr,
                  BITS: tl.constexpr, PC: tl.constexpr, GS: tl.constexpr,
                  CLAMP_MODE: tl.constexpr, INTERP: tl.constexpr):
    """:func:`_read_tile`, clamped where the block's flag ``FL[t]`` says an element reads back
    above 127 (``CLAMP_MODE`` 1), in every tile (2, default: the same values, no branch) or
    never (0: a timing variant, wrong on flagged blocks)."""
    if CLAMP_MODE == 0:
        p0, p1, p2, p3 = _read_tile(CB, SB, ZB, t, rows, nmask, BN, D, BITS, PC, GS, False,
                                    INTERP)
    elif CLAMP_MODE == 2:
        p0, p1, p2, p3 = _read_tile(CB, SB, ZB, t, rows, nmask, BN, D, BITS, PC, GS, True,
                                    INTERP)
    elif tl.load(FL + t) != 0:
        p0, p1, p2, p3 = _read_tile(CB, SB, ZB, t, rows, nmask, BN, D, BITS, PC, GS, True,
                                    INTERP)
    else:
        p0, p1, p2, p3 = _read_tile(CB, SB, ZB, t, rows, nmask, BN, D, BITS, PC, GS, False,
                                    INTERP)
    return p0, p1, p2, p3


@triton.jit
def _read_buffer(BUF, nmask, BN: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """The INT8 buffer tile [BN, D] as fp16 planes (plane i = channels j*PER + i)."""
    PER: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D // PER
    off = tl.arange(0, BN)[:, None] * D + tl.arange(0, RB)[None, :] * PER
    m = nmask[:, None]
    p0 = tl.load(BUF + off, mask=m, other=0).to(tl.float16)
    p1 = tl.load(BUF + off + 1, mask=m, other=0).to(tl.float16)
    if BITS == 2:
        p2 = tl.load(BUF + off + 2, mask=m, other=0).to(tl.float16)
        p3 = tl.load(BUF + off + 3, mask=m, other=0).to(tl.float16)
    else:
        p2, p3 = p0, p1
    return p0, p1, p2, p3


@triton.jit
def _dot(a, b, INTERP: tl.constexpr):
    """fp16 x fp16 -> f32 (exact for the integer operands here); the interpreter takes f32."""
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _scores(q0, q1, q2, q3, p0, p1, p2, p3, BITS: tl.constexpr, INTERP: tl.constexpr):
    """S [BG, BN] = sum over planes of q_i . p_i^T."""
    S = _dot(q0, tl.trans(p0), INTERP) + _dot(q1, tl.trans(p1), INTERP)
    if BITS == 2:
        S += _dot(q2, tl.trans(p2), INTERP) + _dot(q3, tl.trans(p3), INTERP)
    return S


@triton.jit
def _store_scores(S, qf, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                  BN: tl.constexpr, TRACE: tl.constexpr):
    offs_n = t * BN + tl.arange(0, BN)
    nmask = offs_n < Lk
    ks = tl.load(KS8 + bhk * NSLOT + t)
    s = (S * qf[:, None]) * ks
    s = tl.where(nmask[None, :], s, float("-inf"))
    tl.store(SOUT + orow[:, None] * LKP + offs_n[None, :], s, mask=rmask[:, None])
    tl.store(TMAX + orow * NT + t, tl.max(s, 1), mask=rmask)
    if TRACE:
        tl.store(TSI + orow[:, None] * Lk + offs_n[None, :], S.to(tl.int32),
                 mask=rmask[:, None] & nmask[None, :])


@triton.jit
def turbo_scores_kernel(Q8, QS, KC, KSC, KZ, KFL, KBUF, KS8, SOUT, TMAX, TSI, HEADS, qk_scale,
                        Hq, Hkv, G, NG, Lk, NT, NT_FL, CAP, NGRID, NFL, NSLOT, LKP, TPP,
                        D: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
                        BITS: tl.constexpr, K_PC: tl.constexpr, KG: tl.constexpr,
                        TRACE: tl.constexpr, INTERP: tl.constexpr,
                        CLAMP_MODE: tl.constexpr = 2):
    """Pass 1. Grid (cdiv(NT, TPP), B * NG). Q8 int8 [B, Hq, D]; QS f32 [B, Hq]; store KC uint8
    [B, NG, CAP, D*BITS/8]; KSC/KZ the K group grid (NGRID elements per head, see
    gpu.kernels.cache); KFL uint8 [B, Hkv, NFL] clamp flags; KBUF int8 [B, Hkv, BN, D]; KS8 f32
    [B, Hkv, NSLOT]. Writes SOUT f32 [B, Hq, LKP] (-inf past Lk), TMAX f32 [B, Hq, NT], and with
    TRACE the int32 S_int into TSI [B, Hq, Lk]."""
    pid = tl.program_id(0)
    bg = tl.program_id(1)
    b = bg // NG
    slot = bg % NG
    hk = tl.load(HEADS + slot)
    PER: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D // PER
    rows = tl.arange(0, BG)
    rmask = rows < G
    hq = hk * G + rows
    j = tl.arange(0, RB)
    qoff = (b * Hq + hq)[:, None] * D + j[None, :] * PER
    q0 = tl.load(Q8 + qoff, mask=rmask[:, None], other=0).to(tl.float16)
    q1 = tl.load(Q8 + qoff + 1, mask=rmask[:, None], other=0).to(tl.float16)
    if BITS == 2:
        q2 = tl.load(Q8 + qoff + 2, mask=rmask[:, None], other=0).to(tl.float16)
        q3 = tl.load(Q8 + qoff + 3, mask=rmask[:, None], other=0).to(tl.float16)
    else:
        q2, q3 = q0, q1
    qs = tl.load(QS + b * Hq + hq, mask=rmask, other=1.0)
    qf = qs * qk_scale
    bhk = (b * Hkv + hk).to(tl.int64)
    cb = KC + (b * NG + slot).to(tl.int64) * CAP * RB
    sb = KSC + bhk * NGRID
    zb = KZ + bhk * NGRID
    fl = KFL + bhk * NFL
    orow = (b * Hq + hq).to(tl.int64)
    t_lo = pid * TPP
    t_hi = tl.minimum(t_lo + TPP, NT)
    # flushed tiles (no branch but the per-block clamp flag), then the INT8 buffer tile if ours
    for t in range(t_lo, tl.minimum(t_hi, NT_FL)):
        offs_n = t * BN + tl.arange(0, BN)
        nmask = offs_n < Lk
        p0, p1, p2, p3 = _read_flushed(cb, sb, zb, fl, t, offs_n, nmask, BN, D, BITS, K_PC, KG,
                                       CLAMP_MODE, INTERP)
        S = _scores(q0, q1, q2, q3, p0, p1, p2, p3, BITS, INTERP)
        _store_scores(S, qf, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                      BN, TRACE)
    if t_hi > NT_FL:
        t = NT_FL
        nmask = t * BN + tl.arange(0, BN) < Lk
        p0, p1, p2, p3 = _read_buffer(KBUF + bhk * BN * D, nmask, BN, D, BITS)
        S = _scores(q0, q1, q2, q3, p0, p1, p2, p3, BITS, INTERP)
        _store_scores(S, qf, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                      BN, TRACE)


@triton.jit
def _pv_tile(acc0, acc1, acc2, acc3, l_i, a_i, m_i, p0, p1, p2, p3, SIN, TMAX, VS8, TP, TO,
             orow, rmask, bhk, t, Lk, NT, NSLOT, LKP, D: tl.constexpr, BN: tl.constexpr,
             BITS: tl.constexpr, LEVELS: tl.constexpr, P_FP16: tl.constexpr,
             P_ROUNDING: tl.constexpr, P_SATURATE: tl.constexpr, ROWSUM_Q: tl.constexpr,
             THRESHOLD: tl.constexpr, LUT_ENTRIES: tl.constexpr,
             C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
             DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr,
             TRACE: tl.constexpr, INTERP: tl.constexpr):
    """One key tile of the sequential walk (docs/numerics.md online softmax, turbo), V given as
    fp16 planes ``p_i`` [BN, RB]: ``O_i = P8 . p_i`` (f32, exact)."""
    PER: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D // PER
    offs_n = t * BN + tl.arange(0, BN)
    nmask = offs_n < Lk
    s = tl.load(SIN + orow[:, None] * LKP + offs_n[None, :], mask=rmask[:, None], other=0.0)
    tm = tl.load(TMAX + orow * NT + t, mask=rmask, other=0.0)
    m_new = tl.maximum(m_i, tm)
    p = sas_exp2(s - m_new[:, None], THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE,
                 POLY_FP16, EXACT_FMA_F64)
    alpha = sas_rescale(m_i - m_new, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64)
    code = p_codes(p, LEVELS, P_FP16, P_ROUNDING, P_SATURATE)
    if ROWSUM_Q:
        psum = tl.sum(tl.math.div_rn(code, tl.full(code.shape, LEVELS * 1.0, tl.float32)), 1)
    else:
        psum = tl.sum(p, 1)
    pf = code.to(tl.float16)              # P codes <= 127: exact
    vf = tl.math.div_rn(tl.load(VS8 + bhk * NSLOT + t), LEVELS * 1.0)
    O0 = _dot(pf, p0, INTERP)
    O1 = _dot(pf, p1, INTERP)
    acc0 = acc0 * alpha[:, None] + O0 * vf
    acc1 = acc1 * alpha[:, None] + O1 * vf
    if BITS == 2:
        O2 = _dot(pf, p2, INTERP)
        O3 = _dot(pf, p3, INTERP)
        acc2 = acc2 * alpha[:, None] + O2 * vf
        acc3 = acc3 * alpha[:, None] + O3 * vf
    l_i = l_i * alpha + psum
    a_i = a_i * alpha
    if TRACE:
        tl.store(TP + orow[:, None] * Lk + offs_n[None, :], code.to(tl.int8),
                 mask=rmask[:, None] & nmask[None, :])
        tb = TO + (orow[:, None] * NT + t) * D + tl.arange(0, RB)[None, :] * PER
        tl.store(tb, O0.to(tl.int32), mask=rmask[:, None])
        tl.store(tb + 1, O1.to(tl.int32), mask=rmask[:, None])
        if BITS == 2:
            tl.store(tb + 2, O2.to(tl.int32), mask=rmask[:, None])
            tl.store(tb + 3, O3.to(tl.int32), mask=rmask[:, None])
    return acc0, acc1, acc2, acc3, l_i, a_i, m_new


@triton.jit
def turbo_pv_kernel(SIN, TMAX, VC, VSC, VZ, VFL, VBUF, VS8, ACC, LS, AS, TP, TO, HEADS,
                    Hq, Hkv, G, NG, Lk, NT, NT_FL, CAP, NGRID, NFL, NSLOT, LKP, TPS, NSPLIT,
                    D: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, BITS: tl.constexpr,
                    V_PC: tl.constexpr, VG: tl.constexpr,
                    LEVELS: tl.constexpr, P_FP16: tl.constexpr,
                    P_ROUNDING: tl.constexpr, P_SATURATE: tl.constexpr, ROWSUM_Q: tl.constexpr,
                    THRESHOLD: tl.constexpr, LUT_ENTRIES: tl.constexpr,
                    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                    DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr,
                    TMCHUNK: tl.constexpr, TRACE: tl.constexpr, INTERP: tl.constexpr,
                    CLAMP_MODE: tl.constexpr = 2):
    """Pass 2. Grid (NSPLIT, B * NG); split j walks tiles [j*TPS, (j+1)*TPS). Store as pass 1
    (V's grid and flags). Writes ACC f32 [B, Hq, NSPLIT, D], LS / AS f32 [B, Hq, NSPLIT]; with
    TRACE the P codes TP int8 [B, Hq, Lk] and O_int TO int32 [B, Hq, NT, D]."""
    j = tl.program_id(0)
    bg = tl.program_id(1)
    b = bg // NG
    slot = bg % NG
    hk = tl.load(HEADS + slot)
    PER: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D // PER
    rows = tl.arange(0, BG)
    rmask = rows < G
    hq = hk * G + rows
    orow = (b * Hq + hq).to(tl.int64)
    bhk = (b * Hkv + hk).to(tl.int64)
    cb = VC + (b * NG + slot).to(tl.int64) * CAP * RB
    sb = VSC + bhk * NGRID
    zb = VZ + bhk * NGRID
    fl = VFL + bhk * NFL
    t_lo = j * TPS
    t_hi = tl.minimum(t_lo + TPS, NT)
    # running max the sequential walk holds before tile t_lo
    m_i = tl.full([BG], float("-inf"), tl.float32)
    for c0 in range(0, t_lo, TMCHUNK):
        tt = c0 + tl.arange(0, TMCHUNK)
        tm = tl.load(TMAX + orow[:, None] * NT + tt[None, :],
                     mask=rmask[:, None] & (tt < t_lo)[None, :], other=float("-inf"))
        m_i = tl.maximum(m_i, tl.max(tm, 1))
    m_i = tl.where(rmask, m_i, 0.0)
    l_i = tl.zeros([BG], tl.float32)
    a_i = tl.full([BG], 1.0, tl.float32)
    acc0 = tl.zeros([BG, RB], tl.float32)
    acc1 = tl.zeros([BG, RB], tl.float32)
    acc2 = tl.zeros([BG, RB], tl.float32)
    acc3 = tl.zeros([BG, RB], tl.float32)
    for t in range(t_lo, tl.minimum(t_hi, NT_FL)):
        offs_n = t * BN + tl.arange(0, BN)
        nmask = offs_n < Lk
        p0, p1, p2, p3 = _read_flushed(cb, sb, zb, fl, t, offs_n, nmask, BN, D, BITS, V_PC, VG,
                                       CLAMP_MODE, INTERP)
        acc0, acc1, acc2, acc3, l_i, a_i, m_i = _pv_tile(
            acc0, acc1, acc2, acc3, l_i, a_i, m_i, p0, p1, p2, p3, SIN, TMAX, VS8, TP, TO, orow,
            rmask, bhk, t, Lk, NT, NSLOT, LKP, D, BN, BITS, LEVELS, P_FP16, P_ROUNDING,
            P_SATURATE, ROWSUM_Q, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16,
            EXACT_FMA_F64, TRACE, INTERP)
    if t_hi > NT_FL:
        t = NT_FL
        nmask = t * BN + tl.arange(0, BN) < Lk
        p0, p1, p2, p3 = _read_buffer(VBUF + bhk * BN * D, nmask, BN, D, BITS)
        acc0, acc1, acc2, acc3, l_i, a_i, m_i = _pv_tile(
            acc0, acc1, acc2, acc3, l_i, a_i, m_i, p0, p1, p2, p3, SIN, TMAX, VS8, TP, TO, orow,
            rmask, bhk, t, Lk, NT, NSLOT, LKP, D, BN, BITS, LEVELS, P_FP16, P_ROUNDING,
            P_SATURATE, ROWSUM_Q, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16,
            EXACT_FMA_F64, TRACE, INTERP)
    po = orow * NSPLIT + j
    ab = ACC + po[:, None] * D + tl.arange(0, RB)[None, :] * PER
    tl.store(ab, acc0, mask=rmask[:, None])
    tl.store(ab + 1, acc1, mask=rmask[:, None])
    if BITS == 2:
        tl.store(ab + 2, acc2, mask=rmask[:, None])
        tl.store(ab + 3, acc3, mask=rmask[:, None])
    tl.store(LS + po, l_i, mask=rmask)
    tl.store(AS + po, a_i, mask=rmask)


@triton.jit
def _store_out(Out, off, o):
    """Store f32 ``o`` in Out's dtype, rounding to nearest even (bf16 by bits: the interpreter's
    f32 -> bf16 cast truncates; on the GPU the result is the same as the cast)."""
    if Out.dtype.element_ty == tl.bfloat16:
        b = o.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        o = b.to(tl.float32, bitcast=True)
    tl.store(Out + off, o.to(Out.dtype.element_ty))


@triton.jit
def turbo_combine_kernel(ACC, LS, AS, Out, NSPLIT, sob, soh, Hq, D: tl.constexpr):
    """Grid (B * Hq,): acc = acc * A_j + acc_j, l = l * A_j + l_j in split order; out = acc / l."""
    bh = tl.program_id(0)
    cols = tl.arange(0, D)
    acc = tl.zeros([D], tl.float32)
    l_i = tl.sum(tl.zeros([1], tl.float32), 0)
    base = bh.to(tl.int64) * NSPLIT
    for j in range(0, NSPLIT):
        a = tl.load(AS + base + j)
        acc = acc * a + tl.load(ACC + (base + j) * D + cols)
        l_i = l_i * a + tl.load(LS + base + j)
    seen = l_i > 0
    o = tl.math.div_rn(acc, tl.where(seen, l_i, 1.0))
    o = tl.where(seen, o, 0.0)
    b = bh // Hq
    h = bh % Hq
    _store_out(Out, b * sob + h * soh + cols, o)
