"""The tiled online-softmax engine every simulated method runs on (docs/numerics.md, "Online
softmax state").

The engine owns the state ``m, l, acc`` of a set of independent rows (typically every query row
of the ``G`` query heads that share one KV head: ``rows = G * Lq``) and walks *slots* (key
positions for dense methods, selected-token slots for the sparse one) ``block_n`` at a time, in
increasing order. The method plugs in through four callables; only the order of key tiles
matters numerically, so processing all rows in one pass per tile is the same computation as a
GPU grid of BLOCK_M-row programs.

Interface (the sparse and KV-cache simulators call it too)::

    out = online_softmax(scores, exp, pv, n_slots=Lk, block_n=64, valid=valid, rows=R, dv=Dv,
                         trace=None, rescale=None)          # float32 [R, dv]

- ``scores(sl: slice) -> float32 [R, n]``: scores of slots ``sl`` for every row, already
  multiplied by ``qk_scale`` (the method's ``s``). Masked pairs may hold anything finite.
- ``valid(sl) -> bool [R, n] | None``: which (row, slot) pairs take part (causal, length,
  selection); ``None`` (or ``valid=None``) means all. A tile where no pair is valid is skipped
  without calling ``scores``/``pv``, as the kernels skip fully masked tiles.
- ``exp(x: float32 [R, n]) -> float32 p``: the method's EXP of ``x = s - m_new <= 0``; masked
  entries arrive as ``-inf`` and must give 0.
- ``pv(p: float32 [R, n], sl) -> (float32 [R, dv], float32 [R])``: the method's ``PV`` and
  ``rowsum(P_SUM)``; it quantizes / casts ``p`` itself.
- ``rescale(x: float32 [R]) -> float32``: EXP used for ``alpha = EXP(m - m_new)``; defaults to
  ``exp`` (turbo passes SAS without threshold or table limit). Called with finite ``x <= 0``.
- ``shift(m_new: float32 [R]) -> float32 [R, n]``: the EXP argument of the tile just scored
  when it is not ``s - m_new`` (``arith.scores: fma`` fuses it); masked entries are set to
  ``-inf`` by the engine.
- ``acc_fma``: ``acc = fma(acc, alpha, PV)`` (one rounding) instead of two; ``out_scale``:
  ``out = f32(acc * out_scale) / l`` (a factor deferred to the end, ``arith.v_scale``).

Per tile, in float32 (one IEEE rounding per operation, never fused)::

    s[~valid] = -inf ; m_new = max(m, rowmax(s)) ; p = exp(s - m_new)
    alpha = rescale(m - m_new)        (0 where m = -inf; 1 where m_new = -inf: no key seen yet)
    l = l * alpha + psum ; acc = acc * alpha + PV ; m = m_new
    out = acc / l  (0 for rows with l = 0, i.e. rows that saw no key)

``trace``: a dict to fill, or None. The engine writes ``trace["m"]``, ``trace["l"]`` and
``trace["alpha"]``: float32 ``[n_tiles, R]``, the state after each tile (a skipped tile carries
the state over with alpha 1; ``m`` is ``-inf`` until a row sees a key).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .softmax import fma

__all__ = ["online_softmax", "SimResult", "qk_scale_of", "lse_of", "LOG2E", "TRACE_LIMIT"]

LOG2E = 1.4426950408889634  # float64 log2(e)
TRACE_LIMIT = 1 << 25  # B * Hq * Lq * Lk entries for trace=True


@dataclass
class SimResult:
    """Output of ``sim.simulate``: ``out`` float32 ``[B, Hq, Lq, Dv]``; ``trace`` a dict of
    intermediates (``trace=True``, names and layouts in ``sim.simulate``'s docstring) or None;
    ``spec`` the spec that ran; ``info`` method-specific facts that are not intermediates
    (e.g. cache bytes, calibration source); ``lse`` float32 ``[B, Hq, Lq]`` the row
    log-sum-exp (``simulate(..., return_lse=True)``, see :func:`lse_of`) or None."""

    out: np.ndarray
    trace: dict | None = None
    spec: Any = None
    info: dict = field(default_factory=dict)
    lse: np.ndarray | None = None


def qk_scale_of(sm_scale: float) -> np.float32:
    """``f32(sm_scale * log2(e))``, the product taken in float64 (docs/numerics.md)."""
    return np.float32(float(sm_scale) * LOG2E)


def lse_of(m: np.ndarray, l: np.ndarray) -> np.ndarray:
    """The natural log-sum-exp of the scaled scores from a final online-softmax state: ``m`` is
    the running max of ``s = score * qk_scale`` (log2 units), ``l`` the row sum of ``EXP(s - m)``,
    so ``lse = ln 2 * (m + log2 l)`` (float64 arithmetic, float32 result); ``-inf`` where
    ``l = 0`` (a row that saw no key)."""
    m64, l64 = np.asarray(m, np.float64), np.asarray(l, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(l64 > 0, (m64 + np.log2(np.where(l64 > 0, l64, 1.0))) * np.log(2.0),
                       -np.inf)
    return out.astype(np.float32)

_NEG_INF = np.float32(-np.inf)


def online_softmax(scores: Callable, exp: Callable, pv: Callable, *, n_slots: int, block_n: int,
                   valid: Callable | None, rows: int, dv: int, trace: dict | None = None,
                   rescale: Callable | None = None, shift: Callable | None = None,
                   acc_fma: bool = False, out_scale=None,
                   state: dict | None = None) -> np.ndarray:
    """Run the online softmax over ``n_slots`` slots in tiles of ``block_n``; float32 ``[rows, dv]``.

    See the module docstring for the callables. ``state``: a dict that receives the final
    ``m`` and ``l`` (float32 ``[rows]``; :func:`lse_of` turns them into the log-sum-exp).
    Example (plain float32 attention, one row)::

        >>> import numpy as np
        >>> s = np.float32([[0.0, 1.0, 2.0]]); v = np.eye(3, dtype=np.float32)
        >>> out = online_softmax(lambda sl: s[:, sl], lambda x: np.exp2(x),
        ...                      lambda p, sl: (p @ v[sl], p.sum(1)), n_slots=3, block_n=2,
        ...                      valid=None, rows=1, dv=3)
        >>> np.round(out, 4)
        array([[0.1429, 0.2857, 0.5714]], dtype=float32)
    """
    if n_slots < 0 or block_n < 1 or rows < 0 or dv < 0:
        raise ValueError(f"online_softmax: bad sizes n_slots={n_slots}, block_n={block_n}, "
                         f"rows={rows}, dv={dv}")
    rescale = exp if rescale is None else rescale
    n_tiles = -(-n_slots // block_n)
    m = np.full(rows, _NEG_INF, np.float32)
    l = np.zeros(rows, np.float32)
    acc = np.zeros((rows, dv), np.float32)
    if trace is not None:
        tm = trace["m"] = np.full((n_tiles, rows), _NEG_INF, np.float32)
        tl = trace["l"] = np.zeros((n_tiles, rows), np.float32)
        ta = trace["alpha"] = np.ones((n_tiles, rows), np.float32)
    for t in range(n_tiles):
        sl = slice(t * block_n, min((t + 1) * block_n, n_slots))
        mask = valid(sl) if valid is not None else None
        if mask is not None and not mask.any():
            if trace is not None:
                tm[t], tl[t] = m, l
            continue
        s = np.asarray(scores(sl), np.float32)
        if mask is not None:
            s = np.where(mask, s, _NEG_INF)
        m_new = np.maximum(m, s.max(axis=1))
        seen = m_new != _NEG_INF
        m_use = np.where(seen, m_new, np.float32(0))
        if shift is None:
            x = s - m_use[:, None]  # x = s - m_new (f32); masked stay -inf
        else:
            x = np.asarray(shift(m_use), np.float32)
            if mask is not None:
                x = np.where(mask, x, _NEG_INF)
        p = exp(x)
        fresh = m == _NEG_INF
        d = np.where(fresh, np.float32(0), m - m_use)
        alpha = np.asarray(rescale(d), np.float32)
        alpha = np.where(fresh, np.where(seen, np.float32(0), np.float32(1)), alpha)
        contrib, psum = pv(p, sl)
        l = l * alpha + psum
        if acc_fma:
            acc = _fma32(acc, alpha[:, None], contrib)
        else:
            acc *= alpha[:, None]
            acc += contrib
        m = m_new
        if trace is not None:
            tm[t], tl[t], ta[t] = m, l, alpha
    if state is not None:
        state["m"], state["l"] = m, l
    out = np.zeros((rows, dv), np.float32)
    pos = l > 0
    if out_scale is not None:
        acc = acc * np.asarray(out_scale, np.float32)
    out[pos] = acc[pos] / l[pos, None]
    return out


def _fma32(a, b, c) -> np.ndarray:
    """Correctly rounded float32 ``a * b + c`` (sim.softmax.fma)."""
    return fma(a, b, c, "fp32").astype(np.float32)
