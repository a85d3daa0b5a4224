"""numba kernels for the dense integer methods' per-tile elementwise work (int8_flash, turbo).

They compute exactly what the numpy reference path of :mod:`sim.simulate` computes (the
``_IntGroup`` closures driven by :func:`sim.engine.online_softmax`), touching each element of a
tile once or twice instead of in ~10 numpy passes. Exactness rests on:

- every operation is one IEEE float32 operation on float32 operands, in the reference's order:
  numba without ``fastmath`` neither contracts ``a * b + c`` into an FMA nor reassociates, and
  each expression below keeps both operands float32 (no float64 promotion);
- ``f32 -> f16`` rounding (:func:`f16_bits`) is round-to-nearest-even by integer arithmetic on
  the bit pattern, as numpy's ``astype(float16)``;
- row sums follow numpy's float32 ``add.reduce`` along a contiguous row (:func:`row_sum`:
  numpy's pairwise sum, 8 accumulators per block of <= 128, halves above);
- ``exp2`` stays numpy's float64 ``np.exp2`` (as in the reference ``exp2_f32``; only the final
  float64 -> float32 cast happens here); SAS and PQUANT are table lookups on fp16 bit patterns,
  the same tables the reference indexes;
- the PV dot sums integers below 2^24 in float32: exact in any order.

tests/sim/test_fused.py checks each kernel and the whole path against the reference bit for bit.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_NEG_INF = np.float32(-np.inf)
_F16_SUB_SCALE = np.float32(2.0 ** 24)  # f16 subnormal step is 2^-24


@intrinsic
def _bits(typingctx, x):
    """The uint32 bit pattern of a float32 (a bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@njit(cache=True, inline="always")
def f16_bits(x):
    """Bit pattern (int) of ``f16(x)`` for float32 ``x`` (round to nearest even; NaN not used)."""
    b = np.int64(_bits(x))
    sign = (b >> 16) & 0x8000
    a = b & 0x7FFFFFFF
    if a >= 0x7F800000:  # inf
        return sign | 0x7C00
    if a >= 0x477FF000:  # >= 65520 rounds to inf
        return sign | 0x7C00
    if a >= 0x38800000:  # f16 normal range: drop 13 mantissa bits, RNE
        r = a + 0xFFF + ((a >> 13) & 1)
        return sign | ((r - 0x38000000) >> 13)
    # subnormal or zero: k * 2^-24, k = rint(|x| * 2^24) (exact scaling, then RNE; k <= 1024)
    v = np.abs(x) * _F16_SUB_SCALE
    return sign | np.int64(np.rint(v))


@njit(cache=True, inline="always")
def _leaf(a, lo, n):
    """numpy's ``pairwise_sum`` (float32) of ``a[lo:lo+n]`` for ``n <= 128`` (no split)."""
    if n < 8:
        res = np.float32(-0.0)
        for i in range(n):
            res += a[lo + i]
        return res
    r0 = a[lo]; r1 = a[lo + 1]; r2 = a[lo + 2]; r3 = a[lo + 3]
    r4 = a[lo + 4]; r5 = a[lo + 5]; r6 = a[lo + 6]; r7 = a[lo + 7]
    i = 8
    stop = n - (n % 8)
    while i < stop:
        r0 += a[lo + i]; r1 += a[lo + i + 1]; r2 += a[lo + i + 2]; r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]; r5 += a[lo + i + 5]; r6 += a[lo + i + 6]; r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True, inline="always")
def _half(n):
    n2 = n // 2
    return n2 - n2 % 8


@njit(cache=True, inline="always")
def _mid(a, lo, n):
    """One split of numpy's recursion (valid for n <= 241: both halves <= 128)."""
    if n <= 128:
        return _leaf(a, lo, n)
    n2 = _half(n)
    return _leaf(a, lo, n2) + _leaf(a, lo + n2, n - n2)


# Largest row length row_sum handles (two levels of numpy's split; tiles have block_n <= 256).
# numba's cache cannot hold a self-recursive function, hence the unrolled levels.
ROW_SUM_MAX = 466


@njit(cache=True, inline="always")
def row_sum(a):
    """``a.sum(dtype=float32)`` of a contiguous float32 row of length <= ROW_SUM_MAX as numpy's
    reduction computes it (its pairwise sum: 8 accumulators per block of <= 128 entries, halves
    at multiples of 8 above)."""
    n = a.shape[0]
    if n > 466:
        raise ValueError("row_sum: rows longer than ROW_SUM_MAX = 466")
    if n <= 128:
        return _leaf(a, 0, n)
    n2 = _half(n)
    return _mid(a, 0, n2) + _mid(a, n2, n - n2)


@njit(cache=True)
def row_sums(a):
    """``a.sum(axis=1, dtype=float32)`` of a C-contiguous float32 matrix (test hook)."""
    out = np.empty(a.shape[0], np.float32)
    for i in range(a.shape[0]):
        out[i] = row_sum(a[i])
    return out


@njit(cache=True)
def f16_bits_array(x):
    """:func:`f16_bits` over a 1-D float32 array, as int64 (test hook)."""
    out = np.empty(x.shape[0], np.int64)
    for i in range(x.shape[0]):
        out[i] = f16_bits(x[i])
    return out


