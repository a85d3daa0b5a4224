"""sim.numerics.quantize: exhaustive over fp16 inputs, properties, policies and bad inputs.

References use float64 arithmetic rounded to float32 to model one float32 operation. That is exact
by the double-rounding theorem: rounding an exact +, -, *, / result first to 53 bits and then to
24 bits equals rounding it once to 24 bits whenever 53 >= 2 * 24 + 2 (Figueroa 1995).

Error bound for the nearest modes with arithmetic="fp32" and |x| <= (qmax + 1/2) * s: the division
gives y = (x/s)(1 + d), |d| <= 2^-24, so |y - x/s| <= 128 * 2^-24 = 2^-17; rint is exact; the
half_away / half_up add of 0.5 to |y| < 2^8 rounds by at most half an ulp of a value < 2^8,
i.e. 2^-17. Hence |x/s - code| <= 1/2 + 2^-16 and |x - code * s| <= s (1/2 + 2^-16).
"""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sim.numerics import Quantized, dequantize, int_range, quantize, round_to_int
from sim.numerics.blocks import expand

MODES = ["half_even", "half_away", "half_up", "floor", "toward_zero"]
NEAREST = ["half_even", "half_away", "half_up"]
f32, f64 = np.float32, np.float64


def ref_round_fp32(yf: np.ndarray, mode: str) -> np.ndarray:
    """Rounding modes on float32 values ``yf`` (held in float64), adds modelled as float32 adds."""
    fl = np.floor(yf)
    if mode == "half_even":
        r = yf - fl  # exact
        return fl + ((r > 0.5) | ((r == 0.5) & (fl % 2 == 1)))
    if mode == "half_away":
        return np.trunc((yf + np.where(yf >= 0, 0.5, -0.5)).astype(f32).astype(f64))
    if mode == "half_up":
        return np.trunc((yf + 0.5).astype(f32).astype(f64))
    if mode == "floor":
        return fl
    return np.trunc(yf)


def ref_round_fp64(y: np.ndarray, mode: str) -> np.ndarray:
    """Rounding modes on float64 ``y``, the float64 add of 0.5 modelled exactly with Fractions."""
    if mode in ("half_even", "floor", "toward_zero"):
        return ref_round_fp32(y, mode)  # these involve no rounded operation
    half = np.where(y >= 0, 0.5, -0.5) if mode == "half_away" else np.full_like(y, 0.5)
    t = y + half  # exact when |y| >= 1 (ulp(y) <= 2^-52 * |y| and 0.5 is a multiple of it)
    small = np.flatnonzero(np.abs(y) < 1)
    t[small] = [float(Fraction(float(v)) + Fraction(h)) for v, h in zip(y[small], half[small])]
    return np.trunc(t)


@pytest.mark.parametrize("bits,scale", [(8, 2.0**-7), (8, float(np.float16(0.0377))), (4, float(np.float16(0.3)))])
@pytest.mark.parametrize("mode", MODES)
def test_all_fp16_inputs_fixed_scale_fp32(fp16_finite, bits, scale, mode):
    lo, hi = int_range(bits)
    q = quantize(fp16_finite, bits, scale=scale, rounding=mode, scale_dtype="fp16")
    y = (fp16_finite.astype(f64) / scale).astype(f32).astype(f64)  # one fp32 division
    want = np.clip(ref_round_fp32(y, mode), lo, hi)
    np.testing.assert_array_equal(q.codes, want.astype(np.int8))
    assert q.codes.dtype == np.int8 and q.scale.dtype == np.float32 and q.scale.shape == (1,)


@pytest.mark.parametrize("scale", [2.0**-7, float(np.float16(0.0377))])
@pytest.mark.parametrize("mode", MODES)
def test_all_fp16_inputs_fixed_scale_fp64(fp16_finite, scale, mode):
    q = quantize(fp16_finite, 8, scale=scale, rounding=mode, scale_dtype="fp16", arithmetic="fp64")
    y = fp16_finite.astype(f64) / scale
    want = np.clip(ref_round_fp64(y, mode), -127, 127)
    np.testing.assert_array_equal(q.codes, want.astype(np.int8))


