"""Input validation and causal-mask geometry shared by every attention executor.

``sim``, ``ref`` and the ``gpu`` launchers all call :func:`check_qkv` on their inputs, and all
derive the causal mask from :func:`causal_offset` / :func:`last_visible_key`, so the three
executors agree on shapes, GQA head mapping and which keys a query row sees.

Layout: ``q`` is ``[B, Hq, Lq, D]``, ``k`` is ``[B, Hkv, Lk, D]``, ``v`` is ``[B, Hkv, Lk, Dv]``.

GQA head mapping: ``Hq`` is a multiple of ``Hkv``; with ``group = Hq // Hkv`` query head ``h``
reads kv head ``h // group`` (consecutive query heads share a kv head: the convention of
transformers' ``repeat_kv`` and FlashAttention's ``num_heads_k``).

Causal masks are aligned bottom-right: with ``offset = Lk - Lq`` query row ``i`` sees keys
``j <= i + offset``. For ``Lq == Lk`` this is the usual lower triangle; a decode step
(``Lq == 1``) sees all ``Lk`` keys; in chunked prefill (``Lq < Lk``) the chunk's rows are the last
``Lq`` positions of the sequence. With ``Lq > Lk`` the first ``Lq - Lk`` rows see no key at all;
each executor documents what it returns for them.

This module works on numpy arrays and, by duck typing, on torch tensors (``.shape``, ``.dtype``,
``.isfinite()``); it never imports torch.

>>> import numpy as np
>>> q = np.zeros((1, 8, 5, 64), np.float16); kv = np.zeros((1, 2, 7, 64), np.float16)
>>> check_qkv(q, kv, kv)
QKVShape(B=1, Hq=8, Hkv=2, Lq=5, Lk=7, D=64, Dv=64, group=4)
>>> causal_offset(2, 5), last_visible_key(0, 2, 5), last_visible_key(1, 2, 5)
(3, 3, 4)
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "QKVShape",
    "check_qkv",
    "check_sm_scale",
    "causal_offset",
    "last_visible_key",
    "visible_key_count",
    "causal_mask",
]


class QKVShape(NamedTuple):
    """Sizes of a validated attention problem. ``group = Hq // Hkv`` query heads per kv head."""

    B: int
    Hq: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    Dv: int
    group: int


def _dtype_name(dtype: Any) -> str:
    # numpy: "float16"; torch: "torch.float16" -> "float16"
    return str(dtype).removeprefix("torch.")


def _is_float_dtype(dtype: Any) -> bool:
    if isinstance(dtype, np.dtype):
        return dtype.kind == "f"
    # torch.dtype exposes is_floating_point (False for ints, bool, complex)
    return bool(getattr(dtype, "is_floating_point", False))


