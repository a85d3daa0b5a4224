"""What a method contributes to the kernel executor: :class:`KernelPath`, one per method module."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["KernelPath"]


@dataclass(frozen=True)
class KernelPath:
    """The GPU path of one method; None where the method has no kernel for a phase.

    ``check_spec(spec)``: every spec-only check the kernels need (ValueError naming the dotted
    field); run once per spec (the public API caches it by the spec).
    ``prefill(q, k, v, spec, *, causal, sm_scale, launch, trace)``: checked inputs; returns
    ``out`` or, with ``trace``, ``(out, trace)`` with the simulator's trace names and layouts.
    ``spec_for_dtype(spec, dtype)``: the spec a call on inputs of ``dtype`` runs when the user
    gave none (fp16_flash follows bf16 inputs), default: the spec unchanged.
    ``cache(k, v, spec, calibration)``: a decode cache of checked ``k``/``v``; ``cache_dtypes``
    the input dtypes it takes; ``cache_needs_calibration``: None is refused (the cache cannot
    calibrate on its own inputs).
    ``decode(q, cache, sm_scale, launch, trace)``: one decode step on a checked query.
    ``compare_cache(cache, k, v, calibration)``: the cache's stored state against the
    simulator's cache of the same numpy ``k``/``v`` (``{name: gpu.compare.KeyAgreement}``).
    """

    name: str
    check_spec: Callable
    prefill: Callable | None = None
    spec_for_dtype: Callable | None = None
    cache: Callable | None = None
    cache_dtypes: tuple = ("float16", "bfloat16")
    cache_needs_calibration: bool = False
    decode: Callable | None = None
    compare_cache: Callable | None = None
    prefill_dtypes: tuple = ("float16", "bfloat16")
