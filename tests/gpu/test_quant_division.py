"""The quantization kernels' fast quotient (gpu.kernels.quant.quotient with FAST) equals the
IEEE division ``div_rn(x, scale)`` for every input and scale the quantizers make: exhaustive
over the significand pairs, in numpy (no GPU, no triton).

The kernel computes ``r = div_rn(1, s)`` once per row, then ``q0 = f32(x * r)``, ``rem =
fma(-q0, s, x)``, ``q = fma(rem, r, q0)``. Every step is a correctly rounded f32 operation of
exact operands, so scaling ``x`` or ``s`` by a power of two scales every intermediate by it
while they stay normal (the kernel checks per program that ``s`` and ``1 / s`` are normal f32
and divides otherwise; |x / s| <= 127.1 and x >= 2^-24 or 0 keep the rest normal). Hence the
significands alone decide: ``x`` an fp16 (11-bit) or bf16 (8-bit) significand, ``s`` an fp16
significand (fp16 scales, and every scale of ``arithmetic: fp16``) or ``f32(a / 127)`` for an
fp16 / bf16 significand ``a`` (fp32 scales: absmax / 127 rounded once).

Emulation: products of the operands are exact in float64 (at most 48 bits), the residual ``x -
q0 s`` too (it cancels to at most 49 bits), so one float32 conversion is one correctly rounded
operation (the residual need not be exact in f32: with 24-bit fp32 scales the fma rounds it,
which the emulation does too); the last sum is rounded with TwoSum (exact ties). The reference
RN32(x / s) is computed with integers.
"""
import numpy as np


def _rn32_ratio(num, den):
    """RN-even float32 of num / den for positive int64 arrays (num < 2^12, den < 2^25): the
    24-bit significand by integer division, as float64 (exact)."""
    num = num.astype(np.int64)
    den = den.astype(np.int64)
    nb = np.floor(np.log2(num)).astype(np.int64)
    db = np.floor(np.log2(den)).astype(np.int64)
    k = 25 + db - nb                  # num * 2^k / den in [2^24, 2^26)
    N = (num << k) // den
    R = (num << k) - N * den
    big = N >= (1 << 25)              # 26-bit quotient: drop one more bit into the sticky
    R = np.where(big, R + (N & 1) * den, R)
    N = np.where(big, N >> 1, N)
    k = np.where(big, k - 1, k)
    sig, guard = N >> 1, N & 1
    up = (guard == 1) & ((R != 0) | ((sig & 1) == 1))
    sig = sig + up
    return np.ldexp(sig.astype(np.float64), (1 - k).astype(np.int64))


def _rn32_sum(a, b):
    """RN-even float32 of a + b (float64 arrays holding float32 values / exact products)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    c = s.astype(np.float32)
    n = np.nextafter(c, np.where(s > c.astype(np.float64), np.float32(np.inf),
                                 np.float32(-np.inf)).astype(np.float32))
    mid = (c.astype(np.float64) + n.astype(np.float64)) / 2
    tie = (s != c.astype(np.float64)) & (s == mid)
    hi = np.maximum(c, n)
    lo = np.minimum(c, n)
    c = np.where(tie & (err > 0), hi, np.where(tie & (err < 0), lo, c))
    return c


def _check(x_sig, s_vals):
    """Mismatches of the fast quotient against RN32(x / s) over all pairs (x = significand,
    s = float32 scale values in [1, 2))."""
    X = np.repeat(x_sig.astype(np.float64), s_vals.size)
    S = np.tile(s_vals.astype(np.float64), x_sig.size)
    # s = Ms * 2^-23 with Ms a 24-bit integer
    Ms = np.ldexp(S, 23).astype(np.int64)
    r = _rn32_ratio(np.full(Ms.shape, 1, np.int64) << 0, Ms) * 2.0 ** 23   # RN32(1 / s)
    q0 = (X * r).astype(np.float32).astype(np.float64)
    rem64 = X - q0 * S                                   # exact in float64
    rem = rem64.astype(np.float32).astype(np.float64)
    q = _rn32_sum(q0, rem * r).astype(np.float64)
    want = _rn32_ratio(X.astype(np.int64), Ms) * 2.0 ** 23
    return int((q != want).sum()), int((rem != rem64).sum()), X.size


def _fp16_sigs():
    return np.arange(1, 2048, dtype=np.int64)          # subnormal and normal fp16 significands


def _bf16_sigs():
    return np.arange(1, 256, dtype=np.int64)


def _unit(sig):
    """Significands as float32 values in [1, 2) (power-of-two scaling changes nothing)."""
    v = sig.astype(np.float64)
    return np.ldexp(v, -np.floor(np.log2(v)).astype(np.int64)).astype(np.float32)


def _fp32_scales(a_sig):
    """f32(a / 127) for every significand a (one correctly rounded division), in [1, 2)."""
    v = _rn32_ratio(a_sig, np.full(a_sig.shape, 127, np.int64))
    return np.ldexp(v, -np.floor(np.log2(v)).astype(np.int64)).astype(np.float32)


def test_rn32_helpers():
    assert _rn32_ratio(np.array([1]), np.array([3]))[0] == np.float64(np.float32(1 / 3))
    assert _rn32_ratio(np.array([2047]), np.array([127]))[0] == \
        np.float64(np.float32(2047 / 127))
    a = np.array([1.0], np.float64)
    b = np.array([2.0 ** -24], np.float64)               # exact tie: stays at even 1.0
    assert _rn32_sum(a, b)[0] == 1.0
    assert _rn32_sum(a, b + 2.0 ** -60)[0] == np.float32(1 + 2.0 ** -23)


def test_markstein_quotient_is_div_rn_fp16_scales():
    bad, inexact, n = _check(_fp16_sigs(), _unit(_fp16_sigs()))
    print(f"fp16 x, fp16 scales: {n} pairs, {bad} mismatches, {inexact} inexact residuals")
    assert bad == 0


def test_markstein_quotient_is_div_rn_fp32_scales():
    for name, xs, scales in (("fp16", _fp16_sigs(), _fp32_scales(_fp16_sigs())),
                             ("bf16", _bf16_sigs(), _fp32_scales(_bf16_sigs())),
                             ("bf16 x, fp16 scales", _bf16_sigs(), _unit(_fp16_sigs()))):
        bad, inexact, n = _check(xs, scales)
        print(f"{name}: {n} pairs, {bad} mismatches, {inexact} inexact residuals")
        assert bad == 0
