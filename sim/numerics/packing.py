"""Sub-byte code packing: unsigned INT4 / INT2 codes, little end first, along the last axis.

Layout: with ``per = 8 // bits`` codes per byte, code ``i`` of the last axis goes to byte
``i // per``, bits ``[(i % per) * bits, (i % per) * bits + bits)`` (bit 0 = least significant). For
INT4, byte ``j`` is ``codes[2j] | codes[2j+1] << 4``; for INT2 ``codes[4j] | codes[4j+1] << 2 |
codes[4j+2] << 4 | codes[4j+3] << 6``. A last axis that is not a multiple of ``per`` is padded
with zero codes; :func:`unpack` takes the original length ``n`` and checks the padding is zero.

Codes are unsigned (``[0, 2^bits - 1]``, what :func:`requantize` and asymmetric
:func:`quantize` produce); signed codes must be offset by the caller (e.g. ``+ 2^(bits-1)``).
"""
from __future__ import annotations

import numpy as np

from ._validate import as_int, as_int_array, require_range

__all__ = ["pack", "unpack", "PACK_BITS"]

PACK_BITS = (2, 4)


def _shifts(bits: int) -> np.ndarray:
    return (np.arange(8 // bits, dtype=np.uint8) * bits).astype(np.uint8)


def pack(codes, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit codes into uint8 along the last axis.

    Returns shape ``codes.shape[:-1] + (ceil(n / per),)``.

    >>> pack(np.array([1, 2, 3], np.uint8), 4)        # 0x21, 0x03
    array([33,  3], dtype=uint8)
    >>> pack(np.array([1, 2, 3, 0, 3], np.uint8), 2)  # 0b00111001, 0b00000011
    array([57,  3], dtype=uint8)
    """
    bits = as_int(bits, "bits", choices=PACK_BITS)
    c = as_int_array(codes, "codes")
    if c.ndim == 0:
        raise ValueError("codes: expected at least 1 axis to pack along, got a 0-d array")
    require_range(c, 0, (1 << bits) - 1, "codes", f" (unsigned {bits}-bit codes)")
    per = 8 // bits
    n = c.shape[-1]
    nbytes = -(-n // per)
    c = c.astype(np.uint8)
    if nbytes * per != n:
        c = np.concatenate([c, np.zeros(c.shape[:-1] + (nbytes * per - n,), np.uint8)], axis=-1)
    c = c.reshape(c.shape[:-1] + (nbytes, per))
    return np.bitwise_or.reduce(c << _shifts(bits), axis=-1).astype(np.uint8)


def unpack(packed, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack`: uint8 ``packed`` -> uint8 codes with last axis of length ``n``.

    ``n`` must satisfy ``ceil(n / per) == packed.shape[-1]``; padding codes must be zero.

    >>> unpack(np.array([33, 3], np.uint8), 4, 3)
    array([1, 2, 3], dtype=uint8)
    """
    bits = as_int(bits, "bits", choices=PACK_BITS)
    p = as_int_array(packed, "packed", dtypes=(np.uint8,))
    if p.ndim == 0:
        raise ValueError("packed: expected at least 1 axis, got a 0-d array")
    per = 8 // bits
    n = as_int(n, "n", minimum=0)
    if -(-n // per) != p.shape[-1]:
        raise ValueError(
            f"n: expected a length whose {per}-per-byte packing has {p.shape[-1]} bytes "
            f"(n in [{max(0, (p.shape[-1] - 1) * per + 1)}, {p.shape[-1] * per}]), got {n}"
        )
    mask = np.uint8((1 << bits) - 1)
    out = ((p[..., None] >> _shifts(bits)) & mask).reshape(p.shape[:-1] + (p.shape[-1] * per,))
    if out.shape[-1] != n:
        if np.any(out[..., n:]):
            raise ValueError(f"packed: padding codes beyond n={n} must be zero")
        out = out[..., :n]
    return np.ascontiguousarray(out)