@pytest.mark.parametrize("scale_dtype", ["fp16", "fp32"])
def test_all_fp16_inputs_computed_per_element_scales(fp16_finite, scale_dtype):
    """One block per element: scale = R(fl32(|x| / 127)), zero -> 1, fp16 underflow -> 2^-24."""
    q = quantize(fp16_finite, 8, block=(1,), scale_dtype=scale_dtype)
    raw = (np.abs(fp16_finite.astype(f64)) / 127).astype(f32)
    s = raw.astype(np.float16).astype(f64) if scale_dtype == "fp16" else raw.astype(f64)
    s = np.where((s == 0) & (raw > 0), 2.0**-24 if scale_dtype == "fp16" else 2.0**-149, s)
    s = np.where(raw == 0, 1.0, s)
    np.testing.assert_array_equal(q.scale, s.astype(f32))
    y = (fp16_finite.astype(f64) / s).astype(f32).astype(f64)
    np.testing.assert_array_equal(q.codes, np.clip(ref_round_fp32(y, "half_even"), -127, 127))
    if scale_dtype == "fp32":
        assert np.all(np.abs(q.codes[fp16_finite != 0]) == 127)


def test_all_int8_codes_round_trip(int8_all):
    """Every code -127..127 survives dequantize -> quantize with the same scale, in every mode
    with fp64 arithmetic (exact) and in the nearest modes with fp32 -- except half_up on negative
    codes, where trunc(c + 0.5) = c + 1 (INT-FlashAttention's formula, meant for x >= 0)."""
    codes = int8_all[1:]  # -128 is outside the restricted range
    for s in (f32(2.0**-7), f32(np.float16(0.0377)), f32(0.1)):
        x32 = dequantize(codes, np.array([s]), block=(None,))
        x64 = dequantize(codes, np.array([s]), block=(None,), dtype="fp64")
        for mode in MODES:
            want = np.where(codes < 0, codes + 1, codes) if mode == "half_up" else codes
            q = quantize(x64, 8, scale=s, rounding=mode, arithmetic="fp64")
            np.testing.assert_array_equal(q.codes, want)
            if mode in NEAREST:
                np.testing.assert_array_equal(quantize(x32, 8, scale=s, rounding=mode).codes, want)
    # -128 dequantizes but re-quantizes saturated to -127
    x = dequantize(int8_all, np.array([f32(1.0)]), block=(None,))
    assert quantize(x, 8, scale=1.0).codes[0] == -127


def test_tuple_unpacking_and_fields():
    x = np.linspace(-1, 2, 12, dtype=np.float32).reshape(3, 4)
    codes, scale = quantize(x, 8, block=(1, None))
    assert codes.shape == (3, 4) and scale.shape == (3, 1)
    q = quantize(x, 4, symmetric=False, block=(1, None))
    codes, scale, zp = q
    assert isinstance(q, Quantized) and not q.symmetric and q.signed is False
    assert codes.dtype == np.uint8 and zp.dtype == np.int32 and zp.shape == (3, 1)
    assert q.block == (1, 4) and q.bits == 4 and q.rounding == "half_even"


