"""int8_flash, the simulator path: INT-FlashAttention (INT8 Q/K/V, per-token scales, INT8 P with
a fixed 1/levels scale, INT32 dots; docs/numerics.md "int8_flash") on the dense tiled path."""
from __future__ import annotations

from ..dense import IntegerOperands, run_dense
from ..operands import int_kv_bytes
from .base import SimMethod


def _kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration):
    return int_kv_bytes(spec, tokens=tokens, head_dim=head_dim, kv_heads=kv_heads)


def _run(q, k, v, spec, shp, *, causal, sm_scale, calibration, trace, mode):
    return run_dense(q, k, v, spec, shp, causal, sm_scale, trace, IntegerOperands)


METHOD = SimMethod("int8_flash", sections=frozenset({"q", "k", "v", "p"}), exps=("exp2",),
                   run=_run, kv_bytes=_kv_bytes,
                   doc="INT-FlashAttention: INT8 Q/K/V and P, INT32 accumulators")
