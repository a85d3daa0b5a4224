"""The simulator's method registry: one module per method, found through :data:`SIMULATORS`.

A method module defines ``METHOD``, a :class:`sim.methods.base.SimMethod` (its spec sections,
the softmax exps it implements, its checks and its run function) and registers here. Shared
machinery (the engine, the dense path, quantizers) lives outside this package and knows no
method by name. docs/architecture.md walks through adding a method.
"""
from ..registry import Registry
from . import double_sparse, fp8_flash, fp16_flash, int8_flash, kivi, turbo
from .base import SECTIONS, CalibrationKind, SimMethod

SIMULATORS: Registry[SimMethod] = Registry("simulator")
for _m in (fp16_flash, fp8_flash, int8_flash, turbo, double_sparse, kivi):
    SIMULATORS.register(_m.METHOD.name, _m.METHOD)

__all__ = ["SIMULATORS", "SimMethod", "CalibrationKind", "SECTIONS"]