@pytest.mark.parametrize("block", [None, (1, 1, 1, None), (1, 1, None, None), (1, 1, 5, None),
                                   (None, None, None, 1), (1, 1, None, 1), (1, 1, 1, 3), (2, 4, 64, 3)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_blocks_match_per_block_quantization(block, symmetric):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 17, 8)) * rng.uniform(0.1, 10, (2, 3, 17, 1))).astype(f32)
    bits = 8 if symmetric else 4
    q = quantize(x, bits, symmetric=symmetric, block=block, scale_dtype="fp16")
    blk = q.block
    grid = tuple(-(-n // b) for n, b in zip(x.shape, blk))
    assert q.scale.shape == grid
    for idx in np.ndindex(*grid):
        sl = tuple(slice(i * b, (i + 1) * b) for i, b in zip(idx, blk))
        r = quantize(x[sl], bits, symmetric=symmetric, scale_dtype="fp16")
        np.testing.assert_array_equal(q.codes[sl], r.codes)
        assert q.scale[idx] == r.scale.ravel()[0]
        if not symmetric:
            assert q.zero_point[idx] == r.zero_point.ravel()[0]
    xh = dequantize(q)
    assert xh.dtype == np.float32 and xh.shape == x.shape
    np.testing.assert_array_equal(
        dequantize(q.codes, q.scale, q.zero_point, block=block), xh)


def test_asymmetric_formula_per_token():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 7, 16)) + rng.uniform(-2, 2, (4, 7, 1))).astype(f32)
    for scale_dtype in ("fp16", "fp32"):
        q = quantize(x, 4, symmetric=False, block=(1, 1, None), scale_dtype=scale_dtype)
        mn = x.min(-1, keepdims=True).astype(f64)
        mx = x.max(-1, keepdims=True).astype(f64)
        d = (mx - mn).astype(f32).astype(f64)
        raw = (d / 15).astype(f32)
        s = (raw.astype(np.float16) if scale_dtype == "fp16" else raw).astype(f64)
        zp = np.rint((-mn / s).astype(f32).astype(f64))
        y = (x.astype(f64) / s).astype(f32).astype(f64)
        codes = np.clip(ref_round_fp32(y, "half_even") + zp, 0, 15)
        np.testing.assert_array_equal(q.scale, s.astype(f32))
        np.testing.assert_array_equal(q.zero_point, zp.astype(np.int32))
        np.testing.assert_array_equal(q.codes, codes.astype(np.uint8))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("s", [2.0**-3, float(np.float16(0.0377)), float(np.float16(3.7))])
def test_ties_define_the_modes(mode, s):
    """x = (n + 1/2) s exactly (11-bit scale times 9-bit n + 1/2 fits fp32; the quotient is exact)."""
    n = np.arange(-127, 127)
    x = ((n + 0.5) * s).astype(f32)
    assert np.all(x.astype(f64) == (n + 0.5) * s)
    got = quantize(x, 8, scale=s, rounding=mode, scale_dtype="fp16").codes.astype(int)
    want = {
        "half_even": np.where(n % 2 == 0, n, n + 1),
        "half_away": np.where(n >= 0, n + 1, n),
        "half_up": n + 1,
        "floor": n,
        "toward_zero": np.where(n >= 0, n, n + 1),
    }[mode]
    np.testing.assert_array_equal(got, np.clip(want, -127, 127))


def test_fp32_arithmetic_is_modelled_exactly():
    """half_up on the largest float32 below 0.5: the float32 add rounds to 1.0 (kernel behaviour)."""
    x = np.float32([np.nextafter(f32(0.5), f32(0))])
    assert quantize(x, 8, scale=1.0, rounding="half_up").codes[0] == 1
    assert quantize(x, 8, scale=1.0, rounding="half_up", arithmetic="fp64").codes[0] == 0
    assert round_to_int(x, "half_up")[0] == 1
    # float64 data is converted to float32 first with arithmetic="fp32"
    x64 = np.array([2.5 + 2**-30])
    assert quantize(x64, 8, scale=1.0).codes[0] == 2
    assert quantize(x64, 8, scale=1.0, arithmetic="fp64").codes[0] == 3


