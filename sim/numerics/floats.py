"""Correctly rounded conversion to the float formats of :mod:`sim.numerics.formats`, and bit codes.

Rounding scheme (exact by construction). For finite ``a = |x|`` held in float64 let
``E = floor(log2 a)`` (from ``np.frexp``) and ``q = max(E, emin) - mbits``: ``2^q`` is the spacing of
the target format around ``a`` (normal or subnormal). Then

    round(a) = rint(a * 2^-q) * 2^q

``a * 2^-q`` and ``n * 2^q`` are multiplications by powers of two (``np.ldexp``) that neither
overflow nor underflow in float64 for any target with ``emin >= -126`` (the smallest ``2^q`` is
2^-149), so both are exact; ``np.rint`` rounds an exact float64 to the nearest integer with ties to
even, exactly. So the result is the correctly rounded (round-to-nearest-even) value of ``x`` in the
target format, with an unbounded exponent range above; overflow is then handled by the
saturation policy.

Inputs are rounded *once*, from their own value. torch casts float64 -> bf16/fp8 through fp32
(two roundings), so for float64 inputs that are not fp32 values the two can differ; on fp32, fp16
and bf16 inputs they are identical (see tests/sim/test_numerics_floats.py).
"""
from __future__ import annotations

import numpy as np

from ._validate import as_float_array, as_int_array
from .formats import FloatFormat, float_format

__all__ = ["round_float", "encode", "decode", "default_saturate", "code_dtype"]


def default_saturate(fmt: str | FloatFormat) -> bool:
    """Overflow policy when ``saturate=None``: what torch's cast does for that format.

    ``fp8_e4m3`` saturates (torch 2.13 ``x.to(torch.float8_e4m3fn)`` maps overflows and +-inf to
    +-448, as does the PTX ``cvt.rn.satfinite.e4m3x2.f32`` that Triton emits); every other format
    overflows to +-inf (IEEE 754).
    """
    return float_format(fmt).name == "fp8_e4m3"


