"""sim.numerics float rounding and bit codes: exhaustive over fp16, exact against torch's casts.

torch casts float64 -> bf16/fp8 through fp32 (two roundings); round_float rounds once. So torch
is the oracle only on fp32-representable inputs (all fp16 values, fp32 edge cases, random fp32
bit patterns); float64 inputs are checked against an exact rational reference instead.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from sim.numerics import FLOAT_FORMATS, decode, default_saturate, encode, float_format, round_float

TORCH_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
FORMATS = list(TORCH_DTYPES)


def torch_cast(x32: np.ndarray, fmt: str) -> np.ndarray:
    assert x32.dtype == np.float32
    return torch.from_numpy(x32).to(TORCH_DTYPES[fmt]).to(torch.float64).numpy()


def assert_same(got, want):
    """Bitwise-equal as float64 values: NaN matches NaN, and the sign of zero must match."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    bad = (nan_g != nan_w) | (~nan_w & ((got != want) | (np.signbit(got) != np.signbit(want))))
    if np.any(bad):
        i = np.flatnonzero(bad)[:5]
        raise AssertionError(f"{bad.sum()} mismatches, e.g. got {got.ravel()[i]} want {want.ravel()[i]}")


def ref_round(v: float, fmt: str, saturate: bool) -> float:
    """Exact rational round-to-nearest-even (independent of round_float's frexp/ldexp scheme)."""
    f = float_format(fmt)
    if math.isnan(v):
        return math.nan
    if math.isinf(v):
        mag = f.max_normal if saturate else (math.inf if f.has_inf else math.nan)
        return math.copysign(mag, v)
    if v == 0:
        return v
    a = Fraction(abs(v))
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    q = max(e, f.emin) - f.mbits
    n = a / Fraction(2) ** q
    k = math.floor(n)
    rem = n - k
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and k % 2 == 1):
        k += 1
    r = Fraction(k) * Fraction(2) ** q
    if r > Fraction(f.max_normal):
        mag = f.max_normal if saturate else (math.inf if f.has_inf else math.nan)
    else:
        mag = float(r)
    return math.copysign(mag, v)


def fp32_edge_cases(fmt: str) -> np.ndarray:
    """fp32 values at and around every rounding boundary of ``fmt``.

    For every fp32 exponent and a set of kept mantissa bits (both parities), the dropped bits are
    0, 1, half-1, half (a tie), half+1, all ones; plus max-normal neighbourhoods, the
    subnormal/normal boundary, fp32 subnormals and the specials.
    """
    f = float_format(fmt)
    rng = np.random.default_rng(1)
    out = []
    for ef in range(0, 255):
        e = max(ef, 1) - 127  # fp32 exponent of the value
        drop = 23 - f.mbits + max(0, f.emin - e)  # dropped fp32 mantissa bits for this exponent
        drop = min(max(drop, 0), 24)
        keep_bits = 23 - min(drop, 23)
        if keep_bits <= 4:
            kept = np.arange(1 << keep_bits, dtype=np.uint64)
        else:
            kept = np.concatenate([[0, 1, 2, 3, (1 << keep_bits) - 2, (1 << keep_bits) - 1],
                                   rng.integers(0, 1 << keep_bits, 10)]).astype(np.uint64)
        if drop == 0:
            lows = np.array([0], np.uint64)
        else:
            half = 1 << (drop - 1)
            lows = np.array([0, 1, half - 1, half, half + 1, (1 << drop) - 1], np.uint64)
            lows = lows[lows < (1 << min(drop, 23))]
        mant = (kept[:, None] << np.uint64(min(drop, 23))) | lows[None, :]
        mant = mant.ravel() & np.uint64((1 << 23) - 1)
        out.append((np.uint64(ef) << np.uint64(23)) | mant)
    bits = np.unique(np.concatenate(out)).astype(np.uint32)
    x = bits.view(np.float32)
    mx = np.float32(f.max_normal) if fmt != "fp32" else np.float32(np.finfo(np.float32).max)
    spacing_top = np.float32(2.0 ** (math.floor(math.log2(f.max_normal)) - f.mbits))
    with np.errstate(over="ignore"):  # fp32's own max neighbourhood overflows to inf: wanted
        specials = _specials(f, mx, spacing_top)
    x = np.concatenate([x, specials])
    return np.concatenate([x, -x])


