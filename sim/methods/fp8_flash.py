"""fp8_flash, the simulator path: FP8 operands with per-tensor scales, FP32 accumulation
(docs/numerics.md "fp8_flash") on the dense tiled path."""
from __future__ import annotations

from ..dense import FloatOperands, run_dense
from ..operands import float_kv_bytes
from .base import SimMethod


def _check_spec(spec) -> None:
    if not spec.operands.format.startswith("fp8"):
        raise ValueError(f"operands.format: fp8_flash needs an fp8 format, got "
                         f"{spec.operands.format!r}")


def _kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration):
    return float_kv_bytes(spec.operands, tokens=tokens, head_dim=head_dim, kv_heads=kv_heads)


def _run(q, k, v, spec, shp, *, causal, sm_scale, calibration, trace, mode):
    return run_dense(q, k, v, spec, shp, causal, sm_scale, trace, FloatOperands)


METHOD = SimMethod("fp8_flash", sections=frozenset({"operands"}), exps=("exp2",), run=_run,
                   check_spec=_check_spec, kv_bytes=_kv_bytes,
                   doc="FP8 FlashAttention: per-tensor scaled FP8 operands, FP32 accumulation")
