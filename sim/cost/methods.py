"""Cost path of each method: which kernels a (spec, phase, kernel) runs, with their counts.

============  ====================  =========================================================
method        prefill kernel        decode kernel(s)
============  ====================  =========================================================
fp16_flash    ``fp16_flash`` (FA2)  ``flash_decode`` (split-K, fp16 K/V) [+ combine]
fp16_flash    ``sage_v1``           ``sage_v1`` (INT8 QK^T per-block scales, FP16 PV; plus a
                                    Q/K quantize + K-smoothing pre-pass launch)
fp8_flash     ``fp8_flash``         ``flash_decode`` on fp8 K/V
int8_flash    ``int8_flash``        ``flash_decode`` on int8 K/V + per-token K scales
turbo         ``turbo`` (INT8+SAS)  ``turbo_decode`` (INT4/INT2 cache + INT8 buffer, integer
                                    dequant to INT8, SAS)
double_sparse (decode only)         ``double_sparse``: label scores, top-k, sparse attention
============  ====================  =========================================================

``sage_v1`` is a kernel choice on an fp16/bf16 spec (``kernel="sage_v1"``): SageAttention v1
(Zhang et al., arXiv 2410.02367) takes FP16 inputs, so the peer is priced from the same
inputs as the FP16 baseline. Q/K with 4-bit codes on an int8_flash spec use INT4 tensor cores
(``tc_int4``; Hopper has none and raises).
"""
from __future__ import annotations

import math

from . import kernels as K
from .mixes import mix_for
from .shape import Shape

KERNELS = {
    "fp16_flash": {"prefill": ("fp16_flash", "sage_v1"), "decode": ("flash_decode", "sage_v1")},
    "fp8_flash": {"prefill": ("fp8_flash",), "decode": ("flash_decode",)},
    "int8_flash": {"prefill": ("int8_flash",), "decode": ("flash_decode",)},
    "turbo": {"prefill": ("turbo",), "decode": ("turbo_decode",)},
    "double_sparse": {"prefill": (), "decode": ("double_sparse",)},
}

_FLOAT_BYTES = {"fp16": 2.0, "bf16": 2.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}


def default_kernel(spec, phase: str) -> str:
    ks = KERNELS[spec.method][phase]
    if not ks:
        raise ValueError(f"phase: method {spec.method!r} is modeled for decode only "
                         f"(Double Sparsity targets decode), got phase={phase!r}")
    return ks[0]


def _int_tc(spec) -> str:
    bits = max(spec.q.bits, spec.k.bits)
    if bits <= 4:
        return "int4"
    return "int8"


def _scale_bytes(spec_op) -> float:
    return 2.0 if spec_op.scale_dtype == "fp16" else 4.0


