"""``qsattn bench``: time the prefill kernels against their peers on a CUDA GPU.

Runs, in one process: (1) a numerics check of every prefill kernel against ``sim.simulate``
(integers identical, output within the per-method bound of tests/gpu/test_prefill_kernels.py)
at the config's ``check`` size; (2) a launch-config sweep at the target point; (3) the target
point (B=4, H=32, D=128, L=8K, causal and not) for every method and peer, our integer methods
both with and without their quantization kernels, turbo also with ``softmax.exp=exp2``;
(4) a sweep over L. Peers: torch SDPA with the FLASH_ATTENTION and CUDNN_ATTENTION backends
(fp16) and SageAttention 1.0.6 (``sageattn``) when importable. Times are CUDA-event medians over
rotating input sets larger than L2 (:mod:`gpu.bench`). Results go to ``<out>/prefill.json`` and
``<out>/prefill.md`` with GPU, versions, git revision and the command.

Without a CUDA GPU it says so and how to run it on the device machine.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from qsattn import bench_plots, provenance, store
from sim.spec import config_dir

DEFAULT_CONFIG = config_dir() / "experiments" / "bench_h100.yaml"
DEFAULT_OUT = provenance.REPORTS / "bench"
DEVICE_HINT = ("qsattn bench needs a CUDA GPU (torch.cuda.is_available() is False here).\n"
               "On a machine with an NVIDIA GPU, from a clone (python3 bootstrap.py test sets "
               "it up):\n"
               "  qsattn bench            # writes reports/bench/{prefill,decode}.{json,md,csv} "
               "and the sweep figures\n"
               "SageAttention is timed when it is importable (pip install sageattention==1.0.6);"
               "\ncommit what it writes (README: 'GPU runs on any CUDA machine').")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qsattn import cliopts
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="experiment YAML (default: configs/experiments/bench_h100.yaml)")
    cliopts.add_common(p, out_default=None,
                       out_help="output directory (default: reports/bench/<hardware id of this "
                                "GPU>/)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: check,tune,sweep "
                   "(both benches), prefill, decode (a whole bench)")


def _load_config(path: Path) -> dict:
    """The bench config through its schema (:class:`qsattn.configs.BenchConfig`)."""
    from qsattn.configs import BenchConfig, load_experiment
    return load_experiment(path, BenchConfig)


# ---------------------------------------------------------------------------------------------
def _numerics_check(c: dict, log) -> list[dict]:
    """GPU kernels vs sim.simulate (:mod:`gpu.compare`): codes, scales, S_int, P codes, O_int,
    output ULPs."""
    import torch

    import gpu
    from gpu.compare import compare
    from sim import simulate
    rows = []
    B, Hq, Hkv, Lq, Lk, D = (c[k] for k in ("batch", "heads", "kv_heads", "q_length",
                                             "kv_length", "head_dim"))
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, Hq, Lq, D, generator=g).half().cuda()
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    k[..., :2] *= 4
    k = k.half().cuda()
    v = torch.randn(B, Hkv, Lk, D, generator=g).half().cuda()
    for method in gpu.prefill_methods():
        for causal in (False, True):
            kr = gpu.attention_trace(q, k, v, method=method, causal=causal)
            t0 = time.perf_counter()
            sim = simulate(*(x.float().cpu().numpy() for x in (q, k, v)), kr.spec,
                           causal=causal, trace=True)
            cmp = compare(sim, kr, dtype="float16", ulp_bound=2.0, ulp_floor=2.0 ** -16)
            row = {"method": method, "causal": causal, "shape": [B, Hq, Hkv, Lq, Lk, D],
                   "sim_s": round(time.perf_counter() - t0, 1), **cmp.to_row(),
                   "failures": cmp.failures()}
            log(f"  check {method:10s} causal={causal!s:5s} max_ulp={cmp.out.max_ulp:.2f} "
                + ", ".join(f"{key} {a.mismatches}/{a.total}" for key, a in cmp.ints.items()))
            rows.append(row)
    return rows


def _accuracy(method_fns: dict, B, H, L, D, causal, log) -> dict:
    """Relative L2 error of each output vs fp64 attention on a slice of heads."""
    import torch
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, H, L, D, generator=g).half().cuda() for _ in range(3))
    hs = slice(0, 2)
    qd, kd, vd = (x[:1, hs].double() for x in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=causal)
    res = {}
    for name, fn in method_fns.items():
        out = fn(q, k, v)[:1, hs].double()
        res[name] = float((out - ref).norm() / ref.norm())
    log("  rel. L2 error vs fp64 (L=%d, causal=%s): " % (L, causal) +
        ", ".join(f"{a} {b:.2e}" for a, b in res.items()))
    return res


def _run_bench(cfg: dict, args, log) -> dict:
    import torch

    from gpu.bench import attention_flops, time_gpu
    from gpu import resolve as resolve_spec
    from gpu.common import quantize_qkv
    from gpu.prefill import launch_prefill as attention_quantized
    from torch.nn.attention import SDPBackend, sdpa_kernel

    P = cfg["prefill"]
    B, H, Hkv, D = P["batch"], P["heads"], P["kv_heads"], P["head_dim"]
    warm, rep = P.get("warmup", 5), P.get("rep", 20)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    result = {"config": cfg, "rows": [], "tune": [], "check": [], "accuracy": {}}
    try:
        from sageattention import sageattn
    except Exception as e:  # noqa: BLE001 - any import failure means "peer absent"
        sageattn = None
        log(f"  SageAttention not importable ({type(e).__name__}: {e}); peer skipped")

    def mk(L):
        def make():
            return tuple(torch.randn(B, h, L, D, device="cuda", dtype=torch.float16)
                         for h in (H, Hkv, Hkv))
        return make

    def sdpa(backend):
        def f(q, k, v, causal):
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=causal, enable_gqa=H != Hkv)
        return f

    launch_best = {}

    def ours(method, spec, launch, quant=True):
        def f(q, k, v, causal):
            sm = 1.0 / math.sqrt(D)
            if spec.integer:
                qq, kq, vq = quantize_qkv(q, k, v, spec, check=False)
                return attention_quantized(qq, kq, vq, spec, causal=causal, sm_scale=sm,
                                           out_dtype=q.dtype, launch=launch)
            return attention_quantized(None, None, None, spec, causal=causal, sm_scale=sm,
                                       out_dtype=q.dtype, q=q, k=k, v=v, launch=launch)

        def attn_only_inputs(L):
            base = mk(L)

            def make():
                q, k, v = base()
                return (q, *quantize_qkv(q, k, v, spec, check=False))
            return make

        def g(q, qq, kq, vq, causal):
            return attention_quantized(qq, kq, vq, spec, causal=causal, sm_scale=1 / math.sqrt(D),
                                       out_dtype=q.dtype, launch=launch)

        def qonly(q, k, v, causal):
            return quantize_qkv(q, k, v, spec, check=False)
        return f, g, attn_only_inputs, qonly

    def measure(name, fn, make, L, causal, **extra):
        t = time_gpu(lambda *a: fn(*a, causal), make, warmup=warm, rounds=rep)
        fl = attention_flops(B, H, L, L, D, causal)
        row = {"name": name, "L": L, "causal": causal, "ms": t.ms, "spread": t.spread,
               "timing": t.mode, "tflops": fl / t.ms * 1e-9,
               "GBps": (2 * B * H * L * D + 2 * B * Hkv * L * D) * 2 / t.ms * 1e-6, **extra}
        result["rows"].append(row)
        log(f"  {name:28s} L={L:6d} causal={causal!s:5s} {t.ms:8.3f} ms  "
            f"{row['tflops']:7.1f} TOP/s  (spread {t.spread:.2f}, {t.mode})")
        return row

    specs = {m: resolve_spec(m, None, torch.float16) for m in ("fp16_flash", "int8_flash", "turbo")}
    Lt = P["target_length"]

    if "check" not in skip and "check" in cfg:
        log("== numerics: GPU kernels vs sim.simulate")
        result["check"] = _numerics_check(cfg["check"], log)

    # -- launch sweep at the target point ----------------------------------------------------
    for m in specs:
        launch_best[m] = {"block_n": specs[m].tiling.block_n, "launch": None}
    if "tune" not in skip:
        log(f"== launch sweep at L={Lt} (attention kernel only; non-causal)")
        for m, spec0 in specs.items():
            best = None
            for bn in P.get("tune_block_n", [spec0.tiling.block_n]):
                spec = spec0.replace(tiling__block_n=bn)
                for bm, nw, ns in P["tune_launch"]:
                    launch = {"block_m": bm, "num_warps": nw, "num_stages": ns}
                    f, g, ai, _ = ours(m, spec, launch)
                    try:
                        if spec.integer:
                            row = measure(f"tune {m} bn{bn} bm{bm} w{nw} s{ns}", g, ai(Lt), Lt,
                                          False, tune=True)
                        else:
                            row = measure(f"tune {m} bn{bn} bm{bm} w{nw} s{ns}", f, mk(Lt), Lt,
                                          False, tune=True)
                    except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
                        log(f"  tune {m} bn{bn} {launch}: failed ({type(e).__name__}: "
                            f"{str(e)[:120]})")
                        continue
                    result["tune"].append({"method": m, "block_n": bn, **launch, "ms": row["ms"]})
                    if best is None or row["ms"] < best[0]:
                        best = (row["ms"], bn, launch)
            launch_best[m] = {"block_n": best[1], "launch": best[2]}
            log(f"  best {m}: block_n={best[1]} {best[2]} {best[0]:.3f} ms")
    result["launch_best"] = launch_best

    def spec_for(m):
        return specs[m].replace(tiling__block_n=launch_best[m]["block_n"])

    # -- the target point ---------------------------------------------------------------------
    peers = {"sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
             "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
    if sageattn is not None:
        peers["sageattn_1.0.6"] = lambda q, k, v, causal: sageattn(
            q, k, v, tensor_layout="HND", is_causal=causal)
    log(f"== target point B={B} H={H} Hkv={Hkv} D={D} L={Lt}")
    for causal in (False, True):
        for name, fn in peers.items():
            try:
                measure(name, fn, mk(Lt), Lt, causal, kind="peer")
            except Exception as e:  # noqa: BLE001
                log(f"  {name}: failed ({type(e).__name__}: {str(e)[:160]})")
        for m in specs:
            lb = launch_best[m]
            spec = spec_for(m)
            f, g, ai, qo = ours(m, spec, lb["launch"])
            measure(f"{m}", f, mk(Lt), Lt, causal, kind="ours", block_n=lb["block_n"],
                    launch=lb["launch"])
            if spec.integer:
                measure(f"{m} (attention only)", g, ai(Lt), Lt, causal, kind="ours-excl-quant")
                measure(f"{m} (quantization only)", qo, mk(Lt), Lt, causal, kind="stage")
            if m == "turbo":
                for label, sp in (("turbo exp2 (attention only)",
                                   spec.replace(softmax__exp="exp2")),
                                  ("int8_flash spec-tile bn64 (attn only)",
                                   specs["int8_flash"])):
                    _, g2, ai2, _ = ours(m, sp, lb["launch"])
                    try:
                        measure(label, g2, ai2(Lt), Lt, causal, kind="variant")
                    except Exception as e:  # noqa: BLE001
                        log(f"  {label}: failed ({type(e).__name__}: {str(e)[:160]})")
        fns = {"sdpa_cudnn_fp16": lambda q, k, v: peers["sdpa_cudnn"](q, k, v, causal)}
        for m in specs:
            fns[m] = (lambda m: lambda q, k, v: ours(m, spec_for(m),
                                                     launch_best[m]["launch"])[0](q, k, v, causal))(m)
        if sageattn is not None:
            fns["sageattn"] = lambda q, k, v: peers["sageattn_1.0.6"](q, k, v, causal)
        result["accuracy"][f"causal={causal}"] = _accuracy(fns, B, H, 2048, D, causal, log)

    # -- sweep over L ---------------------------------------------------------------------------
    if "sweep" not in skip:
        log("== sweep over L")
        for L in P["sweep_lengths"]:
            if L == Lt:
                continue
            for causal in (False, True):
                for name in ("sdpa_cudnn", "sdpa_flash", "sageattn_1.0.6"):
                    if name in peers:
                        try:
                            measure(name, peers[name], mk(L), L, causal, kind="peer", sweep=True)
                        except Exception as e:  # noqa: BLE001
                            log(f"  {name} L={L}: failed ({type(e).__name__})")
                for m in specs:
                    f, _, _, _ = ours(m, spec_for(m), launch_best[m]["launch"])
                    measure(m, f, mk(L), L, causal, kind="ours", sweep=True)
    return result


def _check_row(c: dict) -> str:
    """One numerics row: the gpu.compare form (``ints``), or the older per-field form that
    stored results from before it hold."""
    if "ints" in c:
        free = [a for a in c["ints"].values() if a["exp_free"]]
        same = sum(a["elements"] - a["mismatches"] for a in free)
        tot = sum(a["elements"] for a in free)
        p = c["ints"].get("p_codes")
        pdiff = f"{p['mismatches']}/{p['elements']}" if p else "-"
        verdict = "ok" if not c.get("failures") else "; ".join(c["failures"])
        return (f"| {c['method']} | {c['causal']} | {same}/{tot} | {pdiff} | "
                f"{c['max_ulp']:.2f} | {verdict} |")
    ints = all(c.get(k, True) for k in ("codes_scales_equal", "s_int_equal", "o_int_equal"))
    return (f"| {c['method']} | {c['causal']} | {'all' if ints else 'not all'} | "
            f"{c.get('p_code_diff', '-')}/{c.get('p_codes', '-')} | {c['out_max_ulp']:.2f} | "
            f"(stored before gpu.compare) |")


def _markdown(result: dict, command: str) -> str:
    rows = [r for r in result["rows"] if not r.get("tune")]
    Lt = result["config"]["prefill"]["target_length"]
    lines = [provenance.header("Prefill kernels vs peers", command), ""]
    if result.get("check"):
        lines += ["## Numerics: GPU kernels vs sim.simulate", "",
                  "| method | causal | exp-free integers identical | P codes differing | "
                  "max ulp | contract |", "|---|---|---|---|---|---|"]
        for c in result["check"]:
            lines.append(_check_row(c))
        lines.append("")
    lines += [f"## Target point L={Lt}", "",
              "| kernel | causal | ms | TOP/s | x cuDNN | x FA2 (SDPA) | x Sage |",
              "|---|---|---|---|---|---|---|"]
    for causal in (False, True):
        pts = [r for r in rows if r["L"] == Lt and r["causal"] == causal]
        ref = {r["name"]: r["ms"] for r in pts}
        for r in pts:
            def ratio(peer):
                return f"{ref[peer] / r['ms']:.2f}" if peer in ref else "-"
            lines.append(f"| {r['name']} | {causal} | {r['ms']:.3f} | {r['tflops']:.0f} | "
                         f"{ratio('sdpa_cudnn')} | {ratio('sdpa_flash')} | "
                         f"{ratio('sageattn_1.0.6')} |")
    lines += ["", "Ratios are peer time / kernel time, from the same run (>1: faster than the "
              "peer). TOP/s counts 4·B·H·D per visible (row, key) pair.", ""]
    if result.get("launch_best"):
        lines += ["## Launch configs used", ""]
        for m, lb in result["launch_best"].items():
            lines.append(f"- {m}: spec override tiling.block_n={lb['block_n']}, launch {lb['launch']}")
        lines.append("")
    sweep = [r for r in rows if r.get("sweep") or r["L"] == Lt and r.get("kind") in ("peer", "ours")]
    if sweep:
        lines += ["## Sweep over L (ms)", ""]
        names = sorted({r["name"] for r in sweep})
        Ls = sorted({r["L"] for r in sweep})
        for causal in (False, True):
            lines += [f"causal={causal}", "", "| kernel | " + " | ".join(map(str, Ls)) + " |",
                      "|---" * (len(Ls) + 1) + "|"]
            for n in names:
                cells = []
                for L in Ls:
                    m = [r for r in sweep if r["name"] == n and r["L"] == L and r["causal"] == causal]
                    cells.append(f"{m[0]['ms']:.3f}" if m else "-")
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    if result.get("accuracy"):
        lines += ["## Accuracy (relative L2 error vs fp64, B=1, 2 heads, L=2048)", ""]
        for k, d in result["accuracy"].items():
            lines.append(f"- {k}: " + ", ".join(f"{a} {b:.2e}" for a, b in d.items()))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# decode (gpu.build_cache / gpu.decode vs torch SDPA over the full FP16 cache)
# ---------------------------------------------------------------------------------------------
def _run_decode_bench(cfg: dict, args, log) -> dict:
    """Decode at the target point (turbo INT4 / INT2 / mixed, double_sparse, our fp16
    split-K, SDPA peers) with achieved GB/s on the bytes each kernel moves and the share of the
    measured HBM copy bandwidth; the double_sparse selection stage (label scores + top-k + sort)
    alone; a launch sweep per method at the target; a context sweep with the chosen launches.
    Times: gpu.bench.time_gpu (GPU time only: back-to-back calls in a CUDA graph, median of
    rounds); every cache is far larger than L2, so one input set is already cold."""
    import gc

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import gpu
    from gpu.api import decode_unchecked
    from gpu.bench import time_gpu
    from gpu.decoding import flash_decode as _flash_decode
    from gpu.methods.double_sparse import select as _select
    from sim import load_method
    from sim.methods.double_sparse import calibrate

    P = cfg["decode"]
    B, H, Hkv, D = P["batch"], P["heads"], P["kv_heads"], P["head_dim"]
    warm, rep = P.get("warmup", 5), P.get("rep", 20)
    sm = 1.0 / math.sqrt(D)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    res = {"config": P, "rows": [], "tune": []}
    chosen = {}  # label -> launch picked at the target point, reused by the sweep

    # measured HBM copy bandwidth (read + write bytes), the 100% of the bandwidth shares
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = time_gpu(lambda a, b: b.copy_(a), lambda: (src, dst), cold_l2=False, rounds=10)
    res["hbm_copy_GBps"] = 2 * src.numel() / t.ms * 1e-6
    log(f"== decode: HBM copy {res['hbm_copy_GBps']:.0f} GB/s (torch copy_, 1 GiB)")
    del src, dst

    def timed(name, fn, L, nbytes, **extra):
        # caches are several times L2 at every context: one input set is already cold
        t = time_gpu(fn, lambda: (), cold_l2=False, warmup=warm, rounds=rep)
        row = {"name": name, "L": L, "ms": t.ms, "spread": t.spread, "timing": t.mode,
               "GBps": nbytes / t.ms * 1e-6 if nbytes else None, **extra}
        row["hbm_share"] = row["GBps"] / res["hbm_copy_GBps"] if nbytes else None
        res["rows"].append(row)
        bw = f"{row['GBps']:7.0f} GB/s ({row['hbm_share']:.0%} of copy)" if nbytes else ""
        log(f"  {name:34s} L={L:7d} {t.ms:8.3f} ms {bw} (spread {t.spread:.2f}, {t.mode})")
        return row

    def turbo_spec(kind):
        base = load_method("turbo")
        if kind == "int4":
            return base.replace(kvcache__low_share=0.0)
        if kind == "int2":
            return base.replace(kvcache__low_share=1.0)
        return base

    def turbo_bytes(cache, L):
        nt = -(-L // cache.nb)
        return (cache.nbytes() + 2 * B * H * nt * cache.nb * 4 + B * H * D * 2 * 2
                + B * H * nt * 4 * 2)

    def ds_bytes(cache, L, kcount):
        return (B * Hkv * L * (cache.r * cache.bits // 8 + 2 + 4) + B * H * L * (4 + 4)
                + B * H * kcount * (2 * D * 2 + 4) + B * H * D * 4)

    def run_point(L, tune: bool):
        g = torch.Generator(device="cuda").manual_seed(L)
        q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16, generator=g)
        k = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.float16, generator=g)
        v = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.float16, generator=g)
        fp16_bytes = 2 * B * Hkv * L * D * 2
        pts = {}
        for name, be in (("sdpa_flash", [SDPBackend.FLASH_ATTENTION]),
                         ("sdpa_cudnn", [SDPBackend.CUDNN_ATTENTION]),
                         ("sdpa_efficient", [SDPBackend.EFFICIENT_ATTENTION])):
            def f(be=be):
                with sdpa_kernel(be):
                    return torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, enable_gqa=H != Hkv)
            try:
                pts[name] = timed(name, f, L, fp16_bytes, kind="peer")
            except Exception as e:  # noqa: BLE001 - backend unavailable for this shape
                log(f"  {name}: failed ({type(e).__name__}: {str(e)[:120]})")
        peer = min(r["ms"] for r in pts.values())

        def best_launch(label, fn, nbytes):
            best = None
            cands = P["tune_launch"] if tune else [chosen.get(label, P["default_launch"])]
            for per_sm, warps, stages in cands:
                launch = {"per_sm": per_sm, "num_warps": warps, "num_stages": stages}
                try:
                    r = timed(f"{label} ps{per_sm} w{warps} s{stages}" if tune else label,
                              lambda: fn(launch), L, nbytes, kind="ours", tune=tune,
                              launch=launch)
                except Exception as e:  # noqa: BLE001
                    log(f"  {label} {launch}: failed ({type(e).__name__}: {str(e)[:160]})")
                    continue
                if best is None or r["ms"] < best["ms"]:
                    best = r
            if tune and best is not None:
                la = best["launch"]
                res["tune"].append({"method": label, "L": L, **la, "ms": best["ms"]})
                chosen[label] = [la["per_sm"], la["num_warps"], la["num_stages"]]
                log(f"  best {label}: {la} {best['ms']:.3f} ms = "
                    f"{peer / best['ms']:.2f}x best SDPA")
                best = timed(label, lambda: fn(la), L, nbytes, kind="ours", launch=la)
            return best

        fc = gpu.build_cache(k, v, "fp16_flash")
        pts["fp16_flash"] = best_launch("fp16_flash split-K",
                                        lambda la: decode_unchecked(q, fc, sm, la), fp16_bytes)
        del fc
        for kind in P["turbo_kinds"]:
            try:
                tc = gpu.build_cache(k, v, "turbo", spec=turbo_spec(kind))
            except Exception as e:  # noqa: BLE001 - report and go on with the other methods
                log(f"  turbo {kind} build_cache: failed ({type(e).__name__}: {str(e)[:200]})")
                continue
            if L == P["context"] and kind == P["turbo_kinds"][0]:
                out = decode_unchecked(q, tc, sm)
                ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(),
                                                                       v.float())
                res["turbo_rel_l2_vs_fp32"] = float((out.float() - ref).norm() / ref.norm())
            pts[f"turbo {kind}"] = best_launch(f"turbo {kind}",
                                               lambda la, tc=tc: decode_unchecked(q, tc, sm, la),
                                               turbo_bytes(tc, L))
            if L == P["context"]:  # the read-back clamp behind a per-block flag, for contrast
                la = {"per_sm": 4, "num_warps": 4, "num_stages": 3}
                la = dict(pts[f"turbo {kind}"]["launch"]) if pts[f"turbo {kind}"] else la
                timed(f"variant: turbo {kind} clamp by block flags",
                      lambda tc=tc, la=la: decode_unchecked(q, tc, sm, {**la, "clamp": "flags"}),
                      L, turbo_bytes(tc, L), kind="stage")
            del tc
            gc.collect()
            torch.cuda.empty_cache()
        ds_spec = load_method("double_sparse")
        nc = min(L, 512)
        cal = calibrate(q.float().cpu().numpy(), k[:, :, -nc:].float().cpu().numpy(), "qk")
        try:
            dc = gpu.build_cache(k, v, "double_sparse", spec=ds_spec, calibration=cal)
        except Exception as e:  # noqa: BLE001
            log(f"  double_sparse build_cache: failed ({type(e).__name__}: {str(e)[:200]})")
            dc = None
        if dc is None:
            del q, k, v
            return pts
        kcount = ds_spec.sparse.k(L)
        pts["double_sparse"] = best_launch(
            "double_sparse 1/16", lambda la: decode_unchecked(q, dc, sm, la),
            ds_bytes(dc, L, kcount))
        if L == P["context"]:
            timed("stage: label scores + bracket top-k", lambda: _select(q, dc, False), L,
                  B * Hkv * L * (dc.r * dc.bits // 8 + 6) + B * H * L * 8, kind="stage")
            timed("stage: label scores + torch topk + sort",
                  lambda: _select(q, dc, False, "torch"), L,
                  B * Hkv * L * (dc.r * dc.bits // 8 + 6) + B * H * L * 16, kind="stage")
            _, idx = _select(q, dc, False)
            timed("stage: sparse flash-decode alone", lambda: _flash_decode(
                q, dc.k, dc.v, idx, idx.shape[1], sm, ds_spec.tiling.block_n,
                {"per_sm": chosen.get("double_sparse 1/16", P["default_launch"])[0]}), L,
                B * H * kcount * (2 * D * 2 + 4) + B * H * D * 4, kind="stage")
        del dc
        for name, r in pts.items():
            if r is not None:
                r["x_best_sdpa"] = peer / r["ms"]
        del q, k, v
        gc.collect()
        torch.cuda.empty_cache()
        return pts

    Lt = P["context"]
    log(f"== decode target point B={B} H={H} Hkv={Hkv} D={D} context={Lt}")
    res["target"] = {n: (r["ms"] if r else None) for n, r in run_point(Lt, "tune" not in skip).items()}
    if "sweep" not in skip:
        log("== decode sweep over the context")
        for L in P["sweep_contexts"]:
            if L != Lt:
                run_point(L, False)
    return res


def _decode_markdown(res: dict, command: str) -> str:
    P = res["config"]
    rows = [r for r in res["rows"] if not r.get("tune")]
    Lt = P["context"]
    lines = [provenance.header("Decode kernels vs torch SDPA over the full FP16 cache", command),
             "", f"B={P['batch']}, H={P['heads']}, Hkv={P['kv_heads']}, D={P['head_dim']}, fp16. "
             f"Measured HBM copy bandwidth: {res['hbm_copy_GBps']:.0f} GB/s (read + write).", "",
             f"## Target point, context {Lt}", "",
             "| kernel | ms | x best SDPA | GB/s moved | share of copy BW |", "|---|---|---|---|---|"]
    best = [r for r in res["rows"] if r["L"] == Lt and r.get("kind") in ("ours", "peer", "stage")]
    by = {}
    for r in best:  # tuned rows: keep the fastest per method
        key = r["name"].split(" ps")[0]
        if key not in by or r["ms"] < by[key]["ms"]:
            by[key] = r
    peer = min(r["ms"] for k, r in by.items() if k.startswith("sdpa"))
    for key, r in by.items():
        gb = f"{r['GBps']:.0f}" if r.get("GBps") else "-"
        sh = f"{r['hbm_share']:.0%}" if r.get("hbm_share") else "-"
        lines.append(f"| {key} | {r['ms']:.3f} | {peer / r['ms']:.2f} | {gb} | {sh} |")
    lines += ["", "x best SDPA: time of the fastest SDPA backend / kernel time, same run. GB/s "
              "counts the bytes the kernel must move: turbo the whole cache (packed codes, "
              "scales, zeros, INT8 block scales, the buffer at capacity) plus its f32 score "
              "scratch written and read back; double_sparse the label cache, its uint32 selection "
              "keys written and read once (the top-k passes reread them, mostly from L2), "
              "and the selected K/V rows; SDPA / fp16 the full K and V.", ""]
    if res.get("turbo_rel_l2_vs_fp32") is not None:
        lines += [f"turbo ({P['turbo_kinds'][0]}) relative L2 error vs fp32 SDPA at the target: "
                  f"{res['turbo_rel_l2_vs_fp32']:.2e}", ""]
    if res.get("tune"):
        lines += ["## Launch configs (best per method at the target)", ""]
        lines += [f"- {t['method']}: per_sm={t['per_sm']} num_warps={t['num_warps']} "
                  f"num_stages={t['num_stages']} ({t['ms']:.3f} ms)" for t in res["tune"]]
        lines.append("")
    Ls = sorted({r["L"] for r in rows})
    names = []
    for r in rows:
        if r.get("kind") in ("ours", "peer") and r["name"] not in names:
            names.append(r["name"])
    lines += ["## Sweep over the context (ms)", "", "| kernel | " + " | ".join(map(str, Ls)) + " |",
              "|---" * (len(Ls) + 1) + "|"]
    for n in names:
        cells = []
        for L in Ls:
            m = [r for r in rows if r["name"] == n and r["L"] == L]
            cells.append(f"{m[0]['ms']:.3f}" if m else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        print(DEVICE_HINT)
        return 1
    from qsattn.calibrate import hardware_for_device
    try:
        hw_id = hardware_for_device(torch.cuda.get_device_name())
    except ValueError:
        hw_id = "".join(c if c.isalnum() else "_" for c in torch.cuda.get_device_name().lower())
    out = args.out if args.out is not None else DEFAULT_OUT / hw_id
    out.mkdir(parents=True, exist_ok=True)
    command = provenance.command_line()

    def log(msg):   # progress lines (stderr); the result table goes to stdout at the end
        if not args.no_progress:
            print(msg, flush=True, file=sys.stderr)
    log(f"qsattn bench on {provenance.machine()}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    prov = {"command": command, "git": provenance.git_revision(),
            "machine": provenance.machine(), "versions": provenance.versions(),
            "gpu": torch.cuda.get_device_name()}
    prov["hardware"] = hw_id

    def save(name: str, result: dict, markdown, plot) -> None:
        """<name>.json, <name>.md and the sweep plot, with provenance, under the GPU's folder;
        every row carries the speedup over the fastest SDPA of its point and the GPU and git
        revision it came from."""
        result["provenance"] = {**prov, "time_utc": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                  time.gmtime())}
        _stamp_rows(result, prov)
        (out / f"{name}.json").write_text(store.dumps(result, indent=1, default=str))
        (out / f"{name}.md").write_text(markdown(result, command))
        written = [out / f"{name}.json", out / f"{name}.md",
                   bench_plots.rows_csv(result, out / f"{name}.csv"),
                   *plot(result, out / f"{name}_sweep.png")]
        log("wrote " + ", ".join(map(str, written)))

    if "prefill" not in skip:
        save("prefill", _run_bench(cfg, args, log), _markdown, bench_plots.plot_prefill)
    if "decode" not in skip and "decode" in cfg:
        save("decode", _run_decode_bench(cfg, args, log), _decode_markdown,
             bench_plots.plot_decode)
    if "host" not in skip:
        host = {"config": "host time per public call at steady state (gpu.bench.host_time)",
                "rows": _host_rows(log)}
        save("host", host, _host_markdown, lambda r, p: [])
    from qsattn import cliopts
    rows = []
    for name in ("prefill", "decode"):
        f = out / f"{name}.json"
        if f.is_file() and name not in skip:
            rows += [{"bench": name, **{k: v for k, v in r.items() if not isinstance(v, (dict, list))}}
                     for r in json.loads(f.read_text())["rows"] if not r.get("tune")]
    cliopts.emit(cliopts.render(rows, args.format, columns=("bench", "name", "kind", "L",
                                                            "causal", "ms")))
    return 0


def _stamp_rows(result: dict, prov: dict) -> None:
    """``x_best_sdpa`` (fastest SDPA of the same point / this row's time; prefill keyed by
    (L, causal), decode by L), the GB/s share of the measured copy bandwidth where known, and
    the GPU and git revision on every row."""
    rows = result.get("rows", [])
    best: dict = {}
    for r in rows:
        if str(r.get("name", "")).startswith("sdpa") and r.get("ms"):
            key = (r.get("L"), r.get("causal"))
            best[key] = min(best.get(key, float("inf")), r["ms"])
    copy = result.get("hbm_copy_GBps")
    for r in rows:
        b = best.get((r.get("L"), r.get("causal")))
        if r.get("ms") and b:
            r["x_best_sdpa"] = b / r["ms"]
        if copy and r.get("GBps") is not None and "hbm_share" not in r:
            r["hbm_share"] = r["GBps"] / copy
        r["gpu"], r["git"] = prov["gpu"], prov["git"]


def _host_rows(log) -> list[dict]:
    """Host microseconds per call of every public GPU entry point at steady state (spec
    resolved, kernels compiled; the GPU idle before each call): ``attention`` per prefill
    method, ``build_cache``, ``append`` (one token) and ``decode`` per decode method, at a small
    shape where the host dominates."""
    import torch

    import gpu
    from gpu.bench import host_time
    from sim.methods import SIMULATORS

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 8, 256, 128, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(1, 2, 1024, 128, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn_like(k)
    qd = q[:, :, :1].contiguous()
    k1, v1 = k[:, :, :1].contiguous(), v[:, :, :1].contiguous()

    def add(call, method, fn):
        try:
            us = host_time(fn, ())
        except Exception as e:  # noqa: BLE001 - reported, the other rows still run
            log(f"  host {call} {method}: failed ({type(e).__name__}: {str(e)[:120]})")
            return
        rows.append({"name": f"host {call}", "method": method, "us": us, "kind": "host"})
        log(f"  host {call:12s} {method:14s} {us:8.1f} us/call")

    for m in gpu.prefill_methods():
        add("attention", m, lambda m=m: gpu.attention(q, k, v, method=m))
    for m in gpu.decode_methods():
        cal = None
        if gpu.KERNEL_PATHS.get(m).cache_needs_calibration:
            spec = gpu.resolve(m, None, q.dtype, phase="decode")
            cal = SIMULATORS.get(m).calibration.compute(
                qd.float().cpu().numpy(), k.float().cpu().numpy(), v.float().cpu().numpy(),
                spec, "oracle")
        add("build_cache", m, lambda m=m, cal=cal: gpu.build_cache(k, v, m, calibration=cal))
        cache = gpu.build_cache(k, v, m, calibration=cal)
        add("append", m, lambda c=cache: c.append(k1, v1))
        add("decode", m, lambda c=cache: gpu.decode(qd, c))
    return rows


def _host_markdown(result: dict, command: str) -> str:
    lines = [provenance.header("Host time per call of the public GPU entry points", command),
             "", "Target (issue 11): <= 30 us per call at steady state. "
             "`gpu.bench.host_time`: median wall time from entry until the call returns with "
             "its kernels enqueued, the GPU idle before each call.", "",
             "| call | method | host us |", "|---|---|---:|"]
    lines += [f"| {r['name'].removeprefix('host ')} | {r['method']} | {r['us']:.1f} |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def report_section(ctx) -> str:
    """The stored results in reports/bench/<gpu>/ (no GPU needed), or how to make them."""
    root = Path(ctx.out) / "bench"
    gpus = sorted(d for d in root.iterdir() if d.is_dir() and any(
        (d / f"{n}.json").is_file() for n in ("prefill", "decode", "host"))) \
        if root.is_dir() else []
    if not gpus:
        return ("No benchmark results yet. They need a CUDA GPU:\n\n```\n" + DEVICE_HINT + "\n```\n")
    out = ["Reused from the stored GPU results (this section runs nothing); one folder per GPU "
           "under `bench/`.", ""]
    for d in gpus:
        out += _gpu_section(d, d.relative_to(Path(ctx.out)).as_posix())
    out += _dev_runs(root, Path(ctx.out))
    return "\n".join(out) + "\n"


def _dev_runs(root: Path, out_root: Path) -> list[str]:
    """The kernel issues' device runs (``bench/gluon_dev/run*``, ``bench/decode_dev/run*``): the
    newest of each, summarized from its JSON (ratios from the same run)."""
    out = []
    runs = sorted((root / "gluon_dev").glob("run*/gluon_prefill.json"))
    if runs:
        js = runs[-1]
        g = json.loads(js.read_text())
        rel = js.parent.relative_to(out_root).as_posix()
        t = [r for r in g["timings"] if r["shape"] == "main"]
        cudnn = {r["causal"]: r["ms"] for r in t if r["kind"] == "sdpa" and r["method"] == "cudnn"}
        quant = {r["method"]: r["ms"] for r in t if r["kind"] == "quant"}
        env = g.get("env", {})
        out += [f"**Prefill, Gluon sm_90 kernels** (B4 H32 L8192 D128), measured on "
                f"{env.get('device', '?')} at git {str(env.get('git_revision', '?'))[:12]}: the "
                f"fastest structure per method, total incl. Q/K/V quantization; every structure, "
                f"shape and the identity checks in [{rel}/gluon_prefill.md]({rel}/gluon_prefill.md)"
                f", analysis in `benchmarks/gluon_prefill_notes.md`.", "",
                "| method | causal | structure | ms (+quant) | x cuDNN |", "|---|---|---|---|---|"]
        for causal in (False, True):
            best: dict = {}
            for r in t:
                if r["kind"] == "forward" and r["causal"] == causal and (
                        r["method"] not in best or r["ms"] < best[r["method"]]["ms"]):
                    best[r["method"]] = r
            for m, r in best.items():
                tot = r["ms"] + quant.get(m.split("_")[0], 0.0)   # fp16 quantizes nothing
                x = f"{cudnn[causal] / tot:.2f}" if causal in cudnn else "-"
                out.append(f"| {m} | {causal} | {r['structure']} | {tot:.3f} | {x} |")
        out.append("")
    runs = sorted((root / "decode_dev").glob("run*/decode_dev.json"))
    if runs:
        js = runs[-1]
        d = json.loads(js.read_text())
        rel = js.parent.relative_to(out_root).as_posix()
        top = js.parent.parent.relative_to(out_root).as_posix()
        pv = d.get("provenance", {})
        rows = [r for r in d["rows"] if r.get("config") == "mha" and r.get("x_best_sdpa")]
        Ls = sorted({r["L"] for r in rows})
        names = list(dict.fromkeys(r["name"] for r in rows))
        out += [f"**Decode kernels** (B8 H32/32 D128), measured on {pv.get('gpu', '?')} at git "
                f"{pv.get('git', '?')}: x fastest SDPA of the same run (eager calls: host time "
                f"inside, see [{top}/README.md]({top}/README.md)); GQA, variants and stage "
                f"cut-offs in [{rel}/decode_dev.md]({rel}/decode_dev.md).", "",
                "| kernel | " + " | ".join(f"{L // 1024}K" for L in Ls) + " |",
                "|---|" + "---|" * len(Ls)]
        for n in names:
            cell = {r["L"]: r["x_best_sdpa"] for r in rows if r["name"] == n}
            out.append(f"| {n} | " + " | ".join(f"{cell[L]:.2f}" if L in cell else "-"
                                                for L in Ls) + " |")
        out.append("")
    return out


def _gpu_section(d: Path, rel: str) -> list[str]:
    out = []
    js, djs, hjs = d / "prefill.json", d / "decode.json", d / "host.json"
    if js.exists():
        res = json.loads(js.read_text())
        pv = res.get("provenance", {})
        Lt = res["config"]["prefill"]["target_length"]
        rows = [r for r in res["rows"] if r["L"] == Lt and not r.get("tune")]
        out += [f"**Prefill** measured {pv.get('time_utc', '?')} on {pv.get('gpu', '?')} at git "
                f"{pv.get('git', '?')} (`{pv.get('command', '?')}`); full tables in "
                f"[{rel}/prefill.md]({rel}/prefill.md), sweeps in `{rel}/prefill_sweep_*.png`.", "",
                "| kernel | causal | ms | x cuDNN | x Sage |", "|---|---|---|---|---|"]
        for causal in (False, True):
            ref = {r["name"]: r["ms"] for r in rows if r["causal"] == causal}
            c, sg = ref.get("sdpa_cudnn"), ref.get("sageattn_1.0.6")
            for r in rows:
                if r["causal"] != causal:
                    continue
                out.append(f"| {r['name']} | {causal} | {r['ms']:.3f} | "
                           + (f"{c / r['ms']:.2f}" if c else "-") + " | "
                           + (f"{sg / r['ms']:.2f}" if sg else "-") + " |")
        out.append("")
    if djs.exists():
        dres = json.loads(djs.read_text())
        pv, cfg = dres.get("provenance", {}), dres["config"]
        L = cfg["context"]
        rows = [r for r in dres["rows"] if r["L"] == L]
        best = min((r["ms"] for r in rows if r.get("kind") == "peer"), default=None)
        out += [f"**Decode** B{cfg['batch']} H{cfg['heads']}/{cfg['kv_heads']} D{cfg['head_dim']} "
                f"context {L}, measured {pv.get('time_utc', '?')} on {pv.get('gpu', '?')} at git "
                f"{pv.get('git', '?')}; full tables in [{rel}/decode.md]({rel}/decode.md), sweep "
                f"in `{rel}/decode_sweep.png`.", "",
                "| kernel | kind | ms | x fastest SDPA | share of copy bandwidth |",
                "|---|---|---|---|---|"]
        for r in rows:
            share = f"{r['hbm_share']:.0%}" if r.get("hbm_share") is not None else "-"
            out.append(f"| {r['name']} | {r.get('kind', '-')} | {r['ms']:.3f} | "
                       + (f"{best / r['ms']:.2f}" if best else "-") + f" | {share} |")
        out.append("")
    if hjs.exists():
        h = json.loads(hjs.read_text())
        worst = max(h["rows"], key=lambda r: r["us"]) if h["rows"] else None
        if worst:
            out += [f"**Host time** per public call (target <= 30 us): worst "
                    f"{worst['name'].removeprefix('host ')} {worst['method']} "
                    f"{worst['us']:.1f} us; all rows in [{rel}/host.md]({rel}/host.md).", ""]
    return out


if __name__ == "__main__":
    from qsattn.cli import main
    sys.exit(main(["bench", *sys.argv[1:]]))
