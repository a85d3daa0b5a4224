"""FlashAttention-2 style prefill forward for fp16_flash, int8_flash and turbo.

The op sequence is docs/numerics.md's (online softmax in the log2 domain, per key tile of
``BLOCK_N``): ``INT8`` switches between the float path (``S = dot(q, k^T)`` in f32, ``PV =
dot(f16(p), v)``) and the integer path (``S_int = dot(q8, k8^T)`` int32, scores
``(f32(S_int) * qf) * k_scale``, P quantized to codes, ``O_int = dot(P8, v8)`` int32, ``PV =
f32(O_int) * vf``); ``SAS`` replaces exp2 by :func:`.sas.sas_exp2` / :func:`.sas.sas_rescale`.

Per-score work avoids the XU (MUFU/conversion) unit where the contract allows: ``f32(S_int)``
and ``f32(O_int)`` by :func:`.sas.i2f_exact` (|S_int| <= D * 127^2 and |O_int| <= BLOCK_N *
127^2 stay below 2^22), and ``P_MODE`` picks a PQUANT without float <-> int conversions: 1 =
fp16 half_up (the authors' default, :func:`_p_codes_fp16_half_up`, packed fp16x2 asm when
``USE_ASM``), 2 = fp32 half_even (:func:`_p_codes_fp32_half_even`), 0 = the generic
:func:`p_codes` (every other spec choice).

Scales are gathered per row (``row // Q_GROUP``) and per key (``key // K_GROUP``; group 0 means
one scale per head), so the program's ``BLOCK_M`` is free: rows are independent and only
``BLOCK_N`` (the online-softmax tile, which changes the running max and hence P codes) must be
the spec's. V scales are one per head (``V_GROUP == 0``) or one per run of ``V_GROUP`` keys, a
multiple of ``BLOCK_N`` (PV is scaled once per tile). Launch with ``enable_fp_fusion=False``:
the contract's products and sums are separate roundings.

With ``TRACE`` the kernel also writes the simulator's trace entries for every (row, key) of the
tiles it visits: ``s_int`` (int32) or ``s`` (f32 ``S * qk_scale``), ``p_codes`` (int8) or ``p``
(f32), and ``o_int`` per (row, key tile) for integer operands.

``EXACT_FMA_F64`` is set under the Triton interpreter only: there the SAS fp16 FMA goes through
float64 (see :mod:`.sas`) and float dots take float32 operands (the interpreter's ``tl.dot``
multiplies bf16 bit patterns as integers; bf16/fp16 values are exact in float32).
"""
import triton
import triton.language as tl

from .rounding import round_f32, trunc_f32
from .sas import i2f_exact, sas_exp2, sas_rescale

_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23


@triton.jit
def _to_op(x, OP_DTYPE: tl.constexpr, INTERP: tl.constexpr):
    """Round f32 ``x`` to the operand format. Under the interpreter the value stays in f32
    (its dot and its f32 -> bf16 cast, which truncates, are not usable for bf16): RNE by bits."""
    if INTERP:
        if OP_DTYPE == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            r = bits.to(tl.float32, bitcast=True)
        else:
            r = x.to(tl.float16).to(tl.float32)
    else:
        r = x.to(OP_DTYPE)
    return r


@triton.jit
def p_codes(p, LEVELS: tl.constexpr, P_FP16: tl.constexpr, P_ROUNDING: tl.constexpr,
             P_SATURATE: tl.constexpr):
    """PQUANT: p in [0, 1] -> integer-valued f32 code (docs/numerics.md, int8_flash)."""
    if P_FP16:
        t = p.to(tl.float16).to(tl.float32)
        t = (t * LEVELS).to(tl.float16).to(tl.float32)  # product exact in f32: one f16 rounding
        if (P_ROUNDING == 1) or (P_ROUNDING == 2):  # t >= 0: half_away == half_up
            r = trunc_f32((t + 0.5).to(tl.float16).to(tl.float32))
        else:
            r = round_f32(t, P_ROUNDING)
    else:
        r = round_f32(p * LEVELS, P_ROUNDING)
    if P_SATURATE:
        r = tl.minimum(tl.maximum(r, 0.0), LEVELS * 1.0)
    return r


