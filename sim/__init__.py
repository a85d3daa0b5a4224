"""qsattn simulator: bit-accurate CPU execution and cost model of attention methods.

``sim`` depends on numpy, numba, scipy and pyyaml only: it never imports torch or triton, so
accuracy studies and the cost model run on any CPU.

    >>> from sim import load_method
    >>> spec = load_method("int8_flash")
"""
from . import numerics
from .schema import ConfigError
from .spec import MethodSpec, available_methods, load_method, resolve_spec
from .simulate import simulate, SimResult

__all__ = ["numerics", "ConfigError", "MethodSpec", "available_methods", "load_method",
           "resolve_spec", "simulate", "SimResult"]