@njit(cache=True)
def scores_x(S, c0, qf, ks, last, m, x, m_new):
    """Scores and exponent arguments of one key tile.

    ``s = (S * qf[i]) * ks[j]`` (f32, left to right), ``-inf`` where key ``c0 + j > last[i]``;
    ``m_new = max(m, rowmax(s))``; ``x = s - m_use`` with ``m_use = m_new`` (0 while -inf).
    Writes ``x [R, n]`` and ``m_new [R]``."""
    R, n = S.shape
    for i in range(R):
        mx = m[i]
        q = qf[i]
        lim = last[i] - c0
        for j in range(n):
            s = (S[i, j] * q) * ks[j]
            if j > lim:
                s = _NEG_INF
            x[i, j] = s
            if s > mx:
                mx = s
        m_new[i] = mx
        mu = mx if mx != _NEG_INF else np.float32(0.0)
        for j in range(n):
            x[i, j] = x[i, j] - mu


@njit(cache=True, inline="always")
def _sas(xv, thr, lut, poly_tab, f16_to_f32):
    """SAS (fp16 arithmetic) of one float32 ``x <= 0``: 0 where ``x < thr`` or
    ``n = floor(-x) >= len(lut)``, else ``f32(f16(lut[n] * poly(f16(-x - n))))``."""
    if not xv >= thr:
        return np.float32(0.0)
    y = -xv  # >= 0 or -0.0
    if not y < lut.shape[0]:  # floor(y) >= len(lut) (also y = inf)
        return np.float32(0.0)
    k = np.int64(y)  # floor(y) = trunc(y) for 0 <= y < len(lut)
    # exact (Sterbenz); "+ 0" turns the -0.0 of y = -0.0 into the +0.0 that y - floor(y) gives
    frac = (y - np.float32(k)) + np.float32(0.0)
    prod = lut[k] * poly_tab[f16_bits(frac)]  # exact: fp16 value times 2^-n
    return f16_to_f32[f16_bits(prod)]


@njit(cache=True)
def finish_tile(x, e64, is_sas, thr, lut, poly_tab, f16_to_f32, ptab, quantized, levels,
                vt, vf, alpha, acc, psum):
    """Everything of one key tile after the exponent arguments, row by row (in cache).

    ``p`` is SAS of ``x [R, n]`` (``is_sas``) or ``f32(e64)`` with ``e64 = exp2(f64(x))``
    computed by numpy (the reference ``exp2_f32`` before its final cast). Per row: codes ``c = ptab[f16 pattern of p]`` (PQUANT), ``psum`` = row sum of ``p``
    (of ``c / levels`` when ``quantized``), ``O = c @ vt`` (exact: integers below 2^24 in any
    order), ``acc = acc * alpha + O * vf`` (two f32 products, one sum). ``vf`` has length 1 (one
    V scale) or Dv. Returns the largest code."""
    R, n = x.shape
    Dv = acc.shape[1]
    one = vf.shape[0] == 1
    cbuf = np.empty(n, np.float32)
    sbuf = np.empty(n, np.float32)
    orow = np.empty(Dv, np.float32)
    cmax = np.float32(0.0)
    for i in range(R):
        for j in range(n):
            if is_sas:
                pv = _sas(x[i, j], thr, lut, poly_tab, f16_to_f32)
            else:
                pv = np.float32(e64[i, j])  # RNE, as numpy's astype(float32)
            c = ptab[f16_bits(pv)]
            cbuf[j] = c
            if c > cmax:
                cmax = c
            sbuf[j] = c / levels if quantized else pv
        psum[i] = row_sum(sbuf)
        orow[:] = 0
        for j in range(n):
            c = cbuf[j]
            if c != 0:
                for d in range(Dv):
                    orow[d] += c * vt[j, d]
        a = alpha[i]
        for d in range(Dv):
            f = vf[0] if one else vf[d]
            acc[i, d] = acc[i, d] * a + orow[d] * f
    return cmax


@njit(cache=True)
def codes_tile(x, e64, is_sas, thr, lut, poly_tab, f16_to_f32, ptab, quantized, levels,
               codes, psum):
    """The first half of :func:`finish_tile` for a BLAS PV dot: P codes into ``codes [R, n]``
    (float32) and ``psum``; returns the largest code."""
    R, n = x.shape
    sbuf = np.empty(n, np.float32)
    cmax = np.float32(0.0)
    for i in range(R):
        for j in range(n):
            if is_sas:
                pv = _sas(x[i, j], thr, lut, poly_tab, f16_to_f32)
            else:
                pv = np.float32(e64[i, j])
            c = ptab[f16_bits(pv)]
            codes[i, j] = c
            if c > cmax:
                cmax = c
            sbuf[j] = c / levels if quantized else pv
        psum[i] = row_sum(sbuf)
    return cmax


@njit(cache=True)
def acc_tile(acc, alpha, O, vf):
    """The second half of :func:`finish_tile`: ``acc = acc * alpha + O * vf`` (unfused f32)."""
    R, Dv = acc.shape
    one = vf.shape[0] == 1
    for i in range(R):
        a = alpha[i]
        for d in range(Dv):
            f = vf[0] if one else vf[d]
            acc[i, d] = acc[i, d] * a + O[i, d] * f