def build(spec, shape: Shape, *, phase: str, kernel: str, sm_count: int,
          ideal: bool, launch: dict | None = None) -> list[K.Launch]:
    """The launches of one (spec, shape, phase, kernel); see the module table. ``launch``
    (prefill): the program tile ``block_m`` (default ``tiling.block_m``), ``num_warps``
    (default one per 32 rows, at least 4) and ``num_stages`` (K/V buffers, default 2)."""
    allowed = KERNELS[spec.method][phase]
    if kernel not in allowed:
        raise ValueError(f"kernel: expected one of {list(allowed)} for method {spec.method!r} "
                         f"phase {phase!r}, got {kernel!r}")
    s, t = shape, spec.tiling
    B, Hq, Hkv, Lq, Lk, D = s.batch, s.q_heads, s.kv_heads, s.q_len, s.kv_len, s.head_dim
    common = dict(bn=t.block_n, d=D)
    if phase == "prefill":
        lc = launch or {}
        pre = dict(ctas_cols=B * Hq, kv_heads_total=B * Hkv, group_cols=s.group, q_len=Lq,
                   kv_len=Lk, bm=int(lc.get("block_m", t.block_m)), causal=s.causal,
                   ideal=ideal, warps=lc.get("num_warps"), stages=int(lc.get("num_stages", 2)),
                   **common)
        if kernel == "fp16_flash" and spec.operands.format in ("fp16", "bf16"):
            return [K.flash(kernel, qk=spec.operands.format, pv=spec.operands.format, qb=2.0,
                            kb=2.0, vb=2.0, kv_row_extra=0.0, elem=K.SOFTMAX_FP16,
                            row_tile=K.ROW_TILE_EXP, mix=mix_for(kernel, "exp2"), **pre)]
        if kernel in ("fp16_flash", "fp8_flash"):
            fmt = spec.operands.format
            by = _FLOAT_BYTES[fmt]
            dt = "fp8" if by == 1.0 else fmt
            table = K.SOFTMAX_FP8 if by == 1.0 else K.SOFTMAX_FP16
            return [K.flash(kernel, qk=dt, pv=dt, qb=by, kb=by, vb=by, kv_row_extra=0.0,
                            elem=table, row_tile=K.ROW_TILE_EXP, **pre)]
        if kernel == "sage_v1":
            return [_sage_quant(s, t.block_n, ideal),
                    K.flash(kernel, qk="int8", pv="fp16", qb=1.0, kb=1.0, vb=2.0,
                            kv_row_extra=4.0 / t.block_n, elem=K.SOFTMAX_SAGE,
                            row_tile=K.ROW_TILE_EXP, **pre)]
        # int8_flash / turbo prefill: integer Q, K, V, INT8 P
        elem, row = _int_softmax(spec)
        kextra = _scale_bytes(spec.k) if spec.k.granularity == "per_token" else \
            _scale_bytes(spec.k) / t.block_n
        mix = mix_for(kernel, spec.softmax.exp) if _int_tc(spec) == "int8" else None
        return [K.flash(kernel, qk=_int_tc(spec), pv="int8", qb=spec.q.bits / 8,
                        kb=spec.k.bits / 8, vb=spec.v.bits / 8, kv_row_extra=kextra,
                        elem=elem, row_tile=row, mix=mix, **pre)]
    # ---- decode ----------------------------------------------------------------------------
    dec = dict(B=B, Hq=Hq, Hkv=Hkv, q_len=Lq, kv_len=Lk, sm_count=sm_count, ideal=ideal, **common)
    if kernel == "flash_decode":
        if spec.method == "int8_flash":
            elem, row = _int_softmax(spec)
            kextra = _scale_bytes(spec.k) if spec.k.granularity == "per_token" else 0.0
            return K.decode(kernel, qk=_int_tc(spec), pv="int8", qb=spec.q.bits / 8,
                            kb=spec.k.bits / 8, vb=spec.v.bits / 8, kv_row_extra=kextra,
                            elem=elem, row_tile=row, **dec)
        by = _FLOAT_BYTES[spec.operands.format]
        dt = "fp8" if by == 1.0 else spec.operands.format
        return K.decode(kernel, qk=dt, pv=dt, qb=by, kb=by, vb=by, kv_row_extra=0.0,
                        elem=K.SOFTMAX_FP16, row_tile=K.ROW_TILE_EXP, **dec)
    if kernel == "sage_v1":
        return [_sage_quant(s, t.block_n, ideal, decode=True)] + K.decode(
            kernel, qk="int8", pv="fp16", qb=1.0, kb=1.0, vb=2.0, kv_row_extra=4.0 / t.block_n,
            elem=K.SOFTMAX_SAGE, row_tile=K.ROW_TILE_EXP, **dec)
    if kernel == "turbo_decode":
        return _turbo_decode(spec, s, dec)
    return _double_sparse(spec, s, dec)


def _int_softmax(spec) -> tuple[dict, dict]:
    if spec.softmax.exp == "sas":
        return K.sas_counts(spec.softmax.sas.degree)
    return K.SOFTMAX_INT8, K.ROW_TILE_EXP


