"""Integer quantizers with explicit scale dtype, rounding, arithmetic precision and policies.

Symmetric (``symmetric=True``, signed codes, restricted range ``[-qmax, qmax]``,
``qmax = 2^(bits-1) - 1``; -128 is never produced for INT8)::

    scale = R_s( A(absmax(block) / qmax) )           # stored value, exactly representable in scale_dtype
    code  = clamp( rnd( A(x / scale) ), -qmax, qmax )

Asymmetric (``symmetric=False``, unsigned codes ``[0, L]``, ``L = 2^bits - 1``)::

    scale = R_s( A(A(max - min) / L) )
    zp    = rint_half_even( A(-min / scale) )         # int32, may lie outside [0, L]
    code  = clamp( rnd( A(x / scale) ) + zp, 0, L )   # the + zp is exact integer arithmetic
    x_hat = (code - zp) * scale

``A(.)`` is one IEEE operation in the working precision ``arithmetic`` ("fp32": x is first
converted to float32 with round-to-nearest-even, every division/subtraction/addition is a float32
operation, as in INT-FlashAttention's and SageAttention's Triton kernels, which divide by the
stored fp16 scale converted to fp32; "fp64": the same in float64; "fp16": the same in fp16, as
torch computes ``round(x / scale)`` on fp16 tensors (INT-FlashAttention's host quantizer): the
scale's policies are then fp16's, its value an fp16 value whatever ``scale_dtype``, and inputs
beyond the fp16 range are refused). The code is computed by
*dividing* by the stored scale, never by multiplying with a reciprocal. ``R_s`` is
:func:`round_float` to ``scale_dtype`` (nearest-even). ``rnd`` is the rounding mode, applied in the
working precision by :func:`round_to_int`.

Policies:

- ``zero_scale`` (a block whose absmax, or max - min when asymmetric, is 0): "one" -> scale 1
  (codes 0, resp. zp = -rint(min)); "eps" -> the smallest positive subnormal of scale_dtype;
  "error" -> ValueError.
- scale underflow (``A(absmax/qmax) > 0`` but it rounds to 0 in scale_dtype, e.g. fp16 below
  2^-25): the scale is clamped up to the smallest positive subnormal of scale_dtype; the codes stay
  in range (they are clamped in any case), the block just loses resolution.
- scale overflow (rounds beyond scale_dtype's max, e.g. fp16 absmax > 65504 * 127): ValueError.
- asymmetric zero point with ``|zp| > 2^16`` (a block whose offset from 0 is more than 2^16 steps;
  the integer grid would be meaningless in fp32): ValueError.
- NaN/Inf in ``x`` (or values beyond float32's range with arithmetic="fp32"): ValueError saying
  how many. Empty ``x``: ValueError. Non-float ``x`` (ints, bool, complex, object): TypeError.

Error bound (proved in tests/sim/test_numerics_quantize.py's docstring): for the nearest modes and
``|x| <= (qmax + 1/2) * scale`` (inside the representable range),
``|x - code * scale| <= scale * (1/2 + 2^-16)`` with arithmetic="fp32" (the fp32 division and, for
half_away/half_up, the fp32 add each add a relative 2^-24 error on values < 2^8) and
``scale * (1/2 + 2^-45)`` with "fp64". ``half_up`` is only a nearest mode for ``x >= 0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import (
    as_float_array,
    as_int,
    as_int_array,
    require_finite,
    require_nonempty,
    work_dtype,
)
from .blocks import block_reduce, expand, grid_shape, normalize_block
from .floats import round_float
from .formats import INT_BITS, SCALE_DTYPES, Rounding, float_format, int_range

__all__ = ["Quantized", "quantize", "dequantize", "round_to_int", "ZERO_SCALE_POLICIES"]

ZERO_SCALE_POLICIES = ("one", "eps", "error")
ZP_LIMIT = 1 << 16


@dataclass(frozen=True, eq=False)
class Quantized:
    """Result of :func:`quantize`.

    Iterating gives ``(codes, scale)`` when symmetric and ``(codes, scale, zero_point)`` when
    asymmetric, so ``codes, scale = quantize(x, 8)`` works.

    Attributes:
        codes: int8 (signed/symmetric) or uint8 (unsigned/asymmetric) array, shape of ``x``.
        scale: float32 array of grid shape ``ceil(x.shape / block)`` (same ndim as ``x``); its
            values are exactly representable in ``scale_dtype``.
        zero_point: None when symmetric, else an int32 array of grid shape.
        bits, block (effective block lengths), signed, rounding, scale_dtype, arithmetic: the
            parameters that produced it.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    block: tuple[int, ...]
    signed: bool
    rounding: str
    scale_dtype: str
    arithmetic: str

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def __iter__(self):
        yield self.codes
        yield self.scale
        if self.zero_point is not None:
            yield self.zero_point

    def dequantize(self, dtype: str = "fp32") -> np.ndarray:
        """Shorthand for ``dequantize(self, dtype=dtype)``."""
        return dequantize(self, dtype=dtype)


