"""Throughput of sim.cost.predict per tier (issue 16 target: >= 10,000 predictions/s at the
roofline and tiled tiers; a 1,000-point sweep at the calibrated tier in < 60 s on a 2-core CPU).

    python benchmarks/cost_speed.py [--points N] [--hardware h100_sxm]

The sweep: prefill of int8_flash over lengths 1024..(1024 + 16 N), causal and not, batch 4,
32 heads, D128 (the counted tier compiles each distinct specialization once: the first pass is
"cold" when the record and timing caches are empty, the second is "warm"). Prints one line per
tier with predictions per second; CPU time only, on this machine.
"""
from __future__ import annotations

import argparse
import time

import gpu.counting
from sim.cost import Shape, predict


def sweep(n: int):
    for i in range(n):
        L = 1024 + 16 * (i // 2)
        yield Shape(4, 32, 32, L, L, 128, bool(i % 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--hardware", default="h100_sxm")
    a = ap.parse_args(argv)
    gpu.counting.install()
    for tier in ("roofline", "tiled"):
        pts = list(sweep(a.points))
        t0 = time.perf_counter()
        for s in pts:
            predict("int8_flash", s, a.hardware, tier=tier)
        dt = time.perf_counter() - t0
        print(f"{tier:10s} {a.points} points {dt:7.2f} s  {a.points / dt:9.0f} predictions/s")
    for rnd in ("first pass", "second pass"):
        t0 = time.perf_counter()
        for s in sweep(a.points):
            predict("int8_flash", s, a.hardware, tier="calibrated")
        dt = time.perf_counter() - t0
        print(f"calibrated {a.points} points {dt:7.2f} s  {a.points / dt:9.1f} predictions/s "
              f"({rnd})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
