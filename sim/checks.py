"""Input validation and causal-mask geometry shared by every attention executor.

``sim``, ``ref`` and the ``gpu`` launchers all call :func:`check_qkv` on their inputs, and all
derive the causal mask from :func:`causal_offset` / :func:`last_visible_key`, so the three
executors agree on shapes, GQA head mapping and which keys a query row sees. One checker per
argument concept, used by every executor so that they accept and refuse the same values:

- :func:`check_qkv` (tensors: type, ndim, dtype, empty sizes, shapes, GQA, NaN/Inf),
- :func:`resolve_layout` / :func:`from_hnd` (``tensor_layout`` "HND" or "NHD"),
- :func:`resolve_causal` (``causal`` and its alias ``is_causal``; numpy bools are bools),
- :func:`check_bool` (every other flag),
- :func:`check_sm_scale` (positive, finite, and not so large that the scores overflow float32),
- :func:`check_launch` (a kernel launch dict: known keys, positive integers, powers of two).

Every error is a TypeError or ValueError whose message starts with the caller's argument name.

Layout: ``q`` is ``[B, Hq, Lq, D]``, ``k`` is ``[B, Hkv, Lk, D]``, ``v`` is ``[B, Hkv, Lk, Dv]``
("HND": heads before tokens, the default). ``tensor_layout="NHD"`` declares ``[B, L, H, D]``
inputs (FlashAttention's layout); the executors read them as transposed views and return their
outputs in the declared layout.

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
import sys
from collections.abc import Collection
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "QKVShape",
    "LAYOUTS",
    "check_qkv",
    "as_numpy",
    "check_bool",
    "resolve_causal",
    "resolve_layout",
    "from_hnd",
    "check_sm_scale",
    "check_launch",
    "PREFILL_LAUNCH",
    "DECODE_LAUNCH",
    "causal_offset",
    "last_visible_key",
    "visible_key_count",
    "causal_mask",
]

LAYOUTS = ("HND", "NHD")
F32_MAX = float(np.finfo(np.float32).max)
# Scores must stay this far below float32's maximum (products of scales and partial sums
# before the final score are up to ~2^16 larger than the score bound of check_sm_scale).
SCORE_LIMIT = F32_MAX * 2.0 ** -16
F64_SCORE_LIMIT = float(np.finfo(np.float64).max) * 2.0 ** -16
LOG2E = 1.4426950408889634


class _Sizes(NamedTuple):
    B: int
    Hq: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    Dv: int
    group: int


class QKVShape(_Sizes):
    """Sizes of a validated attention problem. ``group = Hq // Hkv`` query heads per kv head.

    Unpacks as the 8 sizes. ``absmax``: ``(max|q|, max|k|, max|v|)`` as floats when the check
    read the values (``check_finite=True``), else None: :func:`check_sm_scale` bounds the scores
    with it."""

    absmax: tuple[float, float, float] | None = None


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


def _absmax(x: Any) -> tuple[float, int]:
    """``(max |x|, number of NaN/Inf entries)``. The fast path is one min and one max
    reduction (no temporary array; one host sync for a torch tensor); the entries are counted
    only when the extremes are not finite."""
    if isinstance(x, np.ndarray):
        lo, hi = float(x.min()), float(x.max())
    else:   # a torch tensor: torch is loaded (sim never imports it), one host transfer
        torch = sys.modules["torch"]
        lo, hi = torch.stack(x.aminmax()).float().cpu().tolist()
    if math.isfinite(lo) and math.isfinite(hi):
        return max(-lo, hi), 0
    if isinstance(x, np.ndarray):
        fin = np.isfinite(x)
        return math.inf, int(fin.size - np.count_nonzero(fin))
    fin = x.isfinite()
    return math.inf, int(fin.numel() - int(fin.sum()))


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
    shp = QKVShape(B, Hq, Hkv, Lq, Lk, D, vs[3], Hq // Hkv)
    if check_finite:
        amax = []
        for name, x in ((nq, q), (nk, k), (nv, v)):
            a, bad = _absmax(x)
            if bad:
                raise ValueError(f"{name} has {bad} non-finite value(s) (NaN/Inf); expected all finite")
            amax.append(a)
        shp.absmax = tuple(amax)
    return shp


def as_numpy(x: Any, name: str) -> Any:
    """numpy arrays pass through; a torch tensor (any device) becomes a numpy array of its dtype
    (bfloat16, which numpy lacks, exactly as float32); anything else is returned unchanged for
    :func:`check_qkv` to refuse with the argument's name. Never imports torch."""
    if isinstance(x, np.ndarray) or not _is_torch_tensor(x):
        return x
    t = x.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()               # every bfloat16 is a float32
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as e:   # dtypes numpy cannot hold
        raise TypeError(f"{name}: expected a float tensor numpy can hold, got "
                        f"{_dtype_name(x.dtype)} ({e})") from None


