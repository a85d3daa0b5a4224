"""SAS and exp2 as the simulator models them (sim.softmax), against exact references."""
import math
from fractions import Fraction

import numpy as np
import pytest

from sim import load_method
from sim.softmax import (exp2_f32, fit_sas, fma, fp16_unit_interval, sas_exp2, sas_poly,
                         sas_rel_error, sas_rescale)

SAS = load_method("turbo").softmax.sas


def _fma_exact(a, b, c):
    """Exact a*b + c by Fractions, rounded to fp16 via float64 only when exact in float64."""
    v = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    # round to fp16: scan neighbours of float64 approximation
    approx = np.float16(float(v))
    cands = [approx, np.nextafter(approx, np.float16(np.inf)), np.nextafter(approx, np.float16(-np.inf))]
    best = min(cands, key=lambda h: (abs(Fraction(float(h)) - v),
                                     int(np.float16(h).view(np.uint16)) & 1))
    return float(best)


def test_fma_matches_exact_rational_rounding():
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(3000).astype(np.float16) for _ in range(3))
    # include exact ties and cancellations
    a[:3], b[:3], c[:3] = [1 + 2**-10, 3, 2**-11], [1 - 2**-11, 2**-12, 1], [-1, 1, -2**-11]
    got = fma(a, b, c, "fp16")
    want = np.array([_fma_exact(x, y, z) for x, y, z in zip(a, b, c)])
    np.testing.assert_array_equal(got, want)


def test_sas_poly_exhaustive_within_stored_error():
    f = fp16_unit_interval()
    poly = sas_poly(SAS.coefficients, f)
    rel = np.abs(poly * np.exp2(f) - 1)
    print(f"SAS degree {SAS.degree}: max rel error over all {f.size} fp16 f in [0,1]: {rel.max():.3e}")
    assert rel.max() <= SAS.max_rel_error
    assert rel.max() == sas_rel_error(SAS.coefficients)
    assert poly[0] == 1.0 and poly.max() <= 1.0  # p <= 1: P codes never exceed 127


def test_sas_exp2_exhaustive_vs_exp2():
    # every fp16-representable x in [threshold, 0]: p vs 2^x within the stored error + fp16 rounding
    f16 = np.arange(0x8000, 0x8000 + 0x4800, dtype=np.uint16).view(np.float16)  # -0 .. -8
    x = f16.astype(np.float32)
    x = x[x >= np.float32(SAS.threshold)]
    p = sas_exp2(x, SAS).astype(np.float64)
    rel = np.abs(p / np.exp2(x.astype(np.float64)) - 1)
    print(f"SAS p vs 2^x over {x.size} x: max rel {rel.max():.3e}")
    assert rel.max() <= SAS.max_rel_error + 2**-11 * (1 + SAS.max_rel_error) + 2**-11


def test_sas_threshold_exact():
    thr = np.float32(SAS.threshold)
    below = np.nextafter(thr, np.float32(-np.inf))
    p = sas_exp2(np.array([thr, below, -np.inf, -1e30, 0.0], np.float32), SAS)
    assert p[0] > 0 and p[1] == 0 and p[2] == 0 and p[3] == 0 and p[4] == 1
    # the threshold is where p * 127 < 0.5: just above it the P code is still 0 or 1
    assert p[0] * 127 < 0.51


def test_sas_components_exact():
    # p = f16(2^-n * poly(f16(y - n))) recomputed elementwise
    rng = np.random.default_rng(2)
    x = -(rng.random(2000) * 7.98).astype(np.float32)
    p = sas_exp2(x, SAS)
    y = -x.astype(np.float64)
    n = np.floor(y)
    f = np.float16(y - n).astype(np.float64)
    want = np.float16(np.ldexp(sas_poly(SAS.coefficients, f), -n.astype(int))).astype(np.float32)
    np.testing.assert_array_equal(p, want)


def test_sas_rescale_no_limit():
    x = np.array([0.0, -8.5, -30.25, -np.inf], np.float32)
    a = sas_rescale(x, SAS)
    assert a[0] == 1 and a[3] == 0
    assert a[1] > 0 and a[2] > 0  # no threshold / table limit
    f = np.float16(0.25).astype(np.float64)
    assert a[2] == np.float32(np.ldexp(sas_poly(SAS.coefficients, f)[()], -30))


def test_exp2_is_f64_rounded():
    x = np.linspace(-100, 0, 10001).astype(np.float32)
    np.testing.assert_array_equal(exp2_f32(x), np.exp2(x.astype(np.float64)).astype(np.float32))
    assert exp2_f32(np.float32([-np.inf]))[0] == 0


def test_fit_sas_reproduces_yaml():
    import time
    t0 = time.perf_counter()
    fit = fit_sas(SAS.degree)
    dt = time.perf_counter() - t0
    print(f"fit_sas({SAS.degree}) in {dt:.2f} s: {fit}")
    assert fit.coefficients == tuple(SAS.coefficients)
    assert fit.max_rel_error == pytest.approx(SAS.max_rel_error, rel=0, abs=0)
    assert -math.log2(254) == pytest.approx(SAS.threshold, abs=1e-15)


def test_bad_inputs():
    with pytest.raises(TypeError, match="x"):
        sas_exp2(np.zeros(3), SAS)
    with pytest.raises(ValueError, match="x"):
        sas_exp2(np.float32([0.5]), SAS)
    with pytest.raises(ValueError, match="degree"):
        fit_sas(0)
