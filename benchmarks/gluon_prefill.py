"""Gluon sm_90 prefill (gpu/kernels/flash_fwd_sm90.py, launched by gpu.prefill_sm90): integer
identity against the simulator and speed against cuDNN on an H100/H200, in one device call;
``--compile-only`` counts the candidates' SASS on the CPU. Notes: benchmarks/gluon_prefill_notes.md.

Device (one call, ~4 minutes)::

    QSATTN_GIT_REVISION=... python3 benchmarks/gluon_prefill.py --out $OUT --budget-s 200

1. precompiles every kernel the run launches on all CPUs (gpu.sass.compile_call on ``meta``
   argument sets identical to the launches, so the launches hit Triton's cache);
2. checks: ``gpu.attention_trace`` with each Gluon structure against ``sim.simulate`` through
   ``gpu.compare`` (int8_flash, int8_flash_fast, turbo, turbo exp2, fp16_flash; GQA, ragged,
   D 64/128, causal); the quantization kernels' codes and scales against ``sim.numerics``;
3. times (``gpu.bench.time_gpu``: CUDA graph, inputs rotated past L2) at B4 H32 L8K D128 every
   method x structure, causal and not, the quantization kernels, cuDNN / flash SDPA and the
   portable kernel; then, for the best structure of each method, L1K / L32K / D64 / GQA 32/8,
   and two leave-one-out ablations;
4. writes ``gluon_prefill.json`` and ``gluon_prefill.md`` under ``--out`` (and a log).

CPU::

    python benchmarks/gluon_prefill.py --compile-only --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# candidates: Gluon launch options (sim.arch.GLUON_OPTIONS)
STRUCTURES = {
    "m1": {"merged": True, "one_loop": True, "unroll": False},
    "s1": {"merged": False, "one_loop": True, "unroll": False},
    "m2": {"merged": True, "one_loop": False, "unroll": True},
    "v2": {"merged": False, "one_loop": False, "unroll": True},   # run 2's structure
}
METHODS = {  # label: (method, spec name or overrides)
    "int8": ("int8_flash", None),
    "int8_fast": ("int8_flash", "int8_flash_fast"),
    "turbo": ("turbo", None),
    "turbo_exp2": ("turbo", {"softmax__exp": "exp2"}),
    "fp16": ("fp16_flash", None),
    "int8_bn128": ("int8_flash", {"tiling__block_n": 128}),
}
CHECK_SHAPES = [  # label, B, Hq, Hkv, Lq, Lk, D, causal
    ("gqa-L304", 1, 4, 2, 304, 304, 128, True),
    ("gqa-L304", 1, 4, 2, 304, 304, 128, False),
    ("b2-L336-d64", 2, 2, 2, 336, 336, 64, True),
    ("Lq160-Lk400", 1, 2, 1, 160, 400, 128, True),
    ("Lq336-Lk200", 1, 2, 2, 336, 200, 128, True),
]
MAIN = (4, 32, 32, 8192, 8192, 128)
SECONDARY = {"L1K": (4, 32, 32, 1024, 1024, 128), "L32K": (1, 32, 32, 32768, 32768, 128),
             "D64": (4, 32, 32, 8192, 8192, 64), "GQA32/8": (4, 32, 8, 8192, 8192, 128)}
ULP = {"fp16_flash": 8}
T0 = time.time()
LOG = []


def log(*a):
    msg = f"[{time.time() - T0:7.1f}s] " + " ".join(str(x) for x in a)
    print(msg, flush=True)
    LOG.append(msg)


def spec_of(label):
    from sim.spec import load_method
    method, s = METHODS[label]
    if isinstance(s, dict):
        return load_method(method, **s)
    return load_method(s) if s else load_method(method)


def launch_of(structure):
    return {"kernel": "gluon", "num_stages": 4, "gluon": dict(STRUCTURES[structure])}


# ---------------------------------------------------------------------------------------------
# argument sets (identical on meta tensors and on the device)
# ---------------------------------------------------------------------------------------------
def _empty_inputs(shape, device):
    import torch
    B, Hq, Hkv, Lq, Lk, D = shape
    q = torch.empty((B, Hq, Lq, D), dtype=torch.float16, device=device)
    k = torch.empty((B, Hkv, Lk, D), dtype=torch.float16, device=device)
    return q, k, torch.empty_like(k)


def forward_call(label, structure, shape, causal, trace, tensors=None, ablate=0):
    """The forward's PrefillCall (Gluon with ``structure``, or the portable kernel when
    structure == 'triton') on meta tensors or on ``tensors`` = (q, k, v) / quantized."""
    import torch
    from gpu import common
    from gpu.prefill import prefill_call
    from gpu.prefill_sm90 import sm90_call
    from sim.checks import check_sm_scale
    spec = spec_of(label)
    D = shape[-1]
    kw = dict(causal=causal, sm_scale=check_sm_scale(None, D), out_dtype=torch.float16,
              trace=trace)
    if tensors is None:
        q, k, v = _empty_inputs(shape, "meta")
        if spec.integer:
            tensors = (common.empty_quantized(q, spec.q, spec.tiling.block_m),
                       common.empty_quantized(k, spec.k, spec.tiling.block_n),
                       common.empty_quantized(v, spec.v, spec.tiling.block_n, transpose=True))
        else:
            tensors = (q, k, v)
    if structure == "triton":
        launch = dict(block_m=64, num_warps=4, num_stages=3) if spec.integer else \
            dict(block_m=128, num_warps=8, num_stages=3)
        if spec.integer:
            return prefill_call(*tensors, spec, launch=launch, **kw)
        return prefill_call(None, None, None, spec, q=tensors[0], k=tensors[1], v=tensors[2],
                            launch=launch, **kw)
    opts = dict(STRUCTURES[structure])
    if spec.integer:
        return sm90_call(*tensors, spec, stages=4, options=opts, ablate=ablate, **kw)
    return sm90_call(None, None, None, spec, q=tensors[0], k=tensors[1], v=tensors[2],
                     stages=4, options=opts, ablate=ablate, **kw)


def _compile_job(job):
    """Worker: compile one forward into the Triton cache (no GPU needed)."""
    os.environ.pop("TRITON_INTERPRET", None)
    from gpu import sass
    t0 = time.time()
    try:
        label, st, shape, causal, trace = job[:5]
        sass.compile_call(forward_call(label, st, shape, causal, trace,
                                       ablate=job[5] if len(job) > 5 else 0))
        return job, round(time.time() - t0, 1), None
    except Exception as e:  # noqa: BLE001 - reported; the launch will raise it again
        return job, round(time.time() - t0, 1), f"{type(e).__name__}: {e}"[:1500]


def precompile(jobs, workers):
    import concurrent.futures as cf
    import multiprocessing as mp
    res = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        for r in ex.map(_compile_job, jobs):
            res.append(r)
            if r[2]:
                log("compile error", r[0], r[2][:400])
    return res


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def check_case(label, structure, shape):
    import numpy as np
    import gpu
    from gpu.compare import compare
    from sim import simulate
    from tests.gpu.helpers import make_qkv, np32
    name, B, Hq, Hkv, Lq, Lk, D, causal = shape
    spec = spec_of(label)
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, seed=Lq * 3 + Lk + D)
    rec = {"method": label, "structure": structure, "shape": name, "causal": causal}
    try:
        kr = gpu.attention_trace(q, k, v, method=spec.method, causal=causal, spec=spec,
                                 launch=launch_of(structure))
        sim = simulate(np32(q), np32(k), np32(v), kr.spec, causal=causal, trace=True)
        cmp = compare(sim, kr, dtype="float16", ulp_bound=ULP.get(spec.method, 2),
                      ulp_floor=2.0 ** -16)
        rec["ints"] = {key: a.mismatches for key, a in cmp.ints.items()}
        rec["max_ulp"] = round(cmp.out.max_ulp, 3)
        rec["failures"] = cmp.failures(p_code_tolerance=1e-3)
        if not spec.integer:
            vis = sim.trace["visible"]
            ds = np.abs(np32(kr.trace["s"])[vis] - sim.trace["s"][vis])
            rec["s_max_abs_diff"] = float(ds.max()) if ds.size else 0.0
        rec["finite"] = bool(np.isfinite(np32(kr.out)).all())
        rec["ok"] = not rec["failures"] and rec["finite"]
    except Exception as e:  # noqa: BLE001
        rec["error"] = f"{type(e).__name__}: {e}"[:800]
        rec["ok"] = False
    return rec


def check_quant():
    """Codes and scales of the quantization kernels (fast quotient, packed code extraction,
    two-kernel per-head scales) against sim.numerics.quantize on a 4096-token tensor."""
    import numpy as np
    import torch
    from gpu.common import quantize_operand
    from sim.numerics import quantize
    from sim.spec import OperandQuant
    from tests.gpu.helpers import make_qkv, np32
    out = []
    for dtype in (torch.float16, torch.bfloat16):
        x, _, _ = make_qkv(2, 4, 4, 4096, 1, 128, dtype=dtype, seed=5)
        x = x.clone()
        x[0, 0, 7] = 0
        x[1, 2, 99, 5] = 300.0
        for gran, tile, sdt, arith in (("per_token", 128, "fp16", "fp16"),
                                       ("per_head", 64, "fp16", "fp16"),
                                       ("per_block", 64, "fp32", "fp32"),
                                       ("per_token", 128, "fp32", "fp32"),
                                       ("per_head", 64, "fp32", "fp32")):
            for rnd in ("half_even", "half_up"):
                oq = OperandQuant(bits=8, granularity=gran, rounding=rnd, scale_dtype=sdt,
                                  arithmetic=arith)
                for tr in (False, True):
                    got = quantize_operand(x, oq, tile, transpose=tr)
                    ref = quantize(np32(x), 8, block=oq.block(tile), rounding=rnd,
                                   scale_dtype=sdt, arithmetic=arith)
                    codes = got.codes_bhld().cpu().numpy()
                    out.append({"dtype": str(dtype)[6:], "granularity": gran, "scale": sdt,
                                "arithmetic": arith, "rounding": rnd, "transpose": tr,
                                "code_mismatch": int((codes != ref.codes).sum()),
                                "scale_mismatch": int((got.scale.cpu().numpy() != ref.scale
                                                       .reshape(got.scale.shape)).sum())})
    return out


# ---------------------------------------------------------------------------------------------
# timings
# ---------------------------------------------------------------------------------------------
def _rand_inputs(shape, seed):
    import torch
    B, Hq, Hkv, Lq, Lk, D = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn((B, Hq, Lq, D), dtype=torch.float16, device="cuda", generator=g)
    k = torch.randn((B, Hkv, Lk, D), dtype=torch.float16, device="cuda", generator=g)
    v = torch.randn((B, Hkv, Lk, D), dtype=torch.float16, device="cuda", generator=g)
    k[..., :2] *= 4.0
    return q, k, v


_SEED = [0]


def _next_seed():
    _SEED[0] += 1
    return _SEED[0]


def time_forward(label, structure, shape, causal, ablate=0, rounds=5, calls=6):
    """Forward only (the quantization done once outside, operands rotated as tensors)."""
    from gpu.bench import time_gpu
    from gpu.common import QuantizedOperand, quantize_qkv
    spec = spec_of(label)

    def make():
        q, k, v = _rand_inputs(shape, _next_seed())
        if not spec.integer:
            return q, k, v
        qq, kq, vq = quantize_qkv(q, k, v, spec, check=False)
        del q, k, v
        return (qq.codes, qq.scale, kq.codes, kq.scale, vq.codes, vq.scale)

    meta = {}

    def fn(*t):
        if spec.integer:
            L = shape[3]
            Lk = shape[4]
            ops = (QuantizedOperand(t[0], t[1], meta["qg"], L, False),
                   QuantizedOperand(t[2], t[3], meta["kg"], Lk, False),
                   QuantizedOperand(t[4], t[5], meta["vg"], Lk, True))
        else:
            ops = t
        forward_call(label, structure, shape, causal, False, tensors=ops,
                     ablate=ablate).launch()

    if spec.integer:
        from gpu.common import empty_quantized
        q, k, v = _empty_inputs(shape, "meta")
        meta["qg"] = empty_quantized(q, spec.q, spec.tiling.block_m).group
        meta["kg"] = empty_quantized(k, spec.k, spec.tiling.block_n).group
        meta["vg"] = empty_quantized(v, spec.v, spec.tiling.block_n).group
    t = time_gpu(fn, make, rounds=rounds, calls=calls, warmup=2)
    return t.ms, t.spread, t.mode


def time_quant(label, shape, rounds=5, calls=6):
    from gpu.bench import time_gpu
    from gpu.common import quantize_qkv
    spec = spec_of(label)
    t = time_gpu(lambda q, k, v: quantize_qkv(q, k, v, spec, check=False),
                 lambda: _rand_inputs(shape, _next_seed()), rounds=rounds, calls=calls,
                 warmup=2)
    return t.ms, t.spread, t.mode


def time_sdpa(backend, shape, causal, rounds=5, calls=6):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from gpu.bench import time_gpu
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    B, Hq, Hkv, Lq, Lk, D = shape

    def fn(q, k, v):
        with sdpa_kernel([be]):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=Hq != Hkv)
    t = time_gpu(fn, lambda: _rand_inputs(shape, _next_seed()), rounds=rounds, calls=calls,
                 warmup=2)
    return t.ms, t.spread, t.mode


# ---------------------------------------------------------------------------------------------
# CPU: SASS facts of the candidates
# ---------------------------------------------------------------------------------------------
def compile_only(out: Path, labels, structures, causal_list=(False, True)):
    import collections
    from gpu import sass
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for label in labels:
        spec = spec_of(label)
        per_tile = (MAIN[-1] + spec.tiling.block_n) // (32 if spec.integer else 16)
        for st in structures:
            for causal in causal_list:
                key = f"{label}/{st}/c{int(causal)}"
                t0 = time.time()
                try:
                    ck = sass.compile_call(forward_call(label, st, MAIN, causal, False))
                except Exception as e:  # noqa: BLE001
                    res[key] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                    log(key, "ERROR", str(e)[:300])
                    continue
                listing, regs = sass.disassemble(ck.asm["cubin"])
                ins = sass.parse(listing)
                ops = collections.Counter(t.split()[0].split(".")[0] for _, t in ins)
                f = {"compile_s": round(time.time() - t0, 1), "registers": regs,
                     "kernel_instructions": len(ins), "kernel_bytes": 16 * len(ins),
                     "spills": ops.get("STL", 0) + ops.get("LDL", 0),
                     "shared": ck.metadata.shared}
                if st != "triton":
                    path, tiles, n = sass.hot_path(listing, per_tile)
                    f.update(main_loop_instructions=n, main_loop_bytes=16 * n,
                             hot_path_per_tile=len(path) / tiles,
                             instructions_per_score=round(len(path) / tiles
                                                          / (spec.tiling.block_n / 2), 2),
                             qk_async=True, hot_opcodes=dict(collections.Counter(
                                 p.split(".")[0] for p in path).most_common(14)))
                res[key] = f
                log(key, json.dumps({k: v for k, v in f.items() if k != "hot_opcodes"}))
                (out / f"{label}_{st}_c{int(causal)}.sass").write_text(listing)
    (out / "compile_facts.json").write_text(json.dumps(res, indent=1))
    return res


# ---------------------------------------------------------------------------------------------
# device run
# ---------------------------------------------------------------------------------------------
TWO_LOOP_TIMED = ("int8", "int8_fast", "fp16")   # m2 / v2 timed for these only


def check_cases():
    """(method, structure, check shape): m1 (the table's) on every shape, s1 on three, the
    two-loop structures on one."""
    labels = ("int8", "int8_fast", "turbo", "turbo_exp2", "fp16")
    cases = [(lab, "m1", sh) for lab in labels for sh in CHECK_SHAPES]
    cases += [(lab, "s1", sh) for lab in labels for sh in (CHECK_SHAPES[0], CHECK_SHAPES[1],
                                                          CHECK_SHAPES[4])]
    cases += [(lab, st, CHECK_SHAPES[0]) for st in ("m2", "v2") for lab in ("int8", "int8_fast")]
    return cases


def device_jobs():
    """Every forward the device run launches: (label, structure, shape, causal, trace[,
    ablate])."""
    jobs = [(lab, st, sh[1:7], sh[7], True) for lab, st, sh in check_cases()]
    for label in METHODS:
        for st in STRUCTURES:
            if st in ("m2", "v2") and label not in TWO_LOOP_TIMED:
                continue
            for causal in (False, True):
                jobs.append((label, st, MAIN, causal, False))
    for label in ("int8", "int8_fast", "turbo", "turbo_exp2", "fp16"):
        for st in ("m1", "s1"):
            for causal in (False, True):
                jobs.append((label, st, SECONDARY["D64"], causal, False))
    for label in ("int8", "fp16"):
        for causal in (False, True):
            jobs.append((label, "triton", MAIN, causal, False))
    jobs.append(("int8", "m1", MAIN, False, False, 1))
    jobs.append(("int8", "m1", MAIN, False, False, 2))
    return jobs


def device_run(out: Path, budget_s: float, workers: int, check_budget_s: float):
    import torch
    out.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(),
           "capability": list(torch.cuda.get_device_capability()),
           "git_revision": os.environ.get("QSATTN_GIT_REVISION", "unknown")}
    import triton
    env["triton"] = triton.__version__
    log("env", json.dumps(env))
    res = {"env": env, "checks": [], "quant_checks": [], "timings": [], "compile": {}}

    def save():
        res["log"] = LOG
        (out / "gluon_prefill.json").write_text(json.dumps(res, indent=1))

    jobs = device_jobs()
    log(f"precompiling {len(jobs)} kernels on {workers} processes")
    comp = precompile(jobs, workers)
    res["compile"] = {"kernels": len(jobs), "errors": [str(r[0]) + ": " + r[2] for r in comp
                                                       if r[2]],
                      "seconds": round(time.time() - T0, 1)}
    log("precompiled", len(res["compile"]["errors"]), "errors")
    save()

    # ---- checks (m1 first: the table's structure) ----
    for lab, st, sh in check_cases():
        if time.time() - T0 > check_budget_s:
            log("budget: skip check", lab, st, sh[0], sh[7])
            res["checks"].append({"method": lab, "structure": st, "shape": sh[0],
                                  "causal": sh[7], "skipped": True, "ok": None})
            continue
        r = check_case(lab, st, sh)
        res["checks"].append(r)
        log("check", json.dumps(r))
    # the default path (no launch argument): which kernel the table picks
    from gpu.prefill import forward_kernel
    res["default_kernel"] = {lab: forward_kernel(spec_of(lab), 128, "float16",
                                                 torch.device("cuda"))[0]
                             for lab in ("int8", "int8_fast", "turbo", "fp16")}
    try:
        res["quant_checks"] = check_quant()
        log("quant checks", sum(r["code_mismatch"] + r["scale_mismatch"]
                                for r in res["quant_checks"]), "mismatches over",
            len(res["quant_checks"]), "cases")
    except Exception as e:  # noqa: BLE001
        res["quant_checks"] = [{"error": f"{type(e).__name__}: {e}"[:800]}]
        log("quant checks error", e)
    save()

    def rec(kind, label, structure, shape_name, shape, causal, fn):
        if time.time() - T0 > budget_s:
            log("budget: skip", kind, label, structure, shape_name, causal)
            return None
        try:
            ms, spread, mode = fn()
            r = {"kind": kind, "method": label, "structure": structure, "shape": shape_name,
                 "dims": list(shape), "causal": causal, "ms": round(ms, 4),
                 "spread": round(spread, 4), "mode": mode}
        except Exception as e:  # noqa: BLE001
            r = {"kind": kind, "method": label, "structure": structure, "shape": shape_name,
                 "causal": causal, "error": f"{type(e).__name__}: {e}"[:600]}
        res["timings"].append(r)
        log("time", json.dumps(r))
        save()
        return r

    # ---- main shape ----
    for causal in (False, True):
        for be in ("cudnn", "flash"):
            rec("sdpa", be, "-", "main", MAIN, causal, lambda: time_sdpa(be, MAIN, causal))
    for label in ("int8", "turbo"):   # int8_flash_fast quantizes as int8_flash
        rec("quant", label, "-", "main", MAIN, False, lambda: time_quant(label, MAIN))
    for causal in (False, True):
        for label in ("int8", "int8_fast", "fp16", "turbo", "turbo_exp2"):
            for st in ("m1", "s1"):
                rec("forward", label, st, "main", MAIN, causal,
                    lambda: time_forward(label, st, MAIN, causal))
    rec("forward", "int8", "m1", "main", MAIN, False,      # the same again: the spread
        lambda: time_forward("int8", "m1", MAIN, False))
    for causal in (False, True):
        for label in TWO_LOOP_TIMED:
            for st in ("m2", "v2"):
                rec("forward", label, st, "main", MAIN, causal,
                    lambda: time_forward(label, st, MAIN, causal))
        for label in ("int8", "fp16"):
            rec("forward", label, "triton", "main", MAIN, causal,
                lambda: time_forward(label, "triton", MAIN, causal))
    for ab in (1, 2):
        rec(f"ablate{ab}", "int8", "m1", "main", MAIN, False,
            lambda: time_forward("int8", "m1", MAIN, False, ablate=ab))
    for causal in (False, True):
        for st in ("m1", "s1"):
            rec("forward", "int8_bn128", st, "main", MAIN, causal,
                lambda: time_forward("int8_bn128", st, MAIN, causal))
    # ---- secondary shapes, best structure of each method (non-causal + causal at main; run 3
    # chose among m1 / s1 only, whose D64 kernels were precompiled) ----
    best = {}
    for label in ("int8", "int8_fast", "fp16", "turbo", "turbo_exp2"):
        tot = {}
        for r in res["timings"]:
            if r.get("kind") == "forward" and r["method"] == label and r["shape"] == "main" \
                    and "ms" in r and r["structure"] in STRUCTURES and \
                    (r["structure"] in ("m1", "s1") or label in TWO_LOOP_TIMED):
                tot.setdefault(r["structure"], []).append(r["ms"])
        tot = {k: sum(v) for k, v in tot.items() if len(v) >= 2}
        best[label] = min(tot, key=tot.get) if tot else "m1"
    res["best_structure"] = best
    log("best", best)
    for name in ("D64", "GQA32/8", "L1K", "L32K"):
        shape = SECONDARY[name]
        for causal in (False, True):
            rec("sdpa", "cudnn", "-", name, shape, causal, lambda: time_sdpa("cudnn", shape,
                                                                             causal))
            for label in ("int8_fast", "int8", "fp16", "turbo", "turbo_exp2"):
                rec("forward", label, best[label], name, shape, causal,
                    lambda: time_forward(label, best[label], shape, causal))
        for label in ("int8", "turbo"):
            rec("quant", label, "-", name, shape, False, lambda: time_quant(label, shape))
    save()
    write_md(res, out / "gluon_prefill.md")
    return res


def ratios(res):
    """{(method, structure, shape, causal): (forward ms, total ms incl. quant, cuDNN / total)}."""
    t = res["timings"]
    cud = {(r["shape"], r["causal"]): r["ms"] for r in t
           if r.get("kind") == "sdpa" and r["method"] == "cudnn" and "ms" in r}
    qnt = {(r["method"], r["shape"]): r["ms"] for r in t if r.get("kind") == "quant" and "ms" in r}
    out = {}
    for r in t:
        if r.get("kind") != "forward" or "ms" not in r:
            continue
        qlabel = "turbo" if r["method"].startswith("turbo") else "int8"
        q = 0.0 if r["method"] == "fp16" else qnt.get((qlabel, r["shape"]),
                                                       qnt.get((qlabel, "main"), 0.0))
        total = r["ms"] + q
        c = cud.get((r["shape"], r["causal"]))
        out[(r["method"], r["structure"], r["shape"], r["causal"])] = (
            r["ms"], total, c / total if c else None)
    return out


def write_md(res, path):
    lines = [f"# Gluon sm_90 prefill, device run ({res['env'].get('device')}, torch "
             f"{res['env'].get('torch')}, triton {res['env'].get('triton')}, git "
             f"{res['env'].get('git_revision')})", ""]
    bad = [c for c in res["checks"] if not c.get("ok")]
    lines += [f"Checks against sim.simulate: {len(res['checks'])} cases, {len(bad)} failing.", ""]
    for c in bad:
        lines.append(f"- FAIL {c['method']} {c['structure']} {c['shape']} causal={c['causal']}: "
                     f"{c.get('failures') or c.get('error')}")
    qm = sum(r.get("code_mismatch", 0) + r.get("scale_mismatch", 0)
             for r in res.get("quant_checks", []))
    lines += ["", f"Quantization kernels vs sim.numerics: {len(res.get('quant_checks', []))} "
                  f"cases, {qm} mismatching codes/scales.", "",
              "| method | structure | shape | causal | forward ms | +quant ms | cuDNN / total |",
              "|---|---|---|---|---|---|---|"]
    for (m, s, sh, c), (f, tot, rt) in sorted(ratios(res).items(),
                                              key=lambda x: (x[0][2], x[0][3], x[0][0], x[0][1])):
        lines.append(f"| {m} | {s} | {sh} | {c} | {f:.3f} | {tot:.3f} | "
                     f"{'' if rt is None else f'{rt:.3f}'} |")
    lines += ["", "| other | shape | causal | ms |", "|---|---|---|---|"]
    for r in res["timings"]:
        if r.get("kind") != "forward" and "ms" in r:
            lines.append(f"| {r['kind']} {r['method']} {r['structure']} | {r['shape']} | "
                         f"{r['causal']} | {r['ms']:.3f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--device-jobs", action="store_true",
                    help="with --compile-only: compile the device run's kernels (errors only)")
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="stop timing after this many seconds (device run)")
    ap.add_argument("--check-budget-s", type=float, default=110.0,
                    help="skip the remaining checks after this many seconds")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--methods", nargs="*", default=["int8", "int8_fast", "turbo",
                                                      "turbo_exp2", "fp16"])
    ap.add_argument("--structures", nargs="*", default=list(STRUCTURES))
    a = ap.parse_args(argv)
    if a.compile_only:
        os.environ.pop("TRITON_INTERPRET", None)
        if a.device_jobs:  # compile what the device run compiles, one per constexpr set
            seen, jobs = set(), []
            for j in device_jobs():
                key = (j[0], j[1], j[2][-1], j[3], j[4], j[2][4] % 16 == 0, j[5:])
                if key not in seen:
                    seen.add(key)
                    jobs.append(j)
            log(f"compiling {len(jobs)} distinct kernels")
            res = precompile(jobs, a.workers)
            log("errors:", sum(1 for r in res if r[2]), "of", len(res))
            return 1 if any(r[2] for r in res) else 0
        compile_only(a.out, a.methods, a.structures)
        return 0
    res = device_run(a.out, a.budget_s, a.workers, a.check_budget_s)
    (a.out / "log.txt").write_text("\n".join(LOG) + "\n")
    # short table last
    rt = ratios(res)
    print("\nmethod structure causal: forward ms / +quant ms / cuDNN ratio (main shape)")
    for (m, s, sh, c), (f, tot, r) in sorted(rt.items()):
        if sh == "main":
            print(f"{m:11s} {s:6s} {int(c)}  {f:7.3f} {tot:7.3f}  "
                  f"{'' if r is None else f'{r:.3f}'}")
    bad = [c for c in res["checks"] if not c.get("ok")]
    print(f"checks: {len(res['checks'])} cases, {len(bad)} failing; default kernels "
          f"{res.get('default_kernel')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
