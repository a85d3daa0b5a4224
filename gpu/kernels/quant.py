"""Symmetric INT8 quantization of a ``[B, H, L, D]`` operand (docs/numerics.md, int8_flash):

    scale = R_s(f32(absmax(group) / 127))    (R_s: round to SCALE_FP16 ? fp16 : fp32;
                                              absmax 0 -> 1; underflow to 0 -> 2^-24)
    code  = clamp(ROUND(f32(x) / scale), -127, 127)     (IEEE division, div_rn)

which is ``sim.numerics.quantize(x, 8, block=..., rounding=..., scale_dtype=...)`` with the
default ``zero_scale="one"``.

Cheap exact arithmetic (``FAST``, off under the interpreter): the quotient is Markstein's
correction of ``x * r`` with ``r = div_rn(1, scale)`` once per row (``q0 = f32(x * r)``, ``rem =
fma(-q0, scale, x)`` (exact), ``q = fma(rem, r, q0)``), equal to ``div_rn(x, scale)`` for every
fp16 / bf16 ``x`` and every scale the quantizer makes (proved exhaustively over the
significand pairs, tests/gpu/test_quant_division.py; the result scales with the exponents while
``scale`` and ``1 / scale`` are normal f32, which the kernels check per program and otherwise
divide); the int8 code is the low byte of ``bits(code + 1.5 * 2^23)`` (no float-to-int
conversion on the XU). One scale per head (``per_head``) is a two-kernel reduction
(:func:`absmax_chunks_kernel` writes each chunk's absmax, :func:`quant_chunks_kernel` reduces
them and writes the codes), so the work spreads over ``B * H * L / CHUNK`` programs. ``ARITH_FP16`` (``arithmetic="fp16"``, the INT-FlashAttention
authors' torch quantizer on fp16 tensors): x rounded to fp16 first, ``absmax / 127`` and
``x / scale`` each rounded to fp16 (an f32 division rounded to fp16 is the correctly rounded
fp16 division: 24 >= 2 * 11 + 2, Figueroa 1995), the scale's policies fp16's. The rounding
modes then run on those fp16 values, their half-step adds rounded to fp16 too
(``rounding.round_f32``). Scales are stored as float32 (their values are representable in
the scale dtype). Codes are written through explicit strides, so V can be stored transposed
(``[B, H, D, Lpad]``) for the PV product's K-major operand.
"""
import triton
import triton.language as tl

from .rounding import round_f32

_MAGIC = tl.constexpr(12582912.0)   # 1.5 * 2^23: bits(c + MAGIC) = 0x4B400000 + c, |c| < 2^22
# half_even codes of four f32 quotients, packed: fp16 arithmetic (f16(y), then t = f16(t +
# 1536) = 1536 + rint(t), clamped to 1536 +- 127, bits 0x6600 + code) and fp32 arithmetic
# (t = f32(y + 1.5 * 2^23), clamped, bits 0x4B400000 + code); the code is the low byte
_CODES_FP16_ASM = tl.constexpr(
    "{\n"
    ".reg .b32 a, b, mg, lo, hi;\n"
    "mov.b32 mg, 0x66006600;\n"
    "mov.b32 lo, 0x65816581;\n"
    "mov.b32 hi, 0x667F667F;\n"
    "cvt.rn.f16x2.f32 a, $2, $1;\n"
    "cvt.rn.f16x2.f32 b, $4, $3;\n"
    "add.rn.f16x2 a, a, mg;\n"
    "add.rn.f16x2 b, b, mg;\n"
    "max.f16x2 a, a, lo;\n"
    "max.f16x2 b, b, lo;\n"
    "min.f16x2 a, a, hi;\n"
    "min.f16x2 b, b, hi;\n"
    "prmt.b32 $0, a, b, 0x6420;\n"
    "}")