def round_to_int(y: np.ndarray, rounding: str | Rounding = "half_even") -> np.ndarray:
    """Round float32/float64 ``y`` to integer values in ``y``'s own precision.

    half_even: ``rint(y)``; half_away: ``trunc(y + (0.5 if y >= 0 else -0.5))``; half_up:
    ``trunc(y + 0.5)``; floor; toward_zero: ``trunc(y)``. The additions are IEEE operations in
    ``y.dtype`` (so in float32 ``0.49999997 + 0.5`` rounds to 1.0 and half_up gives 1, exactly as a
    Triton kernel computing ``(y + 0.5).to(tl.int8)``). The result keeps ``y``'s dtype.

    >>> round_to_int(np.array([0.5, 1.5, -0.5, -2.7], np.float32), "half_up")
    array([ 1.,  2.,  0., -2.], dtype=float32)
    """
    mode = Rounding.parse(rounding)
    y = np.asarray(y)
    if y.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"y: expected a float16/float32/float64 array, got dtype {y.dtype}")
    half = y.dtype.type(0.5)
    if mode is Rounding.HALF_EVEN:
        return np.rint(y)
    if mode is Rounding.HALF_AWAY:
        return np.trunc(y + np.where(y >= 0, half, -half))
    if mode is Rounding.HALF_UP:
        return np.trunc(y + half)
    if mode is Rounding.FLOOR:
        return np.floor(y)
    return np.trunc(y)


def _check_scale_dtype(scale_dtype) -> str:
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype: expected one of {SCALE_DTYPES}, got {scale_dtype!r}")
    return scale_dtype


def _given_scale(scale, grid, scale_dtype) -> np.ndarray:
    s = as_float_array(scale, "scale")
    try:
        s = np.broadcast_to(s, grid)
    except ValueError:
        raise ValueError(f"scale: expected shape broadcastable to the block grid {grid}, got {s.shape}") from None
    require_finite(s, "scale")
    s = s.astype(np.float64)
    if np.any(s <= 0):
        raise ValueError(f"scale: expected positive values, got {int(np.count_nonzero(s <= 0))} <= 0")
    if np.any(round_float(s, scale_dtype) != s):
        raise ValueError(f"scale: expected values exactly representable in scale_dtype={scale_dtype!r}")
    return s


def _computed_scale(raw: np.ndarray, degenerate: np.ndarray, scale_dtype: str, zero_scale: str,
                    stat: str) -> np.ndarray:
    """Apply R_s and the zero-scale / underflow / overflow policies to raw scales (float64 out)."""
    fmt = float_format(scale_dtype)
    s = np.asarray(round_float(raw, fmt, saturate=False), dtype=np.float64)
    over = np.isinf(s)
    if np.any(over):
        raise ValueError(
            f"x: {int(np.count_nonzero(over))} block(s) need a scale above the {scale_dtype} maximum "
            f"{fmt.max_normal:g} ({stat} up to {float(np.max(raw[over])):g}); use scale_dtype='fp32' "
            f"or a finer block"
        )
    s = np.where((s == 0) & ~degenerate, fmt.min_subnormal, s)  # underflow policy
    if np.any(degenerate):
        if zero_scale == "error":
            raise ValueError(
                f"x: {int(np.count_nonzero(degenerate))} block(s) have {stat} 0 and zero_scale='error'"
            )
        s = np.where(degenerate, 1.0 if zero_scale == "one" else fmt.min_subnormal, s)
    return s


