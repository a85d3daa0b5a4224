"""turbo, the cost path: the integer forward with SAS (our Triton kernel's counted mix, the
``turbo`` or ``turbo_exp2`` variant) for prefill; for decode our kernels (Q quantization, the
scores and PV passes per stored bit width, the combine), and ``ideal``: one fused pass over the
INT4/INT2 cache and the INT8 buffer at its byte floor."""
from __future__ import annotations

import math

from .. import kernels as K
from ...methods.turbo import group_grid
from ..paths import ceil_div, decode_common, integer_prefill, q_quant
from ..shape import Shape
from .base import CostPath


def _ideal_decode(spec, s: Shape, ctx) -> list[K.Launch]:
    """FlashQ cache read: low-bit K/V (per-head high_bits or low_bits) with integer scale and
    zero point per group, the newest ``buffer_tokens`` in INT8 with per-block fp32 scales
    (a full buffer: worst case), integer dequant to INT8 per element (unpack LOP3/SHF 3 per 8
    codes, IADD zero point, IMAD scale), INT8 QK^T/PV, SAS softmax."""
    kv, D, bn = spec.kvcache, s.head_dim, spec.tiling.block_n
    nb = min(s.kv_len, kv.buffer_tokens)
    low = s.kv_len - nb
    bits = (1 - kv.low_share) * kv.high_bits + kv.low_share * kv.low_bits
    meta = (kv.scale_bits + kv.zero_bits) / 8
    groups = (math.prod(group_grid(kv.k_groups, kv.k_group_size, low, D))
              + math.prod(group_grid(kv.v_groups, kv.v_group_size, low, D)))
    per_head = (low * D * 2 * bits / 8 + groups * meta
                + nb * D * 2 + 2 * 4 * -(-s.kv_len // bn))
    # flash() prices an INT8 stream of kv_len rows; express the real per-row bytes as INT8 +
    # a signed extra so that HBM/L2/smem bytes equal the cache's.
    extra = per_head / s.kv_len - 2 * D
    elem, row = K.sas_counts(spec.softmax.sas.degree)
    unpack = {"int32": (3 / 8 + 2.0) * low / s.kv_len}
    return K.decode("turbo_decode", qk="int8", pv="int8", qb=1.0, kb=1.0, vb=1.0,
                    kv_row_extra=extra, elem=elem, row_tile=row, per_kv_elem=unpack,
                    **decode_common(spec, s, ctx))


def _ours_decode(spec, s: Shape, ctx) -> list[K.Launch]:
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
    sm_count, sass = ctx.sm_count, K.decode_sass(ctx.arch)
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
    ngp = max(ngrp, ceil_div(16, BG))
    NT = ceil_div(L, nb)
    splits = K.default_splits(NT, B * Hkv, sm_count)
    tps = ceil_div(NT, splits)
    splits = ceil_div(NT, tps)
    n_low = int(math.floor(kv.low_share * Hkv + 0.5))
    widths = [(w, n) for w, n in ((kv.high_bits, Hkv - n_low), (kv.low_bits, n_low)) if n > 0]
    meta = (kv.scale_bits + kv.zero_bits) / 8
    out = [q_quant(B, Hq, D)]
    p1s, p2s = [], []
    for bits, ng in widths:
        key = f"bg{min(BG, 16)}_bits{4 if bits > 2 else 2}"
        mix1 = sass[f"turbo_scores_{key}"]
        mix2 = sass[f"turbo_pv_{key}"]
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
        K.serial_chain(a, tps, mix1["rounds"], 1.0)
        b = K.Launch(f"turbo_pv{bits}", progs, 4, mix2["smem"], mix2["regs"])
        b.add_tc("int8", 2.0 * max(16, BG) * keys * D)
        b.mma = 0.0
        b.add(mix2["instr"], walked * 128 * scale)
        partial = B * ng * G * splits * (D + 2) * 4.0
        b.hbm = scratch + codes + tiles * D * meta + tiles * 4 + partial
        b.l2 = b.hbm + B * ng * G * splits * (splits - 1) / 2 * tps * 4
        K.serial_chain(b, tps, mix2["rounds"], 1.0)
        p1s.append(a)
        p2s.append(b)
    comb = K.Launch("combine", B * Hq, 1, 0, 40)
    comb.hbm = comb.l2 = B * Hq * (splits * (D + 2) * 4 + D * 2)
    comb.add({"fp32": 2 * D + 2}, B * Hq * splits)
    comb.add({"fp32": D, "sfu": 1}, B * Hq)
    K.serial_chain(comb, splits, 1, 0.0)               # the split loop: A_j, acc_j, l_j per step
    return out + p1s + p2s + [comb]


def build(spec, s, phase, kernel, ctx):
    if phase == "prefill":
        return integer_prefill("turbo", spec, s, ctx,
                               "turbo" if spec.softmax.exp == "sas" else "turbo_exp2")
    if kernel == "turbo_decode" and not ctx.ideal:
        return _ours_decode(spec, s, ctx)
    return _ideal_decode(spec, s, ctx)


PATH = CostPath("turbo", {"prefill": ("turbo",), "decode": ("turbo_decode", "ideal")}, build,
                ours=frozenset({"turbo_decode"}))
