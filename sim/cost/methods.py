"""Cost path of each method: which kernels a (spec, phase, kernel) runs, with their counts.

============  ====================  =========================================================
method        prefill kernel        decode kernel(s)
============  ====================  =========================================================
fp16_flash    ``fp16_flash`` (FA2)  ``flash_decode``: OUR grouped split-K kernel (one
                                    program per KV head, G rows padded to 16, tl.dot)
                                    + combine;
                                    ``ideal``: tensor-core split-K, one CTA per kv head
fp16_flash    ``sage_v1``           ``sage_v1`` (INT8 QK^T per-block scales, FP16 PV; plus a
                                    Q/K quantize + K-smoothing pre-pass launch)
fp8_flash     ``fp8_flash``         ``flash_decode`` on fp8 K/V
int8_flash    ``int8_flash``        ``flash_decode`` on int8 K/V + per-token K scales
turbo         ``turbo`` (INT8+SAS)  ``turbo_decode``: OUR kernels (Q quant, scores pass and
                                    PV pass per stored bit width, combine); ``ideal``: one
                                    fused pass over the INT4/INT2 cache + INT8 buffer
double_sparse (decode only)         ``double_sparse``: OUR kernels (label scores, radix select,
                                    gathered flash-decode, combine); ``ideal``: label
                                    scores, top-k, sparse attention at their byte floor
============  ====================  =========================================================

OUR decode paths (the defaults at the tiled/calibrated tiers) price gpu/decode.py's launches
with the SASS tables of ``kernels`` (instructions, registers, shared memory, load round trips
per loop iteration, from ``python -m gpu.sass --decode``); the roofline tier and
``kernel="ideal"`` keep the optimal kernels. fp8_flash / int8_flash have no Triton decode
kernel: their ``flash_decode`` is the ideal one.

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
    "fp16_flash": {"prefill": ("fp16_flash", "sage_v1"),
                   "decode": ("flash_decode", "ideal", "sage_v1")},
    "fp8_flash": {"prefill": ("fp8_flash",), "decode": ("flash_decode",)},
    "int8_flash": {"prefill": ("int8_flash",), "decode": ("flash_decode",)},
    "turbo": {"prefill": ("turbo",), "decode": ("turbo_decode", "ideal")},
    "double_sparse": {"prefill": (), "decode": ("double_sparse", "ideal")},
}
# Decode kernels that price OUR Triton kernels (gpu/decode.py) at the tiled/calibrated tiers;
# "ideal" (and the roofline tier) keeps the optimal tensor-core split-K flash-decode
# (one CTA per KV head, the GQA group in one padded MMA tile) those kernels are measured against.
OURS = {("fp16_flash", "flash_decode"), ("turbo", "turbo_decode"),
        ("double_sparse", "double_sparse")}

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
    if not ideal and (spec.method, kernel) in OURS and (
            spec.method != "fp16_flash" or spec.operands.format == "fp16"):
        if kernel == "flash_decode":
            return K.ours_flash_decode_group("flash_decode", B=B, Hq=Hq, Hkv=Hkv, count=Lk,
                                             bn=t.block_n, d=D, sm_count=sm_count)
        if kernel == "turbo_decode":
            return _turbo_ours(spec, s, sm_count)
        return _double_sparse_ours(spec, s, sm_count)
    if kernel == "ideal":
        kernel = {"fp16_flash": "flash_decode", "turbo": "turbo_decode",
                  "double_sparse": "double_sparse"}[spec.method]
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


# ---- our Triton decode kernels (default; "ideal" keeps the builders above) --------------------
def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _q_quant(B: int, Hq: int, D: int) -> K.Launch:
    """gpu.ops.quantize_operand of the decode query (per-token INT8): one row per program."""
    lau = K.Launch("q_quant", B * Hq, 4, 0, 32)
    lau.hbm = lau.l2 = B * Hq * (D * 2 + D + 4)
    # absmax (FMNMX), scale, FMUL by 1/scale, F2I.S8 (XU), PRMT pack
    lau.add({"fp32": 3.0, "cvt": 1.0, "int32": 0.25}, B * Hq * D)
    K._serial(lau, 1, 2, 1.0)                     # load row; reduce; store codes
    return lau


def _turbo_ours(spec, s: Shape, sm_count: int) -> list[K.Launch]:
    """gpu.decode._turbo (fold on, the default when v_group_tokens % buffer_tokens == 0):
    Q quantization; per stored bit width (INT4 heads, INT2 heads: one launch each)
    ``turbo_scores_kernel`` then ``turbo_pv_kernel`` on grid (splits, B x heads of that width),
    one program per KV head holding its G query rows padded to BG rows (1 for G = 1, else 16);
    ``turbo_combine_kernel`` (grid B*Hq, one warp, splits walked in order). Tile = BN =
    ``buffer_tokens`` keys; the splits follow gpu.decode's default launch over B*Hkv programs.

    Instructions, registers, shared memory and load rounds per tile: the SASS tables
    :data:`kernels.TURBO_DECODE_SASS` (the buffer tile is priced as a flushed one). Tensor
    ops: pass 1 the fold dot ``[BN, D] x [D, NGP*BG]``, pass 2 ``[max(16, BG), BN] x [BN, D]``
    (one query row padded to the 16 rows of tl.dot). Bytes: codes + uint8 scale/zero
    (per token and K channel group; per V channel per tile) + fp32 block scales, the f32 score
    scratch (G rows x the LKP-padded keys) and tile maxima written by pass 1 and read back by
    pass 2 (from HBM: the code stream evicts it), pass 2's prefix reads of the tile maxima,
    the f32 partials (acc, l, A per split) read by the combine."""
    kv, D, nb = spec.kvcache, s.head_dim, spec.kvcache.buffer_tokens
    B, Hq, Hkv, L = s.batch, s.q_heads, s.kv_heads, s.kv_len
    G = Hq // Hkv
    if not kv.v_group_tokens % nb == 0:
        raise ValueError(f"spec.kvcache: the turbo decode cost path prices the fold kernel "
                         f"(v_group_tokens % buffer_tokens == 0), got v_group_tokens="
                         f"{kv.v_group_tokens}, buffer_tokens={nb} (use kernel='ideal')")
    BG = 1 if G == 1 else max(16, 1 << (G - 1).bit_length())
    # the tables were compiled at BN=64, D=128, BG in (1, 16): elsewhere the per-thread counts
    # are scaled by the tile's elements per thread (an estimate, not a compile)
    scale = nb * D / (64 * 128) * max(1, BG // 16)
    ngrp = D // kv.k_group_channels
    ngp = max(ngrp, _ceil(16, BG))
    NT = _ceil(L, nb)
    splits = K.default_splits(NT, B * Hkv, sm_count)
    tps = _ceil(NT, splits)
    splits = _ceil(NT, tps)
    n_low = int(math.floor(kv.low_share * Hkv + 0.5))
    widths = [(w, n) for w, n in ((kv.high_bits, Hkv - n_low), (kv.low_bits, n_low)) if n > 0]
    meta = (kv.scale_bits + kv.zero_bits) / 8
    out = [_q_quant(B, Hq, D)]
    p1s, p2s = [], []
    for bits, ng in widths:
        key = min(BG, 16), 4 if bits > 2 else 2
        mix1 = K.TURBO_DECODE_SASS[("scores", *key)]
        mix2 = K.TURBO_DECODE_SASS[("pv", *key)]
        progs = splits * B * ng
        walked = B * ng * splits * tps        # tiles the programs' loops run
        tiles = B * ng * NT
        keys = tiles * nb
        codes = keys * D * bits / 8
        scratch = B * ng * G * NT * nb * 4.0 + B * ng * G * NT * 4.0
        a = K.Launch(f"turbo_scores{bits}", progs, 4, mix1["smem"], mix1["regs"])
        a.add_tc("int8", 2.0 * keys * D * ngp * BG)
        a.mma = 0.0                           # in the mix's "other"
        a.add(mix1["instr"], walked * 128 * scale)
        a.hbm = codes + keys * ngrp * meta + tiles * 4 + scratch + B * ng * G * D
        a.l2 = a.hbm
        K._serial(a, tps, mix1["rounds"], 1.0)
        b = K.Launch(f"turbo_pv{bits}", progs, 4, mix2["smem"], mix2["regs"])
        b.add_tc("int8", 2.0 * max(16, BG) * keys * D)
        b.mma = 0.0
        b.add(mix2["instr"], walked * 128 * scale)
        partial = B * ng * G * splits * (D + 2) * 4.0
        b.hbm = scratch + codes + tiles * D * meta + tiles * 4 + partial
        b.l2 = b.hbm + B * ng * G * splits * (splits - 1) / 2 * tps * 4
        K._serial(b, tps, mix2["rounds"], 1.0)
        p1s.append(a)
        p2s.append(b)
    comb = K.Launch("combine", B * Hq, 1, 0, 40)
    comb.hbm = comb.l2 = B * Hq * (splits * (D + 2) * 4 + D * 2)
    comb.add({"fp32": 2 * D + 2}, B * Hq * splits)
    comb.add({"fp32": D, "sfu": 1}, B * Hq)
    K._serial(comb, splits, 1, 0.0)               # the split loop: A_j, acc_j, l_j per step
    return out + p1s + p2s + [comb]


def _double_sparse_ours(spec, s: Shape, sm_count: int) -> list[K.Launch]:
    """gpu.decode._select + _flash_decode (radix path, the default):

    1. ``label_score_kernel``, grid (cdiv(L, 256), B*Hq), 4 warps: per query head, the KV
       head's packed labels (R codes of ``label_bits`` + fp16 scale + int32 zero point per
       token; HBM once per KV head, L2 once per query head), dequant ``(c - z) s`` and dot with
       q's R channels (FMUL + FADD, no fusion), the uint32 selection key written (4 B).
    2. ``topk_select_kernel``, grid B*Hq (ONE program per row, 8 warps, BLOCK 2048): 4 radix
       histogram passes (9-bit digits, tl.histogram over 512 bins) and one compaction pass
       (two cumsums, index stores) over all L keys: 5 x cdiv(L, 2048) dependent chunk steps.
    3. ``flash_decode_kernel`` with GATHER over the k selected slots + ``flash_combine_kernel``
       (:func:`kernels.ours_flash_decode`)."""
    sp, D = spec.sparse, s.head_dim
    r, k = sp.r(D), sp.k(s.kv_len)
    B, Hq, Hkv, L = s.batch, s.q_heads, s.kv_heads, s.kv_len
    rows = B * Hq
    bits = sp.label_bits
    lab_tok = r * bits / 8 + (0.0 if bits == 16 else 2.0 + 4.0)
    # SASS tables: R=32 4-bit labels, BLOCK 256; other label widths scale by R (an estimate)
    lm, rm = K.LABEL_SCORE_SASS, K.RADIX_SELECT_SASS
    a = K.Launch("label_scores", _ceil(L, 256) * rows, 4, lm["smem"], lm["regs"])
    a.hbm = B * Hkv * L * lab_tok + rows * L * 4 + rows * r * 4
    a.l2 = rows * L * lab_tok + rows * L * 4 + rows * r * 4
    a.add(lm["instr"], a.ctas * 128 * r / 32)
    K._serial(a, 1, lm["rounds"], Hkv / Hq)        # channels + labels, then the gathered q
    chunks = _ceil(L, 2048)
    t = K.Launch("radix_select", rows, 8, rm["smem"], rm["regs"])
    t.hbm = rows * L * 4 + rows * k * 4
    t.l2 = 5 * rows * chunks * 2048 * 4 + rows * k * 4
    t.add(rm["hist"], 4 * rows * chunks * 256)
    t.add(rm["compact"], rows * chunks * 256)
    K._serial(t, 5 * chunks, rm["rounds"], 0.0)    # keys were just written: L2 hits
    att = K.ours_flash_decode("sparse_attn", B=B, Hq=Hq, Hkv=Hkv, count=k, bn=spec.tiling.block_n,
                              d=D, sm_count=sm_count, gather=True)
    return [a, t, *att]
