"""Speed and memory of the simulator (a benchmark, not a test).

    .venv/bin/python benchmarks/sim_speed.py [--L 4096] [--D 128] [--repeats 3] [--reference]
        [--memory [--mem-L 16384]] [--no-speed]

1. Time of ``sim.simulate`` for one head (B = H = 1), Lq = Lk = L, D, per method, next to a plain
   float32 numpy attention of the same size in the same run (target: int8_flash and turbo
   within 3x of it). Each time is the median of ``--repeats`` runs after one warm-up call (numba
   compilation, tables); ``/proc/loadavg`` is printed before and after (the figures are only
   comparable on a quiet machine).
2. ``--memory``: peak memory of int8_flash and turbo at B = 1, H = 8, L = mem-L, D, causal
   (target < 2 GiB), each in a fresh subprocess: ``ru_maxrss`` (the process's peak resident set,
   inputs and interpreter included), the same minus the RSS high-water mark before the call, and
   tracemalloc's peak of Python/numpy allocations during the call. Takes minutes at 16K.
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


def median_of(fn, n):
    fn()  # warm-up: numba compilation / cache load, lookup tables
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def speed(L, D, repeats, reference=False):
    from sim import simulate

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, L, D)).astype(np.float16) for _ in range(3))
    q32, k32, v32 = (x[0, 0].astype(np.float32) for x in (q, k, v))
    print(f"one head, Lq = Lk = {L}, D = {D} (median of {repeats}); loadavg {loadavg()}")
    base = median_of(lambda: numpy_f32_attention(q32, k32, v32, D**-0.5), repeats)
    print(f"  {'float32 numpy attention':28s} {base:8.3f} s   1.00x")
    for m in METHODS:
        t = median_of(lambda: simulate(q, k, v, m), repeats)
        print(f"  {'simulate ' + m:28s} {t:8.3f} s   {t / base:5.2f}x")
    if reference:  # the numpy closures the numba kernels replace (sim.simulate._FUSED = False)
        mod = sys.modules["sim.simulate"]
        mod._FUSED = False
        try:
            for m in ("int8_flash", "turbo"):
                t = median_of(lambda: simulate(q, k, v, m), repeats)
                print(f"  {'numpy path ' + m:28s} {t:8.3f} s   {t / base:5.2f}x")
        finally:
            mod._FUSED = True
    print(f"  loadavg after: {loadavg()}")


def _mem_child(method, L, D):
    import resource
    import tracemalloc

    from sim import simulate

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 8, L, D), dtype=np.float32).astype(np.float16)
               for _ in range(3))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    simulate(q, k, v, method, causal=True)
    dt = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "added_mib": (peak - before) / 1024,
                      "traced_mib": traced / 2**20, "s": dt}))


def memory(L, D):
    print(f"peak memory, B = 1, H = 8, L = {L}, D = {D}, causal (fresh process each); "
          f"loadavg {loadavg()}")
    for m in ("int8_flash", "turbo"):
        r = subprocess.run([sys.executable, __file__, "--child", m, str(L), str(D)],
                           capture_output=True, text=True, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"  {m:12s} peak RSS {d['peak_mib']:7.0f} MiB (simulate added {d['added_mib']:6.0f}"
              f" MiB; tracemalloc peak {d['traced_mib']:6.0f} MiB), {d['s']:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _mem_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--mem-L", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also measure peak memory at mem-L")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--reference", action="store_true",
                    help="also time int8_flash / turbo on the numpy reference path")
    a = ap.parse_args()
    if not a.no_speed:
        speed(a.L, a.D, a.repeats, a.reference)
    if a.memory:
        memory(a.mem_L, a.D)
