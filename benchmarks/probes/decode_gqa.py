"""fp16 split-K decode, per-query-head vs grouped (one program per KV head), next to torch SDPA.

B=8, Hq=32, D=128, context 32768, Hkv in (32, 8). Run on the GPU from the repository root:
    QSATTN_GIT_REVISION=<rev> PYTHONUNBUFFERED=1 python3 benchmarks/probes/decode_gqa.py OUTDIR
Writes OUTDIR/decode_gqa.json and prints a markdown table. Bytes counted: the K and V that each
kernel must read (B * Hkv * L * D * 2 * 2); share of copy BW = (bytes / time) / (measured
device-to-device copy, read + write).
"""
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.getcwd())
import gpu  # noqa: E402
from gpu.bench import time_gpu  # noqa: E402
from gpu.api import decode_unchecked  # noqa: E402


def _timed(fn, make, cold_bytes=None, warmup=5, rep=20):
    """gpu.bench.time_gpu as the dict these probes read (ms, spread, min_ms, max_ms, sets)."""
    return time_gpu(fn, make, cold_l2=cold_bytes != 0, warmup=warmup, rounds=rep).row()

B, HQ, D, L = 8, 32, 128, 32768
SM = D ** -0.5


def copy_bw():
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    r = _timed(lambda a, b: b.copy_(a), lambda: (x, y), cold_bytes=0, warmup=3, rep=20)
    return 2 * x.numel() / (r["ms"] * 1e-3) / 1e9


def main(out_dir):
    torch.manual_seed(0)
    bw = copy_bw()
    rows = []
    for hkv in (32, 8):
        G = HQ // hkv

        def make():
            k = torch.randn(B, hkv, L, D, dtype=torch.float16, device="cuda")
            v = torch.randn(B, hkv, L, D, dtype=torch.float16, device="cuda")
            q = torch.randn(B, HQ, 1, D, dtype=torch.float16, device="cuda")
            c = gpu.build_cache(k, v, "fp16_flash")
            del k, v
            return q, c, c.k, c.v

        sets = [make(), make()]
        it = iter(range(10**9))

        def inputs():
            return sets[next(it) % len(sets)]

        nbytes = 2 * B * hkv * L * D * 2
        ref = None
        variants = [("fp16 split-K per query head (before)", {"grouped": False}),
                    ("fp16 split-K grouped per KV head (after)", {"grouped": True})]
        for name, launch in variants:
            fn = lambda q, c, k, v, la=launch: decode_unchecked(q, c, SM, dict(la))  # noqa: E731
            out = fn(*sets[0])
            if ref is None:
                ref = out.float()
            diff = float((out.float() - ref).abs().max())
            r = _timed(fn, inputs, cold_bytes=0, warmup=5, rep=30)
            rows.append(dict(Hkv=hkv, G=G, kernel=name, ms=r["ms"], spread=r["spread"],
                             gbps=nbytes / (r["ms"] * 1e-3) / 1e9, max_abs_vs_before=diff))
            print(rows[-1], flush=True)
        for bname, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            failed = False
            for mode in ("enable_gqa", "expanded heads"):
                # expanded heads (repeat_interleave inside the timed call) only where the
                # backend refuses enable_gqa
                if mode == "expanded heads" and (G == 1 or not failed):
                    continue
                def fn(q, c, k, v, be=be, mode=mode):  # noqa: E306
                    with sdpa_kernel([be]):
                        if mode == "enable_gqa":
                            return F.scaled_dot_product_attention(q, k, v, scale=SM,
                                                                  enable_gqa=G > 1)
                        return F.scaled_dot_product_attention(
                            q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), scale=SM)
                try:
                    out = fn(*sets[0])
                    diff = float((out.float() - ref).abs().max())
                    r = _timed(fn, inputs, cold_bytes=0, warmup=5, rep=30)
                except Exception as e:  # backend refuses this shape / mode: recorded
                    rows.append(dict(Hkv=hkv, G=G, kernel=f"sdpa_{bname} ({mode})",
                                     error=f"{type(e).__name__}: {str(e)[:160]}"))
                    print(rows[-1], flush=True)
                    failed = True
                    continue
                rows.append(dict(Hkv=hkv, G=G, kernel=f"sdpa_{bname} ({mode})", ms=r["ms"],
                                 spread=r["spread"], gbps=nbytes / (r["ms"] * 1e-3) / 1e9,
                                 max_abs_vs_before=diff))
                print(rows[-1], flush=True)
        del sets
        torch.cuda.empty_cache()
    for r in rows:
        if "gbps" in r:
            r["share_copy_bw"] = r["gbps"] / bw
    meta = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__,
                triton=__import__("triton").__version__,
                cudnn=torch.backends.cudnn.version(), python=platform.python_version(),
                revision=os.environ.get("QSATTN_GIT_REVISION", "unknown"),
                copy_gbps_read_plus_write=bw, B=B, Hq=HQ, D=D, L=L,
                timing="gpu.bench.time_cuda median of 30 after 5 warm-ups, 2 input sets "
                       "(2 x K/V >= 1 GiB each, rotated: cold L2)")
    with open(os.path.join(out_dir, "decode_gqa.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(json.dumps(meta))
    print("| Hkv | G | kernel | ms | GB/s (K+V) | share of copy BW | max abs vs before |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "ms" in r:
            print(f"| {r['Hkv']} | {r['G']} | {r['kernel']} | {r['ms']:.3f} | {r['gbps']:.0f} | "
                  f"{100 * r['share_copy_bw']:.0f}% | {r['max_abs_vs_before']:.2e} |")
        else:
            print(f"| {r['Hkv']} | {r['G']} | {r['kernel']} | - | - | - | {r['error']} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
