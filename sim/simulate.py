"""``simulate``: bit-accurate CPU execution of a method spec (docs/numerics.md is the contract).

    >>> import numpy as np
    >>> from sim import simulate
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((1, 4, 17, 64)).astype(np.float16)
    >>> k = rng.standard_normal((1, 2, 97, 64)).astype(np.float16); v = k.copy()
    >>> res = simulate(q, k, v, "int8_flash", causal=True, trace=True)
    >>> res.out.shape, res.trace["s_int"].dtype, res.trace["p_codes"].shape
    ((1, 4, 17, 64), dtype('int32'), (1, 4, 17, 97))

``simulate`` validates the inputs once, resolves the spec and runs the method's simulator path,
found in the registry :data:`sim.methods.SIMULATORS` by ``spec.method``. Methods that read all
keys run on the dense path of :mod:`sim.dense` (the engine of :mod:`sim.engine`, one pass per
key tile over all rows of one (batch, KV head)); double_sparse and turbo's ``kv_cache`` mode have
their own paths in their method modules.

Trace layout (``trace=True``; refused when ``B * Hq * Lq * Lk > 2**25``). Always::

    qk_scale            float32 scalar, f32(sm_scale * log2(e))
    m, l, alpha         float32 [B, Hq, n_key_tiles, Lq]: state after each key tile (every method
                        that runs the engine over key tiles, turbo's kv_cache mode included)
    p                   float32 [B, Hq, Lq, Lk]: EXP output (SAS output for turbo), 0 where masked
    visible             bool    [B, Hq, Lq, Lk]: the causal mask (all True without causal)

Integer methods (int8_flash, turbo)::

    q_codes, k_codes, v_codes   int8 [B, H, L, D] (H = Hq for q, Hkv for k, v)
    q_scale, k_scale, v_scale   float32 scale grids of sim.numerics.quantize
                                (per_token [B, H, L, 1], per_block [B, H, ceil(L/T), 1], ...)
    s_int               int32 [B, Hq, Lq, Lk]: Q8 K8^T, 0 where masked
    p_codes             int8  [B, Hq, Lq, Lk]: PQUANT(p), 0 where masked
    o_int               int32 [B, Hq, n_key_tiles, Lq, Dv]: P8 V8 per key tile (0 for skipped tiles)

Float methods (fp16_flash, fp8_flash)::

    q, k, v             float32 operand values as fed to the dots (fp16 / bf16 / fp8 values)
    q_scale, k_scale, v_scale   float32 per-tensor scales (1 when operands.scale is none)
    s                   float32 [B, Hq, Lq, Lk]: scaled scores, -inf where masked
    p_op                float32 [B, Hq, Lq, Lk]: P as cast for the PV dot
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .checks import (as_numpy, check_bool, check_qkv, check_sm_scale, from_hnd, resolve_causal,
                     resolve_layout)
from .engine import LOG2E, TRACE_LIMIT, SimResult, qk_scale_of
from .methods import SIMULATORS
from .spec import MethodSpec, resolve_spec

__all__ = ["simulate", "SimResult", "LOG2E", "qk_scale_of", "TRACE_LIMIT"]


def simulate(q: Any, k: Any, v: Any, spec: "MethodSpec | str", causal: bool | None = None,
             sm_scale: float | None = None, calibration: Any = None, trace: bool = False,
             kv_cache: bool = False, *, is_causal: bool | None = None,
             tensor_layout: str = "HND", return_lse: bool = False) -> SimResult:
    """Run ``spec`` on ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]``, ``v [B, Hkv, Lk, Dv]``.

    Args:
        q, k, v: numpy arrays or torch tensors (any device; converted to numpy, bfloat16 exactly
            as float32) of float16 / float32 / float64, finite, ``Lk >= 1``, ``Hq % Hkv == 0``
            (query head h reads KV head ``h // (Hq // Hkv)``). Any D >= 1 (D <= 1040 keeps
            ``f32(S_int)`` exact; GPU kernels need their own D constraints).
        spec: a MethodSpec, a shipped spec name or a YAML path.
        causal: bottom-right aligned mask (row i sees keys j <= i + Lk - Lq); rows that see no
            key output 0. Default False. ``is_causal`` is an alias (give either, or equal values).
        sm_scale: default ``1 / sqrt(D)``; refused when the scores would overflow float32
            (:func:`sim.checks.check_sm_scale`).
        calibration: for the methods and modes that take one (double_sparse: label channels;
            turbo with ``kv_cache``: head ranking); None calibrates on the call's own inputs.
        trace: return intermediates (layout in the module docstring; always ``[B, H, L, ...]``).
        kv_cache: K/V as the method's cache holds them when each row is decoded (turbo: INT8
            buffer + INT4/INT2 re-quantized groups, ``spec.kvcache``); default False runs the
            prefill compute path.
        tensor_layout: "HND" (``[B, H, L, D]``, default) or "NHD" (``[B, L, H, D]``) for q, k, v
            and ``out``; shapes inconsistent under the declared layout are refused (with a hint
            when they fit the other one), never re-read.
        return_lse: fill ``SimResult.lse``, float32 ``[B, Hq, Lq]``: the natural log-sum-exp of
            the scaled scores as the method's engine accumulated it, ``ln 2 * (m + log2 l)``
            from its final online-softmax state (``-inf`` for rows that see no key). Every
            method's default mode has it; turbo's ``kv_cache`` mode does not
            (``SimMethod.lse_modes``).

    Returns:
        :class:`SimResult` with ``out`` float32 ``[B, Hq, Lq, Dv]`` (``[B, Lq, Hq, Dv]``, a view,
        for "NHD").

    Raises:
        TypeError / ValueError naming the argument: non-array or non-float inputs, shape
        mismatches, NaN/Inf, empty sequences, Hq not a multiple of Hkv, unknown method, options
        a method does not take, a trace too large to hold, values beyond the range of the
        method's operand format (fp16 operands: ``|x| > 65504``), a problem the method's spec
        cannot run (double_sparse: a token budget above the keys).
    """
    spec = resolve_spec(spec)
    q, k, v = as_numpy(q, "q"), as_numpy(k, "k"), as_numpy(v, "v")
    q, k, v = resolve_layout(q, k, v, tensor_layout)
    if tensor_layout == "NHD":   # the methods index [B, H, L, D] rows: pack the views once
        q, k, v = (np.ascontiguousarray(x) for x in (q, k, v))
    shp = check_qkv(q, k, v, allow_dtypes={"float16", "float32", "float64"})
    scale = check_sm_scale(sm_scale, shp.D, shp.absmax)
    causal = resolve_causal(causal, is_causal)
    trace = check_bool(trace, "trace")
    mode = "kv_cache" if check_bool(kv_cache, "kv_cache") else None
    return_lse = check_bool(return_lse, "return_lse")
    method = SIMULATORS.get(spec.method)
    if mode is not None and mode not in method.modes:
        raise ValueError(f"kv_cache: method {spec.method!r} has no KV-cache mode (modes: "
                         f"{list(method.modes)}), got kv_cache=True")
    if calibration is not None and mode not in method.calibrated:
        raise ValueError(f"calibration: method {spec.method!r} "
                         f"{'with kv_cache=True ' if mode else ''}takes none, got "
                         f"{type(calibration).__name__}")
    if return_lse and mode not in method.lse_modes:
        raise ValueError(f"return_lse: method {spec.method!r}"
                         f"{' with kv_cache=True' if mode else ''} does not report the row "
                         f"log-sum-exp (modes that do: {list(method.lse_modes)})")
    if trace and shp.B * shp.Hq * shp.Lq * shp.Lk > TRACE_LIMIT:
        raise ValueError(f"trace: B*Hq*Lq*Lk = {shp.B * shp.Hq * shp.Lq * shp.Lk} exceeds "
                         f"{TRACE_LIMIT}; trace smaller problems")
    if method.check_problem is not None:
        method.check_problem(spec, q_len=shp.Lq, kv_len=shp.Lk, head_dim=shp.D)
    res = method.run(q, k, v, spec, shp, causal=causal, sm_scale=scale, calibration=calibration,
                     trace=trace, mode=mode)
    res.out = from_hnd(res.out, tensor_layout)
    if not return_lse:
        res.lse = None
    elif res.lse is None:   # a registry entry that declares lse_modes must fill it
        raise RuntimeError(f"sim.methods.{spec.method}: lse_modes includes {mode!r} but its run "
                           f"returned no lse")
    return res