@triton.jit
def _p_codes_fp16_half_up(p, LEVELS: tl.constexpr, USE_ASM: tl.constexpr):
    """PQUANT ``arithmetic: fp16``, ``half_up`` (the authors' default) as int8 codes, with no
    f32 <-> int conversion: ``t = f16(p)``, ``t2 = f16(t * levels)``, ``t3 = f16(t2 + 0.5)``
    (each one fp16 operation, as the contract), ``c = f16(t3 + 1024) = 1024 + rint(t3)`` (exact
    integer grid: fp16 spacing is 1 in [1024, 2048)), ``k = c - 1024`` (exact), ``code =
    trunc(t3) = k - (k > t3)`` (t3 >= 0); the code is the low byte of ``c - (k > t3)``'s bits
    (0x6400 + code). ``USE_ASM`` does it on packed fp16x2 pairs (4 codes per asm instance: two
    ``cvt.rn.f16x2.f32``, ten fp16x2 ops, one ``prmt`` packing the 4 bytes); the interpreter runs
    the same steps on scalar fp16 tensors. Requires levels <= 127 (codes < 256: the low byte);
    the asm holds the constant 127 (0x57F0), other levels take the scalar steps."""
    if USE_ASM and (LEVELS == 127):
        code = tl.inline_asm_elementwise(
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
            "}",
            "=r,f,f,f,f", [p], dtype=tl.int8, is_pure=True, pack=4)
    else:
        t = p.to(tl.float16)
        t = t * tl.full(t.shape, LEVELS, tl.float16)
        t = t + tl.full(t.shape, 0.5, tl.float16)
        c = t + tl.full(t.shape, 1024.0, tl.float16)
        k = c - tl.full(t.shape, 1024.0, tl.float16)
        c = c - tl.where(k > t, 1.0, 0.0).to(tl.float16)
        code = (c.to(tl.int16, bitcast=True) & 0xFF).to(tl.int8)
    return code


@triton.jit
def _p_codes_fp32_half_even(p, LEVELS: tl.constexpr):
    """PQUANT ``arithmetic: fp32``, ``half_even``: ``t = f32(p * levels)`` then
    ``f32(t + 1.5 * 2^23)`` rounds to the integer grid (ties to even) with the code in the low
    mantissa bits: ``(code_as_int8, code_as_f32)``. Two separate f32 roundings (no fusion)."""
    y = (p * LEVELS) + _MAGIC
    return y.to(tl.int32, bitcast=True).to(tl.int8), y - _MAGIC


@triton.jit
def _qk(q, kb, offs_n, offs_d, Lk, stride_kn, stride_kd, HEAD_D: tl.constexpr,
        INT8: tl.constexpr, OP_DTYPE: tl.constexpr, MASKED: tl.constexpr,
        EXACT_FMA_F64: tl.constexpr):
    """Raw scores of one key tile: ``S_int = dot(q8, k8^T)`` (int32) or ``dot(q, k^T)`` (f32)."""
    k_ptrs = kb + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    if MASKED:
        k = tl.load(k_ptrs, mask=(offs_n < Lk)[:, None], other=0)
    else:
        k = tl.load(k_ptrs)
    if INT8:
        S = tl.dot(q, tl.trans(k))
    else:
        S = tl.dot(q, tl.trans(_to_op(k.to(tl.float32) if EXACT_FMA_F64 else k, OP_DTYPE,
                                      EXACT_FMA_F64)))
    return S


