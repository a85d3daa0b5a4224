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

from sim.checks import (check_bool, check_launch, check_sm_scale, from_hnd, resolve_causal,
                        resolve_layout)
from sim.methods import SIMULATORS
from sim.spec import MethodSpec, load_method, resolve_spec

from .common import check_inputs, torch_module
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


def _prefill(q, k, v, method, causal, is_causal, sm_scale, spec, launch, trace, tensor_layout,
             check_finite=True):
    path_dtypes = KERNEL_PATHS.get(method).prefill_dtypes if method in KERNEL_PATHS else None
    q, k, v = resolve_layout(q, k, v, tensor_layout)
    # the forward and the quantization kernels take every stride: only the last dim is packed
    shp = check_inputs(q, k, v, check_finite, dtypes=path_dtypes or ("float16", "bfloat16"),
                       contiguous="last")
    causal = resolve_causal(causal, is_causal)
    sm = check_sm_scale(sm_scale, shp.D, shp.absmax)
    launch = check_launch(launch, "prefill") or None
    s = resolve(method, spec, q.dtype)
    res = KERNEL_PATHS.get(s.method).prefill(q, k, v, s, causal=causal, sm_scale=sm,
                                             launch=launch, trace=trace)
    if trace:
        out, tr = res
        return s, (from_hnd(out, tensor_layout), tr)
    return s, from_hnd(res, tensor_layout)


def attention(q, k, v, method: str = "int8_flash", causal: bool | None = None,
              sm_scale: float | None = None, spec: MethodSpec | str | None = None,
              launch: dict | None = None, check_finite: bool = True, *,
              is_causal: bool | None = None, tensor_layout: str = "HND"):
    """Prefill attention ``softmax(q k^T * sm_scale) v`` by ``method``'s kernels.

    ``q`` ``[B, Hq, Lq, D]``, ``k``/``v`` ``[B, Hkv, Lk, D]``: CUDA tensors (CPU under
    ``TRITON_INTERPRET=1``) whose last dimension is contiguous (the other strides are free),
    one dtype, float16 or bfloat16, D in (64, 128), Hq % Hkv == 0, finite.
    ``tensor_layout``: "HND" (default) or "NHD" (``[B, L, H, D]``, FlashAttention's layout; the
    output then comes back ``[B, Lq, Hq, D]``, a transposed view of the kernel's output).
    ``causal`` (alias ``is_causal``) aligns bottom-right (row i sees keys j <= i + Lk - Lq;
    rows that see nothing output 0). ``sm_scale`` defaults to 1/sqrt(D); a scale whose scores
    would overflow float32 is refused (``sim.checks.check_sm_scale``). ``spec``: a MethodSpec,
    spec name or path (default: the shipped spec of ``method``; fp16_flash follows bf16
    inputs). ``launch`` overrides the default program config of the device's launch table (on
    Hopper the Gluon sm_90 kernel for fp16_flash, int8_flash and turbo; ``{"kernel":
    "triton", ...}`` or ``{"kernel": "gluon", "num_stages": ..., "gluon": {...}}``, see
    :mod:`gpu.prefill`). Integer methods run their Q/K/V quantization kernels first.
    ``check_finite`` (default) refuses NaN/Inf inputs at the cost of one device-to-host sync
    per tensor; ``False`` skips it (steady-state loops, CUDA graphs: non-finite inputs then
    give non-finite outputs). Returns ``[B, Hq, Lq, D]`` in q's dtype. The kernels keep no row
    log-sum-exp: there is no ``return_lse`` here (``sim.simulate`` and ``ref.attention`` have
    it).

    >>> out = gpu.attention(q, k, v, method="turbo", causal=True)      # doctest: +SKIP
    """
    return _prefill(q, k, v, method, causal, is_causal, sm_scale, spec, launch, False,
                    tensor_layout, check_bool(check_finite, "check_finite"))[1]