def check_bool(x: Any, name: str) -> bool:
    """``x`` as a bool: Python and numpy bools only (``1``, ``"yes"`` and tensors are refused,
    so that every executor reads a flag the same way).

    >>> check_bool(np.bool_(True), "causal")
    True
    """
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(x).__name__}")
    return bool(x)


def resolve_causal(causal: Any, is_causal: Any = None) -> bool:
    """The causal flag from ``causal`` and its alias ``is_causal`` (torch SDPA's name): either
    may be given (None = not given); both given must agree. Default False.

    >>> resolve_causal(None, True), resolve_causal(True, None), resolve_causal(None, None)
    (True, True, False)
    """
    c = None if causal is None else check_bool(causal, "causal")
    ic = None if is_causal is None else check_bool(is_causal, "is_causal")
    if c is not None and ic is not None and c != ic:
        raise ValueError(f"is_causal: an alias of causal, expected the same value or only one of "
                         f"them, got causal={c} and is_causal={ic}")
    return bool(c if c is not None else ic)


def _check_layout_name(tensor_layout: Any) -> str:
    if not isinstance(tensor_layout, str) or tensor_layout not in LAYOUTS:
        raise ValueError(f"tensor_layout: expected one of {LAYOUTS} (HND: [B, H, L, D], NHD: "
                         f"[B, L, H, D]), got {tensor_layout!r}")
    return tensor_layout


def _swap(x: Any) -> Any:
    """The H and L axes of a 4-D array or tensor exchanged (a view)."""
    return x.swapaxes(1, 2) if isinstance(x, np.ndarray) else x.transpose(1, 2)


def resolve_layout(q: Any, k: Any, v: Any, tensor_layout: Any = "HND",
                   names: tuple[str, str, str] = ("q", "k", "v")) -> tuple[Any, Any, Any]:
    """``q, k, v`` as ``[B, H, L, D]`` views for the declared ``tensor_layout``.

    The shapes must be consistent under the declared layout (:func:`check_qkv`'s shape rules).
    When they are not, but are under the other layout, the error says so instead of guessing:
    shapes are never silently re-read. Shapes consistent under both layouts cannot be told apart
    from their sizes and are read as declared.

    >>> q = np.zeros((1, 5, 8, 16)); kv = np.zeros((1, 7, 2, 16))   # [B, L, H, D]
    >>> [x.shape for x in resolve_layout(q, kv, kv, "NHD")]
    [(1, 8, 5, 16), (1, 2, 7, 16), (1, 2, 7, 16)]
    """
    layout = _check_layout_name(tensor_layout)
    for name, x in zip(names, (q, k, v)):
        _check_array(x, name, None)     # type and ndim first: a layout needs 4-D arrays
    declared = (q, k, v) if layout == "HND" else tuple(_swap(x) for x in (q, k, v))
    try:
        check_qkv(*declared, check_finite=False, names=names)
    except ValueError as e:
        other = "NHD" if layout == "HND" else "HND"
        alt = tuple(_swap(x) for x in declared)
        try:
            check_qkv(*alt, check_finite=False, names=names)
        except ValueError:
            if layout == "NHD":
                raise ValueError(f"{e} (shapes read as [B, H, L, D] from tensor_layout='NHD')") \
                    from None
            raise e from None
        raise ValueError(f"{e}; under tensor_layout={layout!r} these shapes are inconsistent, "
                         f"but they read consistently as {other!r}: pass "
                         f"tensor_layout={other!r} if that is their layout") from None
    return declared


