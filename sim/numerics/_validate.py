"""Argument validation shared by the numerics functions.

Every error names the argument, what was expected and what came (DESIGN.md conventions).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..checks import as_numpy

# float dtypes accepted as data; float128/longdouble is refused because nothing downstream models it
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"array of dtype {x.dtype}"
    return f"{type(x).__name__}"


def as_float_array(x, arg: str) -> np.ndarray:
    """``x`` as a numpy array of dtype float16/32/64 (Python floats and lists of floats accepted;
    a torch tensor on any device as its numpy values, bfloat16 exactly as float32)."""
    x = as_numpy(x, arg)
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{arg}: expected a float16/float32/float64 array, got bool")
    if isinstance(x, numbers.Real) and not isinstance(x, (numbers.Integral, np.generic)):
        return np.asarray(x, dtype=np.float64)
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{arg}: expected a float16/float32/float64 array, got {_describe(arr)}"
            + (f" (from {type(x).__name__})" if not isinstance(x, np.ndarray) else "")
        )
    return arr


def as_int_array(x, arg: str, dtypes: tuple | None = None) -> np.ndarray:
    """``x`` as a numpy integer array (a torch tensor as its numpy values); with ``dtypes``,
    only those dtypes are accepted."""
    x = as_numpy(x, arg)
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise TypeError(f"{arg}: expected an integer array, got {_describe(arr)}")
    if dtypes is not None and arr.dtype not in tuple(np.dtype(d) for d in dtypes):
        names = ", ".join(np.dtype(d).name for d in dtypes)
        raise TypeError(f"{arg}: expected dtype {names}, got {arr.dtype}")
    return arr


def require_nonempty(arr: np.ndarray, arg: str) -> None:
    if arr.size == 0:
        raise ValueError(f"{arg}: expected a non-empty array, got shape {arr.shape}")


def require_finite(arr: np.ndarray, arg: str, what: str = "") -> None:
    """Raise ValueError when ``arr`` holds NaN or Inf, saying how many."""
    if arr.dtype.kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(
                f"{arg}: expected finite values{what}, got {bad} non-finite (NaN/Inf) of {arr.size}"
            )


def require_range(arr: np.ndarray, lo: int, hi: int, arg: str, why: str = "") -> None:
    """Raise ValueError unless every value lies in [lo, hi]."""
    if arr.size == 0:
        return
    amin, amax = int(arr.min()), int(arr.max())
    if amin < lo or amax > hi:
        raise ValueError(
            f"{arg}: expected values in [{lo}, {hi}]{why}, got values in [{amin}, {amax}]"
        )


def as_int(value, arg: str, *, choices: tuple | None = None, minimum: int | None = None) -> int:
    """A Python int (numpy integers accepted, bools refused), optionally from ``choices``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral,)):
        expect = f"one of {choices}" if choices else "an int"
        raise (ValueError if choices else TypeError)(
            f"{arg}: expected {expect}, got {value!r} ({type(value).__name__})"
        )
    value = int(value)
    if choices is not None and value not in choices:
        raise ValueError(f"{arg}: expected one of {choices}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{arg}: expected an int >= {minimum}, got {value}")
    return value


def work_dtype(arithmetic: str, arg: str = "arithmetic") -> np.dtype:
    """Working precision of quantizer arithmetic: "fp16" -> float16, "fp32" -> float32, "fp64" ->
    float64."""
    if isinstance(arithmetic, str) and arithmetic in _WORK:
        return _WORK[arithmetic]
    raise ValueError(f"{arg}: expected one of {sorted(_WORK)}, got {arithmetic!r}")


_WORK = {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32),
         "fp64": np.dtype(np.float64)}
