"""Decode kernels on one GPU (issue 11): GPU tests, integers vs the simulator, kernel and peer
times, leave-one-stage-out variants, host time per call. One script per device run.

    QSATTN_GIT_REVISION=... python benchmarks/decode_bench.py --out "$OUT" [--quick] [--no-tests]

Writes ``decode_dev.json`` (rows: name, config, L, ms, x_best_sdpa, GBps, hbm_share, bytes,
kind, timing) and ``decode_dev.md`` under ``--out`` and prints a short table last. Times: GPU
time only. ``--graph`` (default): the call captured in a CUDA graph and its replays timed
(``triton.testing.do_bench_cudagraph``, median), so host time never shows; otherwise
``triton.testing.do_bench`` (median, L2 flushed before every call; a call whose host work
outlasts its GPU work is then counted with the GPU idle in between). Host time: wall time of
issuing back-to-back calls with ``check_finite=False`` (no sync inside), divided by the count.
B=8, H=32, D=128, fp16; MHA (Hkv 32) and GQA (Hkv 8); contexts 2K, 8K, 32K, 128K
(``--contexts``).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


_LOG: list = []      # the run log file, set by main (kept even when the run is killed)


def log(*a):
    print(*a, flush=True)
    if _LOG:
        with open(_LOG[0], "a") as f:
            print(*a, file=f)


def run_tests(out: Path, seconds: float) -> dict:
    """The decode and cache GPU tests, 8 workers (the Triton compiles run in parallel)."""
    env = dict(os.environ, QSATTN_GPU_TESTS="1", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "8", "-p",
                            "no:cacheprovider", "tests/gpu/test_decode.py",
                            "tests/gpu/test_cache.py"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as e:
        (out / "tests.log").write_text(str(e.stdout)[-60000:])
        log(f"== GPU tests: timed out after {seconds:.0f}s")
        return {"rc": None, "tail": ["timed out"], "seconds": seconds}
    (out / "tests.log").write_text(r.stdout[-60000:] + "\n" + r.stderr[-20000:])
    tail = [ln for ln in r.stdout.splitlines() if ln.strip()][-3:]
    log("== GPU tests:", " | ".join(tail), f"({time.time() - t0:.0f}s)")
    return {"rc": r.returncode, "tail": tail, "seconds": time.time() - t0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-tests", action="store_true")
    ap.add_argument("--tests-after", action="store_true", help="run the GPU tests last")
    ap.add_argument("--budget", type=float, default=240.0,
                    help="seconds for the whole script: sections past it are skipped")
    ap.add_argument("--test-seconds", type=float, default=110.0)
    ap.add_argument("--contexts", default="2048,8192,32768,131072")
    ap.add_argument("--configs", default="mha,gqa4")
    ap.add_argument("--eager", action="store_true", help="time eager calls (do_bench)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-host", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _LOG.append(out / "bench.log")
    t_start = time.time()
    res = {"rows": [], "checks": [], "host": [], "errors": [], "skipped": []}

    def left() -> float:
        return args.budget - (time.time() - t_start)

    if not args.no_tests and not args.tests_after:
        res["tests"] = run_tests(out, min(args.test_seconds, left() - 60))

    import torch
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench, do_bench_cudagraph

    import gpu
    from gpu.api import decode_unchecked
    from gpu.decoding import flash_decode
    from gpu.methods.double_sparse import select, selected_count
    from sim import load_method
    from sim.methods.double_sparse import calibrate

    dev = torch.cuda.get_device_properties(0)
    res["provenance"] = {
        "gpu": dev.name, "sm_count": dev.multi_processor_count, "torch": torch.__version__,
        "triton": triton.__version__, "python": platform.python_version(),
        "git": os.environ.get("QSATTN_GIT_REVISION") or _rev_file(),
        "command": "python benchmarks/decode_bench.py " + " ".join(sys.argv[1:])}
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = do_bench(lambda: dst.copy_(src), warmup=5, rep=40, return_mode="median")
    res["copy_GBps"] = 2 * src.numel() / t * 1e-6
    del src, dst
    log(f"== copy bandwidth {res['copy_GBps']:.0f} GB/s")

    def bench(fn, rep=60):
        if not args.eager:
            try:
                fn()
                torch.cuda.synchronize()
                return do_bench_cudagraph(fn, rep=rep, return_mode="median")
            except Exception as e:  # noqa: BLE001 - not capturable: time it eagerly
                res["errors"].append(f"graph capture failed, eager timing: {str(e)[:120]}")
                torch.cuda.synchronize()
        return do_bench(fn, warmup=10, rep=rep, return_mode="median")

    def row(name, config, L, ms, nbytes=None, kind="ours", **extra):
        r = {"name": name, "config": config, "L": L, "ms": ms, "kind": kind, **extra}
        if nbytes:
            r.update(bytes=int(nbytes), GBps=nbytes / ms * 1e-6,
                     hbm_share=nbytes / ms * 1e-6 / res["copy_GBps"])
        res["rows"].append(r)
        bw = f"{r['GBps']:7.0f} GB/s {r['hbm_share']:5.0%}" if nbytes else ""
        log(f"  {config} L={L:6d} {name:42s} {ms:8.4f} ms {bw}")
        return r

    def save():
        (out / "decode_dev.json").write_text(json.dumps(res, indent=1, default=str))

    def attempt(label, f, need: float = 5.0):
        if left() < need:
            res["skipped"].append(label)
            return None
        try:
            return f()
        except Exception as e:  # noqa: BLE001 - keep measuring the rest, report the failure
            msg = f"{label}: {type(e).__name__}: {str(e)[:300]}"
            res["errors"].append(msg)
            log("  FAILED", msg)
            traceback.print_exc(limit=3)
            return None

    B, H, D = 8, 32, 128
    sm = 1.0 / math.sqrt(D)
    contexts = [int(x) for x in args.contexts.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    specs = {"turbo int4": load_method("turbo").replace(kvcache__low_share=0.0),
             "turbo int2": load_method("turbo").replace(kvcache__low_share=1.0),
             "turbo mixed": load_method("turbo")}
    ds_spec = load_method("double_sparse")

    # -- integers vs the simulator at one size (B 1, Hq 8, Hkv 2, L 4096 + 17) --------------
    res["timing"] = "eager do_bench" if args.eager else "CUDA graph replay (do_bench_cudagraph)"
    from gpu.compare import compare
    from sim import simulate
    from sim.methods.turbo import head_priority
    g = torch.Generator(device="cuda").manual_seed(5)
    Lc = 4096 + 17
    q = torch.randn(1, 8, 1, D, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(1, 2, Lc, D, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(1, 2, Lc, D, device="cuda", dtype=torch.float16, generator=g)
    k[..., :2] *= 4
    n32 = lambda x: x.float().cpu().numpy()  # noqa: E731
    for name in () if args.no_check else ("turbo mixed",):
        def chk(name=name):
            spec = specs[name]
            pr = head_priority(n32(k), n32(v))
            cache = gpu.build_cache(k, v, "turbo", spec=spec, calibration=pr)
            kr = gpu.decode_trace(q, cache)
            sim = simulate(n32(q), n32(k), n32(v), spec, kv_cache=True, trace=True,
                           calibration=pr)
            c = compare(sim, kr, ulp_bound=1.0)
            res["checks"].append({"name": name, "L": Lc, "failures": c.failures(), **c.to_row()})
            log(f"== check {name}: failures {c.failures()} "
                f"{ {kk: a.pct for kk, a in c.ints.items()} }")
        attempt(f"check {name}", chk)

    def chk_ds():
        cal = calibrate(n32(q), n32(k), "qk")
        cache = gpu.build_cache(k, v, "double_sparse", spec=ds_spec, calibration=cal)
        kr = gpu.decode_trace(q, cache)
        sim = simulate(n32(q), n32(k), n32(v), ds_spec, calibration=cal, trace=True)
        c = compare(sim, kr, ulp_bound=2.0, abs_slack=2.0 ** -12)
        res["checks"].append({"name": "double_sparse", "L": Lc, "failures": c.failures(),
                              **c.to_row()})
        log(f"== check double_sparse: failures {c.failures()} {c.ints['indices'].row()}")
    if not args.no_check:
        attempt("check double_sparse", chk_ds)
    del q, k, v

    # -- times ----------------------------------------------------------------------------
    for config in configs:
        Hkv = H if config == "mha" else H // int(config.removeprefix("gqa"))
        for L in contexts:
            gc.collect()
            torch.cuda.empty_cache()
            g = torch.Generator(device="cuda").manual_seed(L + Hkv)
            q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16, generator=g)
            k = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.float16, generator=g)
            v = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.float16, generator=g)
            fp16_bytes = 2 * B * Hkv * L * D * 2 + 2 * B * H * D * 2
            pts = {}
            for pname, be in (("sdpa flash", SDPBackend.FLASH_ATTENTION),
                              ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
                def f(be=be):
                    with sdpa_kernel([be]):
                        return torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, enable_gqa=Hkv != H)
                r = attempt(f"{pname} {config} {L}",
                            lambda f=f, pname=pname: row(pname, config, L, bench(f), fp16_bytes,
                                                         "peer"))
                if r:
                    pts[pname] = r
            peer = min((r["ms"] for r in pts.values()), default=float("nan"))
            # fp16 split-K (default launch; a small sweep at 32K)
            fc = gpu.build_cache(k, v, "fp16_flash")
            r = attempt(f"fp16 {config} {L}", lambda: row(
                "fp16 split-K", config, L, bench(lambda: decode_unchecked(q, fc, sm)),
                fp16_bytes))
            pts["fp16 split-K"] = r
            if L == 32768 and not args.no_sweep:
                for per_sm, warps, stages in ((2, 4, 3), (8, 4, 3), (4, 8, 3), (4, 4, 4)):
                    la = {"per_sm": per_sm, "num_warps": warps, "num_stages": stages}
                    attempt(f"fp16 sweep {la}", lambda la=la: row(
                        f"fp16 split-K ps{per_sm} w{warps} s{stages}", config, L,
                        bench(lambda: decode_unchecked(q, fc, sm, la)), fp16_bytes, "sweep",
                        launch=la))
            del fc
            # turbo
            for tname, spec in specs.items():
                def tur(tname=tname, spec=spec):
                    t0 = time.time()
                    tc = gpu.build_cache(k, v, "turbo", spec=spec)
                    torch.cuda.synchronize()
                    build_s = time.time() - t0
                    NT = -(-L // tc.nb)
                    nbytes = tc.device_nbytes() + 2 * B * H * NT * tc.nb * 4 + 2 * B * H * NT * 4 \
                        + B * H * D * 4
                    pts[tname] = row(tname, config, L,
                                     bench(lambda: decode_unchecked(q, tc, sm)), nbytes,
                                     build_s=build_s)
                    if L == 32768:
                        variants = [("until quant", {"until": "quant"}),
                                    ("until scores", {"until": "scores"}),
                                    ("clamp never", {"clamp": "never"})]
                        if tname == "turbo mixed" and not args.no_sweep:
                            variants += [("clamp flags", {"clamp": "flags"}),
                                         ("warps 8", {"num_warps": 8}),
                                         ("per_sm 8", {"per_sm": 8})]
                        for label, la in variants:
                            attempt(f"{tname} {label}", lambda la=la, label=label: row(
                                f"{tname} [{label}]", config, L,
                                bench(lambda: decode_unchecked(q, tc, sm, la)), None, "variant"))
                    del tc
                attempt(f"{tname} {config} {L}", tur)
                gc.collect()
                torch.cuda.empty_cache()
            # double_sparse
            def ds():
                nc = min(L, 512)
                cal = calibrate(q.float().cpu().numpy(), k[:, :, -nc:].float().cpu().numpy(),
                                "qk")
                dc = gpu.build_cache(k, v, "double_sparse", spec=ds_spec, calibration=cal)
                kc = selected_count(ds_spec.sparse, L)
                lab = B * Hkv * L * (dc.r * dc.bits // 8 + 2 + 4)
                keys = B * H * L * 4 * 3
                gath = B * H * kc * (2 * D * 2 + 4)
                pts["double_sparse 1/16"] = row("double_sparse 1/16", config, L, bench(
                    lambda: decode_unchecked(q, dc, sm)), lab + keys + gath)
                if L == 32768:
                    row("double_sparse [until labels]", config, L, bench(
                        lambda: decode_unchecked(q, dc, sm, {"until": "labels"})), lab + B * H * L * 4,
                        "variant")
                    row("double_sparse [until select]", config, L, bench(
                        lambda: decode_unchecked(q, dc, sm, {"until": "select"})), lab + keys,
                        "variant")
                    row("double_sparse [torch topk]", config, L, bench(
                        lambda: decode_unchecked(q, dc, sm, {"select": "torch"})), None, "variant")
                    _, idx = select(q, dc, False)
                    row("double_sparse [gather attention alone]", config, L, bench(
                        lambda: flash_decode(q, dc.k, dc.v, idx, idx.shape[1], sm,
                                             ds_spec.tiling.block_n, None)), gath, "variant")
                    row("double_sparse [gather, CUDA-core kernel]", config, L, bench(
                        lambda: flash_decode(q, dc.k, dc.v, idx, idx.shape[1], sm,
                                             ds_spec.tiling.block_n, {"gather_dot": False})),
                        gath, "variant")
                del dc
            attempt(f"double_sparse {config} {L}", ds)
            for r in pts.values():
                if r:
                    r["x_best_sdpa"] = peer / r["ms"]
            del q, k, v
            gc.collect()
            torch.cuda.empty_cache()
            save()

    # -- host time per call (check_finite=False, back-to-back, no sync) --------------------
    def host(name, fn, n=40, warm=3):
        for _ in range(warm):       # compiles and first-call specializations stay out
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        us = (time.perf_counter() - t0) / n * 1e6
        torch.cuda.synchronize()
        res["host"].append({"name": name, "us_per_call": us})
        log(f"  host {name:40s} {us:8.1f} us/call")

    if args.no_host:
        res["seconds"] = time.time() - t_start
        save()
        (out / "decode_dev.md").write_text(markdown(res))
        log("\n" + summary(res))
        return 0
    log("== host time per call")
    Lh = 32768
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(B, 8, Lh, D, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn_like(k)
    k1, v1 = k[:, :, :1].contiguous(), v[:, :, :1].contiguous()
    qp = torch.randn(1, 8, 128, D, device="cuda", dtype=torch.float16, generator=g)
    kp = torch.randn(1, 8, 128, D, device="cuda", dtype=torch.float16, generator=g)
    cal = calibrate(q.float().cpu().numpy(), k[:, :, -512:].float().cpu().numpy(), "qk")
    kw = {"double_sparse": {"calibration": cal}}
    for m in ("fp16_flash", "turbo", "double_sparse"):
        cache = gpu.build_cache(k, v, m, **kw.get(m, {}))
        attempt(f"host decode {m}", lambda: host(f"decode {m} (32K, GQA)",
                                                 lambda: gpu.decode(q, cache, check_finite=False)))
        attempt(f"host append {m}", lambda: host(
            f"append {m} (1 token)", lambda: cache.append(k1, v1, check_finite=False), n=20))
        attempt(f"host decode checked {m}", lambda: host(
            f"decode {m} (check_finite=True)", lambda: gpu.decode(q, cache), n=20))
        del cache
    ks, vs = k[:, :, :2048].contiguous(), v[:, :, :2048].contiguous()
    for m in ("fp16_flash", "turbo", "double_sparse"):
        attempt(f"host build {m}", lambda: host(f"build_cache {m} (2K)", lambda: gpu.build_cache(
            ks, vs, m, check_finite=False, **kw.get(m, {})), n=10))
    for m in ("int8_flash", "turbo", "fp16_flash"):
        attempt(f"host attention {m}", lambda: host(
            f"attention {m} (Lq 128)", lambda: gpu.attention(qp, kp, kp, method=m,
                                                              check_finite=False)))
    # CUDA graph replay of one decode step (turbo, GQA 32K): GPU time of the replay
    def graph():
        cache = gpu.build_cache(k, v, "turbo")
        sq = q.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            gpu.decode(sq, cache, check_finite=False)
        torch.cuda.current_stream().wait_stream(s)
        gr = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gr):
            gpu.decode(sq, cache, check_finite=False)
        row("turbo mixed [CUDA graph replay]", "gqa4", Lh, bench(gr.replay), None, "variant")
        host("CUDA graph replay turbo (32K, GQA)", gr.replay)
    attempt("graph", graph)
    save()
    if not args.no_tests and args.tests_after and left() > 30:
        res["tests"] = run_tests(out, min(args.test_seconds, left() - 10))
    res["seconds"] = time.time() - t_start
    save()
    (out / "decode_dev.md").write_text(markdown(res))
    log("\n" + summary(res))
    return 0


def _rev_file() -> str:
    p = ROOT / "GIT_REVISION"
    return p.read_text().strip() if p.exists() else "unknown"


def markdown(res: dict) -> str:
    p = res["provenance"]
    lines = ["# Decode kernels on the GPU (issue 11)", "",
             f"Command: `{p['command']}`; {p['gpu']} ({p['sm_count']} SMs), torch {p['torch']}, "
             f"triton {p['triton']}, git {p['git']}. Copy bandwidth {res['copy_GBps']:.0f} GB/s "
             f"(read + write). Times: {res.get('timing')}, median; "
             "x = fastest SDPA (flash, cuDNN) time / kernel time, same run; GB/s over the "
             "bytes the kernel must move (turbo: the device cache incl. flags and scratch "
             "scores; double_sparse: labels, keys written + read twice, gathered rows).", ""]
    if res.get("tests"):
        lines += [f"GPU tests (`QSATTN_GPU_TESTS=1 pytest tests/gpu/test_decode.py "
                  f"tests/gpu/test_cache.py`): rc {res['tests']['rc']}, "
                  f"{' | '.join(res['tests']['tail'])}", ""]
    for c in res["checks"]:
        ints = {k: round(v["identical_pct"], 4) for k, v in c.get("ints", {}).items()}
        lines.append(f"- check {c['name']} L={c['L']}: failures {c['failures']}; identical % "
                     f"{ints}")
    lines.append("")
    for config in sorted({r["config"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["config"] == config]
        Ls = sorted({r["L"] for r in rows})
        names = []
        for r in rows:
            if r["kind"] in ("ours", "peer") and r["name"] not in names:
                names.append(r["name"])
        lines += [f"## {config}: ms (x best SDPA, share of copy bandwidth)", "",
                  "| kernel | " + " | ".join(str(L) for L in Ls) + " |",
                  "|---" * (len(Ls) + 1) + "|"]
        for n in names:
            cells = []
            for L in Ls:
                m = [r for r in rows if r["name"] == n and r["L"] == L]
                if not m:
                    cells.append("-")
                    continue
                r = m[0]
                x = f"{r['x_best_sdpa']:.2f}x" if "x_best_sdpa" in r else ""
                sh = f", {r['hbm_share']:.0%}" if "hbm_share" in r else ""
                cells.append(f"{r['ms']:.4f} ({x}{sh})")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        var = [r for r in rows if r["kind"] in ("variant", "sweep")]
        if var:
            lines += ["", "Variants (32K): ms", ""]
            lines += [f"- {r['name']}: {r['ms']:.4f}" + (f" ({r['hbm_share']:.0%} of copy BW)"
                                                         if "hbm_share" in r else "")
                      for r in var]
        lines.append("")
    lines += ["## Host time per call (check_finite=False unless noted)", ""]
    lines += [f"- {h['name']}: {h['us_per_call']:.1f} us" for h in res["host"]]
    if res["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


def summary(res: dict) -> str:
    out = []
    for r in res["rows"]:
        if r["kind"] == "ours" and r["L"] in (32768, 131072):
            out.append(f"{r['config']:5s} {r['L']:6d} {r['name']:20s} {r['ms']:7.3f} ms "
                       f"{r.get('x_best_sdpa', float('nan')):5.2f}x "
                       f"{r.get('hbm_share', float('nan')):4.0%}")
    out += [f"host {h['name']}: {h['us_per_call']:.0f} us" for h in res["host"]]
    out += [f"check {c['name']}: {c['failures']}" for c in res["checks"]]
    out += [f"ERROR {e[:150]}" for e in res["errors"]]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
