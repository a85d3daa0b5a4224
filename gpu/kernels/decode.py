"""Split-K flash-decode kernels (one query row per head) of the fp16 sequence: fp16_flash over all
keys and double_sparse over gathered slots (docs/numerics.md fp16_flash / double_sparse). The
turbo decode kernels are in :mod:`gpu.kernels.turbo_decode`.

:func:`flash_decode_kernel` (split-K over key slots, one query head per program; with ``GATHER``
slot ``i`` reads key ``IDX[i]``, the selected rows, inside the kernel),
:func:`flash_decode_group_kernel` (fp16_flash: the G query heads of one KV head per program,
tensor-core dots, K/V read once per KV head), :func:`flash_decode_gather_kernel` (double_sparse:
one query head and its gathered slots per program, tensor-core dots, pipelined gathers) and
:func:`flash_combine_kernel` (``M = max m_j``, weights ``exp2(m_j - M)``).
"""
import triton
import triton.language as tl

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


@triton.jit
def flash_decode_gather_kernel(Q, K, V, IDX, M, LS, ACC, qk_scale, Hq, G, NCOUNT, NSPLIT, SPS,
                               sqb, sqh, skb, skh, skn, svb, svh, svn, sib,
                               D: tl.constexpr, BN: tl.constexpr, P_BF16: tl.constexpr,
                               DOT_F32: tl.constexpr):
    """:func:`flash_decode_kernel` with ``GATHER`` on tensor cores: one query head per program
    (its own selection), slot ``i`` reads key ``IDX[bh, i]``; ``S = dot(q, k^T)`` and ``PV =
    dot(rnd(p), v)`` with f32 accumulation (M = 1: Triton pads the MMA). Feeding the dots lets
    the pipeliner keep ``num_stages - 1`` gathered tiles in flight (cp.async, the slot indices
    loaded a stage ahead). Grid (NSPLIT, B * Hq); writes m, l, acc as flash_decode_kernel."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // G
    cols = tl.arange(0, D)
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + cols)[None, :]
    if DOT_F32:
        q = q.to(tl.float32)
    lo = j * SPS
    hi = tl.minimum(lo + SPS, NCOUNT)
    kb = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    vb = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    ib = IDX + bh.to(tl.int64) * sib
    m_i = tl.full([1], float("-inf"), tl.float32)
    l_i = tl.zeros([1], tl.float32)
    acc = tl.zeros([1, D], tl.float32)
    for start in range(lo, hi, BN):
        slots = start + tl.arange(0, BN)
        smask = slots < hi
        idx = tl.load(ib + slots, mask=smask, other=0).to(tl.int64)
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
    po = bh.to(tl.int64) * NSPLIT + j
    tl.store(M + po + tl.arange(0, 1), m_i)
    tl.store(LS + po + tl.arange(0, 1), l_i)
    tl.store(ACC + po * D + cols[None, :], acc)