def from_hnd(out: Any, tensor_layout: str) -> Any:
    """An executor's ``[B, H, L, D]`` result in the declared layout (a view for "NHD")."""
    return out if tensor_layout == "HND" else _swap(out)


def check_sm_scale(sm_scale: Any, D: int, absmax: tuple | None = None, *,
                   arithmetic: str = "fp32") -> float:
    """Return the softmax scale as a float: ``1/sqrt(D)`` for None, else a positive finite real
    whose scores stay meaningful.

    Every executor multiplies the scores by ``qk_scale = f32(sm_scale * log2(e))`` and runs the
    softmax in float32, so a scale for which ``qk_scale`` overflows is refused; with ``absmax``
    (``(max|q|, max|k|, ...)`` of the inputs, :attr:`QKVShape.absmax`) so is one for which the
    largest possible score ``sm_scale * log2(e) * D * max|q| * max|k|`` exceeds
    :data:`SCORE_LIMIT` (float32's maximum with 2^16 of headroom): its softmax would overflow to
    Inf/NaN and the output would be meaningless (all zeros in the kernels). Scales below that
    bound give the exact attention of the scaled scores (a one-hot row as the scale grows).
    ``arithmetic="fp64"`` (``ref.attention``): the same score bound in float64's range, no
    ``qk_scale``.

    >>> check_sm_scale(None, 64)
    0.125
    """
    if sm_scale is None:
        s = 1.0 / math.sqrt(D)
    elif isinstance(sm_scale, (bool, np.bool_)) or not isinstance(sm_scale, numbers.Real):
        raise TypeError(f"sm_scale: expected a real number or None, got {type(sm_scale).__name__}")
    else:
        try:
            s = float(sm_scale)
        except OverflowError:   # an int beyond the float range
            s = math.inf
    if not (math.isfinite(s) and s > 0.0):
        raise ValueError(f"sm_scale: expected a positive finite number, got {sm_scale!r}")
    if arithmetic not in ("fp32", "fp64"):
        raise ValueError(f"arithmetic: expected 'fp32' or 'fp64', got {arithmetic!r}")
    if arithmetic == "fp32" and s * LOG2E > F32_MAX:
        raise ValueError(f"sm_scale: qk_scale = sm_scale * log2(e) must be finite in float32, "
                         f"expected sm_scale <= {F32_MAX / LOG2E:.4g}, got {s!r}")
    if absmax is not None:
        qa, ka = float(absmax[0]), float(absmax[1])
        limit = SCORE_LIMIT if arithmetic == "fp32" else F64_SCORE_LIMIT
        with np.errstate(over="ignore"):
            bound = s * LOG2E * D * qa * ka
        if bound > limit:
            what = (f"scores can reach sm_scale * log2(e) * D * max|q| * max|k| = {bound:.4g} "
                    f"(sm_scale = {s:.4g}, D = {D}, max|q| = {qa:.4g}, max|k| = {ka:.4g}), "
                    f"beyond {limit:.4g} ({'float32' if arithmetic == 'fp32' else 'float64'}'s "
                    f"range less 2^16 of headroom): the softmax would overflow and the result "
                    f"be meaningless")
            if sm_scale is None or not math.isfinite(qa * ka * D):
                # the default scale, or inputs too large for any scale: the inputs are at fault
                raise ValueError(f"q, k: {what}; expected max|q| * max|k| <= "
                                 f"{limit / (s * LOG2E * D):.4g}")
            raise ValueError(f"sm_scale: {what}; expected sm_scale <= "
                             f"{limit / (LOG2E * D * qa * ka):.4g} for these inputs, got {s!r}")
    return s