finite_f32 = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=150, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9), elements=finite_f32),
    bits=st.sampled_from([2, 3, 4, 8]),
    mode=st.sampled_from(NEAREST),
    scale_dtype=st.sampled_from(["fp16", "fp32"]),
    arithmetic=st.sampled_from(["fp32", "fp64"]),
    per_last=st.booleans(),
)
def test_error_bound_nearest_modes(x, bits, mode, scale_dtype, arithmetic, per_last):
    if mode == "half_up":
        x = np.abs(x)  # half_up is a nearest mode only for x >= 0
    block = (1,) * (x.ndim - 1) + (None,) if per_last else None
    q = quantize(x, bits, block=block, rounding=mode, scale_dtype=scale_dtype, arithmetic=arithmetic)
    s = q.scale.astype(f64)
    sf = expand(s, q.block, x.shape)
    err = np.abs(x.astype(f64) - q.codes.astype(f64) * sf)
    qmax = int_range(bits)[1]
    inside = np.abs(x.astype(f64)) <= (qmax + 0.5) * sf
    slack = 2.0**-16 if arithmetic == "fp32" else 2.0**-45
    assert np.all(err[inside] <= sf[inside] * (0.5 + slack))
    # outside the range (possible only through a rounded-down scale) the code saturates
    assert np.all(np.abs(q.codes[~inside]) == qmax)
    # idempotence: re-quantizing the reconstruction with the same scale returns the same codes
    xh = dequantize(q, dtype=arithmetic)
    again = quantize(xh, bits, block=block, rounding=mode, scale=q.scale, scale_dtype=scale_dtype,
                     arithmetic=arithmetic)
    np.testing.assert_array_equal(again.codes, q.codes)


@settings(max_examples=100, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                 elements=st.floats(-100, 100, allow_nan=False, width=32)),
    bits=st.sampled_from([2, 3, 4, 8]),
    scale_dtype=st.sampled_from(["fp16", "fp32"]),
)
def test_asymmetric_error_bound(x, bits, scale_dtype):
    try:
        q = quantize(x, bits, symmetric=False, block=(1, None), scale_dtype=scale_dtype)
    except ValueError as e:  # documented policy: a row offset > 2^16 steps from 0 is refused
        assert "zero point beyond" in str(e)
        mn, mx = x.min(1).astype(f64), x.max(1).astype(f64)
        assert np.any(np.abs(mn) > 2**15 * (mx - mn) / (2**bits - 1))
        assume(False)
    s = np.broadcast_to(q.scale.astype(f64), x.shape)
    zp = np.broadcast_to(q.zero_point.astype(f64), x.shape)
    L = 2**bits - 1
    assert q.codes.max() <= L
    xh = (q.codes - zp) * s
    lo_edge, hi_edge = (-zp - 0.5) * s, (L - zp + 0.5) * s
    inside = (x >= lo_edge) & (x <= hi_edge)
    err = np.abs(x - xh)
    assert np.all(err[inside] <= s[inside] * (0.5 + 2.0**-16))
    # beyond the represented range the code saturates to the nearest end
    assert np.all(xh[x > hi_edge] == ((L - zp) * s)[x > hi_edge])
    assert np.all(xh[x < lo_edge] == (-zp * s)[x < lo_edge])
    np.testing.assert_array_equal(dequantize(q, dtype="fp64"), xh)


def test_zero_scale_policies():
    x = np.zeros((2, 4), f32)
    x[1] = [1, -2, 0, 0.5]
    q = quantize(x, 8, block=(1, None))
    assert q.scale[0, 0] == 1.0 and np.all(q.codes[0] == 0)
    q = quantize(x, 8, block=(1, None), zero_scale="eps", scale_dtype="fp16")
    assert q.scale[0, 0] == 2.0**-24 and np.all(q.codes[0] == 0)
    with pytest.raises(ValueError, match=r"x: 1 block\(s\) have absmax 0 and zero_scale='error'"):
        quantize(x, 8, block=(1, None), zero_scale="error")
    c = np.full((1, 3), 5.3, f32)  # constant block, asymmetric: max - min == 0
    q = quantize(c, 4, symmetric=False)
    assert q.scale.ravel()[0] == 1.0 and q.zero_point.ravel()[0] == -5
    assert np.all(dequantize(q, dtype="fp64") == 5.0)
    with pytest.raises(ValueError, match="max - min 0"):
        quantize(c, 4, symmetric=False, zero_scale="error")