def quantize(
    x,
    bits: int,
    *,
    signed: bool | None = None,
    symmetric: bool = True,
    block=None,
    rounding: str | Rounding = "half_even",
    scale_dtype: str = "fp32",
    zero_scale: str = "one",
    arithmetic: str = "fp32",
    scale=None,
    zero_point=None,
) -> Quantized:
    """Quantize float ``x`` to ``bits``-bit integer codes with one scale per block.

    See the module docstring for the exact formulas and policies.

    Args:
        x: float16/float32/float64 array (non-empty, finite).
        bits: 2, 3, 4 or 8.
        signed: defaults to ``symmetric``; symmetric quantization is signed (restricted range),
            asymmetric is unsigned; other combinations raise ValueError.
        symmetric: absmax scaling (True) or min/max scaling with an integer zero point (False).
        block: one entry per axis (int length or None = whole axis), or None for per tensor; see
            :mod:`sim.numerics.blocks`. Partial last blocks are supported.
        rounding: "half_even", "half_away", "half_up", "floor" or "toward_zero".
        scale_dtype: "fp16" or "fp32": the scale is rounded (nearest-even) to it and stored.
        zero_scale: "one", "eps" or "error" (policy for all-zero / constant blocks).
        arithmetic: "fp32" (default) or "fp64": working precision of every operation.
        scale, zero_point: use these (grid-shaped, broadcastable) instead of computing them; the
            scale must be positive and representable in ``scale_dtype``; ``zero_point`` is required
            iff asymmetric.

    >>> x = np.array([[0.5, -1.0, 0.25], [3.0, 0.0, -0.75]], np.float32)
    >>> q = quantize(x, 8, block=(1, None))          # per row
    >>> q.codes, q.scale.ravel() * 127
    (array([[  64, -127,   32],
           [ 127,    0,  -32]], dtype=int8), array([1., 3.], dtype=float32))
    >>> codes, scale, zp = quantize(x, 4, symmetric=False, block=(1, None))
    >>> codes, zp.ravel()
    (array([[15,  0, 12],
           [15,  3,  0]], dtype=uint8), array([10,  3], dtype=int32))
    """
    arr = as_float_array(x, "x")
    require_nonempty(arr, "x")
    require_finite(arr, "x")
    bits = as_int(bits, "bits", choices=INT_BITS)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric: expected a bool, got {symmetric!r}")
    symmetric = bool(symmetric)
    signed = symmetric if signed is None else signed
    if not isinstance(signed, (bool, np.bool_)) or bool(signed) != symmetric:
        raise ValueError(
            f"signed: symmetric quantization uses signed codes and asymmetric unsigned codes; "
            f"got signed={signed!r} with symmetric={symmetric}"
        )
    mode = Rounding.parse(rounding)
    scale_dtype = _check_scale_dtype(scale_dtype)
    if zero_scale not in ZERO_SCALE_POLICIES:
        raise ValueError(f"zero_scale: expected one of {ZERO_SCALE_POLICIES}, got {zero_scale!r}")
    wd = work_dtype(arithmetic)
    blk = normalize_block(block, arr.shape)
    grid = grid_shape(arr.shape, blk)

    with np.errstate(over="ignore"):
        xw = arr.astype(wd)
    require_finite(xw, "x", f" within the {arithmetic} range of arithmetic={arithmetic!r}")
    lo, hi = int_range(bits, signed=symmetric)
    if symmetric and zero_point is not None:
        raise ValueError("zero_point: expected None for symmetric quantization")

    if scale is not None:
        s = _given_scale(scale, grid, scale_dtype)
        if not symmetric:
            if zero_point is None:
                raise ValueError("zero_point: required with a given scale when symmetric=False")
            zp = as_int_array(zero_point, "zero_point")
            try:
                zp = np.broadcast_to(zp, grid).astype(np.int32)
            except ValueError:
                raise ValueError(
                    f"zero_point: expected shape broadcastable to the block grid {grid}, got {zp.shape}"
                ) from None
    elif symmetric:
        amax = block_reduce(xw, blk, "absmax")
        raw = amax / wd.type(hi)
        # the scale is used in the working precision: in fp16 its policies are fp16's
        s = _computed_scale(raw, amax == 0, "fp16" if wd == np.float16 else scale_dtype,
                            zero_scale, "absmax")
    else:
        mn = block_reduce(xw, blk, "min")
        mx = block_reduce(xw, blk, "max")
        with np.errstate(over="ignore"):
            raw = (mx - mn) / wd.type(hi)
        s = _computed_scale(raw, mx == mn, "fp16" if wd == np.float16 else scale_dtype,
                            zero_scale, "max - min")
    sw = s.astype(wd)  # exact: scale_dtype values are float32 values

    if not symmetric and scale is None:
        with np.errstate(over="ignore"):
            zpf = np.rint(-mn / sw)
        big = ~(np.abs(zpf) <= ZP_LIMIT)
        if np.any(big):
            raise ValueError(
                f"x: {int(np.count_nonzero(big))} block(s) need a zero point beyond +-2^16 steps "
                f"(their min is far from 0 relative to max - min); use a coarser block or "
                f"symmetric quantization"
            )
        zp = zpf.astype(np.int32)

    y = xw / expand(sw, blk, arr.shape)
    n = round_to_int(y, mode)
    if symmetric:
        codes = np.clip(n, lo, hi).astype(np.int8)
        return Quantized(codes, s.astype(np.float32), None, bits, blk, True, mode.value,
                         scale_dtype, arithmetic)
    n = np.clip(n, -(2.0**31), 2.0**31).astype(np.int64) + expand(zp, blk, arr.shape)
    codes = np.clip(n, lo, hi).astype(np.uint8)
    return Quantized(codes, s.astype(np.float32), zp, bits, blk, False, mode.value, scale_dtype,
                     arithmetic)


