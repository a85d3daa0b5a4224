"""The one timing harness of the kernels and their peers (CUDA only): prefill and decode,
``qsattn bench``, ``qsattn validate`` and ``qsattn calibrate`` all time through it.

:func:`time_gpu` measures GPU time only. Input sets are built until their bytes exceed 4x the
device's L2 (``cold_l2``; at least 2 sets) and rotated, so no timed call finds its inputs in
L2. One round is ``calls`` back-to-back calls over the rotating sets, captured in a CUDA graph
and replayed (``graph=True``: no host work between launches) or, where capture is impossible,
enqueued back to back between two CUDA events (host gaps are hidden while the host runs
ahead of the GPU). ``rounds`` rounds give the median and the spread. :func:`host_time`
measures the host's side separately: wall time of a call from entry until its launches are
enqueued, with the GPU idle first (median of several calls).

:func:`attention_flops` gives the FLOPs of one forward (4 B Hq Lq Lk D, causal: only the
visible (row, key) pairs).

    t = time_gpu(lambda q, k, v: gpu.attention(q, k, v), make_inputs)   # doctest: +SKIP
    t.ms, t.spread, t.mode                                              # doctest: +SKIP
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

__all__ = ["time_gpu", "time_flushed", "host_time", "Timing", "attention_flops",
           "visible_pairs", "l2_bytes", "input_sets"]


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


@dataclass(frozen=True)
class Timing:
    """GPU time of one call: ``ms`` the median over rounds, ``min_ms``/``max_ms`` and
    ``spread`` = (max - min) / median over rounds; ``mode`` "graph" or "events";
    ``sets`` input sets rotated; ``cold_l2``; ``calls`` per round."""

    ms: float
    min_ms: float
    max_ms: float
    spread: float
    mode: str
    sets: int
    cold_l2: bool
    calls: int
    rounds: int

    def row(self) -> dict:
        return asdict(self)


def _nbytes(items) -> int:
    return sum(x.numel() * x.element_size() for x in items if hasattr(x, "numel"))


def input_sets(make_inputs: Callable[[], Sequence], cold_l2: bool, limit: int = 64) -> list:
    """Input sets from ``make_inputs()`` until they hold more than 4x L2 (at least 2), or one
    set without ``cold_l2``."""
    sets = [tuple(make_inputs())]
    if not cold_l2:
        return sets
    cold, total = 4 * l2_bytes(), _nbytes(sets[0])
    while (total <= cold or len(sets) < 2) and len(sets) < limit:
        sets.append(tuple(make_inputs()))
        total += _nbytes(sets[-1])
    return sets


def time_gpu(fn: Callable, make_inputs: Callable[[], Sequence], *, cold_l2: bool = True,
             calls: int = 10, rounds: int = 10, warmup: int = 3, graph: bool = True) -> Timing:
    """GPU time of ``fn(*inputs)`` (see the module docstring). ``fn`` must not synchronize with
    the host (check its inputs once before timing)."""
    import torch
    sets = input_sets(make_inputs, cold_l2)
    seq = [sets[i % len(sets)] for i in range(max(calls, len(sets)))]
    for _ in range(warmup):
        for s in sets:
            fn(*s)
    torch.cuda.synchronize()
    replay, mode = None, "events"
    if graph:
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):      # capture warm-up on a side stream
                for s in seq:
                    fn(*s)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for s in seq:
                    fn(*s)
            replay, mode = g.replay, "graph"
        except Exception:  # noqa: BLE001 - not capturable (host sync, host-side data): events
            torch.cuda.synchronize()
            replay = None
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        if replay is not None:
            replay()
        else:
            for s in seq:
                fn(*s)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / len(seq))
    med = statistics.median(times)
    return Timing(med, min(times), max(times), (max(times) - min(times)) / med, mode,
                  len(sets), cold_l2, len(seq), rounds)


def time_flushed(fn: Callable, *, calls: int = 20, warmup: int = 3) -> Timing:
    """GPU time of ``fn()`` (no inputs to rotate) with L2 flushed before every call: a write of
    2x L2 between calls, outside the events that bracket each call. For single-kernel
    microbenchmarks whose host work is a launch."""
    import torch
    flush = torch.empty(2 * l2_bytes(), dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    med = statistics.median(times)
    return Timing(med, min(times), max(times), (max(times) - min(times)) / med, "flushed", 0,
                  True, 1, calls)


def host_time(fn: Callable, inputs: Sequence, *, calls: int = 20) -> float:
    """Median host microseconds of ``fn(*inputs)``: from entry until it returns with its work
    enqueued, the GPU synchronized before each call so the launch queue never blocks it."""
    import torch
    fn(*inputs)
    out = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*inputs)
        out.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(out)
