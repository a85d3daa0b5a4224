"""Double Sparsity label cache, label scores and the top-k selection (docs/numerics.md
"double_sparse"; sim.methods.double_sparse).

Label build, per token, over the KV head's ``R`` calibrated channels (``x`` = the fp16 values):

    BITS 16: labels = x (fp16)
    else (``sim.numerics.quantize(symmetric=False, scale_dtype="fp16", arithmetic="fp32")``):
        scale = f16(f32(max - min) / LV)      (max == min -> 1; nonzero underflow -> 2^-24)
        zp    = rint(f32(-min / scale))       (half-even, int32)
        code  = clamp(rint(f32(x / scale)) + zp, 0, LV), packed little end first (sim.numerics.pack)

Label scores (:func:`label_score_kernel`): ``approx = sum_c f16(q[c]) * label[c]`` in f32 with
``label = f32(code - zp) * scale`` (one f32 rounding; ``code - zp`` is formed exactly as
``f32(2^23 + code) - f32(2^23 + zp)``, the code OR-ed into the bit pattern of 2^23). One program
reads a block of tokens' labels once (one token per thread, as int32 words) for the ``G`` query
heads of their KV head: per code a shift, a LOP3, FADD, FMUL, and one FFMA per query head. Each score is written as a uint32 selection key
(stored as int32): ``ord(approx)`` (a monotone map of f32 to uint32; -0 counted as +0), sink and
recent tokens ``2^32 - 1`` (always kept).

Selection (:func:`topk_select_kernel`, one program per query row): the ``K`` largest keys, equal
keys to the lower index, written as ascending indices, with no histogram and no sort: (1) a
sample of the row's keys (every S-th) gives a bracket ``[T_lo, T_hi]`` around the K-th largest
key (3 standard deviations of the sample rank; order statistics of the sample found bit by bit,
32 counts over registers); (2) one pass counts the keys above ``T_hi`` and collects the keys
inside the bracket (with their index, in index order) into a per-row scratch; (3) on chip, the
``K - count``-th largest candidate key is the exact threshold ``T`` (bit by bit again) and a
running count of the candidates equal to ``T`` gives the last index taken at ``T``; (4) one
pass writes, in index order, every key above ``T`` and the keys equal to ``T`` up to that
index. A row whose bracket misses (ties, an unlucky sample, more than CAP candidates) takes an
exact bit-by-bit threshold search over the row instead (same result, 32 more passes).
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
def _label(w, sh: tl.constexpr, zf, sc, BITS: tl.constexpr):
    """The label of the code at bit ``sh`` of the int32 words ``w`` [BLOCK]: ``f32(code - zp) *
    scale`` (``zf = f32(2^23 + zp)``), or the fp16 half at ``sh`` (16-bit labels)."""
    if BITS == 16:
        return ((w >> sh) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    cf = (((w >> sh) & ((1 << BITS) - 1)) | 0x4B000000).to(tl.float32, bitcast=True)
    return (cf - zf) * sc


@triton.jit
def label_score_kernel(Q, CH, LAB, LSC, LZP, APPROX, KEYS, L, CAPL, Hq, Hkv, G, SINK, RECENT,
                       sqb, sqh, sqd,
                       R: tl.constexpr, BLOCK: tl.constexpr, BITS: tl.constexpr, BG: tl.constexpr,
                       WRITE_APPROX: tl.constexpr):
    """Grid (cdiv(L, BLOCK), B * Hkv): label scores of BLOCK tokens (one per thread) for the G
    query heads of one KV head, their labels read once as int32 words (packed codes, or two fp16
    labels per word). Label store of capacity CAPL tokens (label_build_kernel's layout). Writes
    KEYS int32 [B, Hq, L] (uint32 keys) and, with WRITE_APPROX, APPROX f32 [B, Hq, L]."""
    pid = tl.program_id(0)
    bk = tl.program_id(1)
    b = bk // Hkv
    hk = bk % Hkv
    PER: tl.constexpr = 32 // BITS
    RW: tl.constexpr = R // PER
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < L
    lbase = (b * Hkv + hk).to(tl.int64) * CAPL
    wb = LAB + (lbase + rows) * RW
    if BITS == 16:
        zf = tl.zeros([BLOCK], tl.float32)
        sc = zf
    else:
        zf = (tl.load(LZP + lbase + rows, mask=rmask, other=0) + 0x4B000000).to(
            tl.float32, bitcast=True)                              # 2^23 + zp, |zp| <= 2^16
        sc = tl.load(LSC + lbase + rows, mask=rmask, other=1.0).to(tl.float32)
    acc = tl.zeros([BG, BLOCK], tl.float32)
    gr = tl.arange(0, BG)
    qrow = Q + b * sqb + (hk * G + gr) * sqh
    for w in tl.static_range(RW):
        word = tl.load(wb + w, mask=rmask, other=0)
        for i in tl.static_range(PER):
            lab = _label(word, i * BITS, zf, sc, BITS)
            c = tl.load(CH + hk * R + w * PER + i)
            qc = tl.load(qrow + c * sqd, mask=gr < G, other=0.0).to(tl.float16).to(tl.float32)
            acc += qc[:, None] * lab[None, :]
    forced = (rows < SINK) | (rows >= L - RECENT)
    obase = (b * Hq + hk * G + gr).to(tl.int64)[:, None] * L + rows[None, :]
    m2 = (gr < G)[:, None] & rmask[None, :]
    if WRITE_APPROX:
        tl.store(APPROX + obase, acc, mask=m2)
    bits = (acc + 0.0).to(tl.int32, bitcast=True)                  # -0 -> +0
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits) ^ -2147483648
    tl.store(KEYS + obase, tl.where(forced[None, :], -1, key), mask=m2)


@triton.jit
def _ukey(x):
    return x.to(tl.uint32, bitcast=True)


@triton.jit
def _kth_largest(u, valid, rank):
    """The ``rank``-th largest (0-based) of the uint32 values ``u`` where ``valid``: the largest
    ``t`` with ``count(u >= t) > rank``, found bit by bit from the top (32 counts, no sort)."""
    t = tl.sum(tl.zeros([1], tl.uint32), 0)
    one = tl.full([], 1, tl.uint32)
    for bit in tl.static_range(32):
        trial = t | (one << (31 - bit))
        if tl.sum(((u >= trial) & valid).to(tl.int32), 0) > rank:
            t = trial
    return t


@triton.jit
def _count(base, L, t, STRICT: tl.constexpr, CH: tl.constexpr):
    """Keys of the row (uint32 in int32 storage) > t (STRICT) or >= t."""
    n = tl.sum(tl.zeros([1], tl.int32), 0)
    for s0 in range(0, L, CH):
        j = s0 + tl.arange(0, CH)
        u = _ukey(tl.load(base + j, mask=j < L, other=0))
        hit = (u > t) if STRICT else (u >= t)
        n += tl.sum((hit & (j < L)).to(tl.int32), 0)
    return n


@triton.jit
def topk_select_kernel(KEYS, IDX, CAND, L, K, sib,
                       NSAMPLE: tl.constexpr, CAP: tl.constexpr, CH: tl.constexpr):
    """Grid (rows,): the K largest of the row's L uint32 keys (int32 storage), equal keys to the
    lower index, as ascending indices into IDX int32 [rows, >= K] (row stride ``sib``); CAND
    int64 [rows, CAP] is the row's candidate scratch. See the module docstring."""
    row = tl.program_id(0)
    base = KEYS + row.to(tl.int64) * L
    obase = IDX + row.to(tl.int64) * sib
    cbase = CAND + row.to(tl.int64) * CAP
    kk = K + tl.zeros([], tl.int32)        # a tensor even when K is specialized to 1
    # (1) the bracket from a sample (every S-th key, spread over the row)
    S = (L + NSAMPLE - 1) // NSAMPLE
    ns = (L + S - 1) // S
    si = tl.arange(0, NSAMPLE)
    smp = _ukey(tl.load(base + si * S, mask=si < ns, other=0))
    r = ((kk.to(tl.int64) * ns) // L).to(tl.int32)
    m = (3.0 * tl.sqrt(r.to(tl.float32))).to(tl.int32) + 4
    t_hi = _kth_largest(smp, si < ns, tl.maximum(r - m, 0))
    t_lo = _kth_largest(smp, si < ns, tl.minimum(r + m, ns - 1))
    # (2) keys above the bracket counted, keys inside it collected in index order
    n_above = tl.sum(tl.zeros([1], tl.int32), 0)
    n_cand = tl.sum(tl.zeros([1], tl.int32), 0)
    for s0 in range(0, L, CH):
        j = s0 + tl.arange(0, CH)
        jm = j < L
        u = _ukey(tl.load(base + j, mask=jm, other=0))
        n_above += tl.sum(((u > t_hi) & jm).to(tl.int32), 0)
        inb = ((u >= t_lo) & (u <= t_hi) & jm).to(tl.int32)
        pos = n_cand + tl.cumsum(inb, 0) - inb
        c64 = (u.to(tl.int64) << 32) | j.to(tl.int64)
        tl.store(cbase + pos, c64, mask=(inb != 0) & (pos < CAP))
        n_cand += tl.sum(inb, 0)
    need = kk - n_above
    if (need >= 0) & (need <= n_cand) & (n_cand <= CAP):
        # (3) the exact threshold among the candidates (on chip, no sort): the need-th largest
        # key, then the last index taken at it (candidates are in index order)
        ci = tl.arange(0, CAP)
        cv = ci < n_cand
        cand = tl.load(cbase + ci, mask=cv, other=0)
        cu = (cand >> 32).to(tl.uint32)
        t_key = _kth_largest(cu, cv, tl.maximum(need - 1, 0))
        t_key = tl.where(need > 0, t_key, t_hi)
        take_eq = need - tl.sum(((cu > t_key) & cv).to(tl.int32), 0)
        eq = ((cu == t_key) & cv).to(tl.int32)
        hit = (eq != 0) & (tl.cumsum(eq, 0) == take_eq)
        j_cut = tl.max(tl.where(hit, (cand & 4294967295).to(tl.int32), -1), 0)
        j_cut = tl.where(need > 0, j_cut, -1)
    else:
        # exact fallback: the largest t with count(key >= t) >= K, bit by bit from the top
        t_key = tl.sum(tl.zeros([1], tl.uint32), 0)
        one = tl.full([], 1, tl.uint32)
        for bit in tl.static_range(32):
            trial = t_key | (one << (31 - bit))
            if _count(base, L, trial, False, CH) >= kk:
                t_key = trial
        need2 = kk - _count(base, L, t_key, True, CH)
        j_cut = L - 1
        seen = tl.sum(tl.zeros([1], tl.int32), 0)
        for s0 in range(0, L, CH):
            j = s0 + tl.arange(0, CH)
            eq = ((_ukey(tl.load(base + j, mask=j < L, other=0)) == t_key) & (j < L)).to(tl.int32)
            rank = seen + tl.cumsum(eq, 0)
            last = tl.max(tl.where((eq != 0) & (rank == need2), j, -1), 0)
            j_cut = tl.where((last >= 0) & (seen < need2), last, j_cut)
            seen += tl.sum(eq, 0)
    # (4) ascending write: keys above t_key, and keys equal to it up to index j_cut
    n_sel = tl.sum(tl.zeros([1], tl.int32), 0)
    for s0 in range(0, L, CH):
        j = s0 + tl.arange(0, CH)
        jm = j < L
        u = _ukey(tl.load(base + j, mask=jm, other=0))
        take = (((u > t_key) | ((u == t_key) & (j <= j_cut))) & jm).to(tl.int32)
        pos = n_sel + tl.cumsum(take, 0) - take
        tl.store(obase + pos, j, mask=take != 0)
        n_sel += tl.sum(take, 0)
