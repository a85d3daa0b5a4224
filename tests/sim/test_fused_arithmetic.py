"""The named fast variants of the integer path (spec ``arith`` and ``p.arithmetic: fp32_fma``)
and the quantizers' fp16 arithmetic, checked element by element against independent exact
evaluations (Python fractions / float64 with one final rounding), and their error against
float64 printed next to the default's."""
from fractions import Fraction

import numpy as np
import pytest

import ref
from sim import load_method, simulate
from sim.numerics import quantize
from sim.schema import ConfigError


def _qkv(Lq=33, Lk=100, D=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, 2, Lq, D)).astype(np.float16),
            rng.standard_normal((1, 1, Lk, D)).astype(np.float16),
            rng.standard_normal((1, 1, Lk, D)).astype(np.float16))


def _f32(x: Fraction) -> np.float32:
    """The float32 nearest to an exact rational (ties to even): float64 first is exact for the
    products of two f32 here, and the difference with one more term is checked separately."""
    return np.float32(float(x)) if float(x) == x else _round_exact(x)


def _round_exact(x: Fraction) -> np.float32:
    lo = np.float32(float(x))
    cand = [np.nextafter(lo, np.float32(-np.inf)), lo, np.nextafter(lo, np.float32(np.inf))]
    d = [abs(Fraction(float(c)) - x) for c in cand]
    best = min(range(3), key=lambda i: (d[i], int(np.float32(cand[i]).view(np.int32)) & 1))
    return np.float32(cand[best])


def test_fma_scores_shift_is_one_rounding():
    q, k, v = _qkv()
    spec = load_method("int8_flash", arith__scores="fma", tiling__block_n=128)
    res = simulate(q, k, v, spec, trace=True)  # one key tile: m is the row max of this tile
    t = res.trace
    ks = t["k_scale"][0, 0, :, 0]
    qf = (t["q_scale"][0, :, :, 0] * t["qk_scale"]).astype(np.float32)
    for h, i in ((0, 0), (1, 17), (0, 32)):
        tt = (t["s_int"][0, h, i].astype(np.float32) * ks).astype(np.float32)
        m = np.float32(qf[h, i] * tt.max())
        for j in (0, 5, 99):
            x = _round_exact(Fraction(float(tt[j])) * Fraction(float(qf[h, i]))
                             - Fraction(float(m)))
            want = np.float32(np.exp2(np.float64(x)))
            assert t["p"][0, h, i, j] == want


def test_p_fma_is_rint_of_the_exact_product():
    q, k, v = _qkv(seed=1)
    spec = load_method("int8_flash", p__arithmetic="fp32_fma", p__rounding="half_even")
    t = simulate(q, k, v, spec, causal=True, trace=True).trace
    vis = t["visible"]
    p = t["p"][vis].astype(np.float64)
    np.testing.assert_array_equal(t["p_codes"][vis], np.rint(p * 127).astype(np.int8))
    with pytest.raises(ConfigError, match="half_even"):
        load_method("int8_flash", p__arithmetic="fp32_fma", p__rounding="half_up")


def test_deferred_v_scale_follows_its_recurrence():
    q, k, v = _qkv(Lq=5, Lk=200, seed=2)
    spec = load_method("int8_flash", arith__v_scale="deferred")
    res = simulate(q, k, v, spec, trace=True)
    t = res.trace
    vf = np.float32(t["v_scale"].reshape(-1)[0] / np.float32(127))
    for h in range(2):
        for i in range(5):
            acc = np.zeros(64, np.float64)
            for tile in range(t["o_int"].shape[2]):
                alpha = np.float64(t["alpha"][0, h, tile, i])
                o = t["o_int"][0, h, tile, i].astype(np.float64)
                acc = np.float32(acc * alpha + o).astype(np.float64)  # exact product: one rounding
            l = np.float32(t["l"][0, h, -1, i])
            want = (np.float32(acc) * vf).astype(np.float32) / l
            np.testing.assert_array_equal(res.out[0, h, i], want.astype(np.float32))


def test_deferred_v_scale_needs_one_scale_per_head():
    with pytest.raises(ConfigError, match="v.granularity"):
        load_method("int8_flash", arith__v_scale="deferred", v__granularity="per_block")
    with pytest.raises(ConfigError, match="exp2"):
        load_method("turbo", arith__scores="fma")
    with pytest.raises(ConfigError, match="integer operands"):
        load_method("fp16_flash", arith__scores="fma")


def test_fp16_arithmetic_divides_in_fp16():
    """code = rint(f16(f16(x) / scale)), the quotient rounded to fp16 before the rounding."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 128)) * 3).astype(np.float32)
    qz = quantize(x, 8, block=(1, None), rounding="half_even", scale_dtype="fp16",
                  arithmetic="fp16")
    x16 = x.astype(np.float16)
    scale = (np.abs(x16).max(axis=1, keepdims=True) / np.float16(127)).astype(np.float16)
    want = np.clip(np.rint(x16 / scale), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(qz.codes, want)
    with pytest.raises(ValueError, match="fp16"):
        quantize(np.float32([[1e5, 1.0]]), 8, block=(1, None), arithmetic="fp16")


def test_fast_variant_error_next_to_the_default():
    q, k, v = _qkv(Lq=200, Lk=200, D=128, seed=4)
    exact = ref.attention(q, k, v, causal=True)
    rel = {}
    for name in ("fp16_flash", "int8_flash", "int8_flash_fast"):
        out = simulate(q, k, v, name, causal=True).out
        rel[name] = float(np.linalg.norm(out - exact) / np.linalg.norm(exact))
    print({k_: f"{v_:.3e}" for k_, v_ in rel.items()})
    assert rel["int8_flash_fast"] <= 1.2 * rel["int8_flash"]
