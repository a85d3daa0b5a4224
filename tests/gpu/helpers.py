"""Shared input builders and comparisons for the kernel tests (interpreter or GPU)."""
import os

import numpy as np
import torch

DEVICE = "cuda" if os.environ.get("QSATTN_GPU_TESTS") == "1" else "cpu"


def make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype=torch.float16, seed=0, outlier=True):
    """Random q, k, v with a few channel outliers in k (as real keys have), on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g)
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    v = torch.randn(B, Hkv, Lk, D, generator=g)
    if outlier:
        k[..., :2] *= 4.0
    return tuple(x.to(dtype).to(DEVICE).contiguous() for x in (q, k, v))


def np32(x):
    return x.detach().float().cpu().numpy()


def ulp(x, dtype=torch.float16):
    """Spacing of float16 (or bfloat16) around |x| (subnormal spacing below the normal range)."""
    mant, emin = (10, -14) if dtype == torch.float16 else (7, -126)
    a = np.maximum(np.abs(x), 2.0**emin)
    return 2.0 ** (np.floor(np.log2(a)) - mant)


def report(name, **figures):
    print(f"[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
