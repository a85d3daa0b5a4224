"""``speedup``: how much faster a method is than a baseline on the same shape and GPU.

A ratio of two :func:`sim.cost.predict` calls that differ only in the method (and kernel):
``t(baseline) / t(method)``, so values above 1 mean the method is faster. Like is compared with
like (the rule of ``reports/roofline``): in decode, a method priced with a kernel that is not
one of qsattn's own (``COST_PATHS.get(m).ours``: the optimal ``"ideal"`` kernel, or a generic
one) is compared with the baseline's ``"ideal"`` kernel when it has one; otherwise the baseline
runs its default kernel (qsattn's own Triton kernel).

>>> from sim.cost import Shape
>>> round(speedup("int8_flash", Shape(4, 32, 32, 4096, 4096, 64), "h100_sxm").value, 2) > 0
True
>>> s = speedup("turbo", Shape(8, 32, 8, 1, 8192, 128), "h100_sxm", kernel="ideal")
>>> s.phase, s.baseline.kernel
('decode', 'ideal')
"""
from __future__ import annotations

from dataclasses import dataclass

from ..spec import resolve_spec
from .methods import COST_PATHS
from .model import Prediction, infer_phase, predict
from .shape import Shape

__all__ = ["Speedup", "speedup"]


@dataclass(frozen=True)
class Speedup:
    """``value = baseline.time / method.time`` and the two predictions it comes from."""

    value: float
    method: Prediction
    baseline: Prediction

    @property
    def phase(self) -> str:
        return self.method.phase

    def __float__(self) -> float:
        return self.value

    def to_row(self) -> dict:
        """The method's prediction row plus the baseline's time and the speedup."""
        return {**self.method.to_row(), "baseline": self.baseline.method,
                "baseline_kernel": self.baseline.kernel,
                "baseline_time_us": self.baseline.time * 1e6, "speedup": self.value}


def speedup(spec, shape: Shape, hardware, *, baseline="fp16_flash", phase: str | None = None,
            kernel: str | None = None, baseline_kernel: str | None = None, tier: str = "tiled",
            clock: str = "boost") -> Speedup:
    """Predicted speedup of ``spec`` over ``baseline`` (a spec or its name) on ``shape``.

    Arguments are those of :func:`sim.cost.predict` (``phase`` None is inferred from
    ``shape.q_len``); ``baseline_kernel`` None picks the baseline kernel of the same kind as
    the method's (module docstring). Raises what ``predict`` raises, e.g.
    ``UnsupportedOnHardware`` for FP8 on an Ampere GPU."""
    phase = infer_phase(shape, phase)
    p = predict(spec, shape, hardware, phase=phase, kernel=kernel, tier=tier, clock=clock)
    base = resolve_spec(baseline)
    if baseline_kernel is None and phase == "decode" and \
            p.kernel not in COST_PATHS.get(p.method).ours and \
            "ideal" in COST_PATHS.get(base.method).kernels.get(phase, ()):
        baseline_kernel = "ideal"
    b = predict(base, shape, hardware, phase=phase, kernel=baseline_kernel, tier=tier,
                clock=clock)
    return Speedup(b.time / p.time, p, b)
