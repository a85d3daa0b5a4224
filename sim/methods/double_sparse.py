"""double_sparse, the simulator path: Double Sparsity (Yang et al., arXiv 2408.07092), label
channels pick the top-k tokens.

Sequence (docs/numerics.md, "double_sparse"), per (batch, query head h, query row i), with
``g = h // (Hq / Hkv)`` the KV head:

1. Calibration (offline): per KV head, rank the D channels by ``channel_metric`` and keep the top
   ``r = spec.sparse.r(D)``; :class:`Calibration` holds the per-channel statistic and can be saved,
   loaded, merged over batches and reused. Without one, the call's own inputs calibrate
   ("oracle" in the trace).
2. Label cache: ``k[..., idx]`` with ``label_bits`` 16 -> fp16, else asymmetric min/max per token
   (``sim.numerics.quantize``, one fp16 scale and int zero point per token, half-even).
3. ``approx = f16(q[..., idx]) . dequant(labels)^T`` in f32.
4. Top-k among the row's visible keys, ties to the lower index, sorted ascending.
5. The fp16_flash sequence over the selected keys, ``BLOCK_N`` selection slots at a time.

Token budget per row (prefill applies decode's rule row by row): a row that sees ``n`` keys keeps
``k(n) = min(n, token_budget)`` with an explicit budget, else ``min(n, max(min_tokens,
ceil(n * token_fraction)))`` -- i.e. ``spec.sparse.k`` applied to the row's visible count; the
explicit budget is validated once against ``Lk`` (``spec.sparse.k(Lk)`` raises when it exceeds
the keys). Sink (first ``sink_tokens``) and recent (last ``recent_tokens`` visible) keys are
always kept, *in addition* to the k chosen by score among the other visible keys.

Protocol options (``spec.sparse``; defaults = the sequence above): ``selection`` ranks the keys
by the label scores (``labels``), by the exact fp16 ``q . k`` scores in f32 (``exact``: the
oracle top-k that the labels approximate) or by position (``recent``: with ``sink_tokens`` = s
and ``token_budget`` = k - s this is StreamingLLM's attention sink + recent window at a total
budget k); ``label_scope: q_head`` calibrates channels per query head and keeps one label cache
per query head (K of its KV head at the head's own channels); ``q_label_bits`` < 16 quantizes
the query labels per row with the label cache's quantizer; ``short_rows: dense`` lets an
explicit ``token_budget`` exceed the keys (rows that see at most k keys attend to all of them,
as the Double Sparsity code does below its ``heavy_const``).

Channel statistics for GQA sum over the query heads of a group (``label_scope: kv_head``). ``qk`` pairs query row ``i`` with
key ``i + Lk - Lq`` (the token at the same position, bottom-right aligned like the causal mask):
``mean |q[i, c] * k[i + Lk - Lq, c]|`` (the paper's |Q * K| outlier statistic).

>>> import numpy as np
>>> from sim import load_method
>>> rng = np.random.default_rng(0)
>>> q = rng.standard_normal((1, 4, 8, 16)).astype(np.float16)
>>> k = rng.standard_normal((1, 2, 8, 16)).astype(np.float16)
>>> cal = calibrate(q, k, "qk")
>>> cal.channels(4).shape
(2, 4)
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks import as_numpy, check_bool, check_qkv, check_sm_scale, last_visible_key
from ..engine import SimResult, lse_of, online_softmax, qk_scale_of
from ..numerics.quantize import dequantize, quantize
from ..operands import check_representable
from ..softmax import exp2_f32
from .base import CalibrationKind, SimMethod

__all__ = ["Calibration", "calibrate", "LabelCache", "label_cache", "row_budget",
           "select_topk", "simulate_double_sparse", "check_problem", "CHANNEL_METRICS"]

CHANNEL_METRICS = ("q", "k", "qk")
_MAX_SCORES = 1 << 22  # score elements held at once (one chunk of rows of one head)


def _f16(x: np.ndarray) -> np.ndarray:
    """Round to fp16 (nearest even) and hold as float32."""
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def _f16_input(x: np.ndarray, name: str) -> np.ndarray:
    """:func:`_f16` of an input, refused beyond the fp16 range (no Inf operands)."""
    with np.errstate(over="ignore"):
        return check_representable(_f16(x), "fp16", name)


def check_problem(spec, *, q_len: int, kv_len: int, head_dim: int) -> None:
    """The spec against a problem's sizes, the one rule of every executor (the simulator, the
    cost model and the GPU decode call it): ``r = spec.sparse.r(head_dim)`` label channels fit
    the head dim, and an explicit ``sparse.token_budget`` does not exceed the ``kv_len`` keys
    (a budget above the context is a spec meant for longer contexts, refused rather than
    silently attending to every key). ValueError naming the dotted field."""
    spec.sparse.r(head_dim)
    spec.sparse.k(kv_len)


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Calibration:
    """Per-KV-head channel statistic: ``sums[g, c] / count`` is the mean metric of channel c.

    ``source`` says where it came from ("oracle" = the call's own inputs, or a caller's label
    such as a dataset slice). Save with :meth:`save` (``.npz``) and reload with :meth:`load`.
    """

    metric: str
    sums: np.ndarray     # float64 [Hkv, D]
    count: int           # number of samples (token x query head pairs) summed per KV head
    source: str = "oracle"

    def __post_init__(self):
        if self.metric not in CHANNEL_METRICS:
            raise ValueError(f"metric: expected one of {CHANNEL_METRICS}, got {self.metric!r}")
        s = np.asarray(self.sums)
        if s.ndim != 2 or s.dtype != np.float64 or not np.isfinite(s).all():
            raise ValueError(f"sums: expected a finite float64 [Hkv, D] array, got {s.dtype} {s.shape}")
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count: expected a positive int, got {self.count!r}")

    @property
    def scores(self) -> np.ndarray:
        """Mean metric per (KV head, channel), float64 [Hkv, D]."""
        return self.sums / self.count

    @property
    def shape(self) -> tuple[int, int]:
        return self.sums.shape

    def channels(self, r: int) -> np.ndarray:
        """The top ``r`` channels per KV head, int64 [Hkv, r], ascending channel order.

        Ranking: larger mean first, ties to the lower channel index."""
        hkv, d = self.sums.shape
        if not isinstance(r, (int, np.integer)) or not 1 <= r <= d:
            raise ValueError(f"r: expected an int in [1, D={d}], got {r!r}")
        order = np.argsort(-self.scores, axis=1, kind="stable")[:, :r]
        return np.sort(order, axis=1)

    def merge(self, other: "Calibration") -> "Calibration":
        """Statistics over both sample sets (same metric and shape)."""
        if not isinstance(other, Calibration):
            raise TypeError(f"other: expected a Calibration, got {type(other).__name__}")
        if other.metric != self.metric or other.shape != self.shape:
            raise ValueError(f"other: expected metric {self.metric!r} and shape {self.shape}, got "
                             f"{other.metric!r} and {other.shape}")
        src = self.source if self.source == other.source else f"{self.source} + {other.source}"
        return Calibration(self.metric, self.sums + other.sums, self.count + other.count, src)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` (sums, count, metric, source); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"metric": self.metric, "count": self.count, "source": self.source,
                           "kind": "double_sparse.channels"})
        with open(path, "wb") as f:
            np.savez(f, sums=self.sums, meta=np.array(meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path: no calibration file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files") or "sums" not in z or "meta" not in z:
                    raise ValueError(f"keys {list(getattr(z, 'files', []))}")
                meta = json.loads(str(z["meta"]))
                sums = np.asarray(z["sums"]).astype(np.float64)
            if not isinstance(meta, dict) or meta.get("kind") != "double_sparse.channels":
                raise ValueError(f"it holds {meta.get('kind') if isinstance(meta, dict) else meta!r}")
            metric, count, source = meta["metric"], meta["count"], meta["source"]
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            # np.load / json / a missing field: the file is not a calibration this code wrote
            raise ValueError(f"path: {path} is not a double_sparse calibration ({e})") from None
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"path: {path} is not a double_sparse calibration (count {count!r})")
        return cls(metric, sums, count, str(source))


def calibrate(q, k, metric: str = "qk", *, source: str = "oracle",
              scope: str = "kv_head") -> Calibration:
    """Channel statistics of one batch of (post-RoPE) ``q`` ``[B, Hq, Lq, D]`` and ``k``
    ``[B, Hkv, Lk, D]``; see the module docstring for ``qk``'s pairing. ``scope="kv_head"``
    sums the query heads of a group (``[Hkv, D]``), ``"q_head"`` keeps one row per query head
    (``[Hq, D]``; spec ``sparse.label_scope``). Merge batches with :meth:`Calibration.merge`.
    """
    if metric not in CHANNEL_METRICS:
        raise ValueError(f"metric: expected one of {CHANNEL_METRICS}, got {metric!r}")
    if scope not in ("kv_head", "q_head"):
        raise ValueError(f"scope: expected 'kv_head' or 'q_head', got {scope!r}")
    q, k = as_numpy(q, "q"), as_numpy(k, "k")
    B, Hq, Hkv, Lq, Lk, D, _, G = check_qkv(q, k, k, names=("q", "k", "k"))
    qa = np.abs(np.asarray(q, dtype=np.float64)).reshape(B, Hkv, G, Lq, D)
    ka = np.abs(np.asarray(k, dtype=np.float64))
    per_q = scope == "q_head"
    if metric == "q":
        sums, count = (qa.sum(axis=(0, 3)).reshape(Hq, D), B * Lq) if per_q else \
            (qa.sum(axis=(0, 2, 3)), B * G * Lq)
    elif metric == "k":
        sums, count = ka.sum(axis=(0, 2)), B * Lk
        if per_q:
            sums = np.repeat(sums, G, axis=0)
    else:
        n = min(Lq, Lk)  # rows whose same-position key exists
        qp = qa[:, :, :, Lq - n:]                     # rows i >= Lq - n
        kp = ka[:, :, Lk - n:][:, :, None]            # keys i + Lk - Lq
        sums, count = ((qp * kp).sum(axis=(0, 3)).reshape(Hq, D), B * n) if per_q else \
            ((qp * kp).sum(axis=(0, 2, 3)), B * G * n)
    return Calibration(metric, np.ascontiguousarray(sums, dtype=np.float64), int(count), source)


# --------------------------------------------------------------------------------------------
# label cache
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LabelCache:
    """K's label channels as the decode kernel reads them.

    ``values``: float32 ``[B, Hkv, Lk, r]`` (fp16 labels, or ``(code - zp) * scale`` in f32).
    ``codes``/``scale``/``zero_point``: the asymmetric per-token quantization (None for 16 bits).
    """

    values: np.ndarray
    channels: np.ndarray
    bits: int
    codes: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """Storage bytes: fp16 labels, or packed codes + one fp16 scale and one 2-byte zero
        point per token (the zero point is an integer, ``|zp| <= 2^16`` by quantize's policy)."""
        B, H, L, r = self.values.shape
        if self.bits == 16:
            return B * H * L * r * 2
        return B * H * L * (math.ceil(r * self.bits / 8) + 2 + 2)


def label_cache(k, channels: np.ndarray, bits: int) -> LabelCache:
    """Build the label cache of ``k`` ``[B, Hkv, Lk, D]`` for ``channels`` ``[Hkv, r]``."""
    k = np.asarray(k)
    ch = np.asarray(channels)
    if ch.ndim != 2 or ch.shape[0] != k.shape[1] or ch.dtype.kind not in "iu":
        raise ValueError(f"channels: expected an int [Hkv={k.shape[1]}, r] array, got "
                         f"{ch.dtype} {ch.shape}")
    if ch.min() < 0 or ch.max() >= k.shape[-1]:
        raise ValueError(f"channels: expected indices in [0, D={k.shape[-1]}), got "
                         f"[{ch.min()}, {ch.max()}]")
    if bits not in (2, 4, 8, 16):
        raise ValueError(f"bits: expected 2, 4, 8 or 16, got {bits!r}")
    lab = np.take_along_axis(k, ch[None, :, None, :], axis=-1)   # [B, Hkv, Lk, r]
    lab16 = np.asarray(lab, dtype=np.float16)
    if bits == 16:
        return LabelCache(lab16.astype(np.float32), ch, 16)
    qz = quantize(lab16, bits, symmetric=False, block=(1, 1, 1, None), rounding="half_even",
                  scale_dtype="fp16", zero_scale="one", arithmetic="fp32")
    return LabelCache(dequantize(qz, dtype="fp32"), ch, bits, qz.codes, qz.scale, qz.zero_point)


# --------------------------------------------------------------------------------------------
# budget and selection
# --------------------------------------------------------------------------------------------
def row_budget(sparse, visible) -> np.ndarray:
    """Keys chosen by score for rows that see ``visible`` keys (int array; see module doc)."""
    n = np.asarray(visible, dtype=np.int64)
    if sparse.token_budget is not None:
        k = np.full_like(n, sparse.token_budget)
    else:
        k = np.maximum(sparse.min_tokens, np.ceil(n * float(sparse.token_fraction)).astype(np.int64))
    return np.minimum(k, n)


def _forced(visible: np.ndarray, Lk: int, sink: int, recent: int) -> np.ndarray:
    j = np.arange(Lk)[None, :]
    v = visible[:, None]
    return (j < v) & ((j < sink) | (j >= v - recent))


def select_topk(scores: np.ndarray, visible: np.ndarray, budget: np.ndarray, *,
                sink: int = 0, recent: int = 0) -> np.ndarray:
    """Boolean ``[rows, Lk]`` selection: sink/recent keys plus the ``budget[row]`` best-scored
    other visible keys (key j is visible to a row iff ``j < visible[row]``), ties to the lower
    index.

    >>> s = np.float32([[1, 3, 3, 2, 9]])
    >>> select_topk(s, np.array([4]), np.array([2])).astype(int)
    array([[0, 1, 1, 0, 0]])
    """
    rows, Lk = scores.shape
    vis = np.arange(Lk)[None, :] < visible[:, None]
    forced = _forced(visible, Lk, sink, recent) if (sink or recent) else np.zeros_like(vis)
    cand = vis & ~forced
    key = np.where(cand, -scores.astype(np.float64), np.inf)
    budget = np.asarray(budget)
    ub = np.unique(budget)
    if ub.size <= 4 and Lk > 256 and int(ub.max()) < Lk // 4:
        return forced | _select_by_threshold(key, cand, budget, ub)
    order = np.argsort(key, axis=1, kind="stable")      # best first, ties -> lower index
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(Lk)[None, :].repeat(rows, 0), axis=1)
    return forced | (cand & (rank < budget[:, None]))


