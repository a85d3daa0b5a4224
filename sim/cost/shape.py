"""Attention problem sizes priced by the cost model."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

# Largest sizes priced. Far beyond any GPU's memory (2^24 tokens of one fp16 head of 128 is
# 4 GiB), they bound the work of a prediction (the causal tile count walks q_len / block_m
# query blocks) and keep every byte count exact in float64.
LIMITS = {"batch": 1 << 20, "q_heads": 1 << 16, "kv_heads": 1 << 16, "q_len": 1 << 24,
          "kv_len": 1 << 24, "head_dim": 1 << 12}


@dataclass(frozen=True)
class Shape:
    """batch, query heads, kv heads, query rows, keys, head dim (Dv = D), causal.

    GQA: ``q_heads`` is a multiple of ``kv_heads``; a decode step is ``q_len == 1``.
    Causal masks are bottom-right aligned (query row i sees keys j <= i + kv_len - q_len), as in
    ``sim.checks``. Sizes are integers (numpy integers accepted) in ``[1, LIMITS[name]]``.

    >>> Shape(batch=4, q_heads=32, kv_heads=8, q_len=1, kv_len=4096, head_dim=128).group
    4
    """

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool = False

    def __post_init__(self):
        for name, top in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise TypeError(f"Shape.{name}: expected a positive integer, got "
                                f"{type(v).__name__} {v!r}")
            if not 1 <= v <= top:
                raise ValueError(f"Shape.{name}: expected an integer in [1, {top}], got {v!r}")
            object.__setattr__(self, name, int(v))      # numpy integers stored as int
        if self.q_heads % self.kv_heads:
            raise ValueError(f"Shape.q_heads: expected a multiple of kv_heads={self.kv_heads} "
                             f"(GQA), got {self.q_heads}")
        if not isinstance(self.causal, (bool, np.bool_)):
            raise TypeError(f"Shape.causal: expected a bool, got {self.causal!r}")
        object.__setattr__(self, "causal", bool(self.causal))
        if self.head_dim % 8:
            raise ValueError(f"Shape.head_dim: expected a multiple of 8 (tensor-core k-step), "
                             f"got {self.head_dim}")

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    def label(self) -> str:
        return (f"B{self.batch} H{self.q_heads}/{self.kv_heads} Lq{self.q_len} Lk{self.kv_len} "
                f"D{self.head_dim}{' causal' if self.causal else ''}")
