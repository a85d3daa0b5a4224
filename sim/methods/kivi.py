"""kivi, the simulator path: KIVI's KV cache (Liu et al., KIVI, ICML 2024; arXiv 2402.02750),
the baseline TurboAttention compares its cache against.

KIVI keeps the newest tokens in FP16 (the residual) and stores the rest as asymmetric INT4/INT2
codes: **K per channel** (one scale and minimum per channel over ``k_group_size`` consecutive
tokens) and **V per token** (one per token over ``v_group_size`` consecutive channels), with the
scale and minimum in FP16. Attention is the ``fp16_flash`` sequence over the dequantized K/V
(the codes are expanded to FP16 before the dots, as KIVI's kernels do).

Spec: ``operands`` (fp16) and ``kvcache`` (``buffer_tokens`` = the FP16 residual R, ``high_bits``
= the code width for every head, ``low_share`` must be 0, ``k_groups``/``v_groups`` and sizes,
``scale_bits``/``zero_bits`` = 16). ``configs/methods/kivi.yaml``: R = 128, groups of 32, INT4.

Quantization of one group (float32 arithmetic, values first rounded to fp16):
``mn = f16(min)``, ``scale = f16((max - min) / (2^b - 1))`` (a zero range uses scale 1),
``code = clamp(rint((x - mn) / scale), 0, 2^b - 1)`` (``rint``: round half to even),
``x_hat = f16(code * scale + mn)``.

Flush rule (the same as turbo's, with the FP16 residual in place of the INT8 buffer): tokens are
appended one at a time and every full residual of R tokens is quantized as one group. The row at
absolute position ``p = i + Lk - Lq`` reads keys ``j < floor((p + 1) / R) * R`` quantized and
the newer ones in FP16; a non-causal row reads the cache after all ``Lk`` tokens. Without
``kv_cache`` (prefill) KIVI attends in full precision: the plain ``fp16_flash`` sequence.

Deviation from KIVI's code: KIVI quantizes V token by token as it leaves a sliding FP16 window
and K once a residual group fills; here both flush together in groups of R (K's layout is
KIVI's; V's per-token codes are identical, only their FP16 lifetime differs by < R tokens).
There is no cost path or kernel for this method (an accuracy baseline only).
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import last_visible_key
from ..dense import FloatOperands, run_dense
from ..engine import SimResult
from .base import SimMethod

__all__ = ["fake_quant", "kivi_cache_bytes"]


def _f16(x):
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def fake_quant(x: np.ndarray, bits: int, groups: str, size: int) -> np.ndarray:
    """Quantize and dequantize ``x`` ``[B, H, T, D]`` (T a multiple of the token group for
    ``per_channel``) with KIVI's asymmetric groups; returns float32 (fp16 values).

    >>> x = np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)
    >>> fake_quant(x, 2, "per_token", 4)[0, 0].tolist()
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    """
    x = _f16(x)
    B, H, T, D = x.shape
    if groups == "per_channel":
        if T % size:
            raise ValueError(f"x: per_channel groups of {size} tokens need a multiple of {size} "
                             f"tokens, got {T}")
        g = x.reshape(B, H, T // size, size, D)
        axis = 3
    elif groups == "per_token":
        n = math.ceil(D / size)
        pad = n * size - D
        g = np.concatenate([x, np.repeat(x[..., -1:], pad, axis=-1)], axis=-1) if pad else x
        g = g.reshape(B, H, T, n, size)
        axis = 4
    else:
        raise ValueError(f"groups: expected 'per_channel' or 'per_token', got {groups!r}")
    levels = float((1 << bits) - 1)
    mn = _f16(g.min(axis=axis, keepdims=True))
    rng = g.max(axis=axis, keepdims=True) - mn
    scale = _f16(np.float32(rng) / np.float32(levels))
    scale = np.where(scale > 0, scale, np.float32(1.0))
    code = np.clip(np.rint((g - mn) / scale), 0, levels)
    out = _f16(code * scale + mn)
    if groups == "per_channel":
        return out.reshape(B, H, T, D)
    return out.reshape(B, H, T, -1)[..., :D]


def _check_spec(spec) -> None:
    if spec.operands.format != "fp16" or spec.operands.scale != "none":
        raise ValueError(f"operands: kivi attends in fp16 (format fp16, scale none), got "
                         f"format {spec.operands.format!r}, scale {spec.operands.scale!r}")
    kvc = spec.kvcache
    if kvc.low_share != 0:
        raise ValueError(f"kvcache.low_share: kivi gives every head high_bits, expected 0, got "
                         f"{kvc.low_share}")
    if kvc.high_bits not in (2, 4):
        raise ValueError(f"kvcache.high_bits: kivi stores INT2 or INT4, got {kvc.high_bits}")


def _run(q, k, v, spec, shp, *, causal, sm_scale, calibration, trace, mode):
    if mode != "kv_cache":
        return run_dense(q, k, v, spec, shp, causal, sm_scale, trace, FloatOperands)
    B, Hq, Hkv, Lq, Lk, D, Dv, G = shp
    kvc = spec.kvcache
    R = kvc.buffer_tokens
    full = (Lk // R) * R
    k16, v16 = _f16(k), _f16(v)
    kq, vq = k16.copy(), v16.copy()
    if full:
        kq[:, :, :full] = fake_quant(k16[:, :, :full], kvc.high_bits, kvc.k_groups, kvc.k_group_size)
        vq[:, :, :full] = fake_quant(v16[:, :, :full], kvc.high_bits, kvc.v_groups, kvc.v_group_size)
    rows = np.arange(Lq)
    pos = last_visible_key(rows, Lq, Lk) if causal else np.full(Lq, Lk - 1)
    comp = np.where(pos >= 0, (np.maximum(pos, -1) + 1) // R * R, 0)   # quantized keys per row
    out = np.zeros((B, Hq, Lq, Dv), np.float32)
    r0 = 0
    while r0 < Lq:                      # rows with the same quantized prefix run together
        r1 = r0 + 1
        while r1 < Lq and comp[r1] == comp[r0]:
            r1 += 1
        c = int(comp[r0])
        kk = np.concatenate([kq[:, :, :c], k16[:, :, c:]], axis=2)
        vv = np.concatenate([vq[:, :, :c], v16[:, :, c:]], axis=2)
        end = Lk if not causal else r1 + Lk - Lq     # keys the last row of the run can see
        if end > 0:
            sub = shp._replace(Lq=r1 - r0, Lk=end)
            res = run_dense(q[:, :, r0:r1], kk[:, :, :end], vv[:, :, :end], spec, sub, causal,
                            sm_scale, False, FloatOperands)
            out[:, :, r0:r1] = res.out
        r0 = r1
    tr = {"method": "kivi", "compressed": comp, "k_cache": kq, "v_cache": vq} if trace else None
    return SimResult(out=out, trace=tr, spec=spec,
                     info={"cache_bytes": B * Hkv * kivi_cache_bytes(spec, Lk, D, Dv)})


def kivi_cache_bytes(spec, tokens: int, head_dim: int, v_dim: int | None = None) -> float:
    """Bytes of one (batch, KV head): packed codes of the flushed tokens, an fp16 scale and
    minimum (``scale_bits + zero_bits``) per group, and the FP16 residual at its capacity R."""
    kvc = spec.kvcache
    Dv = head_dim if v_dim is None else v_dim
    R = kvc.buffer_tokens
    tc = (tokens // R) * R
    codes = tc * math.ceil(head_dim * kvc.high_bits / 8) + tc * math.ceil(Dv * kvc.high_bits / 8)

    def groups(kind, size, dim):
        return (math.ceil(tc / size) * dim) if kind == "per_channel" else tc * math.ceil(dim / size)

    n_groups = groups(kvc.k_groups, kvc.k_group_size, head_dim) + \
        groups(kvc.v_groups, kvc.v_group_size, Dv)
    return codes + n_groups * (kvc.scale_bits + kvc.zero_bits) / 8 + R * (head_dim + Dv) * 2


def _kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration):
    if mode != "kv_cache":
        return 2 * 2 * tokens * kv_heads * head_dim
    return kv_heads * kivi_cache_bytes(spec, tokens, head_dim)


METHOD = SimMethod("kivi", sections=frozenset({"operands", "kvcache"}), exps=("exp2",), run=_run,
                   check_spec=_check_spec, kv_bytes=_kv_bytes, modes=("kv_cache",),
                   decode_mode="kv_cache",
                   doc="KIVI: FP16 residual + INT4/INT2 cache, K per channel, V per token")