_CODES_FP32_ASM = tl.constexpr(
    "{\n"
    ".reg .b32 a, b, c, d;\n"
    "add.rn.f32 a, $1, 0f4B400000;\n"
    "add.rn.f32 b, $2, 0f4B400000;\n"
    "add.rn.f32 c, $3, 0f4B400000;\n"
    "add.rn.f32 d, $4, 0f4B400000;\n"
    "max.f32 a, a, 0f4B3FFF81;\n"
    "max.f32 b, b, 0f4B3FFF81;\n"
    "max.f32 c, c, 0f4B3FFF81;\n"
    "max.f32 d, d, 0f4B3FFF81;\n"
    "min.f32 a, a, 0f4B40007F;\n"
    "min.f32 b, b, 0f4B40007F;\n"
    "min.f32 c, c, 0f4B40007F;\n"
    "min.f32 d, d, 0f4B40007F;\n"
    "prmt.b32 a, a, b, 0x0040;\n"
    "prmt.b32 c, c, d, 0x0040;\n"
    "prmt.b32 $0, a, c, 0x5410;\n"
    "}")
_NORMAL_LO = tl.constexpr(2.0 ** -125)   # scale and 1 / scale normal f32: Markstein applies
_NORMAL_HI = tl.constexpr(2.0 ** 125)


@triton.jit
def scale_of(amax, SCALE_FP16: tl.constexpr, ARITH_FP16: tl.constexpr = False):
    raw = tl.math.div_rn(amax, tl.full(amax.shape, 127.0, tl.float32))
    if ARITH_FP16:
        raw = raw.to(tl.float16).to(tl.float32)
    if SCALE_FP16 or ARITH_FP16:
        s = raw.to(tl.float16).to(tl.float32)
        s = tl.where((s == 0) & (amax > 0), 5.960464477539063e-08, s)  # fp16 min subnormal
    else:
        s = raw
        s = tl.where((s == 0) & (amax > 0), 1.401298464324817e-45, s)  # fp32 min subnormal
    return tl.where(amax == 0, 1.0, s)


@triton.jit
def quotient(x, scale, rcp, FAST: tl.constexpr):
    """``div_rn(x, scale)``; ``FAST``: from ``rcp = div_rn(1, scale)`` by one correction step
    (module docstring), for scales with ``scale`` and ``1 / scale`` normal."""
    if FAST:
        q0 = x * rcp
        rem = tl.fma(q0, -scale, x)     # exact residual x - q0 * scale (negated per row)
        y = tl.fma(rem, rcp, q0)
    else:
        y = tl.math.div_rn(x, scale)
    return y


@triton.jit
def quant_codes(x, scale, ROUNDING: tl.constexpr, ARITH_FP16: tl.constexpr = False,
                rcp=None, FAST: tl.constexpr = False):
    y = quotient(x, scale, rcp, FAST)
    if (ROUNDING == 0) and FAST:  # the same steps on packed registers (no unpacking)
        code = tl.inline_asm_elementwise(_CODES_FP16_ASM if ARITH_FP16 else _CODES_FP32_ASM,
                                         "=r,f,f,f,f", [y], dtype=tl.int8, is_pure=True,
                                         pack=4)
    elif (ROUNDING == 0) and ARITH_FP16:
        # f16(y), then rint in fp16: t = f16(y16 + 1536) is 1536 + rint(y16) (|y16| < 512:
        # fp16 spacing 1 in [1024, 2048), ties to even); clamped there, its bits are 0x6600 +
        # code, whose low byte is the int8 code
        t = y.to(tl.float16) + tl.full(y.shape, 1536.0, tl.float16)
        t = tl.minimum(tl.maximum(t, tl.full(y.shape, 1409.0, tl.float16)),
                       tl.full(y.shape, 1663.0, tl.float16))
        code = t.to(tl.int16, bitcast=True).to(tl.int8)
    elif ROUNDING == 0:
        # t = f32(y + 1.5 * 2^23) = 1.5 * 2^23 + rint(y); clamped there; low byte of its bits
        t = tl.minimum(tl.maximum(y + _MAGIC, _MAGIC - 127.0), _MAGIC + 127.0)
        code = t.to(tl.int32, bitcast=True).to(tl.int8)
    else:
        if ARITH_FP16:
            y = y.to(tl.float16).to(tl.float32)
        r = round_f32(y, ROUNDING, ARITH_FP16)
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        # low byte of bits(r + 1.5 * 2^23) = r as int8 (r integer-valued, |r| <= 127): no F2I
        code = (r + _MAGIC).to(tl.int32, bitcast=True).to(tl.int8)
    return code