def dequantize(q, scale=None, zero_point=None, *, block=None, dtype: str = "fp32") -> np.ndarray:
    """``code * scale`` (symmetric) or ``(code - zero_point) * scale``, one rounding in ``dtype``.

    Call as ``dequantize(q)`` with a :class:`Quantized`, or ``dequantize(codes, scale,
    zero_point=None, block=...)`` with grid-shaped scale / zero point. ``dtype``: "fp32" (float32
    result: the product is one float32 rounding) or "fp64" (float64, exact for codes of <= 8 bits
    and fp32 scales).

    >>> q = quantize(np.array([0.5, -1.0, 0.25]), 8)
    >>> dequantize(q, dtype="fp64")
    array([ 0.50393701, -1.        ,  0.2519685 ])
    >>> dequantize(np.array([3, -2], np.int8), np.float32([0.5]), block=(None,))
    array([ 1.5, -1. ], dtype=float32)
    """
    if dtype not in ("fp32", "fp64"):
        raise ValueError(f"dtype: expected one of ['fp32', 'fp64'], got {dtype!r}")
    wd = work_dtype(dtype, "dtype")
    if isinstance(q, Quantized):
        if scale is not None or zero_point is not None or block is not None:
            raise ValueError("scale: pass either a Quantized or codes with scale/zero_point/block, not both")
        codes, s, zp, blk = q.codes, q.scale, q.zero_point, q.block
    else:
        codes = as_int_array(q, "codes")
        require_nonempty(codes, "codes")
        if scale is None:
            raise ValueError("scale: required when dequantizing raw codes")
        blk = normalize_block(block, codes.shape)
        grid = grid_shape(codes.shape, blk)
        s = as_float_array(scale, "scale")
        if s.shape != grid:
            raise ValueError(f"scale: expected the block grid shape {grid}, got {s.shape}")
        require_finite(s, "scale")
        if np.any(s.astype(wd) != s):
            raise ValueError(f"scale: values not representable in dtype={dtype!r}")
        zp = None
        if zero_point is not None:
            zp = as_int_array(zero_point, "zero_point")
            if zp.shape != grid:
                raise ValueError(f"zero_point: expected the block grid shape {grid}, got {zp.shape}")
    if zp is None:
        c = codes.astype(wd)
    else:
        c = (codes.astype(np.int64) - expand(zp.astype(np.int64), blk, codes.shape)).astype(wd)
    return c * expand(np.asarray(s).astype(wd), blk, codes.shape)
