"""The exponentials of the online softmax, as the simulator models them (docs/numerics.md).

All inputs are float32 ``x = s - m <= 0`` in the log2 domain (``-inf`` allowed, giving 0).

- :func:`exp2_f32` — hardware ``exp2``: ``np.exp2`` in float64 rounded once to float32. The GPU's
  ``ex2.approx.ftz.f32`` is within 2 ulp of that and flushes subnormal results to zero; the
  contract lets the two differ (float values), so P codes computed from them may differ by one.
- :func:`sas_exp2` — TurboAttention's Sparsity-Aware Softmax (``spec.softmax.sas``):
  ``y = -x, n = floor(y), f = f16(y - n)``, ``poly`` by Horner with one fused multiply-add per
  step in fp16 (``arithmetic: fp16``, the default) or fp32, ``p = f16(LUT[n] * poly)`` with
  ``LUT[n] = 2^-n`` for ``n < lut_entries``, and ``p = 0`` where ``x < f32(threshold)`` or
  ``n >= lut_entries``.
- :func:`sas_rescale` — the same polynomial without threshold or table limit, for the online
  softmax's rescale factor ``alpha``: ``f32(poly(f)) * 2^-n`` by ``np.ldexp`` (exact while the
  result is a normal float32).
- :func:`fit_sas` — fits the coefficients stored in ``configs/methods/turbo.yaml``.

Exact fused multiply-add (:func:`fma`). ``a * b`` of two fp16 or fp32 values is exact in float64
(at most 2 x 24 significant bits). The float64 sum ``t = a*b + c`` may round; TwoSum gives its
exact error ``e``; replacing ``t`` by the float64 neighbour with an odd last bit whenever
``e != 0`` ("round to odd") yields a value that rounds to the target format (11 or 24 bits, both
<= 53 - 2) exactly as the infinitely precise ``a*b + c`` would (Boldo & Melquiond, "Emulation of
FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 2008). So
``fma`` is one correctly rounded operation, as ``tl.fma`` / ``fma.rn.f16`` are.

fp16 SAS over a whole tile is a table lookup: ``f`` is an fp16 value in ``[0, 1]`` (``f16(y - n)``
may round up to 1.0), so ``poly`` is precomputed for all 15361 such values with :func:`fma` and
indexed by the fp16 bit pattern; this is the same function, evaluated once per value.

>>> import numpy as np
>>> from sim import load_method
>>> sas = load_method("turbo").softmax.sas
>>> sas_exp2(np.float32([0.0, -1.0, -0.5, -9.0]), sas)
array([1.        , 0.5       , 0.70703125, 0.        ], dtype=float32)
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .numerics import round_float

__all__ = ["exp2_f32", "exp_fns", "fma", "sas_poly", "sas_exp2", "sas_rescale", "fit_sas", "SasFit",
           "fp16_unit_interval", "sas_rel_error"]

_F16_ONE = 0x3C00  # bit pattern of 1.0 in fp16; patterns 0 .. 0x3C00 are the values in [0, 1]


def exp2_f32(x: np.ndarray) -> np.ndarray:
    """``f32(exp2(x))`` with ``exp2`` evaluated in float64 (``-inf`` -> 0)."""
    return np.exp2(np.asarray(x, np.float32).astype(np.float64)).astype(np.float32)


def fma(a, b, c, fmt: str = "fp16") -> np.ndarray:
    """Correctly rounded ``a * b + c`` in ``fmt`` ("fp16" or "fp32"), one rounding.

    ``a``, ``b``, ``c`` must hold values of ``fmt`` (any float dtype; broadcast). Returns float64
    arrays holding ``fmt`` values. See the module docstring for the proof of exactness.

    >>> float(fma(np.float16(1 + 2**-10), np.float16(1 - 2**-11), np.float16(-1.0)))
    0.0004878044128417969
    """
    if fmt not in ("fp16", "fp32"):
        raise ValueError(f"fmt: expected 'fp16' or 'fp32', got {fmt!r}")
    a, b, c = (np.asarray(t, np.float64) for t in (a, b, c))
    p = a * b  # exact: <= 48 significant bits
    t = p + c
    z = t - p  # TwoSum (Knuth): e = (p - (t - z)) + (c - z) is the exact error of t
    e = (p - (t - z)) + (c - z)
    odd = (t.view(np.int64) & 1).astype(bool) if t.ndim else bool(np.int64(t.view(np.int64)) & 1)
    nudge = (e != 0) & ~odd
    t = np.where(nudge, np.nextafter(t, np.where(e > 0, np.inf, -np.inf)), t)
    return np.asarray(round_float(t, fmt), np.float64)


def fp16_unit_interval() -> np.ndarray:
    """All fp16 values in ``[0, 1]`` (15361 of them, increasing), as float64."""
    return np.arange(_F16_ONE + 1, dtype=np.uint16).view(np.float16).astype(np.float64)


def _horner(coefficients, f: np.ndarray, fmt: str) -> np.ndarray:
    c = [np.asarray(round_float(np.float64(x), fmt), np.float64) for x in coefficients]
    poly = np.broadcast_to(c[-1], np.shape(f)).astype(np.float64)
    for ci in reversed(c[:-1]):
        poly = fma(poly, f, ci, fmt)
    return poly


def sas_poly(coefficients, f, arithmetic: str = "fp16") -> np.ndarray:
    """``c0 + c1 f + ... + cd f^d`` by Horner with one fused multiply-add per step in ``arithmetic``.

    ``f`` holds values of the arithmetic's format. Coefficients are rounded to it first (the
    shipped ones are fp16 values already). Returns float64 holding fp16/fp32 values."""
    return _horner(tuple(float(x) for x in coefficients), np.asarray(f, np.float64), arithmetic)


@functools.lru_cache(maxsize=32)
def poly_table(coefficients: tuple[float, ...]) -> np.ndarray:
    """float32 ``poly(f)`` for every fp16 bit pattern ``0 .. 0x3C00`` (f in [0, 1])."""
    return _horner(coefficients, fp16_unit_interval(), "fp16").astype(np.float32)


def _split(x: np.ndarray, arithmetic: str):
    """``n = floor(-x)`` (int32, clipped to 2^20) and ``poly(f)`` (float32) for finite ``x <= 0``."""
    y = -x
    nf = np.floor(y)
    frac = y - nf  # exact (Sterbenz: nf >= y / 2 when y >= 1; nf = 0 otherwise)
    n = np.minimum(nf, np.float32(1 << 20)).astype(np.int32)
    return n, frac


def _poly_of(frac: np.ndarray, sas) -> np.ndarray:
    coeffs = tuple(float(c) for c in sas.coefficients)
    if sas.arithmetic == "fp16":
        bits = frac.astype(np.float16).view(np.uint16)  # f = f16(y - n), in [0, 1]
        return poly_table(coeffs)[bits]
    return sas_poly(coeffs, frac.astype(np.float64), "fp32").astype(np.float32)


def _check_x(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x: expected a float32 array, got dtype {x.dtype}")
    return x


def sas_exp2(x, sas) -> np.ndarray:
    """SAS ``2^x`` for float32 ``x <= 0`` (``-inf`` allowed) under ``sas`` (a ``spec.softmax.sas``).

    ``x < f32(sas.threshold)`` and ``floor(-x) >= sas.lut_entries`` give exactly 0; otherwise
    ``p = f16(LUT[n] * poly(f))`` (``arithmetic: fp16``) or ``f32(LUT[n] * poly(f))`` (fp32),
    returned as float32. ``x > 0`` is outside the domain (ValueError)."""
    x = _check_x(x)
    if np.any(x > 0):
        raise ValueError("x: SAS is defined for x <= 0 (s - m with m the running max)")
    return _sas_exp2(x, sas)


def _sas_exp2(x: np.ndarray, sas) -> np.ndarray:
    """:func:`sas_exp2` without argument checks (the engine's hot path; x is s - m_new <= 0)."""
    keep = x >= np.float32(sas.threshold)
    xs = np.where(keep, x, np.float32(0))
    n, frac = _split(xs, sas.arithmetic)
    poly = _poly_of(frac, sas)
    keep &= n < sas.lut_entries
    lut = np.float32(2.0) ** -np.arange(sas.lut_entries, dtype=np.float32)  # exact powers of two
    prod = lut[np.minimum(n, sas.lut_entries - 1)] * poly  # exact in f32: fp16 x power of two
    if sas.arithmetic == "fp16":
        prod = prod.astype(np.float16).astype(np.float32)
    return np.where(keep, prod, np.float32(0))


def sas_rescale(x, sas) -> np.ndarray:
    """``f32(poly(f)) * 2^-n`` for float32 ``x <= 0``, no threshold and no table limit
    (``-inf`` -> 0): the online softmax's ``alpha`` under SAS."""
    x = _check_x(x)
    if np.any(x > 0):
        raise ValueError("x: SAS is defined for x <= 0 (s - m with m the running max)")
    fin = np.isfinite(x)
    n, frac = _split(np.where(fin, x, np.float32(0)), sas.arithmetic)
    poly = _poly_of(frac, sas)
    return np.where(fin, np.ldexp(poly, -n), np.float32(0)).astype(np.float32)


def sas_rel_error(coefficients, arithmetic: str = "fp16") -> float:
    """Max ``|poly(f) / 2^-f - 1|`` over every fp16 ``f`` in ``[0, 1]`` (the values the kernel can
    see, 1.0 included since ``f16(y - n)`` may round up), poly evaluated as the kernel does."""
    f = fp16_unit_interval()
    poly = sas_poly(coefficients, f, arithmetic)
    return float(np.max(np.abs(poly * np.exp2(f) - 1.0)))


@dataclass(frozen=True)
class SasFit:
    """Result of :func:`fit_sas`: fp16 coefficients ``c0 .. cd`` (``c0 = 1``) and their error."""

    coefficients: tuple[float, ...]
    max_rel_error: float
    continuous_rel_error: float  # minimax error before rounding to fp16


def fit_sas(degree: int = 3, *, search_ulps: int = 2) -> SasFit:
    """Fit the SAS polynomial ``2^-f ~ 1 + c1 f + ... + cd f^d`` on ``[0, 1]``.

    1. Minimax of the relative error with ``c0 = 1`` (so ``x = 0`` gives exactly 1: the row max
       maps to P code 127 and a fully masked tile rescales by exactly 1), as a linear program
       over every fp16 ``f`` in ``[0, 1]`` (scipy HiGHS).
    2. Round ``c1 .. cd`` to fp16, then try every combination within ``search_ulps`` fp16 steps of
       each and keep the one whose error *evaluated as the kernel does* (fp16 Horner with fused
       multiply-adds, :func:`sas_rel_error`) is smallest (ties: first in lexicographic order).

    Runs in well under a second for degree 3.

    >>> fit = fit_sas(3)
    >>> fit.coefficients[0], len(fit.coefficients), fit.max_rel_error < 2e-3
    (1.0, 4, True)
    """
    from scipy.optimize import linprog

    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= 6:
        raise ValueError(f"degree: expected an int in [1, 6], got {degree!r}")
    if isinstance(search_ulps, bool) or not isinstance(search_ulps, int) or search_ulps < 0:
        raise ValueError(f"search_ulps: expected an int >= 0, got {search_ulps!r}")
    f = fp16_unit_interval()
    w = np.exp2(f)  # relative error e = (1 + sum c_i f^i) * 2^f - 1
    A = np.stack([f**i * w for i in range(1, degree + 1)], axis=1)
    ones = np.ones((len(f), 1))
    # variables [c1..cd, t]: A c - t <= 1 - w  and  -A c - t <= w - 1 ; minimise t
    A_ub = np.block([[A, -ones], [-A, -ones]])
    b_ub = np.concatenate([1 - w, w - 1])
    cost = np.zeros(degree + 1)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * degree + [(0, None)],
                  method="highs")
    if not res.success:
        raise RuntimeError(f"fit_sas: linear program failed: {res.message}")
    cont = res.x[:degree]

    # fp16 neighbourhood search, vectorised over all candidate combinations
    base = np.asarray(round_float(cont, "fp16"), np.float64)
    steps = np.arange(-search_ulps, search_ulps + 1)
    cand_axes = []
    for c in base:
        cands = np.float16(c).reshape(1).view(np.int16).astype(np.int64)  # walk fp16 bit patterns
        # moving the bit pattern by +-1 steps through adjacent fp16 values of the same sign
        pats = cands[0] + steps * (1 if c >= 0 else -1)
        cand_axes.append(np.asarray(pats, np.int16).view(np.float16).astype(np.float64))
    grids = np.meshgrid(*cand_axes, indexing="ij")
    combos = np.stack([g.ravel() for g in grids], axis=1)  # [n_combos, degree]
    poly = np.broadcast_to(combos[:, -1:], (len(combos), len(f))).copy()
    for i in range(degree - 2, -1, -1):
        poly = fma(poly, f[None, :], combos[:, i:i + 1], "fp16")
    poly = fma(poly, f[None, :], 1.0, "fp16")  # c0 = 1
    err = np.max(np.abs(poly * w[None, :] - 1.0), axis=1)
    best = int(np.argmin(err))
    coeffs = (1.0,) + tuple(float(c) for c in combos[best])
    return SasFit(coeffs, float(err[best]), float(res.x[-1]))


if __name__ == "__main__":  # python -m sim.softmax [degree]: print the fit for turbo.yaml
    import sys
    import time

    t0 = time.perf_counter()
    fit = fit_sas(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(f"coefficients: {list(fit.coefficients)}")
    print(f"max_rel_error: {fit.max_rel_error!r}  (continuous minimax {fit.continuous_rel_error:.3e})")
    print(f"threshold -log2(254) = {-math.log2(254)!r}; {time.perf_counter() - t0:.2f} s")


def exp_fns(softmax) -> tuple:
    """``(EXP, rescale)`` of the online softmax for a spec's ``softmax`` section
    (docs/numerics.md): exp2 for both (rescale None), or SAS for p and the unlimited SAS for
    alpha. Shared by every simulator path (dense tiles, turbo's cache mode)."""
    if softmax.exp == "sas":
        sas = softmax.sas
        return (lambda x: _sas_exp2(x, sas)), (lambda x: sas_rescale(x, sas))
    return exp2_f32, None
