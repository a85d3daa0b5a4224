"""TurboAttention KV-cache kernels: INT8 buffer append and INT8 -> INT4/INT2 flush (FlashQ storage).

Contract: docs/numerics.md "turbo KV cache", ``sim.methods.turbo.TurboCache`` and
``sim.numerics.requantize`` / ``sim.numerics.pack``. Per (batch, KV head), for one flushed block of
``NB`` tokens (``NB = buffer_tokens = block_n``), with ``LV = 2^BITS - 1``:

    K: groups of KG channels per token; V: groups of VG tokens per channel
    s = max(1, ceil((M - m) / LV)),  z = m                 (integers; M, m the group's max / min)
    c = (v - z + s // 2) // s                              (v - z >= 0: floor == truncation)

Codes are packed little end first along the channel axis (``sim.numerics.pack``: code ``i`` goes
to byte ``i // PER``, bits ``(i % PER) * BITS``), scales stored uint8, zeros int8.

Append (``TurboCache.append``): a chunk of ``n <= NB - nbuf`` new tokens gets the INT8 block
scale ``s_new = R(absmax / 127)``; if the open block already holds tokens, its scale becomes
``merged = max(s_old, s_new)``, the held codes are re-scaled ``rint(f32(code * f32(s_old /
merged)))`` and the new tokens are quantized on ``merged``. The quantization helpers are the
prefill's (:mod:`.quant`).
"""
import triton
import triton.language as tl

from .quant import quant_codes, scale_of


