"""fp16_flash, the cost path: the FlashAttention-2 forward (our Triton kernel's counted SASS mix
at the tiled tiers) and, for decode, our grouped split-K kernel (one program per KV head, G
rows padded to 16, tl.dot) plus its combine; ``ideal`` is the optimal tensor-core split-K
(one CTA per KV head). ``sage_v1``: SageAttention v1 (Zhang et al., arXiv 2410.02367, INT8
QK^T with per-block scales, FP16 PV, plus its Q/K quantize + K-smoothing pre-pass), a peer
priced from the same FP16 inputs."""
from __future__ import annotations

from .. import kernels as K
from ..paths import (decode_common, float_decode, float_prefill, foreign_launches,
                     prefill_common, sage_quant)
from .base import CostPath


def _sage(spec, s, ctx, phase):
    bn = spec.tiling.block_n
    if phase == "prefill" and ctx.counted:
        # the calibrated tier prices the wheel's own kernels (configs/kernels/foreign/sage_v1.yaml)
        return foreign_launches("sage_v1", s, ctx)
    if phase == "prefill":
        return [sage_quant(s, bn, ctx.ideal),
                K.flash("sage_v1", qk="int8", pv="fp16", qb=1.0, kb=1.0, vb=2.0,
                        kv_row_extra=4.0 / bn, elem=K.SOFTMAX_SAGE, row_tile=K.ROW_TILE_EXP,
                        **prefill_common(spec, s, ctx))]
    return [sage_quant(s, bn, ctx.ideal, decode=True)] + K.decode(
        "sage_v1", qk="int8", pv="fp16", qb=1.0, kb=1.0, vb=2.0, kv_row_extra=4.0 / bn,
        elem=K.SOFTMAX_SAGE, row_tile=K.ROW_TILE_EXP, **decode_common(spec, s, ctx))


def build(spec, s, phase, kernel, ctx):
    if kernel == "sage_v1":
        return _sage(spec, s, ctx, phase)
    if phase == "prefill":
        return float_prefill("fp16_flash", spec, s, ctx, "fp16")
    if kernel == "flash_decode" and not ctx.ideal and spec.operands.format == "fp16":
        return K.ours_flash_decode_group("flash_decode", B=s.batch, Hq=s.q_heads, Hkv=s.kv_heads,
                                         count=s.kv_len, bn=spec.tiling.block_n, d=s.head_dim,
                                         sm_count=ctx.sm_count, sass=K.decode_sass(ctx.arch))
    return float_decode("flash_decode", spec, s, ctx)


PATH = CostPath("fp16_flash", {"prefill": ("fp16_flash", "sage_v1"),
                               "decode": ("flash_decode", "ideal", "sage_v1")},
                build, ours=frozenset({"flash_decode"}))