# --------------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------------
def as_calibration(calibration, spec, Hkv: int, D: int) -> Calibration:
    """``calibration`` (a Calibration or a path to a saved one) checked against the spec's
    channel metric and a ``[Hkv, D]`` shape (``[Hq, D]`` with ``sparse.label_scope: q_head``:
    pass Hq as ``Hkv``). Shared by the simulator and the GPU label cache so both accept and
    refuse the same inputs."""
    metric = spec.sparse.channel_metric
    if isinstance(calibration, (str, os.PathLike)):
        calibration = Calibration.load(calibration)
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration: expected a sim.methods.double_sparse.Calibration, a path to one, or None; "
                        f"got {type(calibration).__name__}")
    if calibration.shape != (Hkv, D):
        raise ValueError(f"calibration: expected channel statistics for [Hkv={Hkv}, D={D}], got "
                         f"{calibration.shape}")
    if calibration.metric != metric:
        raise ValueError(f"calibration: spec.sparse.channel_metric is {metric!r}, the calibration "
                         f"was computed with {calibration.metric!r}")
    return calibration


def _calibration_for(calibration, q, k, spec, Hkv, D) -> Calibration:
    if calibration is None:
        return calibrate(q, k, spec.sparse.channel_metric, source="oracle",
                         scope=spec.sparse.label_scope)
    return as_calibration(calibration, spec, Hkv, D)


