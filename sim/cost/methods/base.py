"""What a method contributes to the cost model: :class:`CostPath`, one per method module."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CostPath", "BuildContext"]


@dataclass(frozen=True)
class BuildContext:
    """What a builder needs beyond the spec and shape: the GPU's SM count and architecture
    (which selects the per-arch kernel data), the tier's ``ideal`` flag (roofline: useful work
    only), the caller's prefill ``launch`` override (or None) and ``counted`` (calibrated tier:
    attach the :class:`sim.cost.calibrated.Program` of each launch our kernels make)."""

    sm_count: int
    arch: str
    ideal: bool
    launch: dict | None = None
    counted: bool = False


@dataclass(frozen=True)
class CostPath:
    """The cost path of one method.

    ``kernels``: phase -> the kernel choices, the first is the default (an empty tuple: the
    method has no kernel for that phase, ``no_kernel`` says why). ``ours``: the kernels that are
    qsattn's Triton kernels, priced from their counted SASS at the tiled and calibrated tiers
    (the roofline tier prices the optimal kernel). ``build(spec, shape, phase, kernel, ctx)``:
    the launches of one call (``sim.cost.kernels.Launch``).
    """

    name: str
    kernels: dict
    build: Callable
    ours: frozenset = frozenset()
    no_kernel: dict | None = None

    def default_kernel(self, phase: str) -> str:
        ks = self.kernels.get(phase, ())
        if not ks:
            why = (self.no_kernel or {}).get(phase, "")
            raise ValueError(f"phase: method {self.name!r} has no {phase} kernel in the cost "
                             f"model{': ' + why if why else ''}")
        return ks[0]