def _round_abs(a: np.ndarray, f: FloatFormat) -> np.ndarray:
    """Round non-negative float64 ``a`` to ``f``'s precision (RNE), exponent unbounded above.

    NaN stays NaN, inf stays inf.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        _, e = np.frexp(a)  # a = m * 2^e, m in [0.5, 1): floor(log2 a) = e - 1
        q = np.maximum(e - 1, f.emin) - f.mbits
        return np.ldexp(np.rint(np.ldexp(a, -q)), q)


def round_float(x, fmt: str | FloatFormat, *, saturate: bool | None = None):
    """Round ``x`` to the nearest value of float format ``fmt``, ties to even.

    Args:
        x: float16/float32/float64 array or Python float. Ints are refused (TypeError).
        fmt: "fp32", "fp16", "bf16", "fp8_e4m3" (OCP E4M3FN: max 448, no inf) or "fp8_e5m2".
        saturate: overflow policy, applied to the *rounded* magnitude (so 464 -> 448 in e4m3 since
            464 is a tie that rounds to even 448, while 465 overflows):

            - ``True``: clamp to +-max_normal; +-inf -> +-max_normal.
            - ``False``: overflow -> +-inf for formats with inf; NaN for fp8_e4m3 (OCP
              non-saturating mode); +-inf -> +-inf (NaN for fp8_e4m3).
            - ``None`` (default): the format's torch cast behaviour, :func:`default_saturate`:
              saturating for fp8_e4m3, ``False`` for the others.

            NaN always stays NaN. Subnormals of the target are produced (no flush to zero);
            the sign of zero is kept.

    Returns:
        Values exactly representable in ``fmt``: same dtype as a float32/float64 input, float64
        for float16 or Python-float input (a 0-d input gives a numpy scalar).

    >>> round_float(np.array([1 + 2**-8, 1 + 3 * 2**-8, 300.0]), "bf16")
    array([  1.      ,   1.015625, 300.      ])
    >>> float(round_float(500.0, "fp8_e4m3")), float(round_float(500.0, "fp8_e4m3", saturate=False))
    (448.0, nan)
    """
    f = float_format(fmt)
    arr = as_float_array(x, "x")
    if saturate is not None and not isinstance(saturate, (bool, np.bool_)):
        raise TypeError(f"saturate: expected True, False or None, got {saturate!r}")
    sat = default_saturate(f) if saturate is None else bool(saturate)
    with np.errstate(invalid="ignore"):  # signalling NaNs are data here, not errors
        a = arr.astype(np.float64)  # exact widening
        r = _round_abs(np.abs(a), f)
    over = r > f.max_normal  # NaN compares False
    if np.any(over):
        r = np.where(over, f.max_normal if sat else (np.inf if f.has_inf else np.nan), r)
    r = np.asarray(np.copysign(r, a))
    out = r.astype(arr.dtype) if arr.dtype in (np.float32, np.float64) else r
    return out[()] if out.ndim == 0 else out


def code_dtype(fmt: str | FloatFormat) -> np.dtype:
    """Unsigned integer dtype holding one code of ``fmt`` (uint8, uint16 or uint32)."""
    bits = float_format(fmt).bits
    return np.dtype({8: np.uint8, 16: np.uint16, 32: np.uint32}[bits])


def _nan_code(f: FloatFormat) -> int:
    # canonical positive NaN: e4m3 S.1111.111 (its only NaN); others quiet NaN (mantissa MSB set)
    exp_all = (1 << f.ebits) - 1
    if not f.has_inf:
        return (exp_all << f.mbits) | ((1 << f.mbits) - 1)
    return (exp_all << f.mbits) | (1 << (f.mbits - 1))


def encode(x, fmt: str | FloatFormat, *, saturate: bool | None = None) -> np.ndarray:
    """Bit codes of ``round_float(x, fmt, saturate=saturate)`` as unsigned ints (:func:`code_dtype`).

    Layout: sign | exponent (``ebits``, biased) | mantissa (``mbits``), as in IEEE 754 / OCP FP8.
    Every NaN encodes to the format's canonical positive NaN (0x7F for fp8_e4m3, 0x7E for
    fp8_e5m2, 0x7E00 fp16, 0x7FC0 bf16, 0x7FC00000 fp32).

    >>> encode(np.array([1.0, -448.0, 2.0**-9]), "fp8_e4m3")
    array([ 56, 254,   1], dtype=uint8)
    """
    f = float_format(fmt)
    v = np.asarray(round_float(as_float_array(x, "x"), f, saturate=saturate), dtype=np.float64)
    nan = np.isnan(v)
    inf = np.isinf(v)
    a = np.where(nan | inf, 0.0, np.abs(v))
    _, e = np.frexp(a)
    E = e - 1
    normal = a >= f.min_normal
    exp_field = np.where(normal, E + f.bias, 0).astype(np.int64)
    mant = np.where(
        normal,
        np.ldexp(a, f.mbits - E) - (1 << f.mbits),
        np.ldexp(a, f.mbits - f.emin),
    ).astype(np.int64)  # exact integers by construction of round_float
    exp_all = (1 << f.ebits) - 1
    exp_field = np.where(inf, exp_all, exp_field)
    mant = np.where(inf, 0, mant)
    sign = (np.signbit(v) & ~nan).astype(np.int64)
    code = (sign << (f.bits - 1)) | (exp_field << f.mbits) | mant
    code = np.where(nan, _nan_code(f), code)
    return code.astype(code_dtype(f))


def decode(codes, fmt: str | FloatFormat) -> np.ndarray:
    """Float64 values of bit codes of ``fmt`` (inverse of :func:`encode` for non-NaN codes).

    ``codes``: any integer array with values in [0, 2^bits). For fp8_e4m3 the exponent-all-ones
    codes are normal numbers (256..448) except S.1111.111, which is NaN.

    >>> decode(np.arange(0x78, 0x80, dtype=np.uint8), "fp8_e4m3")
    array([256., 288., 320., 352., 384., 416., 448.,  nan])
    """
    f = float_format(fmt)
    c = as_int_array(codes, "codes")
    if c.size and (int(c.min()) < 0 or int(c.max()) >= (1 << f.bits)):
        raise ValueError(
            f"codes: expected values in [0, {(1 << f.bits) - 1}] for {f.name}, "
            f"got values in [{int(c.min())}, {int(c.max())}]"
        )
    c = c.astype(np.int64)
    sign = (c >> (f.bits - 1)) & 1
    exp_field = (c >> f.mbits) & ((1 << f.ebits) - 1)
    mant = c & ((1 << f.mbits) - 1)
    normal = exp_field > 0
    mag = np.where(
        normal,
        np.ldexp((mant + (1 << f.mbits)).astype(np.float64), exp_field - f.bias - f.mbits),
        np.ldexp(mant.astype(np.float64), f.emin - f.mbits),
    )
    exp_all = (1 << f.ebits) - 1
    if f.has_inf:
        top = exp_field == exp_all
        mag = np.where(top & (mant == 0), np.inf, mag)
        mag = np.where(top & (mant != 0), np.nan, mag)
    else:
        mag = np.where((exp_field == exp_all) & (mant == (1 << f.mbits) - 1), np.nan, mag)
    return np.where(sign == 1, -mag, mag)
