"""Timing harness for the kernels and their peers (CUDA only).

:func:`time_cuda` times a callable over rotating input sets with CUDA events: warm-up, then
``rep`` timed calls, median in ms. Input sets are built until their bytes exceed ``cold_bytes``
(default 4x the device's L2), and the sets are rotated so every timed call reads inputs that
are not in L2 (cold L2). :func:`attention_flops` gives the FLOPs of one forward
(4 B Hq Lq Lk D, causal: only the visible (row, key) pairs).

    t = time_cuda(lambda q, k, v: gpu.attention(q, k, v), make_inputs)   # doctest: +SKIP
"""
from __future__ import annotations

import statistics
from typing import Callable, Sequence

__all__ = ["time_cuda", "attention_flops", "visible_pairs", "l2_bytes"]


def l2_bytes() -> int:
    import torch
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))


def visible_pairs(Lq: int, Lk: int, causal: bool) -> int:
    """Number of (row, key) pairs the causal (bottom-right) mask lets through."""
    if not causal:
        return Lq * Lk
    off = Lk - Lq
    # row i sees min(Lk, max(0, i + off + 1)) keys
    total = 0
    first = max(0, -off)  # rows before this see nothing
    for_rows_full = max(0, Lq - max(first, Lk - off))  # rows seeing all Lk keys
    lo, hi = first, Lq - for_rows_full
    total += sum(range(lo + off + 1, hi + off + 1)) if hi > lo else 0
    total += for_rows_full * Lk
    return total


def attention_flops(B: int, Hq: int, Lq: int, Lk: int, D: int, causal: bool) -> float:
    return 4.0 * B * Hq * D * visible_pairs(Lq, Lk, causal)


def time_cuda(fn: Callable, make_inputs: Callable[[], Sequence], *, warmup: int = 5,
              rep: int = 20, cold_bytes: int | None = None) -> dict:
    """Median time (ms) of ``fn(*inputs)`` over ``rep`` calls, rotating input sets from
    ``make_inputs()`` whose total size exceeds ``cold_bytes`` (4x L2 by default).
    Returns {"ms": median, "min_ms", "max_ms", "spread": (max-min)/median, "sets"}."""
    import torch
    cold = 4 * l2_bytes() if cold_bytes is None else cold_bytes
    sets, nbytes = [], 0
    while nbytes <= cold or len(sets) < 2:
        s = make_inputs()
        sets.append(s)
        nbytes += sum(x.numel() * x.element_size() for x in s if hasattr(x, "numel"))
        if len(sets) >= 64:
            break
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    times = []
    for i in range(rep):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s = sets[i % len(sets)]
        a.record()
        fn(*s)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    med = statistics.median(times)
    return {"ms": med, "min_ms": min(times), "max_ms": max(times),
            "spread": (max(times) - min(times)) / med, "sets": len(sets)}