def _sage_quant(s: Shape, bn: int, ideal: bool, decode: bool = False) -> K.Launch:
    """SageAttention v1 pre-pass: K mean over tokens (smoothing), per-block absmax and INT8
    codes of Q and K. Decode quantizes Q and the new key only (the cache holds INT8 K)."""
    lk = 1 if decode else s.kv_len
    q_el = s.batch * s.q_heads * s.q_len * s.head_dim
    k_el = s.batch * s.kv_heads * lk * s.head_dim
    lau = K.Launch("sage_quant", max(1, (q_el + k_el) // (128 * 64)), 4, 0, 32)
    # read fp16, write int8 (+ fp32 scale per block); K read twice (mean, then quantize)
    lau.hbm = 2 * q_el + 3 * k_el + (q_el + k_el) + 8 * (q_el + k_el) / (bn * s.head_dim)
    lau.l2 = 0.0 if ideal else lau.hbm
    # per element: sub mean (k), |x| max, FMUL by 1/scale, F2I.S8 (XU), PRMT pack
    lau.add({"fp32": 2.0, "cvt": 1.0, "int32": 0.25}, q_el + k_el)
    lau.add({"fp32": 1.0}, k_el)
    return lau


def _turbo_decode(spec, s: Shape, dec: dict) -> list[K.Launch]:
    """FlashQ cache read: low-bit K/V (per-head high_bits or low_bits) with integer scale and
    zero point per group, the newest ``buffer_tokens`` in INT8 with per-block fp32 scales
    (a full buffer: worst case), integer dequant to INT8 per element (unpack LOP3/SHF 3 per 8
    codes, IADD zero point, IMAD scale), INT8 QK^T/PV, SAS softmax."""
    kv, D, bn = spec.kvcache, s.head_dim, spec.tiling.block_n
    nb = min(s.kv_len, kv.buffer_tokens)
    low = s.kv_len - nb
    bits = (1 - kv.low_share) * kv.high_bits + kv.low_share * kv.low_bits
    meta = (kv.scale_bits + kv.zero_bits) / 8
    per_head = (low * D * 2 * bits / 8
                + low * D / kv.k_group_channels * meta + low * D / kv.v_group_tokens * meta
                + nb * D * 2 + 2 * 4 * -(-s.kv_len // bn))
    # flash() prices an INT8 stream of kv_len rows; express the real per-row bytes as INT8 +
    # a signed extra so that HBM/L2/smem bytes equal the cache's.
    extra = per_head / s.kv_len - 2 * D
    elem, row = K.sas_counts(spec.softmax.sas.degree)
    unpack = {"int32": (3 / 8 + 2.0) * low / s.kv_len}
    return K.decode("turbo_decode", qk="int8", pv="int8", qb=1.0, kb=1.0, vb=1.0,
                    kv_row_extra=extra, elem=elem, row_tile=row, per_kv_elem=unpack, **dec)


def _double_sparse(spec, s: Shape, dec: dict) -> list[K.Launch]:
    """Double Sparsity decode: (1) label scores: each query head dots its r label channels with
    every token's label (FP32 FFMA; int labels add unpack + I2FP); labels are read once per kv
    head (GQA heads share them through L2), scores written fp32. (2) top-k per query head:
    radix select over the fp32 scores (two passes over the scores, ~8 INT32 per score),
    k int32 indices written. (3) sparse attention: per query head, flash-decode over the k
    gathered K/V rows (fp16), selections differ per head so nothing is shared in a group."""
    sp, D = spec.sparse, s.head_dim
    r, k = sp.r(D), sp.k(s.kv_len)
    B, Hq, Hkv, Lk, L = s.batch, s.q_heads, s.kv_heads, s.kv_len, s.q_len
    ideal = dec["ideal"]
    lab_bytes = 2.0 if sp.label_bits == 16 else sp.label_bits / 8
    lab_meta = 0.0 if sp.label_bits == 16 else 2.0 * 2 / r   # fp16 scale + zero per token
    rows = B * Hq * L
    labels = B * Hkv * Lk * r * (lab_bytes + lab_meta)
    l1 = K.Launch("label_scores", max(1, B * Hq * -(-Lk // 256)), 4, 0, 40)
    l1.hbm = labels + rows * Lk * 4 + rows * r * 2
    l1.l2 = 0.0 if ideal else B * Hq * Lk * r * (lab_bytes + lab_meta) + rows * Lk * 4
    l1.add({"fp32": r}, rows * Lk)
    if sp.label_bits != 16:
        l1.add({"int32": r * (1 + 1 / 8)}, rows * Lk)
    l2 = K.Launch("top_k", max(1, rows), 8, 8192, 40)
    l2.hbm = rows * Lk * 4 * 2 + rows * k * 4
    l2.l2 = 0.0 if ideal else l2.hbm
    l2.add({"int32": 8.0}, rows * Lk)
    # sparse attention over k tokens per query head, gathered rows + index reads
    att = K.decode("sparse_attn", B=B, Hq=Hq, Hkv=Hkv, q_len=L, kv_len=k, bn=dec["bn"], d=D,
                   qk="fp16", pv="fp16", qb=2.0, kb=2.0, vb=2.0, kv_row_extra=4.0,
                   elem=K.SOFTMAX_FP16, row_tile=K.ROW_TILE_EXP, sm_count=dec["sm_count"],
                   ideal=ideal, share_group=False)
    return [l1, l2, *att]
