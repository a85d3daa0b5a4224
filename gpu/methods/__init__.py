"""The kernel executor's method registry: one module per method, found through
:data:`KERNEL_PATHS` by ``spec.method``. A module defines ``PATH``, a
:class:`gpu.methods.base.KernelPath` (its spec checks, prefill, cache and decode; None where it
has no kernel), and registers here. Shared launch machinery lives in :mod:`gpu.common`,
:mod:`gpu.prefill` and :mod:`gpu.decoding` and knows no method by name.
"""
from sim.registry import Registry

from . import double_sparse, fp16_flash, int8_flash, turbo
from .base import KernelPath

KERNEL_PATHS: Registry[KernelPath] = Registry("kernel executor")
for _m in (fp16_flash, int8_flash, turbo, double_sparse):
    KERNEL_PATHS.register(_m.PATH.name, _m.PATH)


def prefill_methods() -> tuple[str, ...]:
    """Methods with a prefill kernel."""
    return tuple(n for n, p in KERNEL_PATHS.items() if p.prefill is not None)


def decode_methods() -> tuple[str, ...]:
    """Methods with a decode cache and kernel."""
    return tuple(n for n, p in KERNEL_PATHS.items() if p.decode is not None)


__all__ = ["KERNEL_PATHS", "KernelPath", "prefill_methods", "decode_methods"]
