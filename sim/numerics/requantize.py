"""Progressive re-quantization of integer codes (FlashQ / TurboAttention): INT8 -> INT4 / INT2.

The INT8 codes ``v`` (restricted range ``[-Q, Q]``, ``Q = 2^(from_bits-1) - 1``) are regrouped along
one axis and each group gets an *integer* scale ``s`` and an *integer* zero ``z`` so that going back
to INT8 needs only an integer multiply-add. With ``L = 2^to_bits - 1`` and the group's integer
range ``[m, M]``::

    s = max(1, ceil((M - m) / L))            # smallest integer step whose L steps cover [m, M]
    z = m
    c = floor((v - z + floor(s/2)) / s)       # in [0, L]: round to nearest, ties up
    v_hat = clamp(c * s + z, -Q, Q)           # to_int8(): integer-only

Bounds (proof): with ``d = v - z >= 0`` and ``h = floor(s/2)``, ``c*s <= d + h < c*s + s`` so
``d - c*s`` lies in ``[-h, s - 1 - h]`` and ``|v - v_hat| <= h = floor(s/2)`` (clamping to
``[-Q, Q]``, where ``v`` lies, can only reduce it). ``c <= L`` because ``d <= M - m <= L*s`` and
``h < s``, so no code overflows. Over all groups ``M - m <= 2Q`` gives the worst case
``floor(ceil(2Q / L) / 2)`` INT8 units: 8 for INT4, 18 for INT3, 42 for INT2 (from INT8), see
:func:`requantize_error_bound`; tests/sim/test_numerics_requantize.py checks it exhaustively.

Storage: codes are ``to_bits`` each (pack them with :func:`sim.numerics.pack`); per group one
uint8 scale (``1 <= s <= ceil(2Q/L) <= 85``) and one int8 zero (``z`` in ``[-Q, Q]``):
``scale_bits = zero_bits = 8``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_int, as_int_array, require_nonempty, require_range
from .blocks import block_reduce, expand, normalize_block
from .formats import INT_BITS

__all__ = ["Requantized", "requantize", "dequantize_int", "requantize_error_bound"]


def requantize_error_bound(from_bits: int = 8, to_bits: int = 4) -> int:
    """Worst-case ``|v - v_hat|`` in from_bits code units over every group: floor(ceil(2Q/L)/2)."""
    q = (1 << (from_bits - 1)) - 1
    levels = (1 << to_bits) - 1
    return (-(-2 * q // levels)) // 2


@dataclass(frozen=True, eq=False)
class Requantized:
    """Result of :func:`requantize`.

    Attributes:
        codes: uint8 array in ``[0, 2^bits - 1]``, shape of the input.
        scale: uint8 array (integer scale per group, >= 1), grid shape (same ndim as input).
        zero: int8 array (integer zero per group = group minimum), grid shape.
        bits, from_bits: target and source widths. axis: the grouped axis (non-negative).
        group: effective group length along ``axis``. block: the equivalent block tuple.
        scale_bits, zero_bits: storage bits per group for the scale and the zero (8 and 8).
    """

    codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    from_bits: int
    axis: int
    group: int
    block: tuple[int, ...]
    scale_bits: int = 8
    zero_bits: int = 8

    def to_int8(self) -> np.ndarray:
        """``clamp(code * scale + zero, -Q, Q)`` as int8, integer arithmetic only."""
        return dequantize_int(self)

    @property
    def storage_bits(self) -> int:
        """Total bits: ``codes.size * bits + groups * (scale_bits + zero_bits)`` (codes packed)."""
        return int(self.codes.size) * self.bits + int(self.scale.size) * (self.scale_bits + self.zero_bits)

    @property
    def max_error(self) -> int:
        """Worst-case reconstruction error of this result in from_bits units: floor(max(scale)/2)."""
        return int(self.scale.max()) // 2


def requantize(codes, from_bits: int = 8, to_bits: int = 4, *, group: int | None = None,
               axis: int = -1) -> Requantized:
    """Re-quantize signed ``from_bits`` codes to unsigned ``to_bits`` codes with integer scale/zero.

    Groups are ``group`` consecutive elements along ``axis`` (None = the whole axis; a partial
    last group is allowed); every other axis has groups of 1. E.g. on a ``[B, H, L, D]`` cache,
    K grouped along channels: ``axis=-1, group=32``; V grouped along tokens: ``axis=-2, group=64``.

    Args:
        codes: integer array with values in ``[-Q, Q]``, ``Q = 2^(from_bits-1) - 1`` (int8 etc.).
        from_bits: 3, 4 or 8. to_bits: 2, 3 or 4, smaller than from_bits.

    >>> r = requantize(np.array([[-127, -3, 0, 50, 127]], np.int8), 8, 4)
    >>> r.codes, int(r.scale[0, 0]), int(r.zero[0, 0])
    (array([[ 0,  7,  7, 10, 15]], dtype=uint8), 17, -127)
    >>> r.to_int8()
    array([[-127,   -8,   -8,   43,  127]], dtype=int8)
    """
    c = as_int_array(codes, "codes")
    require_nonempty(c, "codes")
    from_bits = as_int(from_bits, "from_bits", choices=tuple(b for b in INT_BITS if b > 2))
    to_bits = as_int(to_bits, "to_bits", choices=tuple(b for b in INT_BITS if b < from_bits))
    axis = as_int(axis, "axis")
    if not -c.ndim <= axis < c.ndim:
        raise ValueError(f"axis: expected an axis of the {c.ndim}-d codes, got {axis}")
    axis %= c.ndim
    if group is not None:
        group = as_int(group, "group", minimum=1)
    q = (1 << (from_bits - 1)) - 1
    require_range(c, -q, q, "codes", f" (restricted signed {from_bits}-bit range)")
    blk = normalize_block(tuple(group if i == axis else 1 for i in range(c.ndim)), c.shape)
    levels = (1 << to_bits) - 1

    v = c.astype(np.int32)
    mn = block_reduce(v, blk, "min")
    mx = block_reduce(v, blk, "max")
    s = np.maximum(1, -(-(mx - mn) // levels))
    z = expand(mn, blk, c.shape)
    sf = expand(s, blk, c.shape)
    out = (v - z + sf // 2) // sf
    return Requantized(out.astype(np.uint8), s.astype(np.uint8), mn.astype(np.int8), to_bits,
                       from_bits, axis, blk[axis], blk)


def dequantize_int(r: Requantized) -> np.ndarray:
    """Integer-only reconstruction ``clamp(code * scale + zero, -Q, Q)`` as int8.

    >>> r = requantize(np.arange(-8, 8, dtype=np.int8).reshape(2, 8), 8, 2, axis=-1)
    >>> dequantize_int(r)
    array([[-8, -8, -5, -5, -5, -2, -2, -2],
           [ 0,  0,  3,  3,  3,  6,  6,  6]], dtype=int8)
    """
    if not isinstance(r, Requantized):
        raise TypeError(f"r: expected a Requantized, got {type(r).__name__}")
    q = (1 << (r.from_bits - 1)) - 1
    shape = r.codes.shape
    v = r.codes.astype(np.int32) * expand(r.scale.astype(np.int32), r.block, shape) + expand(
        r.zero.astype(np.int32), r.block, shape
    )
    return np.clip(v, -q, q).astype(np.int8)
