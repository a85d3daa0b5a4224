"""Decode kernels (one query row per head): turbo over the progressive cache, split-K flash-decode.

turbo (docs/numerics.md "turbo" and "turbo KV cache"). The online softmax's P codes depend on the
running max after each key tile, so a plain split-K (each split with its own max) would change
them. Two passes keep every integer identical to the sequential tile walk of ``sim``:

1. :func:`turbo_scores_kernel` — per key tile: K read back to INT8 with integers only
   (``clamp(code * scale + zero, -127, 127)`` for flushed tiles, the INT8 buffer otherwise),
   ``S_int = dot(q8, k8^T)`` (int32), ``s = (f32(S_int) * qf) * k_scale`` (f32), written with the
   tile's row max.
2. :func:`turbo_pv_kernel` — split j of the tiles starts from ``m = max`` of the tile maxima
   before it (the running max the sequential walk has there) and walks its tiles exactly as the
   sequential engine: ``m_new``, SAS ``p``, ``alpha``, PQUANT, ``O_int = dot(P8, v8)`` (int32),
   ``acc = acc * alpha + f32(O_int) * vf``, ``l = l * alpha + psum``; it also keeps ``A_j`` =
   the product of its alphas.
3. :func:`turbo_combine_kernel` — ``acc = acc * A_j + acc_j`` over splits in order (Horner: the
   sequential recurrence regrouped, so only f32 rounding differs), ``out = acc / l``.

Flushed storage is one bit width per launch (``BITS`` constexpr, heads listed in HEADS): a mixed
INT4/INT2 cache runs passes 1 and 2 once per width. Rows of a program are the ``G`` query heads
of one KV head, padded to a power of two ``BG``; with ``USE_DOT`` (G > 2, ``BG >= 16``) the
integer products are ``tl.dot`` (int8 tensor cores), otherwise exact int32 products summed on
CUDA cores (MHA decode would waste 15 of 16 ``tl.dot`` rows, and their SAS work).

fp16_flash / double_sparse: :func:`flash_decode_kernel` (split-K over key slots, one query head
per program; with ``GATHER`` slot ``i`` reads key ``IDX[i]``, the selected rows, inside the
kernel), :func:`flash_decode_group_kernel` (fp16_flash: the G query heads of one KV head per
program, tensor-core dots, K/V read once per KV head) and :func:`flash_combine_kernel`
(``M = max m_j``, weights ``exp2(m_j - M)``).
"""
import triton
import triton.language as tl

from .flash_fwd import p_codes
from .sas import sas_exp2, sas_rescale


