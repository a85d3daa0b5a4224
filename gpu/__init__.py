"""Triton reference kernels for the qsattn methods (prefill: fp16_flash, int8_flash, turbo).

``import gpu`` needs neither a GPU nor triton: torch and triton are imported when a function
runs. Kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.

    >>> import gpu                                                        # doctest: +SKIP
    >>> out = gpu.attention(q, k, v, method="int8_flash", causal=True)     # doctest: +SKIP

Decode: :func:`build_cache` (:mod:`gpu.cache`) and :func:`decode` (:mod:`gpu.decode`).
"""
from .ops import PREFILL_METHODS, attention, attention_trace
from .cache import CACHE_METHODS, build_cache
from .decode import decode, decode_trace

__all__ = ["attention", "attention_trace", "PREFILL_METHODS", "build_cache", "decode",
           "decode_trace", "CACHE_METHODS"]
