"""Triton reference kernels of the qsattn methods, and their launchers.

``import gpu`` needs neither a GPU nor triton: torch and triton are imported when a kernel
runs. Kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.

    >>> import gpu                                                        # doctest: +SKIP
    >>> out = gpu.attention(q, k, v, method="int8_flash", causal=True)     # doctest: +SKIP

The public functions are in :mod:`gpu.api`; each method's kernel path is a module of
:mod:`gpu.methods`, found through :data:`gpu.methods.KERNEL_PATHS`.
"""
from .api import (KernelResult, attention, attention_trace, build_cache, decode,
                  decode_trace, resolve)
from .methods import KERNEL_PATHS, decode_methods, prefill_methods

__all__ = ["attention", "attention_trace", "build_cache", "decode", "decode_trace",
           "KernelResult", "resolve", "KERNEL_PATHS", "prefill_methods", "decode_methods"]
