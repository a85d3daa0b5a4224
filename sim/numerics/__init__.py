"""sim.numerics: bit-accurate number formats, quantizers and exact integer GEMM (numpy only).

Every function names its rounding, saturation, scale dtype and degenerate-input policy; the
submodule docstrings hold the exact formulas and proofs. Errors name the offending argument.

Float formats (:mod:`.floats`, :mod:`.formats`): "fp32", "fp16", "bf16", "fp8_e4m3" (OCP FN, max
448, no inf), "fp8_e5m2". Rounding is to nearest, ties to even, with subnormals, done by an exact
power-of-two scaling + ``rint`` in float64. Overflow: ``saturate=None`` (default) follows torch's
cast (e4m3 saturates to +-448, the others go to +-inf); ``True`` clamps; ``False`` gives inf, or NaN
for e4m3. NaN stays NaN.

    >>> import numpy as np
    >>> from sim import numerics as nx
    >>> nx.round_float(np.float32([1 + 2**-8, 1 + 3 * 2**-8]), "bf16")     # ties to even
    array([1.      , 1.015625], dtype=float32)
    >>> nx.round_float(np.array([470.0, np.inf]), "fp8_e4m3")               # torch: saturates
    array([448., 448.])
    >>> nx.round_float(np.array([470.0, np.inf]), "fp8_e4m3", saturate=False)
    array([nan, nan])
    >>> codes = nx.encode(np.array([1.0, -0.5]), "fp8_e5m2"); codes
    array([ 60, 184], dtype=uint8)
    >>> nx.decode(codes, "fp8_e5m2")
    array([ 1. , -0.5])

Quantization (:mod:`.quantize`, granularity in :mod:`.blocks`): one ``block`` tuple, one entry per
axis (int length or None = whole axis); partial last blocks allowed. Symmetric (signed, restricted
range) ``code = clamp(rnd(x / scale))`` with ``scale = R(absmax / qmax)`` rounded to ``scale_dtype``
and the division done in ``arithmetic`` ("fp32" default, like the Triton kernels, or "fp64").
Asymmetric (unsigned) ``code = clamp(rnd(x / scale) + zp, 0, 2^b - 1)``,
``scale = R((max - min) / (2^b - 1))``, ``zp = rint(-min / scale)``. Rounding modes: half_even,
half_away, half_up, floor, toward_zero (:class:`Rounding`). The result unpacks as a tuple.

    >>> x = np.array([[0.5, -1.0, 0.25, 0.0]], np.float32)
    >>> q = nx.quantize(x, 8, block=(1, None), scale_dtype="fp16")          # per row
    >>> q.codes, q.scale
    (array([[  64, -127,   32,    0]], dtype=int8), array([[0.00787354]], dtype=float32))
    >>> nx.dequantize(q)
    array([[ 0.50390625, -0.99993896,  0.25195312,  0.        ]],
          dtype=float32)
    >>> codes, scale, zp = nx.quantize(x, 4, symmetric=False, block=(1, 2))  # groups of 2
    >>> codes, zp
    (array([[15,  0, 15,  0]], dtype=uint8), array([[10,  0]], dtype=int32))

Progressive re-quantization (:mod:`.requantize`, FlashQ): INT8 codes -> INT4/INT2 with integer
scale and zero per group; back to INT8 with integer arithmetic only, error <= floor(scale/2)
(<= 8 INT8 units for INT4, <= 42 for INT2).

    >>> r = nx.requantize(np.array([[-100, -7, 0, 3, 90]], np.int8), 8, 4, axis=-1, group=None)
    >>> r.codes, r.scale, r.zero
    (array([[ 0,  7,  8,  8, 15]], dtype=uint8), array([[13]], dtype=uint8), array([[-100]], dtype=int8))
    >>> r.to_int8()
    array([[-100,   -9,    4,    4,   95]], dtype=int8)

Packing (:mod:`.packing`): unsigned INT4/INT2 codes into uint8, little end first.

    >>> p = nx.pack(np.array([1, 2, 3], np.uint8), 4); p
    array([33,  3], dtype=uint8)
    >>> nx.unpack(p, 4, 3)
    array([1, 2, 3], dtype=uint8)

Exact integer GEMM (:mod:`.intgemm`): int8 @ int8 -> int32 through float BLAS, exact by the K
bound (sgemm on K chunks of <= 1024, chunks summed in integers); OverflowError if a result
leaves int32.

    >>> a = np.full((2, 3), -128, np.int8); b = np.full((3, 2), 127, np.int8)
    >>> nx.int_matmul(a, b)
    array([[-48768, -48768],
           [-48768, -48768]], dtype=int32)
"""
from __future__ import annotations

from .blocks import grid_shape, normalize_block
from .floats import code_dtype, decode, default_saturate, encode, round_float
from .formats import (
    BF16,
    FLOAT_FORMATS,
    FP8_E4M3,
    FP8_E5M2,
    FP16,
    FP32,
    INT_BITS,
    SCALE_DTYPES,
    FloatFormat,
    Rounding,
    float_format,
    int_range,
)
from .intgemm import int_matmul_unchecked, int_matmul, int_matmul_reference
from .packing import PACK_BITS, pack, unpack
from .quantize import ZERO_SCALE_POLICIES, Quantized, dequantize, quantize, round_to_int
from .requantize import Requantized, dequantize_int, requantize, requantize_error_bound

__all__ = [
    "round_float", "encode", "decode", "default_saturate", "code_dtype",
    "FloatFormat", "FLOAT_FORMATS", "FP32", "FP16", "BF16", "FP8_E4M3", "FP8_E5M2", "float_format",
    "Rounding", "INT_BITS", "SCALE_DTYPES", "int_range",
    "normalize_block", "grid_shape",
    "Quantized", "quantize", "dequantize", "round_to_int", "ZERO_SCALE_POLICIES",
    "Requantized", "requantize", "dequantize_int", "requantize_error_bound",
    "pack", "unpack", "PACK_BITS",
    "int_matmul", "int_matmul_reference", "int_matmul_unchecked",
]
