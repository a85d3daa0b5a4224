"""Symmetric INT8 quantization of a ``[B, H, L, D]`` operand (docs/numerics.md, int8_flash):

    scale = R_s(f32(absmax(group) / 127))    (R_s: round to SCALE_FP16 ? fp16 : fp32;
                                              absmax 0 -> 1; underflow to 0 -> 2^-24)
    code  = clamp(ROUND(f32(x) / scale), -127, 127)     (IEEE division, div_rn)

which is ``sim.numerics.quantize(x, 8, block=..., rounding=..., scale_dtype=...)`` with the
default ``zero_scale="one"``. ``ARITH_FP16`` (``arithmetic="fp16"``, the INT-FlashAttention
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
def quant_codes(x, scale, ROUNDING: tl.constexpr, ARITH_FP16: tl.constexpr = False):
    y = tl.math.div_rn(x, scale)
    if ARITH_FP16:
        y = y.to(tl.float16).to(tl.float32)
    r = round_f32(y, ROUNDING, ARITH_FP16)
    r = tl.minimum(tl.maximum(r, -127.0), 127.0)
    return r.to(tl.int8)


@triton.jit
def quant_rows_kernel(X, C, S, L, H,
                      sxb, sxh, sxl, sxd, scb, sch, scl, scd,
                      D: tl.constexpr, ROWS: tl.constexpr, ROUNDING: tl.constexpr,
                      SCALE_FP16: tl.constexpr, ARITH_FP16: tl.constexpr = False):
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
    x = x.to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    scale = scale_of(amax, SCALE_FP16, ARITH_FP16)
    c = quant_codes(x, scale[:, None], ROUNDING, ARITH_FP16)
    tl.store(C + b * scb + h * sch + rows[:, None] * scl + cols[None, :] * scd, c,
             mask=rmask[:, None])
    tl.store(S + bh * L + rows, scale, mask=rmask)


@triton.jit
def quant_groups_kernel(X, C, S, L, H, T, NG,
                        sxb, sxh, sxl, sxd, scb, sch, scl, scd,
                        D: tl.constexpr, CHUNK: tl.constexpr, ROUNDING: tl.constexpr,
                        SCALE_FP16: tl.constexpr, ARITH_FP16: tl.constexpr = False):
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
    cb = C + b * scb + h * sch
    for start in range(0, T, CHUNK):
        rows = lo + start + tl.arange(0, CHUNK)
        rmask = rows < hi
        x = tl.load(xb + rows[:, None] * sxl + cols[None, :] * sxd, mask=rmask[:, None],
                    other=0.0)
        if ARITH_FP16:
            x = x.to(tl.float16)
        c = quant_codes(x.to(tl.float32), scale[:, None], ROUNDING, ARITH_FP16)
        tl.store(cb + rows[:, None] * scl + cols[None, :] * scd, c, mask=rmask[:, None])
    tl.store(S + bh * NG + g + tl.arange(0, 1), scale)
