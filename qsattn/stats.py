"""Statistics of the accuracy studies: paired deltas, their intervals, multiple comparisons,
binomial intervals. numpy and scipy only; every function checks its inputs.

- :func:`paired` -- mean of per-sample differences ``a - b`` with a Student-t interval and a
  paired (percentile) bootstrap interval; the samples are the study's windows or decode
  samples, so pairing removes the between-text variance that dwarfs method differences.
- :func:`holm` -- Holm's step-down adjustment of a family of p-values (controls the
  family-wise error rate without assuming independence).
- :func:`wilson` -- Wilson score interval of a binomial proportion (passkey accuracy; unlike
  the normal interval it stays inside [0, 1] and is not degenerate at 0/n or n/n).

>>> r = paired([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.4], seed=0)
>>> round(r.mean, 3), r.n
(0.525, 4)
>>> [round(x, 3) for x in holm([0.01, 0.04, 0.03])]
[0.03, 0.06, 0.06]
>>> [round(x, 3) for x in wilson(0, 24)]
[0.0, 0.138]
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Paired", "paired", "holm", "wilson", "BOOTSTRAP_RESAMPLES"]

BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class Paired:
    """Mean paired difference and its 95% (``level``) intervals.

    ``t_lo``/``t_hi``: Student-t interval (n - 1 degrees of freedom); ``boot_lo``/``boot_hi``:
    percentile interval of the mean over ``BOOTSTRAP_RESAMPLES`` resamples of the pairs;
    ``p``: two-sided t-test p-value of mean = 0 (NaN for n < 2 or zero spread)."""

    mean: float
    se: float
    n: int
    t_lo: float
    t_hi: float
    boot_lo: float
    boot_hi: float
    p: float
    level: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def half_width(self) -> float:
        return (self.t_hi - self.t_lo) / 2


def _vector(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite numbers, got NaN/Inf at "
                         f"{np.flatnonzero(~np.isfinite(a))[:5].tolist()}")
    return a


def paired(a, b=None, *, level: float = 0.95, seed: int = 0,
           resamples: int = BOOTSTRAP_RESAMPLES) -> Paired:
    """Mean of ``a - b`` (or of ``a`` when ``b`` is None: already differences) with intervals.

    Raises ValueError for empty or unequal-length inputs, NaN/Inf, or ``level`` outside (0, 1).
    """
    from scipy import stats

    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    d = _vector(a, "a")
    if b is not None:
        bb = _vector(b, "b")
        if bb.shape != d.shape:
            raise ValueError(f"b: expected {d.size} values paired with a, got {bb.size}")
        d = d - bb
    n = d.size
    if n == 0:
        raise ValueError("a: expected at least one paired sample, got none")
    mean = float(d.mean())
    if n < 2:
        nan = float("nan")
        return Paired(mean, nan, n, nan, nan, nan, nan, nan, level)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    tq = float(stats.t.ppf(0.5 + level / 2, n - 1))
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1)) if se > 0 else (0.0 if mean else 1.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return Paired(mean, se, n, mean - tq * se, mean + tq * se, float(lo), float(hi), p, level)


def holm(pvalues) -> list[float]:
    """Holm-adjusted p-values, in the input order (monotone, capped at 1; NaN stays NaN and
    does not count towards the family size)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues: expected a 1-D sequence, got shape {p.shape}")
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("pvalues: expected values in [0, 1]")
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes / trials``."""
    from scipy import stats

    if not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials: expected a positive int, got {trials!r}")
    if not isinstance(successes, (int, np.integer)) or not 0 <= successes <= trials:
        raise ValueError(f"successes: expected an int in [0, {trials}], got {successes!r}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    ph = successes / trials
    den = 1 + z * z / trials
    c = (ph + z * z / (2 * trials)) / den
    h = z * math.sqrt(ph * (1 - ph) / trials + z * z / (4 * trials * trials)) / den
    # the interval contains ph; rounding at ph = 0 or 1 must not put it outside
    return (min(ph, max(0.0, c - h)), max(ph, min(1.0, c + h)))
