"""sim._fused (numba kernels of the integer methods) against the numpy reference path, bit for
bit: the fp16 rounding, numpy's row-sum order, and whole simulate() outputs on shapes, masks,
spec alternatives and ties."""
import sys

import numpy as np
import pytest

from sim import _fused as F
from sim import load_method, simulate

SIM = sys.modules["sim.dense"]


def test_f16_bits_matches_numpy(fp16_finite):
    rng = np.random.default_rng(0)
    vals = fp16_finite.astype(np.float32)
    mids = ((np.unique(vals.astype(np.float64))[1:] + np.unique(vals.astype(np.float64))[:-1]) / 2)
    mids = mids.astype(np.float32)  # exact: every fp16 midpoint is a float32
    up, down = np.float32(np.inf), np.float32(-np.inf)
    x = np.concatenate([
        vals, np.nextafter(vals, up), np.nextafter(vals, down),
        mids, np.nextafter(mids, up), np.nextafter(mids, down),
        (rng.standard_normal(200_000) * 2.0 ** rng.integers(-30, 17, 200_000)).astype(np.float32),
        np.float32([0.0, -0.0, 65519.996, 65520.0, 1e30, -1e30, np.inf, -np.inf])])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16).astype(np.int64)
    got = F.f16_bits_array(x)
    assert int((got != want).sum()) == 0


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 200, 241, 255, 256, 466])
def test_row_sum_matches_numpy_order(n):
    rng = np.random.default_rng(n)
    a = (rng.random((64, n)) ** 8).astype(np.float32)  # wide dynamic range: order shows
    a[:, ::3] *= np.float32(1e-4)
    want = a.sum(axis=1, dtype=np.float32)
    np.testing.assert_array_equal(F.row_sums(a).view(np.uint32), want.view(np.uint32))


def _both(q, k, v, spec, causal, monkeypatch):
    monkeypatch.setattr(SIM, "_FUSED", True)
    fused = simulate(q, k, v, spec, causal=causal).out
    monkeypatch.setattr(SIM, "_FUSED", False)
    ref = simulate(q, k, v, spec, causal=causal).out
    return fused, ref


# (label, B, Hq, Hkv, Lq, Lk, D, causal)
SHAPES = [
    ("decode", 1, 4, 2, 1, 97, 64, False),
    ("decode_causal_1000", 1, 2, 2, 1, 1000, 128, True),
    ("gqa_17x97_causal", 1, 4, 2, 17, 97, 64, True),
    ("gqa9_97x17_causal", 1, 9, 3, 97, 17, 72, True),  # rows that see no key
    ("b2_300x257_causal", 2, 2, 1, 300, 257, 64, True),
    ("1x1", 1, 1, 1, 1, 1, 64, False),
    ("130x130", 1, 2, 1, 130, 130, 64, False),
]
SPECS = [
    ("int8_flash", {}),
    ("turbo", {}),
    ("int8_flash", dict(p__rowsum="quantized")),
    ("int8_flash", dict(p__rounding="half_even", p__saturate=True)),
    ("int8_flash", dict(v__granularity="per_channel_block")),
    ("turbo", dict(softmax__exp="exp2")),
    ("turbo", dict(tiling__block_n=256, tiling__block_m=64)),
]


@pytest.mark.parametrize("name,over", SPECS, ids=[f"{n}-{'-'.join(o) or 'shipped'}" for n, o in SPECS])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_fused_equals_reference(name, over, shape, monkeypatch):
    _, B, Hq, Hkv, Lq, Lk, D, causal = shape
    spec = load_method(name, **over)
    assert SIM.fused_covers(spec)
    rng = np.random.default_rng(Lq * 31 + Lk)
    q = (rng.standard_normal((B, Hq, Lq, D)) * 2).astype(np.float16)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float16)
    v = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float16)
    fused, ref = _both(q, k, v, spec, causal, monkeypatch)
    np.testing.assert_array_equal(fused.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name", ["int8_flash", "turbo"])
def test_fused_equals_reference_ties(name, monkeypatch):
    """Small-integer inputs: many equal scores (ties in the row max, x = 0 at several keys,
    equal P codes), sharp rows that push x past the SAS threshold and the LUT."""
    rng = np.random.default_rng(7)
    q = rng.integers(-2, 3, (1, 2, 150, 64)).astype(np.float16)
    k = rng.integers(-2, 3, (1, 1, 150, 64)).astype(np.float16)
    v = rng.integers(-3, 4, (1, 1, 150, 64)).astype(np.float16)
    q[0, 1] *= 8  # sharper softmax in head 1
    for causal in (False, True):
        fused, ref = _both(q, k, v, load_method(name), causal, monkeypatch)
        np.testing.assert_array_equal(fused.view(np.uint32), ref.view(np.uint32))


def test_not_eligible_runs_reference():
    assert not SIM.fused_covers(load_method("int8_flash", p__arithmetic="fp32"))
    assert not SIM.fused_covers(load_method("turbo", softmax__sas__arithmetic="fp32"))
    assert not SIM.FloatOperands.fused  # float operands never take the numba path


@pytest.mark.parametrize("name", ["int8_flash", "turbo"])
def test_pv_on_blas_equals_reference(name, monkeypatch):
    """The fused path's alternative PV (codes kernel, BLAS dot, accumulate kernel)."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 4, 97, 72)).astype(np.float16)
    k = rng.standard_normal((1, 2, 150, 72)).astype(np.float16)
    v = rng.standard_normal((1, 2, 150, 72)).astype(np.float16)
    monkeypatch.setattr(SIM, "_PV_BLAS", True)
    fused, ref = _both(q, k, v, load_method(name), True, monkeypatch)
    np.testing.assert_array_equal(fused.view(np.uint32), ref.view(np.uint32))