def _is_torch_tensor(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and all(
        hasattr(x, a) for a in ("shape", "dtype", "ndim", "isfinite", "detach")
    )


def _check_array(x: Any, name: str, allow_dtypes: Collection[str] | None) -> tuple[int, ...]:
    if not (isinstance(x, np.ndarray) or _is_torch_tensor(x)):
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    shape = tuple(int(s) for s in x.shape)
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D [B, H, L, D], got ndim={x.ndim} with shape {shape}")
    if not _is_float_dtype(x.dtype):
        raise TypeError(f"{name} must have a floating-point dtype, got {_dtype_name(x.dtype)}")
    if allow_dtypes is not None and _dtype_name(x.dtype) not in allow_dtypes:
        raise TypeError(
            f"{name} dtype must be one of {sorted(allow_dtypes)}, got {_dtype_name(x.dtype)}"
        )
    return shape


def _check_nonempty(shape: tuple[int, ...], name: str, seq: str) -> None:
    for axis, label in enumerate(("B", "H", seq, "D")):
        if shape[axis] == 0:
            if axis == 2:
                raise ValueError(f"{name}: empty sequence ({seq} = 0 in shape {shape}); expected {seq} >= 1")
            raise ValueError(f"{name}: zero-size dimension {label} = 0 in shape {shape}; expected >= 1")


def _count_nonfinite(x: Any) -> int:
    """Number of NaN/Inf entries, 0 when all are finite. One vectorised pass on the fast path."""
    if isinstance(x, np.ndarray):
        fin = np.isfinite(x)
        return 0 if fin.all() else int(fin.size - np.count_nonzero(fin))
    fin = x.isfinite()
    return 0 if bool(fin.all()) else int(fin.numel() - int(fin.sum()))


def check_qkv(
    q: Any,
    k: Any,
    v: Any,
    *,
    check_finite: bool = True,
    allow_dtypes: Collection[str] | None = None,
    require_same_dtype: bool = False,
    names: tuple[str, str, str] = ("q", "k", "v"),
) -> QKVShape:
    """Validate attention inputs and return their sizes.

    ``q`` ``[B, Hq, Lq, D]``, ``k`` ``[B, Hkv, Lk, D]``, ``v`` ``[B, Hkv, Lk, Dv]``: numpy arrays or
    torch tensors with a floating dtype. ``allow_dtypes`` optionally restricts dtypes by name
    (``{"float16", "bfloat16"}``; torch names without the ``torch.`` prefix).
    ``check_finite`` costs one ``isfinite(...).all()`` pass per tensor. ``names``: the caller's
    argument names for q, k, v (e.g. ``("q", "k_new", "v_new")``), used in every message.

    Raises TypeError (not an array, non-float dtype, dtype not allowed or not shared) or
    ValueError (ndim, zero sizes, shape mismatch, GQA divisibility, NaN/Inf), naming the argument.

    >>> import numpy as np
    >>> check_qkv(np.ones((2, 4, 3, 8)), np.ones((2, 2, 9, 8)), np.ones((2, 2, 9, 16))).Dv
    16
    """
    nq, nk, nv = names
    qs = _check_array(q, nq, allow_dtypes)
    ks = _check_array(k, nk, allow_dtypes)
    vs = _check_array(v, nv, allow_dtypes)
    _check_nonempty(qs, nq, "Lq")
    _check_nonempty(ks, nk, "Lk")
    _check_nonempty(vs, nv, "Lk")
    if require_same_dtype and not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"{nq}, {nk}, {nv} must share one dtype, got "
            f"{nq}={_dtype_name(q.dtype)}, {nk}={_dtype_name(k.dtype)}, {nv}={_dtype_name(v.dtype)}"
        )
    B, Hq, Lq, D = qs
    _, Hkv, Lk, Dk = ks
    if ks[:3] != vs[:3]:
        raise ValueError(f"{nv}: {nk} and {nv} must agree on [B, Hkv, Lk], got {nk} {ks} and "
                         f"{nv} {vs}")
    if ks[0] != B:
        raise ValueError(f"{nk}: batch B={ks[0]} differs from {nq}'s B={B}; expected equal")
    if Dk != D:
        raise ValueError(f"{nk}: head dim D={Dk} differs from {nq}'s D={D}; expected equal")
    if Hq % Hkv != 0:
        raise ValueError(f"{nq}: heads Hq ({Hq}) must be a multiple of {nk}'s Hkv ({Hkv})")
    if check_finite:
        for name, x in ((nq, q), (nk, k), (nv, v)):
            bad = _count_nonfinite(x)
            if bad:
                raise ValueError(f"{name} has {bad} non-finite value(s) (NaN/Inf); expected all finite")
    return QKVShape(B, Hq, Hkv, Lq, Lk, D, vs[3], Hq // Hkv)


def check_sm_scale(sm_scale: Any, D: int) -> float:
    """Return the softmax scale as a float: ``1/sqrt(D)`` for None, else a positive finite real.

    >>> check_sm_scale(None, 64)
    0.125
    """
    if sm_scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(sm_scale, (bool, np.bool_)) or not isinstance(sm_scale, numbers.Real):
        raise TypeError(f"sm_scale must be a real number or None, got {type(sm_scale).__name__}")
    s = float(sm_scale)
    if not (math.isfinite(s) and s > 0.0):
        raise ValueError(f"sm_scale must be positive and finite, got {sm_scale!r}")
    return s


def causal_offset(Lq: int, Lk: int) -> int:
    """Bottom-right alignment offset ``Lk - Lq``: query row ``i`` sees keys ``j <= i + offset``."""
    return Lk - Lq


def last_visible_key(i: Any, Lq: int, Lk: int) -> Any:
    """Index of the last key query row ``i`` sees under the causal mask (int or int array).

    Negative means the row sees no key (only possible when ``Lq > Lk``).

    >>> last_visible_key(np.arange(4), 4, 2)
    array([-2, -1,  0,  1])
    """
    return i + causal_offset(Lq, Lk)


def visible_key_count(i: Any, Lq: int, Lk: int) -> Any:
    """Number of keys query row ``i`` sees under the causal mask, in ``[0, Lk]``."""
    return np.clip(last_visible_key(i, Lq, Lk) + 1, 0, Lk)


def causal_mask(Lq: int, Lk: int, rows: Any = None) -> np.ndarray:
    """Boolean ``[len(rows), Lk]`` mask, True where query row ``rows[r]`` may see key ``j``.

    ``rows`` defaults to ``arange(Lq)``; pass a block of row indices to build the mask blockwise.

    >>> causal_mask(2, 5).astype(int)
    array([[1, 1, 1, 1, 0],
           [1, 1, 1, 1, 1]])
    """
    rows = np.arange(Lq) if rows is None else np.asarray(rows)
    last = last_visible_key(rows, Lq, Lk)
    return np.arange(Lk)[None, :] <= last[:, None]