def test_scale_underflow_and_overflow():
    tiny = np.float32([1e-9, -2e-9])  # absmax/127 ~ 1.6e-11, below fp16's 2^-24 / 2
    q = quantize(tiny, 8, scale_dtype="fp16")
    assert q.scale[0] == 2.0**-24  # clamped up to the smallest subnormal, not 0
    assert np.all(q.codes == np.rint(tiny.astype(f64) / 2.0**-24))
    q32 = quantize(tiny, 8, scale_dtype="fp32")
    assert q32.codes[1] == -127
    big = np.float32([65504.0 * 127 * 1.01, 1.0])
    with pytest.raises(ValueError, match=r"x: 1 block\(s\) need a scale above the fp16 maximum"):
        quantize(big, 8, scale_dtype="fp16")
    assert quantize(big, 8, scale_dtype="fp32").codes[0] == 127
    with pytest.raises(ValueError, match="zero point beyond"):
        quantize(np.float32([1e6, 1e6 + 1]), 4, symmetric=False)


def test_bad_inputs():
    good = np.ones((2, 3), f32)
    with pytest.raises(ValueError, match=r"x: expected finite values, got 2 non-finite \(NaN/Inf\) of 6"):
        quantize(np.float32([[1, np.nan, 2], [np.inf, 0, 0]]), 8)
    with pytest.raises(ValueError, match="x: expected finite values within the fp32 range"):
        quantize(np.array([1e39]), 8)
    with pytest.raises(ValueError, match="x: expected a non-empty array"):
        quantize(np.zeros((0, 3), f32), 8)
    for bad in (np.ones(3, np.int32), np.ones(3, complex), np.array([1.0], object), np.ones(3, bool)):
        with pytest.raises(TypeError, match="x: expected a float16/float32/float64 array"):
            quantize(bad, 8)
    with pytest.raises(ValueError, match=r"bits: expected one of \(2, 3, 4, 8\), got 5"):
        quantize(good, 5)
    with pytest.raises(ValueError, match="block: expected 2 entries"):
        quantize(good, 8, block=(1,))
    for blk in ((0, None), (-1, 1), (1.5, None), (True, None)):
        with pytest.raises(ValueError, match="block: entry 0 must be a positive int or None"):
            quantize(good, 8, block=blk)
    with pytest.raises(ValueError, match="block: expected None or a tuple"):
        quantize(good, 8, block=4)
    with pytest.raises(ValueError, match="rounding: expected one of"):
        quantize(good, 8, rounding="nearest")
    with pytest.raises(ValueError, match="scale_dtype: expected one of"):
        quantize(good, 8, scale_dtype="bf16")
    with pytest.raises(ValueError, match="zero_scale: expected one of"):
        quantize(good, 8, zero_scale="zero")
    with pytest.raises(ValueError, match="arithmetic: expected one of"):
        quantize(good, 8, arithmetic="bf16")
    with pytest.raises(ValueError, match="signed: symmetric quantization uses signed codes"):
        quantize(good, 8, signed=False)
    with pytest.raises(ValueError, match="scale: expected values exactly representable"):
        quantize(good, 8, scale=0.1, scale_dtype="fp16")
    with pytest.raises(ValueError, match="scale: expected positive values"):
        quantize(good, 8, scale=0.0)
    with pytest.raises(ValueError, match="scale: expected shape broadcastable"):
        quantize(good, 8, block=(1, None), scale=np.ones(3, f32))
    with pytest.raises(ValueError, match="zero_point: required"):
        quantize(good, 4, symmetric=False, scale=1.0)
    with pytest.raises(ValueError, match="zero_point: expected None"):
        quantize(good, 8, zero_point=0)
    with pytest.raises(ValueError, match="scale: required"):
        dequantize(np.ones(3, np.int8))
    with pytest.raises(ValueError, match=r"scale: expected the block grid shape \(3,\)"):
        dequantize(np.ones(3, np.int8), np.ones(2, f32), block=(1,))
    with pytest.raises(TypeError, match="codes: expected an integer array"):
        dequantize(np.ones(3, f32), np.ones(1, f32))
    with pytest.raises(ValueError, match="dtype: expected one of"):
        dequantize(quantize(good, 8), dtype="fp16")
    with pytest.raises(ValueError, match="rounding: expected one of"):
        round_to_int(np.ones(2, f32), "banker")
