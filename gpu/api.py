"""The public kernel API: ``attention``, ``attention_trace``, ``build_cache``, ``decode``,
``decode_trace``. Each resolves the spec once (cached: no YAML parsing on the hot path), checks
the inputs, and runs the method's kernel path from :data:`gpu.methods.KERNEL_PATHS`.

    import torch, gpu
    q = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 2, 1000, 128, device="cuda", dtype=torch.float16)   # GQA: 4 q heads / kv head
    v = torch.randn_like(k)
    out = gpu.attention(q, k, v, method="int8_flash", causal=True)       # [2, 8, 1000, 128] fp16
    cache = gpu.build_cache(k, v, method="turbo")                       # INT8 buffer + INT4/INT2
    cache.append(k_new, v_new)                                          # [2, 2, n, 128]
    out = gpu.decode(q_step, cache)                                     # q_step [2, 8, 1, 128]

Traces (``attention_trace``, ``decode_trace``) return a :class:`KernelResult` whose ``trace``
uses the simulator's names and layouts (``sim.simulate``'s docstring), so :mod:`gpu.compare`
checks one against the other.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

from sim.checks import check_sm_scale
from sim.spec import MethodSpec, load_method, resolve_spec

from .common import check_inputs
from .decoding import DecodeCache, check_query
from .methods import KERNEL_PATHS, decode_methods, prefill_methods

__all__ = ["attention", "attention_trace", "build_cache", "decode", "decode_trace",
           "KernelResult", "resolve"]


@dataclass
class KernelResult:
    """``out`` (a torch tensor in the inputs' dtype), ``trace`` (torch tensors under the
    simulator's trace names; None without trace), ``spec`` the spec that ran."""

    out: Any
    trace: dict | None = None
    spec: MethodSpec | None = None
    info: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=128)
def _shipped(method: str, dtype_name: str) -> MethodSpec:
    s = load_method(method)
    path = KERNEL_PATHS.get(s.method)
    return path.spec_for_dtype(s, dtype_name) if path.spec_for_dtype else s


def resolve(method: str, spec: "MethodSpec | str | os.PathLike | None", dtype: Any = None,
            phase: str = "prefill") -> MethodSpec:
    """The spec a call runs (``spec`` or the shipped one of ``method``, adapted to ``dtype``),
    checked once against the method's kernels."""
    allowed = prefill_methods() if phase == "prefill" else decode_methods()
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(f"method: expected one of {list(allowed)} (methods with a {phase} "
                         f"kernel), got {method!r}")
    if spec is None:
        s = _shipped(method, str(dtype).removeprefix("torch.") if dtype is not None else "")
    else:
        s = resolve_spec(spec, method)
    KERNEL_PATHS.get(s.method).check_spec(s)
    return s


def _bool(x: Any, name: str) -> bool:
    import numpy as np
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(x).__name__}")
    return bool(x)


def _prefill(q, k, v, method, causal, sm_scale, spec, launch, trace, check_finite=True):
    path_dtypes = KERNEL_PATHS.get(method).prefill_dtypes if method in KERNEL_PATHS else None
    shp = check_inputs(q, k, v, check_finite, dtypes=path_dtypes or ("float16", "bfloat16"))
    causal = _bool(causal, "causal")
    sm = check_sm_scale(sm_scale, shp.D)
    s = resolve(method, spec, q.dtype)
    return s, KERNEL_PATHS.get(s.method).prefill(q, k, v, s, causal=causal, sm_scale=sm,
                                                 launch=launch, trace=trace)


def attention(q, k, v, method: str = "int8_flash", causal: bool = False,
              sm_scale: float | None = None, spec: MethodSpec | str | None = None,
              launch: dict | None = None, check_finite: bool = True):
    """Prefill attention ``softmax(q k^T * sm_scale) v`` by ``method``'s kernels.

    ``q`` ``[B, Hq, Lq, D]``, ``k``/``v`` ``[B, Hkv, Lk, D]``: contiguous CUDA tensors (CPU under
    ``TRITON_INTERPRET=1``), one dtype, float16 or bfloat16, D in (64, 128), Hq % Hkv == 0,
    finite. ``causal`` aligns bottom-right (row i sees keys j <= i + Lk - Lq; rows that see
    nothing output 0). ``sm_scale`` defaults to 1/sqrt(D). ``spec``: a MethodSpec, spec name or
    path (default: the shipped spec of ``method``; fp16_flash follows bf16 inputs). ``launch``
    overrides the default program config. Integer methods run their Q/K/V quantization kernels
    first. ``check_finite`` (default) refuses NaN/Inf inputs at the cost of one device-to-host
    sync per tensor; ``False`` skips it (steady-state loops, CUDA graphs: non-finite inputs then
    give non-finite outputs). Returns ``[B, Hq, Lq, D]`` in q's dtype.

    >>> out = gpu.attention(q, k, v, method="turbo", causal=True)      # doctest: +SKIP
    """
    return _prefill(q, k, v, method, causal, sm_scale, spec, launch, False,
                    _bool(check_finite, "check_finite"))[1]


