"""Kernel against simulator: the one comparison that the kernel tests, ``qsattn validate`` and
``qsattn bench`` share.

Both sides use the simulator's trace names and layouts (``sim.simulate``'s docstring; the kernel
traces of :mod:`gpu.api`). :func:`compare` reports, per integer intermediate present on both
sides, how many elements are identical (the contract promises all of them where no hardware
``exp2`` is involved: codes, scales, ``s_int``, SAS ``p_codes`` and ``o_int``, the running
maxima, selected indices), plus exact consistency checks that hold whatever the exp
(``o_int`` = the kernel's own P codes times the V codes), and the output's agreement in ULPs of
the call's dtype. Nothing here asserts: callers decide what a pass is (:meth:`Comparison.failures`
gives the contract's verdict).

>>> cmp = compare(sim_result, kernel_result, dtype="float16")        # doctest: +SKIP
>>> cmp.ints["s_int"].identical, cmp.out.max_ulp                      # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["compare", "Comparison", "KeyAgreement", "OutAgreement", "ulp", "EXP_FREE"]

# keys whose values never depend on an exponential
EXP_FREE = ("q_codes", "k_codes", "v_codes", "q_scale", "k_scale", "v_scale", "s_int", "m_sas",
            "indices")
# compared on the visible (row, key) pairs only (masked entries are 0 on one side, -inf or
# skipped on the other)
_PAIRWISE = ("s_int", "p_codes")
_INT_KEYS = ("q_codes", "k_codes", "v_codes", "q_scale", "k_scale", "v_scale", "s_int",
             "p_codes", "o_int")


def ulp(x, dtype: str = "float16") -> np.ndarray:
    """Spacing of float16 / bfloat16 around ``|x|`` (subnormal spacing below the normal range)."""
    mant, emin = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126)}[dtype]
    a = np.maximum(np.abs(np.asarray(x, np.float64)), 2.0 ** emin)
    return 2.0 ** (np.floor(np.log2(a)) - mant)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
        if str(x.dtype).endswith(("bfloat16", "float16")):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


@dataclass(frozen=True)
class KeyAgreement:
    """Identical elements of one intermediate (``total`` compared, ``identical`` equal)."""

    total: int
    identical: int
    exp_free: bool
    note: str = ""
    extra: tuple = ()          # (name, value) pairs reported with the row

    @property
    def mismatches(self) -> int:
        return self.total - self.identical

    @property
    def pct(self) -> float:
        return 100.0 * self.identical / self.total if self.total else 100.0

    def row(self) -> dict:
        d = {"identical_pct": self.pct, "mismatches": self.mismatches, "elements": self.total,
             "exp_free": self.exp_free}
        if self.note:
            d["note"] = self.note
        d.update(self.extra)
        return d


@dataclass(frozen=True)
class OutAgreement:
    """Output agreement: share of elements within ``bound`` ULPs (+ ``abs_slack``) of the
    simulator, over ``rows`` compared rows."""

    within_pct: float
    max_ulp: float
    bound: float
    abs_slack: float
    rows: int


@dataclass
class Comparison:
    ints: dict = field(default_factory=dict)     # key -> KeyAgreement
    out: OutAgreement | None = None
    extras: dict = field(default_factory=dict)

    def failures(self, p_code_tolerance: float = 1e-3) -> list[str]:
        """What breaks the contract: any exp-free mismatch; exp-dependent P codes differing in
        more than ``p_code_tolerance`` of the elements (hardware ``ex2.approx``); an output
        element outside the bound."""
        bad = []
        for key, a in self.ints.items():
            if a.note:
                bad.append(f"{key}: {a.note}")
            elif a.exp_free and a.mismatches:
                bad.append(f"{key}: {a.mismatches} of {a.total} differ")
            elif not a.exp_free and a.mismatches > p_code_tolerance * a.total:
                bad.append(f"{key}: {a.mismatches} of {a.total} differ (tolerance "
                           f"{p_code_tolerance:g})")
        if self.out is not None and self.out.within_pct < 100.0:
            bad.append(f"out: {100 - self.out.within_pct:.3g}% of elements beyond "
                       f"{self.out.bound} ulp (max {self.out.max_ulp:.3g})")
        return bad

    def to_row(self) -> dict:
        row = {"ints": {k: a.row() for k, a in self.ints.items()}, **self.extras}
        if self.out is not None:
            row.update(within_ulp_pct=self.out.within_pct, max_ulp=self.out.max_ulp,
                       ulp_bound=self.out.bound, abs_slack=self.out.abs_slack,
                       rows_compared=self.out.rows)
        return row


def _agree(a, b, exp_free: bool, mask=None) -> KeyAgreement:
    a, b = np.asarray(a), np.asarray(b)
    if a.size == b.size and a.shape != b.shape and a.ndim != b.ndim:
        a, b = a.reshape(-1), b.reshape(-1)            # scale grids: [B, H, n] vs [B, H, n, 1]
    if a.shape != b.shape:
        return KeyAgreement(0, 0, exp_free, f"shapes differ: kernel {a.shape}, sim {b.shape}")
    kind = "f" if "f" in (a.dtype.kind, b.dtype.kind) else "i"
    eq = a.astype(np.float64 if kind == "f" else np.int64) == \
        b.astype(np.float64 if kind == "f" else np.int64)
    if mask is not None:
        eq = eq[np.broadcast_to(mask, eq.shape)]
    return KeyAgreement(int(eq.size), int(eq.sum()), exp_free)


def _o_int_consistent(kp, v_codes, o_int, block_n: int) -> KeyAgreement:
    """The kernel's ``o_int`` per key tile equals its own P codes times the V codes (exact,
    whatever the exp): ``kp`` [B, Hq, Lq, Lk], ``v_codes`` [B, Hkv, Lk, D], ``o_int``
    [B, Hq, T, Lq, D]."""
    B, Hq, Lq, Lk = kp.shape
    g = Hq // v_codes.shape[1]
    v8 = np.repeat(v_codes.astype(np.int64), g, axis=1)
    eq = tot = 0
    for t in range(o_int.shape[2]):
        sl = slice(t * block_n, min((t + 1) * block_n, Lk))
        want = np.einsum("bhqk,bhkd->bhqd", kp[..., sl].astype(np.int64), v8[:, :, sl])
        got = o_int[:, :, t].astype(np.int64)
        eq += int((got == want).sum())
        tot += got.size
    return KeyAgreement(tot, eq, True)


def _selection(sim_tr: dict, ktr: dict, extras: dict):
    """Selected indices per query row; a row with a near tie at the selection boundary (the
    k-th and (k+1)-th best approximate scores within 4x the largest label-score error) may
    select differently and is counted apart. Returns (agreement, rows equal [B, Hq, Lq])."""
    approx = _np(ktr["approx_scores"])
    ref_s = np.where(np.isfinite(sim_tr["approx_scores"]), sim_tr["approx_scores"], 0.0)
    scale = np.abs(ref_s).max(axis=-1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    err = float((np.abs(approx - ref_s)).max())
    extras["approx_scores_max_rel_err"] = float((np.abs(approx - ref_s) / scale).max())
    got, want = _np(ktr["indices"]), sim_tr["indices"]
    if got.shape != want.shape:
        return (KeyAgreement(0, 0, True, f"shapes differ: kernel {got.shape}, sim {want.shape}"),
                np.zeros(got.shape[:3], bool))
    same = ~np.any(got != want, axis=-1)
    L = ref_s.shape[-1]
    srt = -np.sort(-ref_s, axis=-1)
    kb = int(np.max(sim_tr["budget"]))
    near = np.zeros(same.shape, bool) if not 1 <= kb < L else \
        (srt[..., kb - 1] - srt[..., kb]) <= 4 * err
    ties = (("near_tie_rows", int(near.sum())), ("near_tie_identical", int((same & near).sum())))
    clear = ~near
    return KeyAgreement(int(clear.sum()), int((same & clear).sum()), True, extra=ties), same


def compare(sim_res, kern, *, dtype: str = "float16", ulp_bound: float = 2.0,
            abs_slack: float = 0.0, ulp_floor: float = 0.0) -> Comparison:
    """Compare a simulator result (``sim.simulate(..., trace=True)``) with a kernel result
    (:func:`gpu.attention_trace` / :func:`gpu.decode_trace`) on the same inputs and spec.

    ``dtype``: the inputs' dtype (the output's ULPs). An output element agrees when
    ``|kernel - sim| <= ulp_bound * max(ulp(sim), ulp_floor) + abs_slack``. The output is
    compared on every row, or, for a sparse selection, on the rows whose selection equals the
    simulator's."""
    st, kt = sim_res.trace or {}, kern.trace or {}
    spec = sim_res.spec
    sas = spec is not None and spec.softmax.exp == "sas"
    cmp = Comparison()
    vis = st.get("visible")
    for key in _INT_KEYS:
        if key in st and key in kt:
            exp_free = key in EXP_FREE or sas
            cmp.ints[key] = _agree(_np(kt[key]), st[key], exp_free,
                                   vis if key in _PAIRWISE and vis is not None else None)
    if "m" in kt and "m" in st and sas:        # running maxima: exp-free under SAS only
        cmp.ints["m"] = _agree(_np(kt["m"]), st["m"], True)
    # (prefill: V as its codes; the cache mode reads flushed V re-quantized, compared directly)
    if "o_int" in kt and "p_codes" in kt and "v_codes" in st and spec is not None \
            and not st.get("kv_cache"):
        cmp.ints["o_int_from_kernel_p"] = _o_int_consistent(
            _np(kt["p_codes"]), st["v_codes"], _np(kt["o_int"]), spec.tiling.block_n)
    rows_ok = None
    if "indices" in kt and "indices" in st:
        cmp.ints["indices"], rows_ok = _selection(st, kt, cmp.extras)
    got = _np(kern.out).astype(np.float64)
    want = np.asarray(sim_res.out, np.float64)
    if rows_ok is None:
        rows_ok = np.ones(got.shape[:3], bool)
    diff = np.abs(got - want)[rows_ok]
    u = np.maximum(ulp(want, dtype), ulp_floor)[rows_ok]
    within = diff <= ulp_bound * u + abs_slack
    cmp.out = OutAgreement(100.0 * float(within.mean()) if within.size else 100.0,
                           float((diff / u).max()) if diff.size else 0.0, ulp_bound, abs_slack,
                           int(rows_ok.sum()))
    return cmp