def _specials(f, mx, spacing_top):
    return np.array(
        [mx, np.nextafter(mx, np.float32(0)), np.nextafter(mx, np.float32(np.inf)),
         mx + spacing_top / 2, np.nextafter(mx + spacing_top / 2, np.float32(0)),
         np.nextafter(mx + spacing_top / 2, np.float32(np.inf)), mx + spacing_top,
         np.float32(f.min_normal), np.float32(f.min_normal - f.min_subnormal / 2),
         np.float32(f.min_normal - f.min_subnormal), np.float32(f.min_subnormal),
         np.float32(f.min_subnormal / 2), np.float32(f.min_subnormal * 1.5),
         np.float32(f.min_subnormal / 2 * (1 + 2**-20)),
         np.float32(np.finfo(np.float32).max), np.float32(2.0**-149), np.float32(0.0),
         np.float32(np.inf), np.float32(np.nan)],
        np.float32,
    )


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # fp16 sNaN patterns
@pytest.mark.parametrize("fmt", FORMATS)
def test_all_fp16_values_match_torch(fp16_all, fmt):
    x32 = fp16_all.astype(np.float32)
    assert_same(round_float(x32, fmt), torch_cast(x32, fmt))
    # float16 input (returned as float64) and float64 input give the same values
    assert_same(round_float(fp16_all, fmt), torch_cast(x32, fmt))
    assert_same(round_float(x32.astype(np.float64), fmt), torch_cast(x32, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_edge_cases_match_torch(fmt):
    x = fp32_edge_cases(fmt)
    assert_same(round_float(x, fmt), torch_cast(x, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_fp32_bit_patterns_match_torch(fmt):
    x = np.random.default_rng(7).integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    assert_same(round_float(x, fmt), torch_cast(x, fmt))


def test_fp32_to_fp16_matches_numpy_astype():
    x = np.concatenate([
        fp32_edge_cases("fp16"),
        np.random.default_rng(3).integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert_same(round_float(x, "fp16"), want)


def test_ties_to_even_examples():
    # each is exactly halfway between two neighbours of the target
    assert_same(round_float(np.float32([1 + 2**-8, 1 + 3 * 2**-8]), "bf16"), [1.0, 1 + 2**-6])
    assert_same(round_float(np.array([1 + 2**-4, 1 + 3 * 2**-4]), "fp8_e4m3"), [1.0, 1.25])
    assert_same(round_float(np.array([2.0**-10, 3 * 2.0**-10]), "fp8_e4m3"), [0.0, 2.0**-8])  # subnormal ties
    assert_same(round_float(np.array([1 + 2**-3, 1 + 3 * 2**-3]), "fp8_e5m2"), [1.0, 1.5])


def test_overflow_policies():
    x = np.array([448.0, 464.0, 464.0001, 480.0, 1e9, np.inf, -np.inf, -470.0, np.nan])
    assert default_saturate("fp8_e4m3") and not default_saturate("fp8_e5m2")
    assert_same(round_float(x, "fp8_e4m3"), [448, 448, 448, 448, 448, 448, -448, -448, np.nan])
    assert_same(round_float(x, "fp8_e4m3", saturate=True), round_float(x, "fp8_e4m3"))
    nan = np.nan
    assert_same(round_float(x, "fp8_e4m3", saturate=False), [448, 448, nan, nan, nan, nan, nan, nan, nan])
    y = np.array([57344.0, 61439.0, 61440.0, 1e6, np.inf, -np.inf, np.nan])
    assert_same(round_float(y, "fp8_e5m2"), [57344, 57344, np.inf, np.inf, np.inf, -np.inf, nan])
    assert_same(round_float(y, "fp8_e5m2", saturate=True), [57344, 57344, 57344, 57344, 57344, -57344, nan])
    z = np.array([65504.0, 65519.99, 65520.0, np.inf])
    assert_same(round_float(z, "fp16"), [65504, 65504, np.inf, np.inf])
    assert_same(round_float(z, "fp16", saturate=True), [65504, 65504, 65504, 65504])


def test_saturating_variants_against_torch(fp16_all):
    """saturate=True/False derived from torch: torch e4m3 saturates, the others overflow to inf."""
    x32 = fp16_all.astype(np.float32)
    for fmt in ("bf16", "fp8_e5m2", "fp16"):
        f = float_format(fmt)
        t = torch_cast(x32, fmt)
        want = np.where(np.isinf(t), np.copysign(f.max_normal, t), t)
        assert_same(round_float(x32, fmt, saturate=True), want)
        assert_same(round_float(x32, fmt, saturate=False), t)
    t = torch_cast(x32, "fp8_e4m3")
    overflow = np.abs(x32) > 464  # 464 is the tie that still rounds to 448
    assert_same(round_float(x32, "fp8_e4m3", saturate=False), np.where(overflow, np.nan, t))


@pytest.mark.parametrize("fmt", FORMATS)
def test_float64_inputs_round_once(fmt):
    rng = np.random.default_rng(11)
    f = float_format(fmt)
    top = math.floor(math.log2(f.max_normal))
    mags = 2.0 ** rng.uniform(f.emin - f.mbits - 3, top + 2, 1500)
    x = mags * rng.choice([-1.0, 1.0], mags.size) * (1 + rng.random(mags.size) * 2**-20)
    for sat in (False, True):
        want = [ref_round(float(v), fmt, sat) for v in x]
        assert_same(round_float(x, fmt, saturate=sat), want)
    # double rounding through fp32 (torch's path) differs here; round_float rounds once
    v = 1.0 + 2**-4 + 2**-30
    assert float(round_float(v, "fp8_e4m3")) == 1.125
    assert float(torch.tensor([v], dtype=torch.float64).to(torch.float8_e4m3fn).double()) == 1.0


def test_dtypes_and_scalars():
    assert round_float(np.float32([0.1]), "bf16").dtype == np.float32
    assert round_float(np.array([0.1]), "bf16").dtype == np.float64
    assert round_float(np.float16([0.1]), "fp8_e4m3").dtype == np.float64
    s = round_float(0.1, "bf16")
    assert np.ndim(s) == 0 and float(s) == 0.10009765625
    assert_same(round_float(np.array([-0.0, -1e-30]), "fp16"), [-0.0, -0.0])


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_decode_all_fp8_codes_match_torch(fmt):
    codes = np.arange(256, dtype=np.uint8)
    want = torch.from_numpy(codes).view(TORCH_DTYPES[fmt]).to(torch.float64).numpy()
    assert_same(decode(codes, fmt), want)
    back = encode(decode(codes, fmt), fmt)
    nan = np.isnan(want)
    np.testing.assert_array_equal(back[~nan], codes[~nan])
    assert np.all(back[nan] == (0x7F if fmt == "fp8_e4m3" else 0x7E))


@pytest.mark.parametrize("fmt,view", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_decode_all_16bit_codes(fmt, view):
    codes = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = torch.from_numpy(codes.view(np.int16)).view(view).to(torch.float64).numpy()
    assert_same(decode(codes, fmt), want)
    nan = np.isnan(want)
    back = encode(decode(codes, fmt), fmt)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[~nan], codes[~nan])


def test_encode_fp32_and_fp16_match_numpy_views(fp16_finite):
    x = np.random.default_rng(5).standard_normal(1000).astype(np.float32) * 1e3
    x = np.concatenate([x, np.float32([0.0, -0.0, 2.0**-149, 3.4e38])])
    np.testing.assert_array_equal(encode(x, "fp32"), x.view(np.uint32))
    np.testing.assert_array_equal(encode(fp16_finite, "fp16"), fp16_finite.view(np.uint16))
    np.testing.assert_array_equal(encode(np.array([np.nan, -np.inf]), "fp16"), [0x7E00, 0xFC00])


def test_bad_inputs():
    with pytest.raises(TypeError, match="x: expected a float16/float32/float64"):
        round_float(np.arange(3), "bf16")
    with pytest.raises(TypeError, match="x:"):
        round_float(np.array([1 + 1j]), "bf16")
    with pytest.raises(TypeError, match="x:"):
        round_float(3, "bf16")
    with pytest.raises(ValueError, match="fmt: expected one of"):
        round_float(np.zeros(2), "fp4")
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 255\]"):
        decode(np.array([256]), "fp8_e4m3")
    with pytest.raises(TypeError, match="codes: expected an integer array"):
        decode(np.array([1.0]), "fp8_e4m3")
    assert set(FLOAT_FORMATS) == set(FORMATS)
