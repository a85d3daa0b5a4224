"""Grid level: the block scheduler handing CTAs to SMs, with co-resident CTAs sharing an SM.

CTAs are dispatched in launch order (linear block index, ``program_id(0)`` fastest) to the first
SM with a free slot (at most ``slots`` resident per SM: the occupancy), the way the hardware's
work distributor fills SMs (one CTA per SM per round before the second; when an SM frees a slot
it takes the next CTA). An SM running ``k`` CTAs advances each by ``1 / cycles_k(cta)`` of its
work per clock, where ``cycles_k`` is the pipeline model's time of ``k`` co-resident CTAs in
step (:class:`sim.cost.counted.CtaTiming`): processor sharing, so a CTA left alone at the tail
speeds up, and CTAs of unequal length (causal) end at different times.

Returns the time the last CTA ends (the launch's compute time, in clocks), the busy clocks
summed over SMs (for the utilisation) and the waves (``ceil(ctas / (sms * slots))``).
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

__all__ = ["schedule"]


def schedule(work: Sequence, sms: int, slots: int,
             cycles: Callable[[int, object], float]) -> dict:
    """``work``: per CTA in launch order, a hashable item (e.g. its loop trips);
    ``cycles(k, item)``: clocks of that CTA when ``k`` CTAs share its SM."""
    if sms < 1 or slots < 1:
        raise ValueError(f"schedule: sms and slots must be >= 1, got {sms}, {slots}")
    items = list(work)
    n = len(items)
    if n == 0:
        return {"cycles": 0.0, "busy": 0.0, "waves": 0}
    waves = math.ceil(n / (sms * slots))
    cache: dict = {}

    def cyc(k, item):
        key = (k, item)
        v = cache.get(key)
        if v is None:
            v = cache[key] = float(cycles(k, item))
            if not v > 0:
                raise ValueError(f"schedule: cycles({k}, {item!r}) = {v}, expected > 0")
        return v

    # Uniform fast path: identical CTAs and full residency every round but the last.
    if all(it == items[0] for it in items):
        item = items[0]
        full_rounds, rest = divmod(n, sms * slots)
        t = full_rounds * cyc(slots, item)
        busy = full_rounds * sms * cyc(slots, item)
        if rest:
            # the last round spreads one CTA per SM first
            k = math.ceil(rest / sms)
            t += cyc(k, item)
            busy += min(rest, sms) * cyc(k, item)
        return {"cycles": t, "busy": busy, "waves": waves}

    if slots == 1:
        # one CTA per SM: list scheduling, each SM takes the next CTA when it frees
        free = [(0.0, sm) for sm in range(sms)]
        busy = end = 0.0
        for it in items:
            t, sm = heapq.heappop(free)
            c = cyc(1, it)
            busy += c
            end = max(end, t + c)
            heapq.heappush(free, (t + c, sm))
        return {"cycles": end, "busy": busy, "waves": waves}

    # SM state: active CTAs as [remaining fraction, item]; event-driven processor sharing.
    now = 0.0
    nxt = 0
    active: list[list] = [[] for _ in range(sms)]
    busy = 0.0
    # initial fill: round-robin over SMs, slot by slot
    for _s in range(slots):
        for sm in range(sms):
            if nxt < n:
                active[sm].append([1.0, items[nxt]])
                nxt += 1
    last_update = [0.0] * sms
    heap = []

    def finish_time(sm):
        k = len(active[sm])
        if not k:
            return None
        return last_update[sm] + min(r * cyc(k, it) for r, it in active[sm])

    for sm in range(sms):
        ft = finish_time(sm)
        if ft is not None:
            heapq.heappush(heap, (ft, sm))
    end = 0.0
    while heap:
        t, sm = heapq.heappop(heap)
        ft = finish_time(sm)
        if ft is None or abs(ft - t) > 1e-6 * max(1.0, t):
            continue                      # stale entry
        k = len(active[sm])
        dt = t - last_update[sm]
        busy += dt
        for a in active[sm]:
            a[0] -= dt / cyc(k, a[1])
        active[sm] = [a for a in active[sm] if a[0] > 1e-9]
        last_update[sm] = t
        end = max(end, t)
        while len(active[sm]) < slots and nxt < n:
            active[sm].append([1.0, items[nxt]])
            nxt += 1
        now = t
        ft = finish_time(sm)
        if ft is not None:
            heapq.heappush(heap, (ft, sm))
    del now
    return {"cycles": end, "busy": busy, "waves": waves}