def _query_labels(qL: np.ndarray, bits: int) -> np.ndarray:
    """Query label values: fp16 (``bits`` 16) or asymmetric per-row codes dequantized to f32
    (the label cache's quantizer applied to the query's label channels)."""
    if bits == 16:
        return qL
    qz = quantize(np.asarray(qL, dtype=np.float16), bits, symmetric=False, block=(1, None),
                  rounding="half_even", scale_dtype="fp16", zero_scale="one", arithmetic="fp32")
    return dequantize(qz, dtype="fp32")


def _select_by_threshold(key, cand, budget, values) -> np.ndarray:
    """The same selection as the stable sort in :func:`select_topk` (the ``budget[row]``
    smallest keys among the candidates, ties to the lower index), found with a partition per
    distinct budget: keys below the row's k-th smallest are taken, then keys equal to it in
    index order until the row holds k."""
    sel = np.zeros(key.shape, bool)
    ncand = cand.sum(axis=1)
    for b in values:
        rows = np.flatnonzero(budget == b)
        if b <= 0 or rows.size == 0:
            continue
        kr = key[rows]
        full = ncand[rows] <= b                      # every candidate fits
        if full.any():
            sel[rows[full]] = cand[rows[full]]
        part = ~full
        if not part.any():
            continue
        rr, kp = rows[part], kr[part]
        thr = np.partition(kp, int(b) - 1, axis=1)[:, int(b) - 1:int(b)]
        below = kp < thr
        tie = kp == thr
        need = int(b) - below.sum(axis=1, keepdims=True)
        sel[rr] = below | (tie & (np.cumsum(tie, axis=1) <= need))
    return sel


