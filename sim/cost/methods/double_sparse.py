"""double_sparse, the cost path (decode only: Double Sparsity targets decode; its prefill runs
dense): our kernels (label scores, top-k select, gathered flash-decode, combine) at the tiled
tiers, and ``ideal``: label scores, top-k and sparse attention at their byte floor."""
from __future__ import annotations

from .. import kernels as K
from ..paths import ceil_div
from ..shape import Shape
from .base import CostPath


def _ideal_decode(spec, s: Shape, ctx) -> list[K.Launch]:
    """Double Sparsity decode: (1) label scores: each query head dots its r label channels with
    every token's label (FP32 FFMA; int labels add unpack + I2FP); labels are read once per kv
    head (GQA heads share them through L2), scores written fp32. (2) top-k per query head:
    radix select over the fp32 scores (two passes over the scores, ~8 INT32 per score),
    k int32 indices written. (3) sparse attention: per query head, flash-decode over the k
    gathered K/V rows (fp16), selections differ per head so nothing is shared in a group."""
    sp, D = spec.sparse, s.head_dim
    r, k = sp.r(D), sp.k(s.kv_len)
    B, Hq, Hkv, Lk, L = s.batch, s.q_heads, s.kv_heads, s.kv_len, s.q_len
    ideal = ctx.ideal
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
    att = K.decode("sparse_attn", B=B, Hq=Hq, Hkv=Hkv, q_len=L, kv_len=k,
                   bn=spec.tiling.block_n, d=D, qk="fp16", pv="fp16", qb=2.0, kb=2.0, vb=2.0,
                   kv_row_extra=4.0, elem=K.SOFTMAX_FP16, row_tile=K.ROW_TILE_EXP,
                   sm_count=ctx.sm_count, ideal=ideal, share_group=False)
    return [l1, l2, *att]


def _ours_decode(spec, s: Shape, ctx) -> list[K.Launch]:
    """gpu.methods.double_sparse._decode:

    1. ``label_score_kernel``, grid (cdiv(L, 512), B*Hkv), 4 warps: a KV head's packed labels
       (R codes of ``label_bits`` + fp16 scale + int32 zero point per token) read once for its G
       query heads, one token per thread: per code a shift, a LOP3, FADD, FMUL, one FFMA per
       query head; the uint32 selection keys written (4 B per query head and token). SASS
       tables ``label_score_g{1,4}`` (whole kernel, R = 32 4-bit labels; other R scale by R,
       G > 4 by G / 4: estimates).
    2. ``topk_select_kernel``, grid B*Hq (one program per row, 8 warps): the straight-line
       order statistics of a 4096-key sample and of the candidates, and two passes over the
       row's keys in 2048-key chunks (collect; ascending write), SASS table ``topk_select``.
       The row's keys were just written (L2), the candidate scratch stays in L2.
    3. ``flash_decode_gather_kernel`` over the k selected slots (tensor-core dots, pipelined
       gathers) + ``flash_combine_kernel`` (:func:`kernels.ours_flash_decode`)."""
    sp, D = spec.sparse, s.head_dim
    r, k = sp.r(D), sp.k(s.kv_len)
    B, Hq, Hkv, L = s.batch, s.q_heads, s.kv_heads, s.kv_len
    G = Hq // Hkv
    rows = B * Hq
    bits = sp.label_bits
    lab_tok = r * bits / 8 + (0.0 if bits == 16 else 2.0 + 4.0)
    sm_count, sass = ctx.sm_count, K.decode_sass(ctx.arch)
    lm = sass["label_score_g1" if G == 1 else "label_score_g4"]
    a = K.Launch("label_scores", ceil_div(L, 512) * B * Hkv, 4, lm["smem"], lm["regs"])
    a.hbm = B * Hkv * L * lab_tok + rows * L * 4 + rows * r * 2
    a.l2 = a.hbm
    a.add(lm["instr"], a.ctas * 128 * r / 32 * max(1.0, G / 4))
    K.serial_chain(a, 1, lm["rounds"], 1.0)
    tm = sass["topk_select"]
    chunks = ceil_div(L, 2048)
    t = K.Launch("topk_select", rows, 8, tm["smem"], tm["regs"])
    t.hbm = rows * L * 4 + rows * k * 4
    t.l2 = 2 * rows * chunks * 2048 * 4 + rows * k * 4 + rows * 4096 * 8 * 2
    t.add(tm["collect"], rows * chunks * 256)
    t.add(tm["compact"], rows * chunks * 256)
    t.add({"int32": float(tm["fixed"])}, rows * 256)
    K.serial_chain(t, 2 * chunks, tm["rounds"], 0.0)    # keys were just written: L2 hits
    att = K.ours_flash_decode("sparse_attn", B=B, Hq=Hq, Hkv=Hkv, count=k, bn=spec.tiling.block_n,
                              d=D, sm_count=sm_count, gather=True, sass=sass, dot=True)
    return [a, t, *att]


def build(spec, s, phase, kernel, ctx):
    if kernel == "double_sparse" and not ctx.ideal:
        return _ours_decode(spec, s, ctx)
    return _ideal_decode(spec, s, ctx)


PATH = CostPath("double_sparse", {"prefill": (), "decode": ("double_sparse", "ideal")}, build,
                ours=frozenset({"double_sparse"}),
                no_kernel={"prefill": "the method is modeled for decode only (Double Sparsity "
                                      "targets decode)"})