@triton.jit
def _tile_update(acc, l_i, m_i, S, qf, qk_scale, vb, ksb, vsb, vf_head, TSb, TPb, TOb, Lq, Lk,
                 coff, offs_m, start_n, stride_vn, stride_vd,
                 HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 INT8: tl.constexpr, OP_DTYPE: tl.constexpr, CAUSAL: tl.constexpr,
                 MASKED: tl.constexpr, K_GROUP: tl.constexpr, V_GROUP: tl.constexpr,
                 LEVELS: tl.constexpr, P_FP16: tl.constexpr, P_ROUNDING: tl.constexpr,
                 P_SATURATE: tl.constexpr, ROWSUM_Q: tl.constexpr, P_MODE: tl.constexpr,
                 USE_ASM: tl.constexpr, SAS: tl.constexpr, THRESHOLD: tl.constexpr,
                 LUT_ENTRIES: tl.constexpr,
                 C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                 DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr,
                 TRACE: tl.constexpr):
    """Online-softmax step of one key tile from its raw scores ``S``: scale, mask, max,
    exp2/SAS, PQUANT, PV product, rescaled accumulate. Returns ``(acc, l_i, m_i)``."""
    offs_d = tl.arange(0, HEAD_D)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if INT8:
        if K_GROUP == 0:
            ks = tl.load(ksb)
            s = (i2f_exact(S) * qf[:, None]) * ks
        else:
            ks = tl.load(ksb + offs_n // K_GROUP, mask=offs_n < Lk, other=1.0)
            s = (i2f_exact(S) * qf[:, None]) * ks[None, :]
    else:
        s = S * qk_scale
    if MASKED:
        valid = offs_n[None, :] < Lk
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + coff)
        s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # row saw no key yet: p = 0
    else:
        m_sub = m_new
    x = s - m_sub[:, None]
    if SAS:
        p = sas_exp2(x, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16,
                     EXACT_FMA_F64)
        alpha = sas_rescale(m_i - m_sub, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64)
    else:
        p = tl.math.exp2(x)
        alpha = tl.math.exp2(m_i - m_sub)
    v_ptrs = vb + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if MASKED:
        v = tl.load(v_ptrs, mask=(offs_n < Lk)[:, None], other=0)
    else:
        v = tl.load(v_ptrs)
    if INT8:
        if P_MODE == 1:
            p8 = _p_codes_fp16_half_up(p, LEVELS, USE_ASM)
            psum = tl.sum(p, 1)
        elif P_MODE == 2:
            p8, code = _p_codes_fp32_half_even(p, LEVELS)
            if ROWSUM_Q:
                psum = tl.sum(tl.math.div_rn(code, tl.full(code.shape, LEVELS * 1.0,
                                                             tl.float32)), 1)
            else:
                psum = tl.sum(p, 1)
        else:
            code = p_codes(p, LEVELS, P_FP16, P_ROUNDING, P_SATURATE)
            if ROWSUM_Q:
                psum = tl.sum(tl.math.div_rn(code, tl.full(code.shape, LEVELS * 1.0,
                                                             tl.float32)), 1)
            else:
                psum = tl.sum(p, 1)
            p8 = code.to(tl.int8)
        O = tl.dot(p8, v)
        if V_GROUP == 0:
            vf = vf_head
        else:
            vs_tile = tl.load(vsb + start_n // V_GROUP)
            vf = tl.math.div_rn(vs_tile, tl.zeros_like(vs_tile) + LEVELS)
        acc = acc * alpha[:, None] + i2f_exact(O) * vf
    else:
        psum = tl.sum(p, 1)
        if EXACT_FMA_F64:
            vv = _to_op(v.to(tl.float32), OP_DTYPE, EXACT_FMA_F64)
        else:
            vv = v.to(OP_DTYPE)
        PV = tl.dot(_to_op(p, OP_DTYPE, EXACT_FMA_F64), vv)
        acc = acc * alpha[:, None] + PV
    l_i = l_i * alpha + psum
    if TRACE:
        tmask = (offs_m[:, None] < Lq) & (offs_n[None, :] < Lk)
        t_off = offs_m[:, None] * Lk + offs_n[None, :]
        if INT8:
            tl.store(TSb + t_off, S, mask=tmask)
            tl.store(TPb + t_off, p8, mask=tmask)
            o_off = ((start_n // BLOCK_N) * Lq + offs_m[:, None]) * HEAD_D + offs_d[None, :]
            tl.store(TOb + o_off, O, mask=offs_m[:, None] < Lq)
        else:  # the simulator's s (scaled scores) and p
            tl.store(TSb + t_off, S * qk_scale, mask=tmask)
            tl.store(TPb + t_off, p, mask=tmask)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, qf, qk_scale, kb, vb, ksb, vsb,
                    TSb, TPb, TOb, Lq, Lk, coff, NT,
                    offs_m, lo, hi, stride_kn, stride_kd, stride_vn, stride_vd,
                    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    INT8: tl.constexpr, OP_DTYPE: tl.constexpr, CAUSAL: tl.constexpr,
                    MASKED: tl.constexpr, K_GROUP: tl.constexpr, V_GROUP: tl.constexpr,
                    LEVELS: tl.constexpr, P_FP16: tl.constexpr, P_ROUNDING: tl.constexpr,
                    P_SATURATE: tl.constexpr, ROWSUM_Q: tl.constexpr, P_MODE: tl.constexpr,
                    USE_ASM: tl.constexpr, SAS: tl.constexpr, THRESHOLD: tl.constexpr,
                    LUT_ENTRIES: tl.constexpr,
                    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                    DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr,
                    TRACE: tl.constexpr, PIPE: tl.constexpr):
    """Key tiles ``[lo, hi)``. ``PIPE`` (software pipelining, needs ``hi - lo >= BLOCK_N`` or an
    empty range) issues tile j+1's QK^T product before tile j's softmax, so the MMA can run
    under the softmax; the update order, and hence every rounding, is the plain loop's."""
    offs_d = tl.arange(0, HEAD_D)
    vf_head = qk_scale
    if INT8:
        if V_GROUP == 0:
            vs_head = tl.load(vsb)
            vf_head = tl.math.div_rn(vs_head, tl.zeros_like(vs_head) + LEVELS)
    if PIPE:
        if hi > lo:
            S = _qk(q, kb, lo + tl.arange(0, BLOCK_N), offs_d, Lk, stride_kn, stride_kd, HEAD_D,
                    INT8, OP_DTYPE, MASKED, EXACT_FMA_F64)
            for start_n in tl.range(lo, hi - BLOCK_N, BLOCK_N):
                start_n = tl.multiple_of(start_n, BLOCK_N)
                S_next = _qk(q, kb, start_n + BLOCK_N + tl.arange(0, BLOCK_N), offs_d, Lk,
                             stride_kn, stride_kd, HEAD_D, INT8, OP_DTYPE, MASKED, EXACT_FMA_F64)
                acc, l_i, m_i = _tile_update(
                    acc, l_i, m_i, S, qf, qk_scale, vb, ksb, vsb, vf_head, TSb, TPb, TOb, Lq,
                    Lk, coff, offs_m, start_n, stride_vn, stride_vd, HEAD_D, BLOCK_M, BLOCK_N,
                    INT8, OP_DTYPE, CAUSAL, MASKED, K_GROUP, V_GROUP, LEVELS, P_FP16,
                    P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, USE_ASM, SAS, THRESHOLD,
                    LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64, TRACE)
                S = S_next
            acc, l_i, m_i = _tile_update(
                acc, l_i, m_i, S, qf, qk_scale, vb, ksb, vsb, vf_head, TSb, TPb, TOb, Lq,
                Lk, coff, offs_m, hi - BLOCK_N, stride_vn, stride_vd, HEAD_D, BLOCK_M, BLOCK_N,
                INT8, OP_DTYPE, CAUSAL, MASKED, K_GROUP, V_GROUP, LEVELS, P_FP16,
                P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, USE_ASM, SAS, THRESHOLD,
                LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64, TRACE)
    else:
        for start_n in tl.range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            S = _qk(q, kb, start_n + tl.arange(0, BLOCK_N), offs_d, Lk, stride_kn, stride_kd,
                    HEAD_D, INT8, OP_DTYPE, MASKED, EXACT_FMA_F64)
            acc, l_i, m_i = _tile_update(
                acc, l_i, m_i, S, qf, qk_scale, vb, ksb, vsb, vf_head, TSb, TPb, TOb, Lq,
                Lk, coff, offs_m, start_n, stride_vn, stride_vd, HEAD_D, BLOCK_M, BLOCK_N,
                INT8, OP_DTYPE, CAUSAL, MASKED, K_GROUP, V_GROUP, LEVELS, P_FP16,
                P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE, USE_ASM, SAS, THRESHOLD,
                LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64, TRACE)
    return acc, l_i, m_i


@triton.jit
def attn_fwd_kernel(Q, K, V, QS, KS, VS, Out, TS, TP, TO, qk_scale,
                    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                    sob, soh, som, sod,
                    Hq, Hkv, G, Lq, Lk, NQS, NKS, NVS, NT,
                    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    INT8: tl.constexpr, OP_DTYPE: tl.constexpr, CAUSAL: tl.constexpr,
                    Q_GROUP: tl.constexpr, K_GROUP: tl.constexpr, V_GROUP: tl.constexpr,
                    LEVELS: tl.constexpr, P_FP16: tl.constexpr, P_ROUNDING: tl.constexpr,
                    P_SATURATE: tl.constexpr, ROWSUM_Q: tl.constexpr, P_MODE: tl.constexpr,
                    USE_ASM: tl.constexpr, SAS: tl.constexpr, THRESHOLD: tl.constexpr,
                    LUT_ENTRIES: tl.constexpr,
                    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                    DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr,
                    TRACE: tl.constexpr, PIPE: tl.constexpr = False):
    """Grid (cdiv(Lq, BLOCK_M), B * Hq). Scales QS [B, Hq, NQS], KS/VS [B, Hkv, NKS/NVS] f32."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    if CAUSAL:  # longest rows first: better tail balance
        pid_m = tl.cdiv(Lq, BLOCK_M) - 1 - pid_m
    b = bh // Hq
    h = bh % Hq
    hk = h // G
    bhk = b * Hkv + hk
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    rmask = offs_m < Lq
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=rmask[:, None], other=0)
    if INT8:
        if Q_GROUP == 0:
            qs = tl.load(QS + bh * NQS + offs_m * 0, mask=rmask, other=1.0)
        else:
            qs = tl.load(QS + bh * NQS + offs_m // Q_GROUP, mask=rmask, other=1.0)
        qf = qs * qk_scale
    else:
        if EXACT_FMA_F64:
            q = _to_op(q.to(tl.float32), OP_DTYPE, EXACT_FMA_F64)
        else:
            q = q.to(OP_DTYPE)
        qf = tl.zeros([BLOCK_M], dtype=tl.float32)
    kb = K + b * skb + hk * skh
    vb = V + b * svb + hk * svh
    ksb = KS + bhk * NKS
    vsb = VS + bhk * NVS
    TSb = TS + bh * Lq * Lk
    TPb = TP + bh * Lq * Lk
    TOb = TO + bh * NT * Lq * HEAD_D
    coff = Lk - Lq
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M + coff, Lk)
        first_vis = tl.maximum(start_m + coff + 1, 0)  # keys every row of the block sees
        full = tl.minimum(first_vis // BLOCK_N, Lk // BLOCK_N) * BLOCK_N
        full = tl.maximum(tl.minimum(full, hi), 0)
    else:
        hi = Lk
        full = (Lk // BLOCK_N) * BLOCK_N
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, qf, qk_scale, kb, vb, ksb, vsb, TSb, TPb, TOb, Lq, Lk, coff, NT,
        offs_m, 0, full, skn, skd, svn, svd, HEAD_D, BLOCK_M, BLOCK_N, INT8, OP_DTYPE, CAUSAL,
        False, K_GROUP, V_GROUP, LEVELS, P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE,
        USE_ASM, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64,
        TRACE, PIPE)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, qf, qk_scale, kb, vb, ksb, vsb, TSb, TPb, TOb, Lq, Lk, coff, NT,
        offs_m, full, hi, skn, skd, svn, svd, HEAD_D, BLOCK_M, BLOCK_N, INT8, OP_DTYPE, CAUSAL,
        True, K_GROUP, V_GROUP, LEVELS, P_FP16, P_ROUNDING, P_SATURATE, ROWSUM_Q, P_MODE,
        USE_ASM, SAS, THRESHOLD, LUT_ENTRIES, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64,
        TRACE, False)
    seen = l_i > 0
    o = tl.math.div_rn(acc, tl.where(seen, l_i, 1.0)[:, None])
    o = tl.where(seen[:, None], o, 0.0)
    if EXACT_FMA_F64:  # the interpreter's f32 -> bf16 store truncates: round first
        if Out.dtype.element_ty == tl.bfloat16:
            o = _to_op(o, tl.bfloat16, EXACT_FMA_F64)
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             o.to(Out.dtype.element_ty), mask=rmask[:, None])
