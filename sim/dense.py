"""The dense tiled path shared by every method that reads all keys (fp16/fp8/int8 flash, turbo
prefill): one engine pass per key tile over all rows of one (batch, KV head).

The method module chooses the operand preparation (:class:`FloatOperands` for float operands,
:class:`IntegerOperands` for INT8 Q/K/V with quantized P) and calls :func:`run_dense`; this
module knows no method by name. The arithmetic is docs/numerics.md's; the trace layout is the
one documented in :mod:`sim.simulate`.
"""
from __future__ import annotations

import numpy as np

from .checks import last_visible_key
from .engine import SimResult, lse_of, online_softmax, qk_scale_of
from .numerics.intgemm import FP32_EXACT_K, int_matmul
from .operands import (cast_operand, pquant, pquant_table_f32, quantize_operand, round_p,
                       token_scale, v_tile_factor)
from .softmax import exp_fns, fma, poly_table

__all__ = ["run_dense", "IntegerOperands", "FloatOperands", "exact_dot", "fused_covers"]

_MAX_ROWS = 1 << 16  # rows per engine pass
_CHUNK_TILES = 8  # key tiles per score GEMM
# Without a trace, integer operands run the per-tile elementwise work in the numba kernels of
# sim._fused, bit-identical to the numpy closures below (tests/sim/test_fused.py compares
# them); False forces the numpy path (the reference).
_FUSED = True
_PV_BLAS = False  # fused path: PV dot on BLAS (True) or inside the numba tile kernel (False:
# no BLAS thread hand-off per tile, which stalls for ms on a loaded machine)