def attention_trace(q, k, v, method: str = "int8_flash", causal: bool | None = None,
                    sm_scale: float | None = None, spec: MethodSpec | str | None = None,
                    launch: dict | None = None, *, is_causal: bool | None = None,
                    tensor_layout: str = "HND") -> KernelResult:
    """:func:`attention` plus its intermediates under the simulator's names: integer methods
    ``q_codes``, ``k_codes``, ``v_codes`` (``[B, H, L, D]``), ``q_scale``, ``k_scale``,
    ``v_scale`` (float32 ``[B, H, n_groups]``), ``s_int`` (int32) and ``p_codes`` (int8)
    ``[B, Hq, Lq, Lk]``, ``o_int`` (int32 ``[B, Hq, n_key_tiles, Lq, D]``); float methods ``s``
    and ``p`` (f32). Entries of key tiles a row's program skips (causal) are 0. The trace keeps
    the ``[B, H, L, ...]`` layout whatever ``tensor_layout``; ``out`` follows it."""
    s, (out, tr) = _prefill(q, k, v, method, causal, is_causal, sm_scale, spec, launch, True,
                            tensor_layout)
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
    check_inputs(k, k, v, check_bool(check_finite, "check_finite"), dtypes=path.cache_dtypes)
    return path.cache(k, v, s, calibration)


def _k_absmax(cache) -> float | None:
    """An upper bound of ``max|k|`` over the cache: the cache's own (``k_absmax``) where it
    keeps one, else the largest finite value of an fp16 cache (its K entries were finite fp16),
    else None (bf16: no useful bound without reading the cache)."""
    got = getattr(cache, "k_absmax", None)
    if got is not None:
        return float(got() if callable(got) else got)
    torch = torch_module()
    return 65504.0 if cache.dtype == torch.float16 else None


def _decode(q, cache, sm_scale, launch, trace, check_finite=True):
    if not isinstance(cache, DecodeCache):
        raise TypeError(f"cache: expected a cache from gpu.build_cache, got {type(cache).__name__}")
    check_query(q, cache, check_finite)
    launch = check_launch(launch, "decode") or None
    ka = _k_absmax(cache)
    qa = float(q.abs().amax()) if ka is not None else None
    sm = check_sm_scale(sm_scale, cache.D, None if ka is None else (qa, ka))
    # the problem checks the simulator and the cost model apply (double_sparse: the token
    # budget against the cached keys), so the three executors refuse the same calls
    check = SIMULATORS.get(cache.spec.method).check_problem
    if check is not None:
        check(cache.spec, q_len=1, kv_len=cache.length, head_dim=cache.D)
    return KERNEL_PATHS.get(cache.spec.method).decode(q, cache, sm, launch, trace)


def decode(q, cache, sm_scale: float | None = None, launch: dict | None = None,
           check_finite: bool = True):
    """One decode step: ``softmax(q k^T * sm_scale) v`` over every token of ``cache``.

    ``q`` ``[B, Hq, 1, D]``: contiguous, the cache's dtype and device, finite, ``Hq`` a multiple
    of the cache's ``Hkv``. ``sm_scale`` defaults to ``1/sqrt(D)`` (refused where the scores
    would overflow float32). ``launch`` overrides the launch configuration
    (:func:`gpu.decoding.default_decode_launch`; keys and values checked by
    ``sim.checks.check_launch``; numerics do not depend on it except for f32 rounding). The
    method's problem checks apply as in the simulator (double_sparse: an explicit token budget
    above the cached keys is refused). ``check_finite`` (default) refuses a NaN/Inf ``q`` with
    one device-to-host sync; ``False`` skips it: no sync on the call, which can then be captured
    in a CUDA graph. Returns ``[B, Hq, 1, D]``.

    >>> out = gpu.decode(q, gpu.build_cache(k, v, method="turbo"))     # doctest: +SKIP
    """
    return _decode(q, cache, sm_scale, launch, False, check_bool(check_finite, "check_finite"))


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
