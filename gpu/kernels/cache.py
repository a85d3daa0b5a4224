"""TurboAttention KV-cache kernels: INT8 buffer append and INT8 -> INT4/INT2 flush (FlashQ storage).

Contract: docs/numerics.md "turbo KV cache", ``sim.methods.turbo.TurboCache`` and
``sim.numerics.requantize`` / ``sim.numerics.pack``. Per (batch, KV head), for one flushed block of
``NB`` tokens (``NB = buffer_tokens = block_n``), with ``LV = 2^BITS - 1`` and a group's integer
range ``[m, M]``:

    s = max(1, ceil((M - m) / LV)),  z = m                 (integers)
    c = (v - z + s // 2) // s                              (v - z >= 0: floor == truncation)

Groups, per operand (``*_PC`` constexpr): per channel (one scale/zero per channel over ``G``
consecutive tokens of the block; grid rows ``cap / G``, ``D`` columns; stored in the decode
kernels' fp16 operand form, see :func:`_store_grid`) or per token (one per token over ``G``
consecutive channels; grid ``cap`` rows, ``D / G`` columns, uint8 / int8). Codes are packed
little end first along the channel axis (``sim.numerics.pack``: code ``i`` goes to byte
``i // PER``, bits ``(i % PER) * BITS``), scales stored uint8, zeros int8. Each flushed block
also gets a clamp flag per operand: 1 when some element reads back above 127
(``c * s + z > 127``, clamped by ``requantize``'s read-back), so decode applies the clamp only
to those blocks.

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
def _requant_block(x, NB: tl.constexpr, D: tl.constexpr, G: tl.constexpr, PC: tl.constexpr,
                   LV: tl.constexpr):
    """Codes [NB, D] (int32), scale and zero on the group grid ([NB // G, D] per channel,
    [NB, D // G] per token) and the block's clamp flag of INT8 values ``x`` [NB, D] (int32)."""
    if PC:
        x3 = tl.reshape(x, [NB // G, G, D])
        mn = tl.min(x3, axis=1)
        mx = tl.max(x3, axis=1)
        s = tl.maximum((mx - mn + (LV - 1)) // LV, 1)
        c3 = (x3 - mn[:, None, :] + s[:, None, :] // 2) // s[:, None, :]
        back = c3 * s[:, None, :] + mn[:, None, :]
    else:
        x3 = tl.reshape(x, [NB, D // G, G])
        mn = tl.min(x3, axis=2)
        mx = tl.max(x3, axis=2)
        s = tl.maximum((mx - mn + (LV - 1)) // LV, 1)
        c3 = (x3 - mn[:, :, None] + s[:, :, None] // 2) // s[:, :, None]
        back = c3 * s[:, :, None] + mn[:, :, None]
    clamps = tl.max(tl.max(tl.max((back > 127).to(tl.int32), 2), 1), 0)
    return tl.reshape(c3, [NB, D]), s, mn, clamps


@triton.jit
def _store_grid(SC, ZC, s, z, base, blk, NB: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
                PC: tl.constexpr, BITS: tl.constexpr):
    """Scale/zero of flushed block ``blk`` into the head's grid at ``base``.

    Per token: uint8 scale, int8 zero, grid [cap, D / G]. Per channel (G = NB: one grid row per
    block): the decode kernels' operand form in fp16, ``s' = s 2^-b`` and ``k' = z - 1024 s'``
    (``b = 4`` for INT4, 6 for INT2; both exact), plane-major within the row: channel
    ``d = j * PER + i`` at column ``i * (D / PER) + j`` (gpu.kernels.turbo_decode)."""
    if PC:
        PER: tl.constexpr = 8 // BITS
        B: tl.constexpr = 4 if BITS == 4 else 6
        d = tl.arange(0, D)
        col = (d % PER) * (D // PER) + d // PER
        r = blk * (NB // G) + tl.arange(0, NB // G)
        off = base + r[:, None] * D + col[None, :]
        sp = s.to(tl.float32) * (1.0 / (1 << B))
        kp = (z - s * (1 << (10 - B))).to(tl.float32)
        tl.store(SC + off, sp.to(tl.float16))
        tl.store(ZC + off, kp.to(tl.float16))
    else:
        r = blk * NB + tl.arange(0, NB)
        off = base + r[:, None] * (D // G) + tl.arange(0, D // G)[None, :]
        tl.store(SC + off, s.to(tl.uint8))
        tl.store(ZC + off, z.to(tl.int8))


@triton.jit
def requant_pack_kernel(K8, V8, KC, VC, KSC, KZ, VSC, VZ, KFL, VFL, HEADS,
                        skb, skh, skn, skd, svb, svh, svn, svd,
                        src0, dst0, B0, Hkv, NG, CAP, NFL,
                        D: tl.constexpr, NB: tl.constexpr, KG: tl.constexpr, VG: tl.constexpr,
                        K_PC: tl.constexpr, V_PC: tl.constexpr, BITS: tl.constexpr):
    """Flush whole INT8 blocks of the heads in HEADS (all of one bit width) into the packed store.

    Grid (n_blocks, Bs * NG). Block j reads INT8 tokens ``src0 + j*NB ..`` of K8/V8 (strided
    [Bs, Hkv, L, D], batches B0 .. B0 + Bs of the cache) and writes store tokens ``dst0 + j*NB ..``
    (``dst0`` a multiple of NB). Store layout (this bit group): KC/VC uint8 [B, NG, CAP,
    D*BITS/8]; KSC/KZ, VSC/VZ the group grids of :func:`_store_grid` ([B, Hkv, CAP/G, D] per
    channel, [B, Hkv, CAP, D/G] per token); KFL/VFL uint8 [B, Hkv, NFL] clamp flags per block.
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
    blk = dst0 // NB + j
    hs = h.to(tl.int64)
    k = tl.load(K8 + b_src * skb + hs * skh + src[:, None] * skn + cols[None, :] * skd)
    v = tl.load(V8 + b_src * svb + hs * svh + src[:, None] * svn + cols[None, :] * svd)
    kc, ks, kz, kcl = _requant_block(k.to(tl.int32), NB, D, KG, K_PC, LV)
    vc, vs, vz, vcl = _requant_block(v.to(tl.int32), NB, D, VG, V_PC, LV)
    bytes_ = tl.arange(0, RB)
    dst = blk * NB + rows
    cbase = (b * NG + slot).to(tl.int64) * CAP * RB
    tl.store(KC + cbase + dst[:, None] * RB + bytes_[None, :], pack_rows(kc, NB, D, BITS))
    tl.store(VC + cbase + dst[:, None] * RB + bytes_[None, :], pack_rows(vc, NB, D, BITS))
    bh = (b * Hkv + h).to(tl.int64)
    _store_grid(KSC, KZ, ks, kz, bh * CAP * D // KG, blk, NB, D, KG, K_PC, BITS)
    _store_grid(VSC, VZ, vs, vz, bh * CAP * D // VG, blk, NB, D, VG, V_PC, BITS)
    tl.store(KFL + bh * NFL + blk, kcl.to(tl.uint8))
    tl.store(VFL + bh * NFL + blk, vcl.to(tl.uint8))


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
