"""fp8_flash, the cost path: the FlashAttention forward on FP8 operands (per-element tables: no
Triton kernel of ours to count) and the optimal split-K flash-decode on FP8 K/V."""
from __future__ import annotations

from ..paths import float_decode, float_prefill
from .base import CostPath


def build(spec, s, phase, kernel, ctx):
    if phase == "prefill":
        return float_prefill("fp8_flash", spec, s, ctx, None)
    return float_decode("flash_decode", spec, s, ctx)


PATH = CostPath("fp8_flash", {"prefill": ("fp8_flash",), "decode": ("flash_decode",)}, build)