@triton.jit
def fast_ok(scale):
    """Every scale of the program lets the Markstein quotient run (scale, 1 / scale normal)."""
    bad = (scale < _NORMAL_LO) | (scale > _NORMAL_HI)
    return tl.max(bad.to(tl.int32), axis=0) == 0


@triton.jit
def quant_rows_kernel(X, C, S, L, H,
                      sxb, sxh, sxl, sxd, scb, sch, scl, scd,
                      D: tl.constexpr, ROWS: tl.constexpr, ROUNDING: tl.constexpr,
                      SCALE_FP16: tl.constexpr, ARITH_FP16: tl.constexpr = False,
                      FAST: tl.constexpr = False):
    """One scale per token. Grid (cdiv(L, ROWS), B * H); S is [B, H, L] contiguous."""
    pid_l = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_l * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, D)
    rmask = rows < L
    x = tl.load(X + b * sxb + h * sxh + rows[:, None] * sxl + cols[None, :] * sxd,
                mask=rmask[:, None], other=0.0)
    if ARITH_FP16:
        x = x.to(tl.float16)
    amax = tl.max(tl.abs(x), axis=1).to(tl.float32)   # exact in the input format
    x = x.to(tl.float32)
    scale = scale_of(amax, SCALE_FP16, ARITH_FP16)
    if FAST:
        rcp = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
        if fast_ok(scale):
            c = quant_codes(x, scale[:, None], ROUNDING, ARITH_FP16, rcp[:, None], True)
        else:
            c = quant_codes(x, scale[:, None], ROUNDING, ARITH_FP16)
    else:
        c = quant_codes(x, scale[:, None], ROUNDING, ARITH_FP16)
    tl.store(C + b * scb + h * sch + rows[:, None] * scl + cols[None, :] * scd, c,
             mask=rmask[:, None])
    tl.store(S + bh * L + rows, scale, mask=rmask)


@triton.jit
def quant_groups_kernel(X, C, S, L, H, T, NG,
                        sxb, sxh, sxl, sxd, scb, sch, scl, scd,
                        D: tl.constexpr, CHUNK: tl.constexpr, ROUNDING: tl.constexpr,
                        SCALE_FP16: tl.constexpr, ARITH_FP16: tl.constexpr = False,
                        FAST: tl.constexpr = False):
    """One scale per group of T consecutive tokens (per_block; per_head with T = L).
    Grid (NG, B * H); S is [B, H, NG] contiguous. Two passes over the group: absmax, codes."""
    g = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    lo = g * T
    hi = tl.minimum(lo + T, L)
    cols = tl.arange(0, D)
    xb = X + b * sxb + h * sxh
    amax_v = tl.zeros([CHUNK], dtype=tl.float32)
    for start in range(0, T, CHUNK):
        rows = lo + start + tl.arange(0, CHUNK)
        rmask = rows < hi
        x = tl.load(xb + rows[:, None] * sxl + cols[None, :] * sxd, mask=rmask[:, None],
                    other=0.0)
        if ARITH_FP16:
            x = x.to(tl.float16)
        amax_v = tl.maximum(amax_v, tl.max(tl.abs(x.to(tl.float32)), axis=1))
    amax = tl.max(amax_v, axis=0)
    scale = scale_of(tl.full([1], 0.0, tl.float32) + amax, SCALE_FP16, ARITH_FP16)
    rcp = tl.math.div_rn(tl.full([1], 1.0, tl.float32), scale)
    fast = FAST and fast_ok(scale)
    cb = C + b * scb + h * sch
    for start in range(0, T, CHUNK):
        rows = lo + start + tl.arange(0, CHUNK)
        rmask = rows < hi
        x = tl.load(xb + rows[:, None] * sxl + cols[None, :] * sxd, mask=rmask[:, None],
                    other=0.0)
        if ARITH_FP16:
            x = x.to(tl.float16)
        if fast:
            c = quant_codes(x.to(tl.float32), scale[:, None], ROUNDING, ARITH_FP16,
                            rcp[:, None], True)
        else:
            c = quant_codes(x.to(tl.float32), scale[:, None], ROUNDING, ARITH_FP16)
        tl.store(cb + rows[:, None] * scl + cols[None, :] * scd, c, mask=rmask[:, None])
    tl.store(S + bh * NG + g + tl.arange(0, 1), scale)


