"""Exact INT8 x INT8 -> INT32 matrix products on float BLAS.

Exactness argument. Each product ``a_ik * b_kj`` of int8 values has magnitude at most
``128 * 128 = 2^14``. Whatever order or blocking the BLAS uses (with or without FMA), every
intermediate value is a sum of a subset of the K products of one output, hence an integer of
magnitude at most ``K * 2^14``. A float format with a p-bit significand represents every integer
up to ``2^p`` exactly, so every operation is exact while ``K * 2^14 <= 2^p``:

- float32 (p = 24): ``K <= 1024``;
- float64 (p = 53): ``K <= 2^39`` (not used: chunked sgemm measured faster than dgemm).

(Strassen-like algorithms would break this; numpy's BLAS backends do not use them.)
``int_matmul`` uses one sgemm for ``K <= 1024`` and, above, sgemms over K chunks of 1024 whose
exact results are summed in integers (see :func:`int_matmul_unchecked`).
The int32 result can only overflow when ``K * 2^14 > 2^31 - 1``, i.e. ``K >= 131072``; only then
is the range checked, and a true result outside int32 raises OverflowError.
"""
from __future__ import annotations

import numpy as np

__all__ = ["int_matmul", "int_matmul_reference", "FP32_EXACT_K", "INT32_SAFE_K"]

FP32_EXACT_K = 1 << 10  # K * 2^14 <= 2^24
INT32_SAFE_K = (2**31 - 1) // (1 << 14)  # 131071: no int8 dot product of this length overflows
_I32 = np.iinfo(np.int32)


def _check(a, b) -> None:
    for name, m in (("a", a), ("b", b)):
        if not isinstance(m, np.ndarray):
            raise TypeError(f"{name}: expected a numpy int8 array, got {type(m).__name__}")
        if m.dtype != np.int8:
            raise TypeError(f"{name}: expected dtype int8, got {m.dtype}")
        if m.ndim < 2:
            raise ValueError(f"{name}: expected at least 2 dims [..., rows, cols], got shape {m.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"b: expected {a.shape[-1]} rows to match a's last axis (a {a.shape} @ b {b.shape}), "
            f"got {b.shape[-2]}"
        )
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"b: batch dims {b.shape[:-2]} do not broadcast with a's {a.shape[:-2]}") from None


def _to_int32(r: np.ndarray, k: int) -> np.ndarray:
    if k > INT32_SAFE_K and r.size:
        lo, hi = r.min(), r.max()
        if lo < _I32.min or hi > _I32.max:
            raise OverflowError(
                f"int_matmul: {int(np.count_nonzero((r < _I32.min) | (r > _I32.max)))} results do not "
                f"fit int32 (range [{int(lo)}, {int(hi)}], K={k})"
            )
    return r.astype(np.int32)


def int_matmul_unchecked(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``int_matmul`` without argument validation (the simulator's inner loop).

    Callers guarantee int8 arrays with matching inner dims. Still exact (the path is chosen by K)
    and still raises OverflowError for out-of-range results.
    """
    k = a.shape[-1]
    if k <= FP32_EXACT_K:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.int32)
    # K chunks of <= 1024 on sgemm, each exact; chunk sums added in int32 (cannot overflow while
    # K <= INT32_SAFE_K) or int64 (range-checked). Measured 2.5x faster than one dgemm here.
    acc = None
    for k0 in range(0, k, FP32_EXACT_K):
        part = np.matmul(a[..., k0:k0 + FP32_EXACT_K].astype(np.float32),
                         b[..., k0:k0 + FP32_EXACT_K, :].astype(np.float32))
        part = part.astype(np.int32 if k <= INT32_SAFE_K else np.int64)
        acc = part if acc is None else acc + part
    return _to_int32(acc, k)


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``a @ b`` for int8 ``a [..., M, K]`` and ``b [..., K, N]`` as int32 (np.matmul broadcasting).

    Raises TypeError for non-int8 inputs (int16 etc.; INT4/INT2 codes stored in int8 are fine),
    ValueError for shape mismatches, OverflowError when a true result does not fit int32.

    >>> a = np.array([[127, -128], [1, 2]], np.int8); b = np.array([[127], [-128]], np.int8)
    >>> int_matmul(a, b)
    array([[32513],
           [ -129]], dtype=int32)
    """
    _check(a, b)
    return int_matmul_unchecked(a, b)


def int_matmul_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain int64 ``np.matmul`` (no floats), range-checked to int32: the oracle for :func:`int_matmul`."""
    _check(a, b)
    r = np.matmul(a.astype(np.int64), b.astype(np.int64))
    return _to_int32(r, INT32_SAFE_K + 1)
