"""Speed and memory of the simulator (a benchmark, not a test).

    .venv/bin/python benchmarks/sim_speed.py [--L 4096] [--D 128] [--mem-L 16384] [--no-mem]

1. Time of ``sim.simulate`` for one head (B = H = 1), Lq = Lk = L, D, per method, next to a plain
   float32 numpy attention of the same size in the same run (target: int8_flash and turbo
   within 3x of it).
2. Peak memory of int8_flash and turbo at B = 1, H = 8, L = mem-L, D (target < 2 GiB), each in a
   fresh subprocess: ``ru_maxrss`` minus the process's RSS before the call is the figure; the
   inputs (fp16) are counted in the baseline.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

METHODS = ("fp16_flash", "fp8_flash", "int8_flash", "turbo")


def numpy_f32_attention(q, k, v, sm_scale):
    s = (q @ k.T) * np.float32(sm_scale)
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    return (s @ v) / s.sum(axis=1, keepdims=True)


def best_of(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def speed(L, D, repeats):
    from sim import simulate

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, L, D)).astype(np.float16) for _ in range(3))
    q32, k32, v32 = (x[0, 0].astype(np.float32) for x in (q, k, v))
    base = best_of(lambda: numpy_f32_attention(q32, k32, v32, D**-0.5), repeats)
    print(f"one head, Lq = Lk = {L}, D = {D} (best of {repeats})")
    print(f"  {'float32 numpy attention':28s} {base:8.3f} s   1.00x")
    for m in METHODS:
        t = best_of(lambda: simulate(q, k, v, m), repeats)
        print(f"  {'simulate ' + m:28s} {t:8.3f} s   {t / base:5.2f}x")


def _mem_child(method, L, D):
    import resource

    from sim import simulate

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 8, L, D), dtype=np.float32).astype(np.float16)
               for _ in range(3))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    simulate(q, k, v, method, causal=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "added_mib": (peak - before) / 1024, "s": dt}))


def memory(L, D):
    print(f"peak memory, B = 1, H = 8, L = {L}, D = {D}, causal (fresh process each)")
    for m in ("int8_flash", "turbo"):
        r = subprocess.run([sys.executable, __file__, "--child", m, str(L), str(D)],
                           capture_output=True, text=True, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"  {m:12s} peak RSS {d['peak_mib']:7.0f} MiB (simulate added {d['added_mib']:6.0f}"
              f" MiB), {d['s']:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _mem_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--mem-L", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-mem", action="store_true")
    a = ap.parse_args()
    speed(a.L, a.D, a.repeats)
    if not a.no_mem:
        memory(a.mem_L, a.D)
