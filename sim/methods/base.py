"""What a method contributes to the simulator: :class:`SimMethod`, one per method module."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SimMethod", "CalibrationKind", "SECTIONS"]

# Optional sections of a MethodSpec (sim.spec); a method names the ones it reads, the others
# must be absent from its specs.
SECTIONS = ("operands", "q", "k", "v", "p", "kvcache", "sparse")


@dataclass(frozen=True)
class CalibrationKind:
    """An offline calibration a method takes (double_sparse's label channels, turbo's head
    priority). ``compute(q, k, v, spec, source)`` -> an object with ``.save(path)``;
    ``load(path)`` reads one back; ``key(spec)``: what of the spec the calibration depends on
    (two specs with equal keys share one calibration); ``suffix``: its file suffix."""

    name: str
    compute: Callable
    load: Callable
    key: Callable
    suffix: str


@dataclass(frozen=True)
class SimMethod:
    """The simulator path of one method.

    ``sections``: the spec sections the method reads (the others must be absent).
    ``exps``: the ``softmax.exp`` values it implements.
    ``check_spec(spec)``: checks across sections (ValueError naming the dotted field).
    ``run(q, k, v, spec, shape, *, causal, sm_scale, calibration, trace, mode)``: the method on
    validated inputs (``shape`` is ``sim.checks.QKVShape``, ``sm_scale`` a float, ``mode`` None or
    one of ``modes``) returning ``sim.engine.SimResult``.
    ``modes``: extra execution modes (``"kv_cache"``: K/V as the method's cache holds them).
    ``calibrated``: the modes (None = the plain run) that take a ``calibration`` argument, of
    kind ``calibration`` (:class:`CalibrationKind`).
    ``decode_mode``: the mode whose numbers a decode step (one query row over the cache)
    reproduces.
    ``kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration)``: bytes the method
    keeps per layer for ``tokens`` tokens of K and V (batch 1), every scale and side structure
    counted.
    ``selects_keys``: the method attends over a selection of keys; its trace holds
    ``indices``, ``counts``, ``budget`` and ``recall`` (double_sparse's layout).
    ``lse_modes``: the modes (None = the plain run) whose ``run`` fills ``SimResult.lse``
    (``sim.engine.lse_of`` of the engine's final state).
    ``check_problem(spec, *, q_len, kv_len, head_dim)``: the checks of a spec against a problem
    size (ValueError naming the dotted field), e.g. a token budget above the keys. The one rule
    every executor applies: ``sim.simulate``, ``sim.cost.predict`` and the ``gpu`` API call it.
    """

    name: str
    sections: frozenset
    exps: tuple
    run: Callable
    check_spec: Callable | None = None
    kv_bytes: Callable | None = None
    modes: tuple = ()
    calibrated: tuple = ()
    calibration: CalibrationKind | None = None
    decode_mode: str | None = None
    selects_keys: bool = False
    lse_modes: tuple = (None,)
    check_problem: Callable | None = None
    doc: str = field(default="", compare=False)

    def __post_init__(self):
        if self.calibrated and self.calibration is None:
            raise ValueError(f"calibration: {self.name} takes one in modes {self.calibrated} "
                             f"but declares no CalibrationKind")
        bad = set(self.sections) - set(SECTIONS)
        if bad:
            raise ValueError(f"sections: unknown spec sections {sorted(bad)}; expected a subset "
                             f"of {SECTIONS}")