@triton.jit
def _unpack_int8(CB, SB, ZB, rows, RB: tl.constexpr, D: tl.constexpr, BN: tl.constexpr,
                 BITS: tl.constexpr, GROUP_ROWS: tl.constexpr, GROUP_COLS: tl.constexpr,
                 NSC: tl.constexpr, rmask):
    """INT8 values [BN, D] of packed rows: bytes CB [row, RB]; scale/zero SB/ZB [row // GROUP_ROWS,
    NSC] with column group ``col // GROUP_COLS`` (integer-only: clamp(code * s + z, -127, 127))."""
    bytes_ = tl.arange(0, RB)
    byt = tl.load(CB + rows[:, None] * RB + bytes_[None, :], mask=rmask[:, None], other=0)
    byt = byt.to(tl.int32)
    if BITS == 4:
        c = tl.reshape(tl.join(byt & 15, byt >> 4), [BN, D])
    else:
        c = tl.reshape(tl.join(tl.join(byt & 3, (byt >> 4) & 3),
                               tl.join((byt >> 2) & 3, (byt >> 6) & 3)), [BN, D])
    cols = tl.arange(0, D)
    if GROUP_COLS > 1:
        g = tl.arange(0, D // GROUP_COLS)
        soff = (rows // GROUP_ROWS)[:, None] * NSC + g[None, :]
        s = tl.load(SB + soff, mask=rmask[:, None], other=0).to(tl.int32)
        z = tl.load(ZB + soff, mask=rmask[:, None], other=0).to(tl.int32)
        c3 = tl.reshape(c, [BN, D // GROUP_COLS, GROUP_COLS])
        v = tl.reshape(c3 * s[:, :, None] + z[:, :, None], [BN, D])
    elif GROUP_ROWS >= BN:  # the tile lies in one row group (tiles are BN-aligned): one row
        soff = (tl.min(rows, 0) // GROUP_ROWS) * NSC + cols
        s = tl.load(SB + soff).to(tl.int32)
        z = tl.load(ZB + soff).to(tl.int32)
        v = c * s[None, :] + z[None, :]
    else:
        soff = (rows // GROUP_ROWS)[:, None] * NSC + cols[None, :]
        s = tl.load(SB + soff, mask=rmask[:, None], other=0).to(tl.int32)
        z = tl.load(ZB + soff, mask=rmask[:, None], other=0).to(tl.int32)
        v = c * s + z
    v = tl.minimum(tl.maximum(v, -127), 127)
    return v.to(tl.int8)


@triton.jit
def packed_codes(CB, rows, RB: tl.constexpr, D: tl.constexpr, BN: tl.constexpr, BITS: tl.constexpr,
           rmask):
    """Unsigned codes [BN, D] (int8) of packed rows: bytes CB [row, RB], little end first."""
    byt = tl.load(CB + rows[:, None] * RB + tl.arange(0, RB)[None, :], mask=rmask[:, None],
                  other=0)
    if BITS == 4:
        c = tl.reshape(tl.join(byt & 15, byt >> 4), [BN, D])
    else:
        c = tl.reshape(tl.join(tl.join(byt & 3, (byt >> 4) & 3),
                               tl.join((byt >> 2) & 3, (byt >> 6) & 3)), [BN, D])
    return c.to(tl.int8)


@triton.jit
def _clamp_code(s, z, LV: tl.constexpr):
    """Smallest code ``c*`` with ``c* s + z > 127`` (int32; > LV: the clamp never triggers) and
    the excess ``e = c* s + z - 127`` (0 where c* > LV). Requantized codes never exceed the code
    of the group maximum ``cm = (mx - z + s//2) // s`` and ``(cm - 1) s + z <= mx + s//2 - s < 127``
    (sim.numerics.requantize: z = group min, mx = group max), so every clamped element of a
    group holds exactly ``c*``. The quotient
    ``(127 - z) / s`` (both integers <= 255) is at least 1/255 from the next integer unless
    exact, far above f32 rounding: floor is exact."""
    sf = tl.maximum(s, 1)
    cs = ((127 - z).to(tl.float32) / sf.to(tl.float32)).to(tl.int32) + 1
    e = tl.where(cs <= LV, cs * sf + z - 127, 0)
    return cs, e


@triton.jit
def _fold_scores(c8, QX, QSUM3, SB, ZB, rows, nmask, BN: tl.constexpr, D: tl.constexpr,
                 KG: tl.constexpr, NGP: tl.constexpr, BG: tl.constexpr, LV: tl.constexpr):
    """S_int [BG, BN] of one flushed K tile without dequantizing: per token n and channel group g
    ``S = sum_g s_ng (q_g . c_ng) + z_ng sum(q_g) - e_ng (q_g . [c_ng == c*_ng])`` (exactly
    ``q . clamp(c s + z, -127, 127)``). ``QX`` int8 [D, NGP*BG]: column ``g*BG + r`` holds
    query row r on group g's channels, zero elsewhere, so one int8 dot gives every group's
    partial dot."""
    NGRP: tl.constexpr = D // KG
    P = tl.dot(c8, QX)                                            # [BN, NGP*BG] int32
    gg = tl.arange(0, NGP)
    gm = nmask[:, None] & (gg < NGRP)[None, :]
    soff = rows[:, None] * NGRP + gg[None, :]
    s = tl.load(SB + soff, mask=gm, other=0).to(tl.int32)
    z = tl.load(ZB + soff, mask=gm, other=0).to(tl.int32)
    cs, e = _clamp_code(s, z, LV)
    e = tl.where(gm, e, 0)
    S3 = (tl.reshape(P, [BN, NGP, BG]) * s[:, :, None]
          + QSUM3[None, :, :] * z[:, :, None])
    if tl.max(tl.max(e, 1), 0) > 0:  # some group clamps: subtract its excess (exact)
        g2 = tl.arange(0, NGRP)
        so2 = rows[:, None] * NGRP + g2[None, :]
        s2 = tl.load(SB + so2, mask=nmask[:, None], other=0).to(tl.int32)
        z2 = tl.load(ZB + so2, mask=nmask[:, None], other=0).to(tl.int32)
        cs2, e2 = _clamp_code(s2, z2, LV)
        cs2 = tl.where(e2 > 0, cs2, 255)
        ind = tl.reshape(tl.reshape(c8.to(tl.int32), [BN, NGRP, KG]) == cs2[:, :, None], [BN, D])
        Pc = tl.dot(ind.to(tl.int8), QX)
        S3 = S3 - tl.reshape(Pc, [BN, NGP, BG]) * e[:, :, None]
    return tl.trans(tl.sum(S3, 1))                                # [BG, BN]


@triton.jit
def turbo_scores_kernel(Q8, QS, KC, KSC, KZ, KBUF, KS8, SOUT, TMAX, TSI, HEADS, qk_scale,
                        Hq, Hkv, G, NG, Lk, NT, NT_FL, CAP, NSLOT, LKP, TPP,
                        D: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, KG: tl.constexpr,
                        BITS: tl.constexpr, TRACE: tl.constexpr, USE_DOT: tl.constexpr,
                        FOLD: tl.constexpr = False, NGP: tl.constexpr = 1):
    """Pass 1. Grid (cdiv(NT, TPP), B * NG). Q8 int8 [B, Hq, D]; QS f32 [B, Hq]; store KC uint8
    [B, NG, CAP, D*BITS/8]; KSC/KZ [B, Hkv, CAP, D/KG]; KBUF int8 [B, Hkv, BN, D]; KS8 f32
    [B, Hkv, NSLOT]. Writes SOUT f32 [B, Hq, LKP] (-inf past Lk), TMAX f32 [B, Hq, NT], and with
    TRACE the int32 S_int into TSI [B, Hq, Lk]. FOLD: flushed tiles through :func:`_fold_scores`
    (NGP >= D/KG groups, NGP * BG >= 16 dot columns), else dequantized to INT8 first."""
    pid = tl.program_id(0)
    bg = tl.program_id(1)
    b = bg // NG
    slot = bg % NG
    hk = tl.load(HEADS + slot)
    RB: tl.constexpr = D * BITS // 8
    rows = tl.arange(0, BG)
    rmask = rows < G
    hq = hk * G + rows
    cols = tl.arange(0, D)
    q = tl.load(Q8 + (b * Hq + hq)[:, None] * D + cols[None, :], mask=rmask[:, None], other=0)
    qs = tl.load(QS + b * Hq + hq, mask=rmask, other=1.0)
    qf = qs * qk_scale
    bhk = (b * Hkv + hk).to(tl.int64)
    cb = KC + (b * NG + slot).to(tl.int64) * CAP * RB
    sb = KSC + bhk * CAP * (D // KG)
    zb = KZ + bhk * CAP * (D // KG)
    orow = (b * Hq + hq).to(tl.int64)
    t_lo = pid * TPP
    t_hi = tl.minimum(t_lo + TPP, NT)
    # flushed tiles (no branch in the loop: it pipelines), then the INT8 buffer tile if ours
    if FOLD:
        NQ: tl.constexpr = NGP * BG
        dq = tl.arange(0, D)
        cq = tl.arange(0, NQ)
        rq = cq % BG
        qx = tl.load(Q8 + (b * Hq + hk * G + rq)[None, :] * D + dq[:, None],
                     mask=((dq // KG)[:, None] == (cq // BG)[None, :]) & (rq < G)[None, :],
                     other=0)
        qsum3 = tl.reshape(tl.sum(qx.to(tl.int32), 0), [NGP, BG])
        for t in range(t_lo, tl.minimum(t_hi, NT_FL)):
            offs_n = t * BN + tl.arange(0, BN)
            nmask = offs_n < Lk
            c8 = packed_codes(cb, offs_n, RB, D, BN, BITS, nmask)
            S = _fold_scores(c8, qx, qsum3, sb, zb, offs_n, nmask, BN, D, KG, NGP, BG,
                             (1 << BITS) - 1)
            _store_scores(S, qf, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                          BN, TRACE)
    else:
        for t in range(t_lo, tl.minimum(t_hi, NT_FL)):
            offs_n = t * BN + tl.arange(0, BN)
            k8 = _unpack_int8(cb, sb, zb, offs_n, RB, D, BN, BITS, 1, KG, D // KG, offs_n < Lk)
            _score_tile(q, qf, k8, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                        BN, TRACE, USE_DOT)
    if t_hi > NT_FL:
        t = NT_FL
        offs_n = t * BN + tl.arange(0, BN)
        k8 = tl.load(KBUF + bhk * BN * D + tl.arange(0, BN)[:, None] * D + cols[None, :],
                     mask=(offs_n < Lk)[:, None], other=0)
        _score_tile(q, qf, k8, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                    BN, TRACE, USE_DOT)


@triton.jit
def _score_tile(q, qf, k8, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                BN: tl.constexpr, TRACE: tl.constexpr, USE_DOT: tl.constexpr):
    if USE_DOT:
        S = tl.dot(q, tl.trans(k8))
    else:  # few rows: exact int32 products summed on CUDA cores (no 16-row padding)
        S = tl.sum(q.to(tl.int32)[:, None, :] * k8.to(tl.int32)[None, :, :], 2)
    _store_scores(S, qf, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP, BN, TRACE)


@triton.jit
def _store_scores(S, qf, KS8, SOUT, TMAX, TSI, bhk, orow, rmask, t, Lk, NT, NSLOT, LKP,
                  BN: tl.constexpr, TRACE: tl.constexpr):
    offs_n = t * BN + tl.arange(0, BN)
    nmask = offs_n < Lk
    ks = tl.load(KS8 + bhk * NSLOT + t)
    s = (S.to(tl.float32) * qf[:, None]) * ks
    s = tl.where(nmask[None, :], s, float("-inf"))
    tl.store(SOUT + orow[:, None] * LKP + offs_n[None, :], s, mask=rmask[:, None])
    tl.store(TMAX + orow * NT + t, tl.max(s, 1), mask=rmask)
    if TRACE:
        tl.store(TSI + orow[:, None] * Lk + offs_n[None, :], S,
                 mask=rmask[:, None] & nmask[None, :])


@triton.jit
def _pv_tile(acc, l_i, a_i, m_i, v8, SIN, TMAX, VS8, TP, TO, orow, rmask, bhk, t, Lk, NT, NSLOT,
             LKP, D: tl.constexpr, BN: tl.constexpr, LEVELS: tl.constexpr, P_FP16: tl.constexpr,
             P_ROUNDING: tl.constexpr, P_SATURATE: tl.constexpr, ROWSUM_Q: tl.constexpr,
             THRESHOLD: tl.constexpr, LUT_ENTRIES: tl.constexpr,
             C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
             DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr,
             TRACE: tl.constexpr, USE_DOT: tl.constexpr, FOLD: tl.constexpr = False,
             vs=None, vz=None, LV: tl.constexpr = 15):
    """One key tile of the sequential walk (docs/numerics.md online softmax, turbo).

    FOLD: ``v8`` holds the tile's unsigned codes (one V group of tokens: scale ``vs`` / zero
    ``vz`` per channel) and ``O = vs (P8 . C) + vz sum(P8) - e (P8 . [C == c*])`` exactly
    (see :func:`_clamp_code`); one query row is padded to the 16 rows of an int8 dot."""
    offs_n = t * BN + tl.arange(0, BN)
    nmask = offs_n < Lk
    cols = tl.arange(0, D)
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
    p8 = code.to(tl.int8)
    if FOLD:
        BG: tl.constexpr = p8.shape[0]
        if BG == 1:
            pd = tl.where(tl.arange(0, 16)[:, None] == 0, p8, 0).to(tl.int8)
        else:
            pd = p8
        O = tl.dot(pd, v8) * vs[None, :]
        cs, e = _clamp_code(vs, vz, LV)
        if tl.max(e, 0) > 0:  # some channel clamps: subtract its excess (exact)
            ind = (v8.to(tl.int32) == tl.where(e > 0, cs, 255)[None, :]).to(tl.int8)
            O = O - tl.dot(pd, ind) * e[None, :]
        if BG == 1:
            O = tl.sum(O, 0, keep_dims=True)
        O = O + tl.sum(p8.to(tl.int32), 1)[:, None] * vz[None, :]
    elif USE_DOT:
        O = tl.dot(p8, v8)
    else:
        O = tl.sum(p8.to(tl.int32)[:, :, None] * v8.to(tl.int32)[None, :, :], 1)
    vf = tl.math.div_rn(tl.load(VS8 + bhk * NSLOT + t), LEVELS * 1.0)
    acc = acc * alpha[:, None] + O.to(tl.float32) * vf
    l_i = l_i * alpha + psum
    a_i = a_i * alpha
    if TRACE:
        tl.store(TP + orow[:, None] * Lk + offs_n[None, :], p8,
                 mask=rmask[:, None] & nmask[None, :])
        tl.store(TO + (orow[:, None] * NT + t) * D + cols[None, :], O, mask=rmask[:, None])
    return acc, l_i, a_i, m_new


@triton.jit
def turbo_pv_kernel(SIN, TMAX, VC, VSC, VZ, VBUF, VS8, ACC, LS, AS, TP, TO, HEADS,
                    Hq, Hkv, G, NG, Lk, NT, NT_FL, CAP, NCAPV, NSLOT, LKP, TPS, NSPLIT,
                    D: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, VG: tl.constexpr,
                    BITS: tl.constexpr, LEVELS: tl.constexpr, P_FP16: tl.constexpr,
                    P_ROUNDING: tl.constexpr, P_SATURATE: tl.constexpr, ROWSUM_Q: tl.constexpr,
                    THRESHOLD: tl.constexpr, LUT_ENTRIES: tl.constexpr,
                    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                    DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr,
                    TMCHUNK: tl.constexpr, TRACE: tl.constexpr, USE_DOT: tl.constexpr,
                    FOLD: tl.constexpr = False):
    """Pass 2. FOLD (needs VG % BN == 0): flushed tiles folded (:func:`_pv_tile`), else
    dequantized to INT8 first. Grid (NSPLIT, B * NG); split j walks tiles [j*TPS, (j+1)*TPS). Writes ACC f32
    [B, Hq, NSPLIT, D], LS / AS f32 [B, Hq, NSPLIT]; with TRACE the P codes TP int8 [B, Hq, Lk]
    and O_int TO int32 [B, Hq, NT, D]."""
    j = tl.program_id(0)
    bg = tl.program_id(1)
    b = bg // NG
    slot = bg % NG
    hk = tl.load(HEADS + slot)
    RB: tl.constexpr = D * BITS // 8
    rows = tl.arange(0, BG)
    rmask = rows < G
    hq = hk * G + rows
    orow = (b * Hq + hq).to(tl.int64)
    cols = tl.arange(0, D)
    bhk = (b * Hkv + hk).to(tl.int64)
    cb = VC + (b * NG + slot).to(tl.int64) * CAP * RB
    sb = VSC + bhk * NCAPV * D
    zb = VZ + bhk * NCAPV * D
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
    acc = tl.zeros([BG, D], tl.float32)
    if FOLD:
        for t in range(t_lo, tl.minimum(t_hi, NT_FL)):
            offs_n = t * BN + tl.arange(0, BN)
            c8 = packed_codes(cb, offs_n, RB, D, BN, BITS, offs_n < Lk)
            soff = (t * BN // VG) * D + cols
            vs = tl.load(sb + soff).to(tl.int32)
            vz = tl.load(zb + soff).to(tl.int32)
            acc, l_i, a_i, m_i = _pv_tile(acc, l_i, a_i, m_i, c8, SIN, TMAX, VS8, TP, TO, orow,
                                          rmask, bhk, t, Lk, NT, NSLOT, LKP, D, BN, LEVELS,
                                          P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, THRESHOLD,
                                          LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16,
                                          EXACT_FMA_F64, TRACE, USE_DOT, True, vs, vz,
                                          (1 << BITS) - 1)
    else:
        for t in range(t_lo, tl.minimum(t_hi, NT_FL)):
            offs_n = t * BN + tl.arange(0, BN)
            v8 = _unpack_int8(cb, sb, zb, offs_n, RB, D, BN, BITS, VG, 1, D, offs_n < Lk)
            acc, l_i, a_i, m_i = _pv_tile(acc, l_i, a_i, m_i, v8, SIN, TMAX, VS8, TP, TO, orow,
                                          rmask, bhk, t, Lk, NT, NSLOT, LKP, D, BN, LEVELS,
                                          P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, THRESHOLD,
                                          LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16,
                                          EXACT_FMA_F64, TRACE, USE_DOT)
    if t_hi > NT_FL:
        t = NT_FL
        offs_n = t * BN + tl.arange(0, BN)
        v8 = tl.load(VBUF + bhk * BN * D + tl.arange(0, BN)[:, None] * D + cols[None, :],
                     mask=(offs_n < Lk)[:, None], other=0)
        acc, l_i, a_i, m_i = _pv_tile(acc, l_i, a_i, m_i, v8, SIN, TMAX, VS8, TP, TO, orow, rmask,
                                      bhk, t, Lk, NT, NSLOT, LKP, D, BN, LEVELS, P_FP16,
                                      P_ROUNDING, P_SATURATE, ROWSUM_Q, THRESHOLD, LUT_ENTRIES,
                                      C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64, TRACE,
                                      USE_DOT)
    po = orow * NSPLIT + j
    tl.store(ACC + po[:, None] * D + cols[None, :], acc, mask=rmask[:, None])
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


@triton.jit
def flash_decode_kernel(Q, K, V, IDX, CNT, M, LS, ACC, qk_scale,
                        Hq, G, NSPLIT, SPS, sqb, sqh, skb, skh, skn, svb, svh, svn, sib,
                        D: tl.constexpr, BN: tl.constexpr, GATHER: tl.constexpr,
                        P_BF16: tl.constexpr):
    """Split-K flash-decode, fp16 sequence (docs/numerics.md fp16_flash / double_sparse);
    P is rounded to the operand format (fp16, or bf16 with P_BF16) before PV.

    Grid (NSPLIT, B * Hq). Slots ``[j*SPS, (j+1)*SPS)`` of the row's ``CNT[b*Hq+h]`` slots;
    slot i reads key ``IDX[bh, i]`` (GATHER) or key i. K/V [B, Hkv, L, D] strided (unit D stride).
    Writes per split m, l (f32 [B*Hq, NSPLIT]) and acc (f32 [B*Hq, NSPLIT, D])."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // G
    cols = tl.arange(0, D)
    q = tl.load(Q + b * sqb + h * sqh + cols).to(tl.float32)
    n = tl.load(CNT + bh)
    lo = j * SPS
    hi = tl.minimum(lo + SPS, n)
    kb = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh  # > 2^31 elements at long contexts
    vb = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    m_i = tl.max(tl.full([BN], float("-inf"), tl.float32), 0)
    l_i = tl.sum(tl.zeros([BN], tl.float32), 0)
    acc = tl.zeros([D], tl.float32)
    for start in range(lo, hi, BN):
        slots = start + tl.arange(0, BN)
        smask = slots < hi
        if GATHER:
            idx = tl.load(IDX + bh.to(tl.int64) * sib + slots, mask=smask, other=0).to(tl.int64)
        else:
            idx = slots.to(tl.int64)
        k = tl.load(kb + idx[:, None] * skn + cols[None, :], mask=smask[:, None], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], 1) * qk_scale
        s = tl.where(smask, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        p = tl.math.exp2(s - m_new)
        alpha = tl.math.exp2(m_i - m_new)
        v = tl.load(vb + idx[:, None] * svn + cols[None, :], mask=smask[:, None], other=0.0)
        if P_BF16:  # round to nearest even by bits (the interpreter's f32 -> bf16 cast truncates)
            pb = p.to(tl.uint32, bitcast=True)
            pb = (pb + 0x7FFF + ((pb >> 16) & 1)) & 0xFFFF0000
            p16 = pb.to(tl.float32, bitcast=True)
        else:
            p16 = p.to(tl.float16).to(tl.float32)
        acc = acc * alpha + tl.sum(p16[:, None] * v.to(tl.float32), 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    po = bh.to(tl.int64) * NSPLIT + j
    tl.store(M + po, m_i)
    tl.store(LS + po, l_i)
    tl.store(ACC + po * D + cols, acc)


@triton.jit
def flash_combine_kernel(M, LS, ACC, Out, NSPLIT, sob, soh, Hq, D: tl.constexpr,
                         SPLIT_P2: tl.constexpr):
    """Grid (B * Hq,): out = sum_j acc_j w_j / sum_j l_j w_j, w_j = exp2(m_j - max m)."""
    bh = tl.program_id(0)
    cols = tl.arange(0, D)
    jj = tl.arange(0, SPLIT_P2)
    jm = jj < NSPLIT
    base = bh.to(tl.int64) * NSPLIT
    m = tl.load(M + base + jj, mask=jm, other=float("-inf"))
    mx = tl.max(m, 0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.math.exp2(m - mx)
    w = tl.where(jm, w, 0.0)
    l_i = tl.sum(tl.load(LS + base + jj, mask=jm, other=0.0) * w, 0)
    acc = tl.load(ACC + (base + jj)[:, None] * D + cols[None, :], mask=jm[:, None], other=0.0)
    acc = tl.sum(acc * w[:, None], 0)
    seen = l_i > 0
    o = tl.math.div_rn(acc, tl.where(seen, l_i, 1.0))
    o = tl.where(seen, o, 0.0)
    b = bh // Hq
    h = bh % Hq
    _store_out(Out, b * sob + h * soh + cols, o)


@triton.jit
def flash_decode_group_kernel(Q, K, V, M, LS, ACC, qk_scale, Hq, Hkv, G, NCOUNT, NSPLIT, SPS,
                              sqb, sqh, skb, skh, skn, svb, svh, svn,
                              D: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
                              P_BF16: tl.constexpr, DOT_F32: tl.constexpr):
    """:func:`flash_decode_kernel` over all keys with the ``G`` query heads of one KV head in one
    program, so each K/V tile is read once per KV head (not once per query head).

    Grid (NSPLIT, B * Hkv). Rows are query heads ``hk*G + r``, ``r < G``, padded to ``BG >= 16``
    (zero q rows, never stored); ``S = dot(q, k^T)`` and ``PV = dot(rnd(p), v)`` run on tensor
    cores with f32 accumulation (the contract's sums in another order). DOT_F32 (interpreter):
    the operands go to the dot as f32, exact copies of the fp16 / bf16 values, in IEEE f32.
    Writes m, l, acc per query head exactly as :func:`flash_decode_kernel` (same layout)."""
    j = tl.program_id(0)
    bk = tl.program_id(1)
    b = bk // Hkv
    hk = bk % Hkv
    rows = tl.arange(0, BG)
    rmask = rows < G
    hq = hk * G + rows
    cols = tl.arange(0, D)
    q = tl.load(Q + b.to(tl.int64) * sqb + hq[:, None] * sqh + cols[None, :],
                mask=rmask[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    lo = j * SPS
    hi = tl.minimum(lo + SPS, NCOUNT)
    kb = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh  # > 2^31 elements at long contexts
    vb = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    m_i = tl.full([BG], float("-inf"), tl.float32)
    l_i = tl.zeros([BG], tl.float32)
    acc = tl.zeros([BG, D], tl.float32)
    for start in range(lo, hi, BN):
        slots = start + tl.arange(0, BN)
        smask = slots < hi
        idx = slots.to(tl.int64)
        k = tl.load(kb + idx[:, None] * skn + cols[None, :], mask=smask[:, None], other=0.0)
        if DOT_F32:
            S = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            S = tl.dot(q, tl.trans(k))
        s = S * qk_scale
        s = tl.where(smask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        v = tl.load(vb + idx[:, None] * svn + cols[None, :], mask=smask[:, None], other=0.0)
        if P_BF16:  # round to nearest even by bits (the interpreter's f32 -> bf16 cast truncates)
            pb = p.to(tl.uint32, bitcast=True)
            pb = (pb + 0x7FFF + ((pb >> 16) & 1)) & 0xFFFF0000
            p16 = pb.to(tl.float32, bitcast=True)
        else:
            p16 = p.to(tl.float16).to(tl.float32)
        if DOT_F32:
            pv = tl.dot(p16, v.to(tl.float32), input_precision="ieee")
        else:  # p16 holds values of V's format: the cast is exact
            pv = tl.dot(p16.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    po = (b * Hq + hq).to(tl.int64) * NSPLIT + j
    tl.store(M + po, m_i, mask=rmask)
    tl.store(LS + po, l_i, mask=rmask)
    tl.store(ACC + po[:, None] * D + cols[None, :], acc, mask=rmask[:, None])
