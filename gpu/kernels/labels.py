"""Double Sparsity label cache and label scores (docs/numerics.md "double_sparse"; sim.methods.double_sparse).

Label build, per token, over the KV head's ``R`` calibrated channels (``x`` = the fp16 values):

    BITS 16: labels = x (fp16)
    else (``sim.numerics.quantize(symmetric=False, scale_dtype="fp16", arithmetic="fp32")``):
        scale = f16(f32(max - min) / LV)      (max == min -> 1; nonzero underflow -> 2^-24)
        zp    = rint(f32(-min / scale))       (half-even, int32)
        code  = clamp(rint(f32(x / scale)) + zp, 0, LV), packed little end first (sim.numerics.pack)

Label scores: ``approx = sum_c f16(q[c]) * label[c]`` in f32, with ``label = f32(code - zp) *
scale`` (one f32 rounding). Each score is also written as an int64 selection key
``(ord(approx) << 32) | (2^32 - 1 - j)`` (``ord`` a monotone map of f32 to int32; -0 counted as
+0) so that a top-k over the keys has no ties and equal scores prefer the lower index, as
``sim.methods.double_sparse.select_topk``; sink/recent tokens get the largest key (always kept). With KEY32
the key is ``ord(approx)`` as uint32 alone and :func:`topk_select_kernel` breaks ties by index
(radix select + in-order compaction: the selection of a top-k over the int64 keys, ascending).
"""
import triton
import triton.language as tl

from .cache import pack_rows


@triton.jit
def label_build_kernel(K, CH, LAB, LSC, LZP, L, H, CAPL, LO,
                       skb, skh, skl, skd,
                       R: tl.constexpr, ROWS: tl.constexpr, BITS: tl.constexpr):
    """Grid (cdiv(L, ROWS), B * H): labels of the L tokens of K (strided [B, H, L, D]) written at
    tokens LO .. LO + L of the label store (capacity CAPL tokens). CH int32 [H, R]. BITS 16: LAB
    fp16 [B, H, CAPL, R]; else LAB uint8 [B, H, CAPL, R*BITS/8] packed codes, LSC fp16
    [B, H, CAPL], LZP int32 [B, H, CAPL]."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid * ROWS + tl.arange(0, ROWS)
    rmask = rows < L
    ci = tl.arange(0, R)
    ch = tl.load(CH + h * R + ci)
    x = tl.load(K + b.to(tl.int64) * skb + h.to(tl.int64) * skh + rows[:, None] * skl
                + ch[None, :] * skd,
                mask=rmask[:, None], other=0.0)
    obase = bh.to(tl.int64) * CAPL + LO
    if BITS == 16:
        tl.store(LAB + (obase + rows)[:, None] * R + ci[None, :], x.to(tl.float16),
                 mask=rmask[:, None])
    else:
        LV: tl.constexpr = (1 << BITS) - 1
        xf = x.to(tl.float32)
        mn = tl.min(xf, 1)
        mx = tl.max(xf, 1)
        raw = tl.math.div_rn(mx - mn, tl.full(mn.shape, LV * 1.0, tl.float32))
        s = raw.to(tl.float16).to(tl.float32)
        s = tl.where((s == 0) & (mx > mn), 5.960464477539063e-08, s)
        s = tl.where(mx == mn, 1.0, s)
        zpf = tl.math.div_rn(-mn, s)
        zp = ((zpf + 12582912.0) - 12582912.0)  # rint half-even (|zp| checked <= 2^16 by caller)
        y = tl.math.div_rn(xf, s[:, None])
        r = (y + 12582912.0) - 12582912.0
        c = r.to(tl.int32) + zp.to(tl.int32)[:, None]
        c = tl.minimum(tl.maximum(c, 0), LV)
        RB: tl.constexpr = R * BITS // 8
        if BITS == 8:
            packed = c.to(tl.uint8)
        else:
            packed = pack_rows(c, ROWS, R, BITS)
        tl.store(LAB + (obase + rows)[:, None] * RB + tl.arange(0, RB)[None, :], packed,
                 mask=rmask[:, None])
        tl.store(LSC + obase + rows, s.to(tl.float16), mask=rmask)
        tl.store(LZP + obase + rows, zp.to(tl.int32), mask=rmask)


@triton.jit
def label_score_kernel(Q, CH, LAB, LSC, LZP, APPROX, KEYS, L, CAPL, Hq, Hkv, G, SINK, RECENT,
                       sqb, sqh, sqd,
                       R: tl.constexpr, BLOCK: tl.constexpr, BITS: tl.constexpr,
                       WRITE_APPROX: tl.constexpr, KEY32: tl.constexpr = False):
    """Grid (cdiv(L, BLOCK), B * Hq). Label store of capacity CAPL tokens (label_build_kernel's
    layout). Writes KEYS int64 [B, Hq, L] (int32 holding the uint32 key with KEY32: for :func:`topk_select_kernel`)
    and, with WRITE_APPROX, APPROX f32 [B, Hq, L]."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // G
    ci = tl.arange(0, R)
    ch = tl.load(CH + hk * R + ci)
    qL = tl.load(Q + b * sqb + h * sqh + ch * sqd).to(tl.float16).to(tl.float32)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < L
    lbase = (b * Hkv + hk).to(tl.int64) * CAPL
    if BITS == 16:
        lab = tl.load(LAB + (lbase + rows)[:, None] * R + ci[None, :], mask=rmask[:, None],
                      other=0.0).to(tl.float32)
    else:
        RB: tl.constexpr = R * BITS // 8
        byt = tl.load(LAB + (lbase + rows)[:, None] * RB + tl.arange(0, RB)[None, :],
                      mask=rmask[:, None], other=0).to(tl.int32)
        if BITS == 8:
            c = byt
        elif BITS == 4:
            c = tl.reshape(tl.join(byt & 15, byt >> 4), [BLOCK, R])
        else:
            c = tl.reshape(tl.join(tl.join(byt & 3, (byt >> 4) & 3),
                                   tl.join((byt >> 2) & 3, (byt >> 6) & 3)), [BLOCK, R])
        sc = tl.load(LSC + lbase + rows, mask=rmask, other=1.0).to(tl.float32)
        zp = tl.load(LZP + lbase + rows, mask=rmask, other=0)
        lab = (c - zp[:, None]).to(tl.float32) * sc[:, None]
    approx = tl.sum(lab * qL[None, :], 1)
    obase = bh.to(tl.int64) * L
    if WRITE_APPROX:
        tl.store(APPROX + obase + rows, approx, mask=rmask)
    a = approx + 0.0  # -0 -> +0
    bits = a.to(tl.int32, bitcast=True)
    ordv = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    forced = (rows < SINK) | (rows >= L - RECENT)
    if KEY32:  # ord as unsigned (sign bit flipped), forced = 2^32 - 1; the index breaks ties
        key = tl.where(forced, -1, ordv ^ -2147483648)  # int32 storage of the uint32 key
    else:
        key = ordv.to(tl.int64) * 4294967296 + (4294967295 - rows.to(tl.int64))
        key = tl.where(forced, 9223372036854775807, key)
    tl.store(KEYS + obase + rows, key, mask=rmask)