@triton.jit
def _load_chunk(X, b, h, rows, cols, L, sxb, sxh, sxl, sxd, ARITH_FP16: tl.constexpr):
    x = tl.load(X + b * sxb + h * sxh + rows[:, None] * sxl + cols[None, :] * sxd,
                mask=(rows < L)[:, None], other=0.0)
    if ARITH_FP16:
        x = x.to(tl.float16)
    return x.to(tl.float32)


@triton.jit
def absmax_chunks_kernel(X, P, L, H, NC, sxb, sxh, sxl, sxd,
                         D: tl.constexpr, CHUNK: tl.constexpr, ARITH_FP16: tl.constexpr = False):
    """Pass 1 of one scale per head: P[bh, c] = absmax of rows [c CHUNK, (c + 1) CHUNK) (as the
    quantizer reads them: fp16 first with ARITH_FP16). Grid (NC, B * H); P is [B * H, NC]."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    rows = c * CHUNK + tl.arange(0, CHUNK)
    x = _load_chunk(X, bh // H, bh % H, rows, tl.arange(0, D), L, sxb, sxh, sxl, sxd,
                    ARITH_FP16)
    tl.store(P + bh * NC + c + tl.arange(0, 1), tl.max(tl.max(tl.abs(x), axis=1), axis=0)
             + tl.zeros([1], tl.float32))


@triton.jit
def quant_chunks_kernel(X, P, C, S, L, H, NC, sxb, sxh, sxl, sxd, scb, sch, scl, scd,
                        D: tl.constexpr, CHUNK: tl.constexpr, NCP: tl.constexpr,
                        ROUNDING: tl.constexpr, SCALE_FP16: tl.constexpr,
                        ARITH_FP16: tl.constexpr = False, FAST: tl.constexpr = False):
    """Pass 2 of one scale per head: the head's absmax from the NC chunk maxima of P (max is
    exact in any order, so the scale equals the one-pass kernel's), then the codes of chunk c;
    chunk 0 writes the scale. Grid (NC, B * H); NCP >= NC a power of two; S is [B, H, 1]."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    k = tl.arange(0, NCP)
    amax = tl.max(tl.load(P + bh * NC + k, mask=k < NC, other=0.0), axis=0)
    scale = scale_of(tl.full([1], 0.0, tl.float32) + amax, SCALE_FP16, ARITH_FP16)
    rows = c * CHUNK + tl.arange(0, CHUNK)
    cols = tl.arange(0, D)
    b = bh // H
    h = bh % H
    x = _load_chunk(X, b, h, rows, cols, L, sxb, sxh, sxl, sxd, ARITH_FP16)
    if FAST:
        rcp = tl.math.div_rn(tl.full([1], 1.0, tl.float32), scale)
        if fast_ok(scale):
            q = quant_codes(x, scale[:, None], ROUNDING, ARITH_FP16, rcp[:, None], True)
        else:
            q = quant_codes(x, scale[:, None], ROUNDING, ARITH_FP16)
    else:
        q = quant_codes(x, scale[:, None], ROUNDING, ARITH_FP16)
    tl.store(C + b * scb + h * sch + rows[:, None] * scl + cols[None, :] * scd, q,
             mask=(rows < L)[:, None])
    if c == 0:
        tl.store(S + bh + tl.arange(0, 1), scale)
