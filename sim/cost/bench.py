"""Prediction rate of the cost model: ``python -m sim.cost.bench`` prints predictions/second."""
from __future__ import annotations

import time

from sim.spec import load_method

from .hardware import load_hardware
from .model import predict
from .shape import Shape


def rate(seconds: float = 1.0, clock=time.process_time) -> float:
    """Predictions per second of CPU time (``clock``; process time is robust to a busy
    machine, pass ``time.perf_counter`` for wall time)."""
    specs = [load_method(m) for m in ("fp16_flash", "int8_flash", "turbo")]
    hw = load_hardware("a100_80gb_sxm")
    shapes = [Shape(4, 32, 8, L, L, 128, c) for L in (1024, 4096, 16384) for c in (False, True)]
    n, t0 = 0, clock()
    while clock() - t0 < seconds:
        for sp in specs:
            for s in shapes:
                predict(sp, s, hw)
                predict(sp, Shape(s.batch, s.q_heads, s.kv_heads, 1, s.kv_len, 128), hw,
                        phase="decode")
                n += 2
    return n / (clock() - t0)


if __name__ == "__main__":
    print(f"{rate():,.0f} predictions per CPU second, {rate(clock=time.perf_counter):,.0f} per "
          f"wall second (prefill + decode, causal and not, 1K..16K)")