@triton.jit
def topk_select_kernel(KEYS, IDX, L, K, sib, BLOCK: tl.constexpr):
    """Grid (rows,): the ``K`` largest of the row's ``L`` uint32 keys (stored as int32) (label_score_kernel with
    KEY32), equal keys to the lower index — the order of the int64 keys — written as ascending
    token indices to IDX int32 [rows, >= K] (row stride ``sib``).

    Radix select: four histogram passes over 8-bit digits (high first) find the K-th largest
    key ``T`` and how many keys equal to T it takes (``need``); one compaction pass in index
    order then writes every key > T and the first ``need`` keys == T (cumulative sums give the
    slots, so the output is ascending without a sort)."""
    row = tl.program_id(0)
    base = KEYS + row.to(tl.int64) * L
    offs = tl.arange(0, BLOCK)
    dig = tl.arange(0, 512)
    prefix = tl.sum(tl.zeros([1], tl.int64), 0)
    rem = tl.sum(tl.zeros([1], tl.int64), 0) + K
    for p in tl.static_range(4):
        SH = 24 - 8 * p
        hist = tl.zeros([512], tl.int32)
        for start in range(0, L, BLOCK):
            j = start + offs
            u = tl.load(base + j, mask=j < L, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
            if p == 0:
                match = j < L
            else:
                match = (j < L) & ((u >> (SH + 8)) == (prefix >> (SH + 8)))
            b = tl.where(match, (u >> SH) & 255, 511).to(tl.int32)
            hist += tl.histogram(b, 512)
        hist = tl.where(dig < 256, hist, 0).to(tl.int64)
        gt = tl.sum(hist, 0) - tl.cumsum(hist, 0)       # keys of this prefix with larger digit
        hit = (gt < rem) & (gt + hist >= rem) & (dig < 256)
        d = tl.max(tl.where(hit, dig, -1), 0).to(tl.int64)
        rem = rem - tl.sum(tl.where(dig == d, gt, 0), 0)
        prefix = prefix | (d << SH)
    n_sel = tl.sum(tl.zeros([1], tl.int32), 0)
    n_eq = tl.sum(tl.zeros([1], tl.int32), 0)
    obase = IDX + row.to(tl.int64) * sib
    for start in range(0, L, BLOCK):
        j = start + offs
        u = tl.load(base + j, mask=j < L, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
        eq = ((u == prefix) & (j < L)).to(tl.int32)
        take = ((u > prefix) & (j < L)) | ((eq != 0) & ((n_eq + tl.cumsum(eq, 0) - eq) < rem))
        t32 = take.to(tl.int32)
        pos = n_sel + tl.cumsum(t32, 0) - t32
        tl.store(obase + pos, j, mask=take)
        n_sel += tl.sum(t32, 0)
        n_eq += tl.sum(eq, 0)
