"""int8_flash, the cost path: the integer forward (our Triton kernel's counted SASS mix at the
tiled tiers; Q/K of <= 4 bits use INT4 tensor cores where the GPU has them) and the optimal
split-K flash-decode on INT8 K/V with per-token K scales (no Triton decode kernel of ours)."""
from __future__ import annotations

from ..paths import integer_decode, integer_prefill
from .base import CostPath


def build(spec, s, phase, kernel, ctx):
    if phase == "prefill":
        return integer_prefill("int8_flash", spec, s, ctx, "int8")
    return integer_decode("flash_decode", spec, s, ctx)


PATH = CostPath("int8_flash", {"prefill": ("int8_flash",), "decode": ("flash_decode",)}, build)