def simulate_double_sparse(q, k, v, spec, *, causal: bool = False, sm_scale=None,
                           calibration=None, trace: bool = False):
    """Run ``spec`` (method double_sparse) on q/k/v; returns ``sim.simulate.SimResult``.

    Trace (``trace=True``): ``indices`` int32 ``[B, Hq, Lq, kmax]`` ascending, -1 padded;
    ``counts`` ``[B, Hq, Lq]``; ``budget`` ``[Lq]`` (keys chosen by score per row);
    ``approx_scores`` f32 ``[B, Hq, Lq, Lk]`` (-inf where not visible); ``recall`` float64
    ``[B, Hq, Lq]``: share of the row's true top-k(budget) by float64 exact scores that the
    approximate selection found (sink/recent keys excluded on both sides; NaN for rows with no
    budget) and ``recall_mean``; ``label_channels``; ``label_bytes``; ``calibration``
    ("oracle" or the calibration's source).
    """
    if spec.method != "double_sparse":
        raise ValueError(f"spec: expected a double_sparse spec, got method {spec.method!r}")
    causal = check_bool(causal, "causal")
    shp = check_qkv(q, k, v)
    B, Hq, Hkv, Lq, Lk, D, Dv, G = shp
    sm = check_sm_scale(sm_scale, D, shp.absmax)
    sp = spec.sparse
    check_problem(spec, q_len=Lq, kv_len=Lk, head_dim=D)
    r = sp.r(D)
    q16, k16, v16 = _f16_input(q, "q"), _f16_input(k, "k"), _f16_input(v, "v")
    per_q = sp.label_scope == "q_head"
    cal = _calibration_for(calibration, q, k, spec, Hq if per_q else Hkv, D)
    channels = cal.channels(r)
    # q_head scope: one label cache per query head (K of its KV head, the head's own channels)
    k_lab = np.repeat(np.asarray(k), G, axis=1) if per_q and G > 1 else k
    labels = label_cache(k_lab, channels, sp.label_bits)
    qk_scale = qk_scale_of(sm)
    rows_idx = np.arange(Lq)
    visible = (np.clip(last_visible_key(rows_idx, Lq, Lk) + 1, 0, Lk) if causal
               else np.full(Lq, Lk))
    budget = row_budget(sp, visible)
    out = np.zeros((B, Hq, Lq, Dv), np.float32)
    lse = np.full((B, Hq, Lq), -np.inf, np.float32)
    block_n = spec.tiling.block_n
    chunk = max(1, min(Lq, _MAX_SCORES // max(Lk, 1)))
    tr_cnt, tr_approx, tr_recall = [], [], []
    if trace:
        tr_cnt = np.zeros((B, Hq, Lq), np.int32)
        tr_approx = np.full((B, Hq, Lq, Lk), -np.inf, np.float32)
        tr_recall = np.full((B, Hq, Lq), np.nan)
        idx_rows: dict[tuple, np.ndarray] = {}

    for b in range(B):
        for h in range(Hq):
            g = h // G
            lh = h if per_q else g
            ch = channels[lh]
            qL = _query_labels(_f16(q[b, h][:, ch]), sp.q_label_bits)
            kL = labels.values[b, lh]
            kg, vg = k16[b, g], v16[b, g]
            for r0 in range(0, Lq, chunk):
                r1 = min(Lq, r0 + chunk)
                vis = visible[r0:r1]
                if sp.selection == "labels":
                    approx = (qL[r0:r1] @ kL.T).astype(np.float32)
                elif sp.selection == "exact":
                    approx = (q16[b, h, r0:r1] @ kg.T).astype(np.float32)
                else:  # recent: rank by position, newest first
                    approx = np.broadcast_to(np.arange(Lk, dtype=np.float32), (r1 - r0, Lk))
                sel = select_topk(approx, vis, budget[r0:r1], sink=sp.sink_tokens,
                                  recent=sp.recent_tokens)
                counts = sel.sum(axis=1)
                kmax = int(counts.max())
                idx = np.argsort(~sel, axis=1, kind="stable")[:, :kmax]   # ascending selected
                if kmax:
                    state: dict = {}
                    out[b, h, r0:r1] = _attend(q16[b, h, r0:r1], kg, vg, idx, counts, qk_scale,
                                               block_n, online_softmax, state)
                    lse[b, h, r0:r1] = lse_of(state["m"], state["l"])
                if trace:
                    tr_cnt[b, h, r0:r1] = counts
                    vmask = np.arange(Lk)[None, :] < vis[:, None]
                    tr_approx[b, h, r0:r1] = np.where(vmask, approx, -np.inf)
                    idx_rows[(b, h, r0)] = np.where(np.arange(kmax)[None, :] < counts[:, None],
                                                    idx, -1)
                    exact = q[b, h, r0:r1].astype(np.float64) @ k[b, g].astype(np.float64).T
                    true = select_topk(exact, vis, budget[r0:r1], sink=sp.sink_tokens,
                                       recent=sp.recent_tokens)
                    hit = sel & true
                    if sp.sink_tokens or sp.recent_tokens:  # kept tokens are not score hits
                        hit &= ~_forced(vis, Lk, sp.sink_tokens, sp.recent_tokens)
                    hit = hit.sum(axis=1)
                    kb = budget[r0:r1]
                    tr_recall[b, h, r0:r1] = np.where(kb > 0, hit / np.maximum(kb, 1), np.nan)
    tr = None
    if trace:
        kmax_all = int(tr_cnt.max()) if tr_cnt.size else 0
        indices = np.full((B, Hq, Lq, kmax_all), -1, np.int32)
        for (b, h, r0), ix in idx_rows.items():
            indices[b, h, r0:r0 + ix.shape[0], :ix.shape[1]] = ix
        tr = {"method": "double_sparse", "calibration": cal.source,
              "label_channels": channels, "label_bits": sp.label_bits, "r": r,
              "label_bytes": labels.nbytes, "budget": budget, "indices": indices,
              "counts": tr_cnt, "approx_scores": tr_approx, "recall": tr_recall,
              "recall_mean": float(np.nanmean(tr_recall)) if np.isfinite(tr_recall).any()
              else float("nan"), "qk_scale": qk_scale}
        if labels.codes is not None:
            tr.update(label_codes=labels.codes, label_scale=labels.scale,
                      label_zero_point=labels.zero_point)
    return SimResult(out=out, trace=tr, spec=spec, lse=lse,
                     info={"calibration": cal.source, "label_bytes": labels.nbytes, "r": r})


def _attend(qr, kg, vg, idx, counts, qk_scale, block_n, online_softmax, state=None) -> np.ndarray:
    """fp16_flash sequence over each row's selected keys ``idx[row, :counts[row]]``; the final
    engine state goes to ``state`` (the log-sum-exp over the selected keys)."""
    rows, kmax = idx.shape
    slots = np.arange(kmax)

    def scores(sl):
        kk = kg[idx[:, sl]]                                   # [rows, n, D] f32 (fp16 values)
        s = np.einsum("rd,rnd->rn", qr, kk, dtype=np.float32)
        return (s * qk_scale).astype(np.float32)

    def valid(sl):
        return slots[sl][None, :] < counts[:, None]

    exp = exp2_f32

    def pv(p, sl):
        p16 = _f16(p)
        contrib = np.einsum("rn,rnd->rd", p16, vg[idx[:, sl]], dtype=np.float32)
        return contrib, p.sum(axis=1, dtype=np.float32)

    return online_softmax(scores, exp, pv, n_slots=kmax, block_n=block_n, valid=valid,
                          rows=rows, dv=vg.shape[-1], state=state)


def _check_spec(spec) -> None:
    if spec.operands.format != "fp16" or spec.operands.scale != "none":
        raise ValueError(f"operands: double_sparse attends over fp16 K/V (format fp16, scale none), "
                         f"got format {spec.operands.format!r}, scale {spec.operands.scale!r}")


def _run(q, k, v, spec, shp, *, causal, sm_scale, calibration, trace, mode):
    return simulate_double_sparse(q, k, v, spec, causal=causal, sm_scale=sm_scale,
                                  calibration=calibration, trace=trace)


def label_bytes(bits: int, r: int, *, tokens: int, kv_heads: int) -> int:
    """Bytes of the label cache (:attr:`LabelCache.nbytes` without building it)."""
    if bits == 16:
        return kv_heads * tokens * r * 2
    return kv_heads * tokens * (math.ceil(r * bits / 8) + 2 + 2)


def _kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration):
    """The full FP16 K/V (the method gathers from it) plus the label cache (none for the exact
    and recent selections; one per query head with ``label_scope: q_head``, whose head count
    is the calibration's rows)."""
    sp = spec.sparse
    fp16 = 2 * 2 * tokens * kv_heads * head_dim
    if sp.selection != "labels":
        return fp16
    heads = kv_heads
    if sp.label_scope == "q_head":
        if calibration is None:
            raise ValueError("calibration: label_scope q_head counts one label cache per query "
                             "head; pass the calibration (its rows are the query heads)")
        heads = calibration.shape[0]
    return fp16 + label_bytes(sp.label_bits, sp.r(head_dim), tokens=tokens, kv_heads=heads)


CALIBRATION = CalibrationKind(
    "double_sparse_channels",
    compute=lambda q, k, v, spec, source: calibrate(q, k, spec.sparse.channel_metric,
                                                    source=source, scope=spec.sparse.label_scope),
    load=Calibration.load,
    key=lambda spec: spec.sparse.channel_metric + (
        "" if spec.sparse.label_scope == "kv_head" else "/" + spec.sparse.label_scope),
    suffix=".npz")

METHOD = SimMethod("double_sparse", sections=frozenset({"operands", "sparse"}), exps=("exp2",),
                   run=_run, check_spec=_check_spec, kv_bytes=_kv_bytes, calibrated=(None,),
                   calibration=CALIBRATION, selects_keys=True, check_problem=check_problem,
                   doc="label-channel scores select top-k tokens; FP16 attention over them")
