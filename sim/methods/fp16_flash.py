"""fp16_flash, the simulator path: FlashAttention-2 forward with FP16 (or BF16) operands and FP32
accumulation (docs/numerics.md "fp16_flash") on the dense tiled path."""
from __future__ import annotations

from ..dense import FloatOperands, run_dense
from ..operands import float_kv_bytes
from .base import SimMethod


def _check_spec(spec) -> None:
    if spec.operands.format not in ("fp16", "bf16"):
        raise ValueError(f"operands.format: fp16_flash needs fp16 or bf16, got "
                         f"{spec.operands.format!r}")


def _kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration):
    return float_kv_bytes(spec.operands, tokens=tokens, head_dim=head_dim, kv_heads=kv_heads)


def _run(q, k, v, spec, shp, *, causal, sm_scale, calibration, trace, mode):
    return run_dense(q, k, v, spec, shp, causal, sm_scale, trace, FloatOperands)


METHOD = SimMethod("fp16_flash", sections=frozenset({"operands"}), exps=("exp2",), run=_run,
                   check_spec=_check_spec, kv_bytes=_kv_bytes,
                   doc="FlashAttention-2: FP16 operands, FP32 accumulation, online softmax")
