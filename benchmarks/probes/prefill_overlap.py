"""Device probe (issue 5): softmax/MMA overlap variants of the prefill kernel.

`python3 reports/bench/prefill_overlap_script.py` on the GPU: (1) every variant's S, P, O_int and
out bit-identical to the base launch of its method on a small shape, int8_flash S_int vs
sim.simulate; (2) attention-only CUDA-event medians at B=4, H=32, D=128, L=8192 with cuDNN SDPA
and SageAttention 1.0.6 in the same run. Writes $OUT/overlap.json.
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.getcwd())
import gpu  # noqa: E402
from gpu.bench import time_gpu  # noqa: E402
from gpu.common import quantize_qkv  # noqa: E402
from gpu.prefill import launch_prefill as attention_quantized  # noqa: E402
from sim import load_method, simulate  # noqa: E402

OUT = os.environ.get("OUT", "/tmp/out")
res = {"check": [], "rows": [], "revision": os.environ.get("QSATTN_GIT_REVISION"),
       "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
import triton  # noqa: E402


def _timed(fn, make, cold_bytes=None, warmup=5, rep=20):
    """gpu.bench.time_gpu as the dict these probes read (ms, spread, min_ms, max_ms, sets)."""
    return time_gpu(fn, make, cold_l2=cold_bytes != 0, warmup=warmup, rounds=rep).row()
res["triton"] = triton.__version__


def log(*a):
    print(*a, flush=True)


def dump():
    with open(f"{OUT}/overlap.json", "w") as fh:
        json.dump(res, fh, indent=1)


SPECS = {
    "int8_flash": ("int8_flash", {}),
    "int8_flash p-fp32-even": ("int8_flash", {"p__arithmetic": "fp32", "p__rounding": "half_even"}),
    "fp16_flash": ("fp16_flash", {}),
    "turbo": ("turbo", {}),
}


def L(bm, nw, ns, **kw):
    return dict(block_m=bm, num_warps=nw, num_stages=ns, **kw)


# (spec name, label, launch); the first launch of each spec is its base
VARIANTS = [
    ("int8_flash", "base 64/4/3", L(64, 4, 3)),
    ("int8_flash", "base 64/4/2", L(64, 4, 2)),
    ("int8_flash", "base 128/8/3", L(128, 8, 3)),
    ("int8_flash", "pipe 64/4/3", L(64, 4, 3, pipe=True)),
    ("int8_flash", "pipe 64/4/2", L(64, 4, 2, pipe=True)),
    ("int8_flash", "pipe 128/8/2", L(128, 8, 2, pipe=True)),
    ("int8_flash p-fp32-even", "base 64/4/3", L(64, 4, 3)),
    ("int8_flash p-fp32-even", "pipe 64/4/3", L(64, 4, 3, pipe=True)),
    ("fp16_flash", "base 128/8/3", L(128, 8, 3)),
    ("fp16_flash", "pipe 128/8/2", L(128, 8, 2, pipe=True)),
    ("fp16_flash", "pipe 64/4/2", L(64, 4, 2, pipe=True)),
    ("turbo", "base 64/4/3", L(64, 4, 3)),
    ("turbo", "pipe 64/4/3", L(64, 4, 3, pipe=True)),
]


def spec_of(name):
    m, ov = SPECS[name]
    return load_method(m, **ov)


def check():
    g = torch.Generator().manual_seed(1)
    B, Hq, Hkv, Lq, Lk, D = 1, 4, 2, 1000, 1500, 128
    q = torch.randn(B, Hq, Lq, D, generator=g).half().cuda()
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    k[..., :2] *= 4
    k = k.half().cuda()
    v = torch.randn(B, Hkv, Lk, D, generator=g).half().cuda()
    base = {}
    for causal in (False, True):
        for name, label, launch in VARIANTS:
            if (label.startswith("base") and (name, causal) in base) or \
                    (causal and name != "int8_flash"):
                continue  # block_m / stages alone: validated before (prefill_probe.md)
            spec = spec_of(name)
            try:
                tr = gpu.attention_trace(q, k, v, method=SPECS[name][0], causal=causal,
                                         spec=spec, launch=launch)
            except Exception as e:  # noqa: BLE001 - report and go on
                log("CHECK FAIL", name, label, type(e).__name__, str(e)[:300])
                res["check"].append({"spec": name, "label": label, "causal": causal,
                                     "error": str(e)[:300]})
                continue
            tr = {a: b.cpu() for a, b in tr.items()}
            key = (name, causal)
            row = {"spec": name, "label": label, "causal": causal}
            if key not in base:
                base[key] = tr
                if name == "int8_flash":
                    sim = simulate(*(x.float().cpu().numpy() for x in (q, k, v)), spec,
                                   causal=causal, trace=True)
                    vis = np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + (Lk - Lq)
                    mk = np.broadcast_to(vis if causal else np.ones_like(vis), (B, Hq, Lq, Lk))
                    row["s_int_eq_sim"] = bool(np.array_equal(tr.trace["s_int"].numpy()[mk],
                                                              sim.trace["s_int"][mk]))
                    row["p_diff_sim"] = int(np.count_nonzero(tr.trace["p_codes"].numpy()
                                                             != sim.trace["p_codes"]))
            b0 = base[key]
            row["identical_to_base"] = all(torch.equal(tr.trace[a], b0.trace[a]) for a in b0.trace)
            row["diff_keys"] = [a for a in b0.trace if not torch.equal(tr.trace[a], b0.trace[a])]
            log("check", row)
            res["check"].append(row)
            dump()


def timing():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    B, H, D, Ln = 4, 32, 128, 8192

    def mk():
        return tuple(torch.randn(B, H, Ln, D, device="cuda", dtype=torch.float16)
                     for _ in range(3))

    def meas(label, fn, make, causal, **ex):
        try:
            t = _timed(lambda *a: fn(*a, causal), make, warmup=3, rep=15)
        except Exception as e:  # noqa: BLE001
            log("TIME FAIL", label, type(e).__name__, str(e)[:300])
            res["rows"].append({"name": label, "causal": causal, "error": str(e)[:300]})
            return
        r = {"name": label, "causal": causal, "ms": t["ms"], "spread": t["spread"], **ex}
        res["rows"].append(r)
        log(f"{label:50s} causal={causal!s:5s} {t['ms']:8.3f} ms spread {t['spread']:.2f}")
        dump()

    def cudnn(q, k, v, causal):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def ours(spec, launch):
        def make():
            base = mk()
            if spec.integer:
                return (base[0], *quantize_qkv(*base, spec, check=False))
            return (base[0], None, None, None, *base)

        def f(q, qq, kq, vq, *rest):
            causal = rest[-1]
            kw = {}
            if not spec.integer:
                kw = dict(q=rest[0], k=rest[1], v=rest[2])
            return attention_quantized(qq, kq, vq, spec, causal=causal,
                                       sm_scale=1 / math.sqrt(D), out_dtype=q.dtype,
                                       launch=launch, **kw)
        return f, make

    meas("sdpa_cudnn", cudnn, mk, False, kind="peer")
    try:
        from sageattention import sageattn
        meas("sageattn_1.0.6", lambda q, k, v, c: sageattn(q, k, v, tensor_layout="HND",
                                                           is_causal=c), mk, False, kind="peer")
    except Exception as e:  # noqa: BLE001
        log("no sage", e)
    for name, label, launch in VARIANTS:
        spec = spec_of(name)
        f, make = ours(spec, launch)
        meas(f"{name} {label}", f, make, False, kind="ours", spec=name, launch=launch)
    for name, label, launch in (VARIANTS[0], VARIANTS[3]):
        spec = spec_of(name)
        f, make = ours(spec, launch)
        meas(f"{name} {label}", f, make, True, kind="ours", spec=name, launch=launch)
    meas("sdpa_cudnn", cudnn, mk, True, kind="peer")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("all", "check"):
        check()
    if what in ("all", "time"):
        timing()
    rows = [r for r in res["rows"] if "ms" in r]
    ref = {r["causal"]: r["ms"] for r in rows if r["name"] == "sdpa_cudnn"}
    print("\n| kernel | causal | ms | x cuDNN |\n|---|---|---|---|")
    for r in rows:
        c = ref.get(r["causal"])
        print(f"| {r['name']} | {r['causal']} | {r['ms']:.3f} | "
              f"{(c / r['ms']) if c else float('nan'):.2f} |")
    bad = [r for r in res["check"] if not r.get("identical_to_base", False)]
    print("checks:", len(res["check"]), "not identical:", [(r["spec"], r["label"], r["causal"])
                                                          for r in bad])
