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
def _half_add(t, FP16: tl.constexpr):
    """``t`` (``y +- 0.5``, exact in f32 for fp16 ``y``) as the arithmetic's add gives it: in
    fp16 one more rounding (below 1 a sum can round up to the next integer)."""
    if FP16:
        t = t.to(tl.float16).to(tl.float32)
    return t


@triton.jit
def round_f32(y, MODE: tl.constexpr, FP16: tl.constexpr = False):
    """Round float32 ``y`` (|y| < 2^22) to an integer value, mode ``MODE`` (see module doc).
    ``FP16``: ``y`` holds an fp16 value and the half-step adds are fp16 operations."""
    if MODE == 0:
        r = (y + _RINT_MAGIC) - _RINT_MAGIC
    elif MODE == 1:
        r = trunc_f32(_half_add(y + tl.where(y >= 0, 0.5, -0.5), FP16))
    elif MODE == 2:
        r = trunc_f32(_half_add(y + 0.5, FP16))
    elif MODE == 3:
        r = tl.floor(y)
    else:
        r = trunc_f32(y)
    return r
