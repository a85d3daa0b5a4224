"""TurboAttention's SAS exponential (docs/numerics.md, turbo; ``sim.softmax.sas_exp2``).

For float32 ``x <= 0``: ``y = -x``, ``n = floor(y)``, ``f = f16(y - n)`` (exact subtraction),
``poly`` = Horner over the fp16 coefficients ``C0..C3`` with one fused fp16 multiply-add per step
(``fma16``), ``p = f16(2^-n * poly)`` where ``2^-n`` is the LUT entry (a power of two built from
exponent bits: the table ``LUT[n] = 2^-n`` without a memory lookup), ``p = 0`` where
``x < THRESHOLD`` or ``n >= LUT_ENTRIES``. No MUFU.EX2 is involved.

``fma16`` on the GPU is ``tl.fma`` on fp16 (``fma.rn.f16``, one rounding). The Triton interpreter
evaluates ``tl.fma`` as ``a * b + c`` with two roundings, so under the interpreter
(``EXACT_FMA_F64``) the kernel computes ``f16(f64(a) * f64(b) + f64(c))``: the product of two fp16
values is exact in float64 and, for |poly|, |c| <= 2 and f in [0, 1], so is the sum (it spans
fewer than 53 bits), hence one rounding, as the hardware does.
"""
import triton
import triton.language as tl

_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23, bit pattern 0x4B400000


@triton.jit
def i2f_exact(x):
    """f32(x) for int32 |x| < 2^22 with one IADD and one FADD instead of an I2F (XU):
    ``x + 0x4B400000`` is the bit pattern of the float 1.5 * 2^23 + x (the mantissa field
    2^22 + x stays in [0, 2^23)), and subtracting 1.5 * 2^23 is exact."""
    return (x + 0x4B400000).to(tl.float32, bitcast=True) - _MAGIC


@triton.jit
def fma16(a, b, c, EXACT_FMA_F64: tl.constexpr):
    """One-rounding fp16 fused multiply-add of fp16 tensors."""
    if EXACT_FMA_F64:
        r = (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float16)
    else:
        r = tl.fma(a, b, c)
    return r


@triton.jit
def fma32(a, b, c, EXACT_FMA_F64: tl.constexpr):
    """float32 fused multiply-add (interpreter: through float64, exact product, one more rounding
    of the sum that is exact for the SAS operands' magnitudes)."""
    if EXACT_FMA_F64:
        r = (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float32)
    else:
        r = tl.fma(a, b, c)
    return r


@triton.jit
def pow2_neg(n):
    """2^-n as float32 for int32 0 <= n <= 126 (exponent bits, exact)."""
    return ((127 - n) << 23).to(tl.float32, bitcast=True)


@triton.jit
def sas_poly(y, C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
             DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr):
    """(n, poly(f)) for float32 y >= 0 (finite, < 2^20): n = floor(y) int32, poly float32."""
    nf = tl.floor(y)  # FRND: on the XU, which SAS (no MUFU.EX2) leaves mostly idle
    frac = y - nf
    if POLY_FP16:
        f = frac.to(tl.float16)
        if DEGREE == 3:
            poly = tl.full(y.shape, C3, tl.float16)
            poly = fma16(poly, f, tl.full(y.shape, C2, tl.float16), EXACT_FMA_F64)
        else:
            poly = tl.full(y.shape, C2, tl.float16)
        poly = fma16(poly, f, tl.full(y.shape, C1, tl.float16), EXACT_FMA_F64)
        poly = fma16(poly, f, tl.full(y.shape, C0, tl.float16), EXACT_FMA_F64)
        polyf = poly.to(tl.float32)
    else:
        if DEGREE == 3:
            polyf = fma32(tl.full(y.shape, C3, tl.float32), frac,
                          tl.full(y.shape, C2, tl.float32), EXACT_FMA_F64)
        else:
            polyf = tl.full(y.shape, C2, tl.float32)
        polyf = fma32(polyf, frac, tl.full(y.shape, C1, tl.float32), EXACT_FMA_F64)
        polyf = fma32(polyf, frac, tl.full(y.shape, C0, tl.float32), EXACT_FMA_F64)
    return nf.to(tl.int32), polyf


@triton.jit
def sas_exp2(x, THRESHOLD: tl.constexpr, LUT_ENTRIES: tl.constexpr,
             C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
             DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr):
    """SAS p = 2^x for float32 x <= 0 (-inf allowed): threshold, LUT limit, fp16 product."""
    keep = x >= THRESHOLD
    y = tl.where(keep, -x, 0.0)
    n, poly = sas_poly(y, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64)
    if LUT_ENTRIES <= -THRESHOLD:  # else every kept x has n <= floor(-THRESHOLD) < LUT_ENTRIES
        keep = keep & (n < LUT_ENTRIES)
        n = tl.minimum(n, LUT_ENTRIES - 1)
    p = poly * pow2_neg(n)  # exact: power of two, normal range
    if POLY_FP16 and (LUT_ENTRIES > 13):
        # f16(2^-n * poly) is a no-op while the product is a normal fp16: poly is an fp16 value
        # and gpu.ops.check_prefill_spec requires poly(f) >= 2^(lut_entries - 15) on [0, 1]
        p = p.to(tl.float16).to(tl.float32)
    return tl.where(keep, p, 0.0)


@triton.jit
def sas_rescale(x, C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                DEGREE: tl.constexpr, POLY_FP16: tl.constexpr, EXACT_FMA_F64: tl.constexpr):
    """alpha = f32(poly(f)) * 2^-n, no threshold or LUT limit, -inf -> 0 (``sim.softmax.sas_rescale``).
    n is capped at 2^20 as in the simulator; 2^-n is applied in two exact-or-once-rounded steps."""
    fin = x > -3.0e38  # finite (x <= 0 by construction)
    y = tl.minimum(tl.where(fin, -x, 0.0), 1048576.0)
    n, poly = sas_poly(y, C0, C1, C2, C3, DEGREE, POLY_FP16, EXACT_FMA_F64)
    n1 = tl.minimum(n, 126)
    n2 = tl.minimum(n - n1, 126)
    a = poly * pow2_neg(n1)
    a = tl.where(n - n1 > 126, 0.0, a * pow2_neg(n2))
    return tl.where(fin, a, 0.0)
