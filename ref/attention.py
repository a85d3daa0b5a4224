"""Exact attention in float64 numpy: the ground truth every executor is measured against.

Definition, for query head ``h`` (kv head ``g = h // (Hq // Hkv)``) and query row ``i``::

    s_j   = sm_scale * dot(q[b, h, i], k[b, g, j])        for visible keys j
    lse_i = log(sum_j exp(s_j))                             (natural log)
    out_i = sum_j exp(s_j - lse_i) * v[b, g, j]

Visible keys are all ``j`` without ``causal``; with ``causal`` they are ``j <= i + (Lk - Lq)``
(bottom-right aligned, :func:`sim.checks.last_visible_key`).

Empty rows (``causal`` with ``Lq > Lk``: rows ``i < Lq - Lk`` see no key): ``out_i = 0`` and
``lse_i = -inf``, the log of an empty sum. The zero output matches FlashAttention-2. The lse
differs on purpose: FlashAttention-2's non-split kernel stores ``+inf`` there (so that its
backward ``exp(s - lse)`` vanishes), while ``-inf`` is what makes the log-sum-exp merge of partial
results (``logaddexp``) treat an empty part as contributing nothing.

Memory: rows are processed per (batch, kv head) in blocks of at most ``max(2**22, Lk)`` scores
(32 MiB of float64 for Lk <= 2**22), so Lq = Lk = 16384 never materialises an ``Lq x Lk`` matrix.
Under ``causal`` each block only reads keys up to its last visible one.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sim.checks import (check_bool, check_qkv, check_sm_scale, from_hnd, last_visible_key,
                        resolve_causal, resolve_layout)

__all__ = ["attention"]

# Scores held at once (elements of float64). Rows per block = max(1, _BLOCK_SCORES // Lk).
_BLOCK_SCORES = 1 << 22


def _as_numpy(x: Any) -> np.ndarray:
    """numpy arrays pass through; torch tensors (any device, incl. bf16) become float64 numpy."""
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().double().numpy()


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: bool | None = None,
    sm_scale: float | None = None,
    return_lse: bool = False,
    is_causal: bool | None = None,
    tensor_layout: str = "HND",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Exact softmax attention computed in float64.

    Args:
        q: ``[B, Hq, Lq, D]``; k: ``[B, Hkv, Lk, D]``; v: ``[B, Hkv, Lk, Dv]``. Any float dtype,
            numpy or torch (converted exactly to float64). ``Hq`` must be a multiple of ``Hkv``;
            query head ``h`` uses kv head ``h // (Hq // Hkv)``. ``Dv`` may differ from ``D``.
        causal: bottom-right aligned causal mask (row ``i`` sees keys ``j <= i + Lk - Lq``);
            default False. ``is_causal``: an alias (give either, or equal values).
        sm_scale: score scale, default ``1/sqrt(D)``; positive, finite, and small enough that
            the scores stay within float64 (``check_sm_scale(..., arithmetic="fp64")``).
        return_lse: also return the float64 natural-log-sum-exp of the scaled scores per row,
            ``[B, Hq, Lq]`` (``-inf`` for rows that see no key), whatever the layout.
        tensor_layout: "HND" (``[B, H, L, D]``, default) or "NHD" (``[B, L, H, D]``) for the
            inputs and ``out`` (a view); see :func:`sim.checks.resolve_layout`.

    Returns:
        float64 ``[B, Hq, Lq, Dv]`` (zeros for rows that see no key), or ``(out, lse)``.

    Raises:
        TypeError/ValueError from :func:`sim.checks.check_qkv`, ``resolve_layout``,
        ``resolve_causal`` and ``check_sm_scale`` (scores beyond float64's range), naming the
        argument.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((1, 4, 3, 16)); kv = rng.standard_normal((1, 2, 5, 16))
    >>> out, lse = attention(q, kv, kv, causal=True, return_lse=True)
    >>> out.shape, out.dtype, lse.shape
    ((1, 4, 3, 16), dtype('float64'), (1, 4, 3))
    """
    q, k, v = resolve_layout(q, k, v, tensor_layout)
    shp = check_qkv(q, k, v)
    scale = check_sm_scale(sm_scale, shp.D, shp.absmax, arithmetic="fp64")
    causal = resolve_causal(causal, is_causal)
    return_lse = check_bool(return_lse, "return_lse")
    q, k, v = _as_numpy(q), _as_numpy(k), _as_numpy(v)
    B, Hq, Hkv, Lq, Lk, D, Dv, group = shp

    out = np.zeros((B, Hq, Lq, Dv), np.float64)
    lse = np.full((B, Hq, Lq), -np.inf, np.float64)
    # The `group` query heads of one kv head are stacked into one row dimension of size
    # group * Lq (flat row r is head r // Lq, query position r % Lq); views, no copies.
    rows_total = group * Lq
    block = max(1, _BLOCK_SCORES // Lk)
    for b in range(B):
        for g in range(Hkv):
            heads = slice(g * group, (g + 1) * group)
            qg = q[b, heads].reshape(rows_total, D)
            og = out[b, heads].reshape(rows_total, Dv)  # view into out
            lg = lse[b, heads].reshape(rows_total)  # view into lse
            for r0 in range(0, rows_total, block):
                r1 = min(r0 + block, rows_total)
                _block(qg[r0:r1], k[b, g], v[b, g], scale, causal, r0, Lq, og[r0:r1], lg[r0:r1])
    out = from_hnd(out, tensor_layout)
    return (out, lse) if return_lse else out


def _block(qb, kg, vg, scale, causal, r0, Lq, out_b, lse_b) -> None:
    """Attention for one block of flat query rows; writes ``out_b`` and ``lse_b`` in place."""
    Lk = kg.shape[0]
    n_keys = Lk
    if causal:
        pos = np.arange(r0, r0 + qb.shape[0]) % Lq  # query position of each flat row
        last = last_visible_key(pos, Lq, Lk)
        n_keys = int(last.max()) + 1  # keys beyond this are masked for every row of the block
        if n_keys <= 0:
            return  # every row empty: out stays 0, lse stays -inf
    kb = kg[:n_keys].astype(np.float64, copy=False)
    vb = vg[:n_keys].astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected and raised below
        s = qb.astype(np.float64, copy=False) @ kb.T
        s *= scale
    if causal:
        s[np.arange(n_keys)[None, :] > last[:, None]] = -np.inf
    m = s.max(axis=1)
    seen = m != -np.inf  # rows with at least one visible key (NaN counts as seen: raises below)
    if not np.isfinite(m[seen]).all():
        raise ValueError("q, k: attention scores overflow float64; q and k magnitudes are too "
                         "large for sm_scale")
    m[~seen] = 0.0  # exp(-inf - 0) = 0: empty rows produce l = 0, handled below
    s -= m[:, None]
    np.exp(s, out=s)
    l = s.sum(axis=1)
    acc = s @ vb
    out_b[seen] = acc[seen] / l[seen, None]
    lse_b[seen] = m[seen] + np.log(l[seen])
