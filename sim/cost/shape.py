"""Attention problem sizes priced by the cost model."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """batch, query heads, kv heads, query rows, keys, head dim (Dv = D), causal.

    GQA: ``q_heads`` is a multiple of ``kv_heads``; a decode step is ``q_len == 1``.
    Causal masks are bottom-right aligned (query row i sees keys j <= i + kv_len - q_len), as in
    ``sim.checks``.

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
        for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Shape.{name}: expected a positive integer, got {v!r}")
        if self.q_heads % self.kv_heads:
            raise ValueError(f"Shape.q_heads: expected a multiple of kv_heads={self.kv_heads} "
                             f"(GQA), got {self.q_heads}")
        if not isinstance(self.causal, bool):
            raise TypeError(f"Shape.causal: expected a bool, got {self.causal!r}")
        if self.head_dim % 8:
            raise ValueError(f"Shape.head_dim: expected a multiple of 8 (tensor-core k-step), "
                             f"got {self.head_dim}")

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    def label(self) -> str:
        return (f"B{self.batch} H{self.q_heads}/{self.kv_heads} Lq{self.q_len} Lk{self.kv_len} "
                f"D{self.head_dim}{' causal' if self.causal else ''}")
