"""Number formats and rounding modes: names and parameters in one place.

Float formats follow IEEE 754 binary interchange layouts except where noted:

- ``fp8_e4m3`` is the OCP 8-bit E4M3 format ("FN"): no infinities, a single NaN pattern
  (S.1111.111), max normal 448 = 1.75 * 2^8. (OCP 8-bit Floating Point Specification v1.0, 2023.)
- ``fp8_e5m2`` is IEEE-like: infinities and NaNs, max normal 57344 = 1.75 * 2^15.
- ``bf16`` is the upper half of fp32: 8 exponent bits, 7 mantissa bits.

Rounding modes (integer quantizers):

================  =======================================================  ==========================
mode              definition on y = x / scale                              used by
================  =======================================================  ==========================
``half_even``     nearest integer, ties to even (IEEE default, rint)       INT-FA Q/K/V (torch.round)
``half_away``     trunc(y + 0.5 * sign(y)): ties away from zero           SageAttention quant kernels
``half_up``       trunc(y + 0.5): ties toward +inf for y >= 0             INT-FA P: (p*127 + 0.5).to(int8)
``floor``         largest integer <= y                                     analysis
``toward_zero``   trunc(y)                                                 a bare float->int cast
================  =======================================================  ==========================

``half_up`` is defined as in INT-FlashAttention's kernel, i.e. truncation after adding 0.5. For
negative y that is *not* round-half-up (trunc(-2.7 + 0.5) = -2); the quantizer documents and
keeps that exact behaviour because the kernel only applies it to non-negative P.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: sign bit, ``ebits`` exponent bits, ``mbits`` mantissa bits."""

    name: str
    ebits: int
    mbits: int
    bias: int
    max_normal: float
    has_inf: bool
    # numpy dtype that holds the format exactly, when one exists (fp16, fp32)
    numpy_dtype: np.dtype | None = None

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def min_normal(self) -> float:
        return 2.0 ** self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mbits)

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits


FP32 = FloatFormat("fp32", 8, 23, 127, float(np.finfo(np.float32).max), True, np.dtype(np.float32))
FP16 = FloatFormat("fp16", 5, 10, 15, 65504.0, True, np.dtype(np.float16))
BF16 = FloatFormat("bf16", 8, 7, 127, float.fromhex("0x1.fe00000000000p+127"), True)
FP8_E4M3 = FloatFormat("fp8_e4m3", 4, 3, 7, 448.0, False)
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2, 15, 57344.0, True)

FLOAT_FORMATS: dict[str, FloatFormat] = {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2)}


def float_format(name: str | FloatFormat) -> FloatFormat:
    """Look up a float format by name; raises ValueError naming the accepted names."""
    if isinstance(name, FloatFormat):
        return name
    try:
        return FLOAT_FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"fmt: expected one of {sorted(FLOAT_FORMATS)}, got {name!r}"
        ) from None


class Rounding(str, enum.Enum):
    """Float -> integer rounding modes (see the module docstring for exact definitions)."""

    HALF_EVEN = "half_even"
    HALF_AWAY = "half_away"
    HALF_UP = "half_up"
    FLOOR = "floor"
    TOWARD_ZERO = "toward_zero"

    @classmethod
    def parse(cls, value: "str | Rounding", arg: str = "rounding") -> "Rounding":
        if isinstance(value, Rounding):
            return value
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"{arg}: expected one of {[m.value for m in cls]}, got {value!r}"
            ) from None

    @property
    def nearest(self) -> bool:
        """True for the round-to-nearest modes, whose error is at most half a step."""
        return self in (Rounding.HALF_EVEN, Rounding.HALF_AWAY, Rounding.HALF_UP)


# Integer widths the quantizers support, and the scale dtypes they store.
INT_BITS = (2, 3, 4, 8)
SCALE_DTYPES = ("fp16", "fp32")


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Representable code range. Signed symmetric quantizers use [-(2^(b-1)-1), 2^(b-1)-1]
    (the "restricted" range: -128 is never produced for INT8), unsigned [0, 2^b - 1]."""
    if bits not in INT_BITS:
        raise ValueError(f"bits: expected one of {INT_BITS}, got {bits!r}")
    if signed:
        q = (1 << (bits - 1)) - 1
        return -q, q
    return 0, (1 << bits) - 1
