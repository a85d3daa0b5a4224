"""The cost model's method registry: one module per method, found through :data:`COST_PATHS` by
``spec.method``. A module defines ``PATH``, a :class:`sim.cost.methods.base.CostPath` (its
kernels per phase, which of them are our Triton kernels, its launch builder) and registers here.
The shared builders (:mod:`sim.cost.paths`, :mod:`sim.cost.kernels`) know no method by name.
"""
from ...registry import Registry
from . import double_sparse, fp8_flash, fp16_flash, int8_flash, turbo
from .base import BuildContext, CostPath

COST_PATHS: Registry[CostPath] = Registry("cost model")
for _m in (fp16_flash, fp8_flash, int8_flash, turbo, double_sparse):
    COST_PATHS.register(_m.PATH.name, _m.PATH)

__all__ = ["COST_PATHS", "CostPath", "BuildContext"]