@triton.jit
def pack_rows(c, ROWS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """Pack int32 codes [ROWS, D] in [0, 2^BITS) into bytes [ROWS, D * BITS // 8] (sim layout)."""
    PER: tl.constexpr = 8 // BITS
    c3 = tl.reshape(c, [ROWS, D // PER, PER])
    sh = tl.arange(0, PER) * BITS
    return tl.sum(c3 << sh[None, None, :], axis=2).to(tl.uint8)


@triton.jit
def requant_pack_kernel(K8, V8, KC, VC, KSC, KZ, VSC, VZ, HEADS,
                        skb, skh, skn, skd, svb, svh, svn, svd,
                        src0, dst0, B0, Hkv, NG, CAP, NCAPV,
                        D: tl.constexpr, NB: tl.constexpr, KG: tl.constexpr, VG: tl.constexpr,
                        BITS: tl.constexpr):
    """Flush whole INT8 blocks of the heads in HEADS (all of one bit width) into the packed store.

    Grid (n_blocks, Bs * NG). Block j reads INT8 tokens ``src0 + j*NB ..`` of K8/V8 (strided
    [Bs, Hkv, L, D], batches B0 .. B0 + Bs of the cache) and writes store tokens ``dst0 + j*NB ..``.
    Store layout (this bit group):
    KC/VC uint8 [B, NG, CAP, D*BITS/8]; KSC/KZ [B, Hkv, CAP, D/KG]; VSC/VZ [B, Hkv, CAP/VG, D].
    """
    j = tl.program_id(0)
    bg = tl.program_id(1)
    b_src = (bg // NG).to(tl.int64)
    b = B0 + bg // NG
    slot = bg % NG
    h = tl.load(HEADS + slot)
    LV: tl.constexpr = (1 << BITS) - 1
    RB: tl.constexpr = D * BITS // 8
    rows = tl.arange(0, NB)
    cols = tl.arange(0, D)
    src = src0 + j * NB + rows
    dst = dst0 + j * NB + rows
    hs = h.to(tl.int64)
    k = tl.load(K8 + b_src * skb + hs * skh + src[:, None] * skn + cols[None, :] * skd)
    v = tl.load(V8 + b_src * svb + hs * svh + src[:, None] * svn + cols[None, :] * svd)
    k = k.to(tl.int32)
    v = v.to(tl.int32)
    # K: groups of KG channels per token
    k3 = tl.reshape(k, [NB, D // KG, KG])
    kmn = tl.min(k3, axis=2)
    kmx = tl.max(k3, axis=2)
    ks = tl.maximum((kmx - kmn + (LV - 1)) // LV, 1)
    kc = (k3 - kmn[:, :, None] + ks[:, :, None] // 2) // ks[:, :, None]
    kc = tl.reshape(kc, [NB, D])
    # V: groups of VG tokens per channel
    v3 = tl.reshape(v, [NB // VG, VG, D])
    vmn = tl.min(v3, axis=1)
    vmx = tl.max(v3, axis=1)
    vs = tl.maximum((vmx - vmn + (LV - 1)) // LV, 1)
    vc = (v3 - vmn[:, None, :] + vs[:, None, :] // 2) // vs[:, None, :]
    vc = tl.reshape(vc, [NB, D])
    bytes_ = tl.arange(0, RB)
    cbase = (b * NG + slot).to(tl.int64) * CAP * RB
    tl.store(KC + cbase + dst[:, None] * RB + bytes_[None, :], pack_rows(kc, NB, D, BITS))
    tl.store(VC + cbase + dst[:, None] * RB + bytes_[None, :], pack_rows(vc, NB, D, BITS))
    gk = tl.arange(0, D // KG)
    zbase = (b * Hkv + h).to(tl.int64)
    koff = zbase * CAP * (D // KG) + dst[:, None] * (D // KG) + gk[None, :]
    tl.store(KSC + koff, ks.to(tl.uint8))
    tl.store(KZ + koff, kmn.to(tl.int8))
    gv = (dst0 + j * NB) // VG + tl.arange(0, NB // VG)
    voff = zbase * NCAPV * D + gv[:, None] * D + cols[None, :]
    tl.store(VSC + voff, vs.to(tl.uint8))
    tl.store(VZ + voff, vmn.to(tl.int8))


@triton.jit
def append_int8_kernel(X, BUF, S8, nbuf, n, slot_idx, NSLOT,
                       sxb, sxh, sxl, sxd,
                       H: tl.constexpr, D: tl.constexpr, NB: tl.constexpr,
                       ROUNDING: tl.constexpr, SCALE_FP16: tl.constexpr, FRESH: tl.constexpr):
    """Append ``n`` tokens of X (strided [B, H, n, D], fp16/bf16) to the open INT8 block.

    Grid (B * H,). BUF int8 [B, H, NB, D] holds ``nbuf`` codes; S8 f32 [B, H, NSLOT]: the open
    block's scale lives at ``slot_idx`` (written here). FRESH: the block is empty (nbuf == 0)."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    rows = tl.arange(0, NB)
    cols = tl.arange(0, D)
    rmask = rows < n
    x = tl.load(X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + rows[:, None] * sxl
                + cols[None, :] * sxd,
                mask=rmask[:, None], other=0.0).to(tl.float32)
    amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    s_new = scale_of(tl.full([1], 0.0, tl.float32) + amax, SCALE_FP16)
    sp = S8 + bh.to(tl.int64) * NSLOT + slot_idx + tl.arange(0, 1)
    bbase = BUF + bh.to(tl.int64) * NB * D
    if FRESH:
        merged = s_new
    else:
        s_old = tl.load(sp)
        merged = tl.maximum(s_old, s_new)
        ratio = tl.math.div_rn(s_old, merged)
        omask = (rows < nbuf)[:, None]
        old = tl.load(bbase + rows[:, None] * D + cols[None, :], mask=omask, other=0)
        y = old.to(tl.float32) * ratio[:, None]
        r = (y + 12582912.0) - 12582912.0  # rint, ties to even (|y| <= 127)
        tl.store(bbase + rows[:, None] * D + cols[None, :], r.to(tl.int8), mask=omask)
    c = quant_codes(x, merged[:, None], ROUNDING)
    tl.store(bbase + (nbuf + rows)[:, None] * D + cols[None, :], c, mask=rmask[:, None])
    tl.store(sp, merged)
