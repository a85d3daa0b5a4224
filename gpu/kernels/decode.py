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

fp16_flash / double_sparse: :func:`flash_decode_kernel` (split-K over key slots; with
``GATHER`` slot ``i`` reads key ``IDX[i]``, the selected rows, inside the kernel) and
:func:`flash_combine_kernel` (``M = max m_j``, weights ``exp2(m_j - M)``).
"""
import triton
import triton.language as tl

from .flash_fwd import _p_codes
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
def turbo_scores_kernel(Q8, QS, KC, KSC, KZ, KBUF, KS8, SOUT, TMAX, TSI, HEADS, qk_scale,
                        Hq, Hkv, G, NG, Lk, NT, NT_FL, CAP, NSLOT, LKP, TPP,
                        D: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, KG: tl.constexpr,
                        BITS: tl.constexpr, TRACE: tl.constexpr, USE_DOT: tl.constexpr):
    """Pass 1. Grid (cdiv(NT, TPP), B * NG). Q8 int8 [B, Hq, D]; QS f32 [B, Hq]; store KC uint8
    [B, NG, CAP, D*BITS/8]; KSC/KZ [B, Hkv, CAP, D/KG]; KBUF int8 [B, Hkv, BN, D]; KS8 f32
    [B, Hkv, NSLOT]. Writes SOUT f32 [B, Hq, LKP] (-inf past Lk), TMAX f32 [B, Hq, NT], and with
    TRACE the int32 S_int into TSI [B, Hq, Lk]."""
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
    offs_n = t * BN + tl.arange(0, BN)
    nmask = offs_n < Lk
    if USE_DOT:
        S = tl.dot(q, tl.trans(k8))
    else:  # few rows: exact int32 products summed on CUDA cores (no 16-row padding)
        S = tl.sum(q.to(tl.int32)[:, None, :] * k8.to(tl.int32)[None, :, :], 2)
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
             TRACE: tl.constexpr, USE_DOT: tl.constexpr):
    """One key tile of the sequential walk (docs/numerics.md online softmax, turbo)."""
    offs_n = t * BN + tl.arange(0, BN)
    nmask = offs_n < Lk
    cols = tl.arange(0, D)
    s = tl.load(SIN + orow[:, None] * LKP + offs_n[None, :], mask=rmask[:, None], other=0.0)
    tm = tl.load(TMAX + orow * NT + t, mask=rmask, other=0.0)
    m_new = tl.maximum(m_i, tm)
    p = sas_exp2(s - m_new[:, None], THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE,
                 POLY_FP16, EXACT_FMA_F64)
    alpha = sas_rescale(m_i - m_new, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64)
    code = _p_codes(p, LEVELS, P_FP16, P_ROUNDING, P_SATURATE)
    if ROWSUM_Q:
        psum = tl.sum(tl.math.div_rn(code, tl.full(code.shape, LEVELS * 1.0, tl.float32)), 1)
    else:
        psum = tl.sum(p, 1)
    p8 = code.to(tl.int8)
    if USE_DOT:
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
                    TMCHUNK: tl.constexpr, TRACE: tl.constexpr, USE_DOT: tl.constexpr):
    """Pass 2. Grid (NSPLIT, B * NG); split j walks tiles [j*TPS, (j+1)*TPS). Writes ACC f32
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
    for t in range(t_lo, tl.minimum(t_hi, NT_FL)):
        offs_n = t * BN + tl.arange(0, BN)
        v8 = _unpack_int8(cb, sb, zb, offs_n, RB, D, BN, BITS, VG, 1, D, offs_n < Lk)
        acc, l_i, a_i, m_i = _pv_tile(acc, l_i, a_i, m_i, v8, SIN, TMAX, VS8, TP, TO, orow, rmask,
                                      bhk, t, Lk, NT, NSLOT, LKP, D, BN, LEVELS, P_FP16,
                                      P_ROUNDING, P_SATURATE, ROWSUM_Q, THRESHOLD, LUT_ENTRIES,
                                      C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64, TRACE,
                                      USE_DOT)
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