def exact_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer dot of int codes held exactly in float32 (float32 result, exact integers).

    sgemm is exact for inner length K <= 1024 (sim.numerics.intgemm's argument); longer K goes
    through int_matmul (float64), whose exact int32 result is returned as float32."""
    if a.shape[-1] <= FP32_EXACT_K:
        return a @ b
    return int_matmul(a.astype(np.int8), b.astype(np.int8)).astype(np.float32)


class _ScoreChunks:
    """Serves score tiles from one dot over ``_CHUNK_TILES`` key tiles at a time.

    Score entries do not depend on the softmax state, so computing a wider block first is the
    same arithmetic (exact for integer dots; for float dots only BLAS's summation order, which
    the contract leaves open, could change) and runs the GEMM at a better shape."""

    def __init__(self, dot, bn: int, n: int):
        self.dot, self.width, self.n = dot, bn * _CHUNK_TILES, n
        self.start, self.block = -1, None

    def __call__(self, sl: slice) -> np.ndarray:
        c0 = (sl.start // self.width) * self.width
        if c0 != self.start:
            self.start = c0
            self.block = self.dot(slice(c0, min(c0 + self.width, self.n)))
        return self.block[:, sl.start - c0:sl.stop - c0]


class _Visibility:
    """Causal visibility of a block of flat rows (row r is query position ``(r0 + r) % Lq``)."""

    def __init__(self, causal: bool, r0: int, r1: int, Lq: int, Lk: int):
        self.causal = causal
        if causal:
            self.last = last_visible_key(np.arange(r0, r1) % Lq, Lq, Lk)
            self.lo, self.hi = int(self.last.min()), int(self.last.max())

    def __call__(self, sl: slice):
        if not self.causal or sl.stop - 1 <= self.lo:
            return None
        if sl.start > self.hi:
            return np.zeros((1, 1), bool)
        return np.arange(sl.start, sl.stop)[None, :] <= self.last[:, None]


def fused_covers(spec) -> bool:
    """Whether the numba kernels of :mod:`sim._fused` cover an integer spec (used when no trace
    is wanted): fp16 PQUANT with exp2 or fp16 SAS, the unfused arithmetic. Everything else runs
    the numpy closures."""
    sm = spec.softmax
    return spec.p.arithmetic == "fp16" and not spec.arith.fused and (
        sm.exp == "exp2" or (sm.exp == "sas" and sm.sas.arithmetic == "fp16"))


def run_dense(q, k, v, spec, shp, causal: bool, sm_scale: float, want_trace: bool,
              operands: type) -> SimResult:
    """Run the online softmax over every key of ``q/k/v`` (validated, sizes ``shp``) with
    ``operands`` (:class:`FloatOperands` or :class:`IntegerOperands`) preparing the dots."""
    B, Hq, Hkv, Lq, Lk, D, Dv, G = shp
    qk_scale = qk_scale_of(sm_scale)
    bn = spec.tiling.block_n
    n_tiles = -(-Lk // bn)
    exp, rescale = exp_fns(spec.softmax)
    tr: dict | None = None
    if want_trace:
        tr = {"qk_scale": qk_scale,
              "m": np.full((B, Hq, Lq, n_tiles), -np.inf, np.float32),
              "l": np.zeros((B, Hq, Lq, n_tiles), np.float32),
              "alpha": np.ones((B, Hq, Lq, n_tiles), np.float32),
              "p": np.zeros((B, Hq, Lq, Lk), np.float32)}
        vis = np.ones((Lq, Lk), bool)
        if causal:
            vis = np.arange(Lk)[None, :] <= last_visible_key(np.arange(Lq), Lq, Lk)[:, None]
        tr["visible"] = np.broadcast_to(vis, (B, Hq, Lq, Lk))

    ops = operands(q, k, v, spec, Lq, Lk, qk_scale, tr)
    out = np.zeros((B, Hq, Lq, Dv), np.float32)
    lse = np.zeros((B, Hq, Lq), np.float32)
    R = G * Lq
    fused = tr is None and ops.fused
    for b in range(B):
        for g in range(Hkv):
            heads = slice(g * G, (g + 1) * G)
            group = ops.group(b, g, heads, R, qk_scale)
            og = out[b, heads].reshape(R, Dv)  # view
            lg = lse[b, heads].reshape(R)      # view
            for r0 in range(0, R, _MAX_ROWS):
                r1 = min(R, r0 + _MAX_ROWS)
                vis = _Visibility(causal, r0, r1, Lq, Lk)
                state: dict = {}
                if fused:
                    og[r0:r1] = group.run_fused(r0, r1, vis, rescale or exp, state)
                else:
                    sub = None if tr is None else {}
                    scores, pv, engine_kw = group.closures(r0, r1, sub)
                    og[r0:r1] = online_softmax(scores, exp, pv, n_slots=Lk, block_n=bn,
                                               valid=vis, rows=r1 - r0, dv=Dv, trace=sub,
                                               rescale=rescale, state=state, **engine_kw)
                    if tr is not None:
                        _store_rows(tr, sub, b, heads, r0, r1, Lq)
                lg[r0:r1] = lse_of(state["m"], state["l"])
    if tr is not None:
        _finish_tiles(tr)
        vis_all = tr["visible"]
        for key in ("s_int", "p_codes", "p", "p_op"):
            if key in tr:
                tr[key][~vis_all] = 0
        if "s" in tr:
            tr["s"][~vis_all] = -np.inf
    return SimResult(out, tr, spec, lse=lse)


def _flat(arr_bh: np.ndarray, r0: int, r1: int, Lq: int):
    """Views of rows r0:r1 of a [G, Lq, ...] array flattened to [G*Lq, ...] (contiguous source)."""
    G = arr_bh.shape[0]
    return arr_bh.reshape((G * Lq,) + arr_bh.shape[2:])[r0:r1]


def _store_rows(tr, sub, b, heads, r0, r1, Lq):
    """Copy one engine pass's trace (rows r0:r1 of the flat G*Lq rows) into the full arrays.

    While running, per-tile arrays are held row-major (``[B, Hq, Lq, T(, Dv)]``, so a flat row
    block is a slice); :func:`_finish_tiles` moves the tile axis before Lq at the end."""
    for key in ("m", "l", "alpha"):  # sub[key]: [T, rows]
        _flat(tr[key][b, heads], r0, r1, Lq)[...] = sub[key].T
    for key in ("s_int", "p_codes", "p", "p_op", "s"):
        if key in sub:
            _flat(tr[key][b, heads], r0, r1, Lq)[...] = sub[key]
    if "o_int" in sub:  # [T, rows, Dv]
        _flat(tr["o_int"][b, heads], r0, r1, Lq)[...] = sub["o_int"].transpose(1, 0, 2)


def _finish_tiles(tr):
    for key in ("m", "l", "alpha"):
        tr[key] = np.ascontiguousarray(tr[key].transpose(0, 1, 3, 2))
    if "o_int" in tr:
        tr["o_int"] = np.ascontiguousarray(tr["o_int"].transpose(0, 1, 3, 2, 4))


class IntegerOperands:
    """INT8 Q/K/V per ``spec.q/k/v``, INT32 dots, INT8 P per ``spec.p`` (docs/numerics.md)."""

    def __init__(self, q, k, v, spec, Lq, Lk, qk_scale, tr):
        bm, bn = spec.tiling.block_m, spec.tiling.block_n
        pq = spec.p
        if pq.levels > 127:
            raise ValueError(f"spec.p.levels: P codes are int8 for the PV dot, expected <= 127, "
                             f"got {pq.levels}")
        self.spec, self.pq, self.bn, self.Lq, self.Lk = spec, pq, bn, Lq, Lk
        self.Q = quantize_operand(q, spec.q, bm, "q")
        self.K = quantize_operand(k, spec.k, bn, "k")
        self.V = quantize_operand(v, spec.v, bn, "v")
        self.qs = token_scale(self.Q, Lq)
        self.ks = token_scale(self.K, Lk)
        # exp2 gives p <= 1, so codes <= PQUANT(1) = levels; SAS output is checked per tile
        self.guard = spec.softmax.exp == "sas" and not pq.saturate
        self.fused = _FUSED and fused_covers(spec)
        self.tr = tr
        if tr is not None:
            B, Hq = q.shape[:2]
            n_tiles, Dv = -(-Lk // bn), v.shape[3]
            tr.update(q_codes=self.Q.codes, q_scale=self.Q.scale, k_codes=self.K.codes,
                      k_scale=self.K.scale, v_codes=self.V.codes, v_scale=self.V.scale,
                      s_int=np.zeros((B, Hq, Lq, Lk), np.int32),
                      p_codes=np.zeros((B, Hq, Lq, Lk), np.int8),
                      o_int=np.zeros((B, Hq, Lq, n_tiles, Dv), np.int32))

    def group(self, b, g, heads, R, qk_scale):
        return _IntGroup(self, b, g, heads, R, qk_scale)

class _IntGroup:  # one (batch, KV head) of IntegerOperands
    def __init__(self, ops, b, g, heads, R, qk_scale):
        self.ops = ops
        D = ops.Q.codes.shape[3]
        self.qc = ops.Q.codes[b, heads].reshape(R, D).astype(np.float32)  # exact
        self.qf = ops.qs[b, heads].reshape(R).astype(np.float32) * qk_scale  # f32, once per row
        self.kc = ops.K.codes[b, g].astype(np.float32)  # [Lk, D], contiguous
        self.ks = np.ascontiguousarray(ops.ks[b, g], np.float32)
        self.vc = ops.V.codes[b, g].astype(np.float32)
        bn, Lk = ops.bn, ops.Lk
        self.vf = [v_tile_factor(ops.V, ops.pq.levels, b, g, t, bn) for t in range(-(-Lk // bn))]

    def closures(self, r0, r1, sub):
        ops, pq, bn = self.ops, self.ops.pq, self.ops.bn
        qc, qf = self.qc[r0:r1], self.qf[r0:r1, None]
        levels = np.float32(pq.levels)
        rows = r1 - r0
        if sub is not None:
            sub["s_int"] = np.zeros((rows, ops.Lk), np.int32)
            sub["p_codes"] = np.zeros((rows, ops.Lk), np.int8)
            sub["p"] = np.zeros((rows, ops.Lk), np.float32)
            sub["o_int"] = np.zeros((len(self.vf), rows, self.vc.shape[1]), np.int32)

        chunk = _ScoreChunks(lambda c: exact_dot(qc, self.kc[c].T), bn, ops.Lk)
        arith = ops.spec.arith
        scaled = {}                        # arith.scores fma: t of the tile just scored

        def scores(sl):
            S = chunk(sl)  # S_int as exact float32 (|S_int| < 2^24)
            if sub is not None:
                sub["s_int"][:, sl] = S.astype(np.int32)
            if arith.scores == "fma":
                t = S * self.ks[None, sl]  # one rounding
                scaled["t"] = t
                return t * qf              # max_j f32(qf * t_j) = f32(qf * max_j t_j)
            S = S * qf  # (f32(S_int) * qf) * f32(k_scale): two f32 roundings, left to right
            S *= self.ks[None, sl]
            return S

        def shift(m_new):                  # x = fma(t, qf, -m_new), one rounding
            return fma(scaled["t"], qf, -m_new[:, None], "fp32")

        def pv(p, sl):
            c32 = pquant(p, pq, as_float=True)
            if ops.guard and c32.max() > 127:
                raise ValueError("spec.p.saturate: a P code exceeds 127 (the SAS output is above "
                                 "1); set p.saturate: true or refit the SAS coefficients")
            O = exact_dot(c32, self.vc[sl])  # O_int, exact (K = tile length <= 256)
            t = sl.start // bn
            contrib = O if arith.v_scale == "deferred" else O * self.vf[t]
            psum = (p if pq.rowsum == "unquantized" else c32 / levels).sum(axis=1, dtype=np.float32)
            if sub is not None:
                sub["p_codes"][:, sl] = c32.astype(np.int8)
                sub["p"][:, sl] = p
                sub["o_int"][t] = O.astype(np.int32)
            return contrib, psum

        engine_kw = {}
        if arith.scores == "fma":
            engine_kw["shift"] = shift
        if arith.v_scale == "deferred":  # one V scale per head: the same vf for every tile
            engine_kw.update(acc_fma=True, out_scale=self.vf[0])
        return scores, pv, engine_kw

    def run_fused(self, r0, r1, vis, rescale, state):
        """Rows r0:r1 through every key tile with the numba kernels; float32 ``[rows, Dv]``;
        the final ``m`` and ``l`` go to ``state``.

        The same sequence as :func:`sim.engine.online_softmax` driving :meth:`closures`, without
        a trace: tiles past every row's last visible key are skipped, the others masked per row
        by ``vis.last`` (all keys visible without causal)."""
        from . import _fused as F  # numba: compiled on first use

        ops, pq, bn, Lk = self.ops, self.ops.pq, self.ops.bn, self.ops.Lk
        rows, Dv = r1 - r0, self.vc.shape[1]
        qc, qf = self.qc[r0:r1], np.ascontiguousarray(self.qf[r0:r1])
        if vis.causal:
            last, hi = np.ascontiguousarray(vis.last, np.int64), vis.hi
        else:
            last, hi = np.full(rows, Lk - 1, np.int64), Lk - 1
        ptab = pquant_table_f32(pq.levels, pq.rounding, pq.saturate)
        levels, quantized = np.float32(pq.levels), pq.rowsum == "quantized"
        sas = ops.spec.softmax.sas if ops.spec.softmax.exp == "sas" else None
        if sas is not None:
            poly_tab = poly_table(tuple(float(c) for c in sas.coefficients))
            lut = np.float32(2.0) ** -np.arange(sas.lut_entries, dtype=np.float32)
            thr = np.float32(sas.threshold)
            f16_to_f32 = _f16_values()
        chunk = _ScoreChunks(lambda c: exact_dot(qc, self.kc[c].T), bn, Lk)
        m = np.full(rows, -np.inf, np.float32)
        m_new = np.empty(rows, np.float32)
        l = np.zeros(rows, np.float32)
        acc = np.zeros((rows, Dv), np.float32)
        O = np.empty((rows, Dv), np.float32)
        psum = np.empty(rows, np.float32)
        bufs = {}
        if sas is None:  # placeholders of the right types for the SAS arguments
            thr, lut, poly_tab, f16_to_f32 = np.float32(0), ptab, ptab, ptab
        for t in range(-(-Lk // bn)):
            c0, c1 = t * bn, min((t + 1) * bn, Lk)
            if c0 > hi:
                continue  # masked for every row: state unchanged (online_softmax skips it)
            n = c1 - c0
            if n not in bufs:
                bufs[n] = (np.empty((rows, n), np.float32),
                           np.empty((rows, n) if sas is None else (1, 1), np.float64),
                           np.empty((rows, n), np.float32))
            x, e64 = bufs[n][:2]
            F.scores_x(chunk(slice(c0, c1)), c0, qf, self.ks[c0:c1], last, m, x, m_new)
            seen = m_new != -np.inf
            fresh = m == -np.inf
            d = np.where(fresh, np.float32(0), m - np.where(seen, m_new, np.float32(0)))
            alpha = np.asarray(rescale(d), np.float32)
            alpha = np.where(fresh, np.where(seen, np.float32(0), np.float32(1)), alpha)
            if sas is None:  # exp2_f32(x) = f32(np.exp2(f64(x))); the last cast in finish_tile
                np.copyto(e64, x)
                np.exp2(e64, out=e64)
            vf = np.atleast_1d(np.asarray(self.vf[t], np.float32))
            if _PV_BLAS:
                codes = bufs[n][2]
                cmax = F.codes_tile(x, e64, sas is not None, thr, lut, poly_tab, f16_to_f32,
                                    ptab, quantized, levels, codes, psum)
                np.matmul(codes, self.vc[c0:c1], out=O)  # O_int, exact (K <= 256)
                F.acc_tile(acc, alpha, O, vf)
            else:
                cmax = F.finish_tile(x, e64, sas is not None, thr, lut, poly_tab, f16_to_f32,
                                     ptab, quantized, levels, self.vc[c0:c1], vf, alpha, acc,
                                     psum)
            if ops.guard and cmax > 127:
                raise ValueError("spec.p.saturate: a P code exceeds 127 (the SAS output is above "
                                 "1); set p.saturate: true or refit the SAS coefficients")
            l = l * alpha + psum
            m, m_new = m_new, m
        state["m"], state["l"] = m, l
        out = np.zeros((rows, Dv), np.float32)
        pos = l > 0
        out[pos] = acc[pos] / l[pos, None]
        return out


def _f16_values() -> np.ndarray:
    """float32 value of every fp16 bit pattern (index = pattern)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


class FloatOperands:
    """Q/K/V cast per ``spec.operands`` (fp16/bf16, or fp8 with per-tensor scales), float32 dots
    and accumulation."""

    fused = False

    def __init__(self, q, k, v, spec, Lq, Lk, qk_scale, tr):
        ops = spec.operands
        self.ops = ops
        (self.q, sq), (self.k, sk), (self.v, sv) = (cast_operand(x, ops, name) for x, name in
                                                    ((q, "q"), (k, "k"), (v, "v")))
        one = np.float32(1)
        sq, sk, self.sv = (one if s is None else s for s in (sq, sk, sv))
        self.factor = np.float32(np.float32(sq * sk) * qk_scale) if ops.scale != "none" else qk_scale
        self.scaled_v = ops.scale != "none"
        self.bn = spec.tiling.block_n
        if tr is not None:
            B, Hq = q.shape[:2]
            tr.update(q=self.q, k=self.k, v=self.v, q_scale=sq, k_scale=sk, v_scale=self.sv,
                      s=np.zeros((B, Hq, Lq, Lk), np.float32),
                      p_op=np.zeros((B, Hq, Lq, Lk), np.float32))

    def group(self, b, g, heads, R, qk_scale):
        return _FloatGroup(self, b, g, heads, R)

class _FloatGroup:  # one (batch, KV head) of FloatOperands
    def __init__(self, ops, b, g, heads, R):
        self.ops = ops
        self.qv = ops.q[b, heads].reshape(R, -1)
        self.kk = ops.k[b, g]
        self.vv = ops.v[b, g]

    def closures(self, r0, r1, sub):
        ops = self.ops
        qv = self.qv[r0:r1]
        pfmt = ops.ops.p
        if sub is not None:
            Lk = self.kk.shape[0]
            for key in ("s", "p", "p_op"):
                sub[key] = np.zeros((r1 - r0, Lk), np.float32)

        chunk = _ScoreChunks(lambda c: qv @ self.kk[c].T, ops.bn, self.kk.shape[0])

        def scores(sl):
            S = chunk(sl) * ops.factor  # f32 accumulation (BLAS order; GPU order differs)
            if sub is not None:
                sub["s"][:, sl] = S
            return S

        def pv(p, sl):
            pc = round_p(p, pfmt)
            contrib = pc @ self.vv[sl]
            if ops.scaled_v:
                contrib *= ops.sv
            if sub is not None:
                sub["p"][:, sl] = p
                sub["p_op"][:, sl] = pc
            return contrib, p.sum(axis=1, dtype=np.float32)

        return scores, pv, {}