def attention_trace(q, k, v, method: str = "int8_flash", causal: bool = False,
                    sm_scale: float | None = None, spec: MethodSpec | str | None = None,
                    launch: dict | None = None) -> KernelResult:
    """:func:`attention` plus its intermediates under the simulator's names: integer methods
    ``q_codes``, ``k_codes``, ``v_codes`` (``[B, H, L, D]``), ``q_scale``, ``k_scale``,
    ``v_scale`` (float32 ``[B, H, n_groups]``), ``s_int`` (int32) and ``p_codes`` (int8)
    ``[B, Hq, Lq, Lk]``, ``o_int`` (int32 ``[B, Hq, n_key_tiles, Lq, D]``); float methods ``s``
    and ``p`` (f32). Entries of key tiles a row's program skips (causal) are 0."""
    s, (out, tr) = _prefill(q, k, v, method, causal, sm_scale, spec, launch, True)
    return KernelResult(out, tr, s)


def build_cache(k, v, method: str = "turbo", spec: MethodSpec | str | None = None,
                calibration: Any = None, check_finite: bool = True) -> DecodeCache:
    """A decode KV cache of ``k``/``v`` ``[B, Hkv, L, D]`` (contiguous CUDA tensors, CPU under
    ``TRITON_INTERPRET=1``; fp16 or bf16 (fp16 only for double_sparse); D in (64, 128); finite;
    L >= 1) for ``method`` (:func:`gpu.methods.decode_methods`). ``calibration``: turbo's head
    priority (``sim.methods.turbo.HeadPriority`` or a path; None ranks these K/V), double_sparse's
    channel statistics (required), none for fp16_flash. ``check_finite`` as :func:`attention`
    (``cache.append(k_new, v_new, check_finite=...)`` likewise). The build streams: its scratch
    is a few MB whatever the context.

    >>> cache = gpu.build_cache(k, v, method="turbo")        # doctest: +SKIP
    >>> cache.append(k1, v1); out = gpu.decode(q, cache)     # doctest: +SKIP
    """
    s = resolve(method, spec, getattr(k, "dtype", None), phase="decode")
    path = KERNEL_PATHS.get(s.method)
    check_inputs(k, k, v, _bool(check_finite, "check_finite"), dtypes=path.cache_dtypes)
    return path.cache(k, v, s, calibration)


def _decode(q, cache, sm_scale, launch, trace, check_finite=True):
    if not isinstance(cache, DecodeCache):
        raise TypeError(f"cache: expected a cache from gpu.build_cache, got {type(cache).__name__}")
    check_query(q, cache, check_finite)
    sm = check_sm_scale(sm_scale, cache.D)
    return KERNEL_PATHS.get(cache.spec.method).decode(q, cache, sm, launch, trace)


def decode(q, cache, sm_scale: float | None = None, launch: dict | None = None,
           check_finite: bool = True):
    """One decode step: ``softmax(q k^T * sm_scale) v`` over every token of ``cache``.

    ``q`` ``[B, Hq, 1, D]``: contiguous, the cache's dtype and device, finite, ``Hq`` a multiple
    of the cache's ``Hkv``. ``sm_scale`` defaults to ``1/sqrt(D)``. ``launch`` overrides the
    launch configuration (:func:`gpu.decoding.default_decode_launch`; numerics do not depend on
    it except for f32 rounding). ``check_finite`` (default) refuses a NaN/Inf ``q`` with one
    device-to-host sync; ``False`` skips it: no sync on the call, which can then be captured in
    a CUDA graph. Returns ``[B, Hq, 1, D]``.

    >>> out = gpu.decode(q, gpu.build_cache(k, v, method="turbo"))     # doctest: +SKIP
    """
    return _decode(q, cache, sm_scale, launch, False, _bool(check_finite, "check_finite"))


def decode_trace(q, cache, sm_scale: float | None = None, launch: dict | None = None
                 ) -> KernelResult:
    """:func:`decode` plus intermediates under the simulator's names (Lq = 1): turbo
    ``q_codes``, ``q_scale``, ``s_int`` and ``p_codes`` ``[B, Hq, 1, L]``, ``o_int``
    ``[B, Hq, n_tiles, 1, D]``, ``s`` (f32 scores), ``m`` (running max per tile
    ``[B, Hq, n_tiles, 1]``), ``splits``; double_sparse ``approx_scores`` ``[B, Hq, 1, L]`` and
    ``indices`` ``[B, Hq, 1, k]`` ascending."""
    out, tr = _decode(q, cache, sm_scale, launch, True)
    return KernelResult(out, tr, cache.spec)


def decode_unchecked(q, cache, sm: float, launch: dict | None = None):
    """:func:`decode` without input checks (no host synchronisation): for timing loops whose
    inputs were checked once. ``sm`` is the softmax scale (not None)."""
    return KERNEL_PATHS.get(cache.spec.method).decode(q, cache, sm, launch, False)