# A kernel launch: key -> (kind, bound). "pow2": a power of two in [lo, hi]; "int": an integer
# in [lo, hi]; "bool": a bool. The prefill keys are gpu.kernels.flash_fwd's program config
# (and what sim.cost.predict prices); the decode keys those of gpu.decoding's split-K launches.
PREFILL_LAUNCH = {"block_m": ("pow2", 16, 256), "num_warps": ("choice", (4, 8, 16)),
                  "num_stages": ("int", 1, 8), "pipe": ("bool",),
                  # which forward (gpu.prefill.forward_kernel) and the Gluon kernel's options
                  # (checked there against sim.arch.GLUON_OPTIONS)
                  "kernel": ("word", ("triton", "gluon")), "gluon": ("mapping",)}
DECODE_LAUNCH = {"splits": ("int", 1, 1 << 16), "per_sm": ("int", 1, 1024),
                 "num_warps": ("choice", (1, 2, 4, 8, 16)), "num_stages": ("int", 1, 8),
                 "grouped": ("bool",),
                 # method options, checked by the method's launcher: turbo's read-back clamp,
                 # double_sparse's top-k and gather, and the stage-timing cut-offs
                 "clamp": ("word", ("never", "flags", "always")),
                 "select": ("word", ("bracket", "torch")), "gather_dot": ("bool",),
                 "until": ("word", ("quant", "scores", "labels", "select"))}


def check_launch(launch: Any, phase: str, name: str = "launch") -> dict:
    """A copy of a kernel ``launch`` dict (None gives ``{}``) with every key known for ``phase``
    ("prefill": :data:`PREFILL_LAUNCH`, "decode": :data:`DECODE_LAUNCH`) and every value of its
    kind: integers (numpy integers accepted, bools refused) in range, ``block_m`` a power of two
    (Triton's tile sizes are), ``num_warps`` a supported count, flags bools.

    >>> check_launch({"block_m": 64, "num_warps": 4}, "prefill")
    {'block_m': 64, 'num_warps': 4}
    """
    table = {"prefill": PREFILL_LAUNCH, "decode": DECODE_LAUNCH}.get(phase)
    if table is None:
        raise ValueError(f"phase: expected 'prefill' or 'decode', got {phase!r}")
    if launch is None:
        return {}
    if not isinstance(launch, dict):
        raise TypeError(f"{name}: expected a dict with keys from {list(table)}, "
                        f"got {type(launch).__name__}")
    out = {}
    for key, value in launch.items():
        if key not in table:
            raise ValueError(f"{name}: expected keys from {list(table)} for a {phase} launch, "
                             f"got {key!r}")
        kind, *bound = table[key]
        where = f"{name}[{key!r}]"
        if kind == "bool":
            out[key] = check_bool(value, where)
            continue
        if kind == "word":
            if not isinstance(value, str) or value not in bound[0]:
                raise ValueError(f"{where}: expected one of {list(bound[0])}, got {value!r}")
            out[key] = value
            continue
        if kind == "mapping":
            if not isinstance(value, dict):
                raise TypeError(f"{where}: expected a mapping of options, got "
                                f"{type(value).__name__}")
            out[key] = dict(value)
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        value = int(value)
        if kind == "choice":
            if value not in bound[0]:
                raise ValueError(f"{where}: expected one of {bound[0]}, got {value}")
        else:
            lo, hi = bound
            if not lo <= value <= hi:
                raise ValueError(f"{where}: expected an integer in [{lo}, {hi}], got {value}")
            if kind == "pow2" and value & (value - 1):
                raise ValueError(f"{where}: expected a power of two (Triton tiles are), got {value}")
        out[key] = value
    return out


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
