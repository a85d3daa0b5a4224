"""Rounding of float32 values to integer-valued float32, as ``sim.numerics.round_to_int``.

Mode ids (constexpr): 0 half_even, 1 half_away, 2 half_up, 3 floor, 4 toward_zero
(:data:`gpu.ops.ROUNDING_IDS`). Every operation is one float32 IEEE operation; the kernels that
use these launch with ``enable_fp_fusion=False`` so ``y + 0.5`` is never contracted.
"""
import triton
import triton.language as tl

# 1.5 * 2^23: adding and subtracting it rounds |y| < 2^22 to an integer, ties to even
# (the f32 add rounds with the hardware's round-to-nearest-even), i.e. rint(y).
_RINT_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def trunc_f32(y):
    """trunc(y) for |y| < 2^31, as a float32 (the int32 conversion truncates toward zero)."""
    return y.to(tl.int32).to(tl.float32)


@triton.jit
def round_f32(y, MODE: tl.constexpr):
    """Round float32 ``y`` (|y| < 2^22) to an integer value, mode ``MODE`` (see module doc)."""
    if MODE == 0:
        r = (y + _RINT_MAGIC) - _RINT_MAGIC
    elif MODE == 1:
        r = trunc_f32(y + tl.where(y >= 0, 0.5, -0.5))
    elif MODE == 2:
        r = trunc_f32(y + 0.5)
    elif MODE == 3:
        r = tl.floor(y)
    else:
        r = trunc_f32(y)
    return r
