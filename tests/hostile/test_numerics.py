"""Hostile inputs to ``sim.numerics`` (formats, quantizers, packing, integer GEMM) and to the
references ``ref.attention`` / ``ref.sdpa``."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ref
from sim import numerics as nx

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
X = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)

JUNK = [None, "abc", [1, "a"], {"a": 1}, object(), np.int32(3), True, np.array(["x"]),
        np.zeros(3, np.int64), np.zeros(3, np.complex64)]


# ---- float formats -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", JUNK, ids=[type(b).__name__ for b in JUNK])
def test_round_float_bad_x(hostile, bad):
    hostile.error(lambda: nx.round_float(bad, "fp16"), "x", start=True)


@pytest.mark.parametrize("fmt", ("fp17", "", None, 16, "FP16"))
def test_bad_formats(hostile, fmt):
    for fn in (lambda: nx.round_float(X, fmt), lambda: nx.encode(X, fmt),
               lambda: nx.decode(np.zeros(3, np.uint8), fmt)):
        hostile.error(fn, "fmt", start=True)


@pytest.mark.parametrize("saturate", ("yes", 1, 0.5))
def test_bad_saturate(hostile, saturate):
    hostile.error(lambda: nx.round_float(X, "fp16", saturate=saturate), "saturate", start=True)


@settings(max_examples=40, **SETTINGS)
@given(x=st.floats(allow_nan=True, allow_infinity=True, width=64),
       fmt=st.sampled_from(["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]))
def test_round_float_property(hostile, x, fmt):
    """Any float: the nearest value of the format (as torch casts), NaN to NaN."""
    torch = pytest.importorskip("torch")
    tdt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn,
           "fp8_e5m2": torch.float8_e5m2}[fmt]
    want = float(torch.tensor([x], dtype=torch.float64).to(tdt).double()[0])

    def check(got):
        g = float(np.asarray(got).reshape(-1)[0])
        return (math.isnan(g) and math.isnan(want)) or g == want

    hostile.correct(lambda: nx.round_float(np.array([x]), fmt), check, case=f"{fmt} {x!r}")


@pytest.mark.parametrize("codes,fmt,name", [
    (np.full(3, -1, np.int8), "fp8_e4m3", "codes"), (np.zeros(3, np.float32), "fp16", "codes"),
    ([1.5], "fp8_e5m2", "codes"), (np.array([300]), "fp8_e5m2", "codes"),
])
def test_decode_bad_codes(hostile, codes, fmt, name):
    hostile.error(lambda: nx.decode(codes, fmt), name, start=True)


# ---- quantizers ----------------------------------------------------------------------------
BAD_QUANTIZE = [
    (dict(x="x"), "x"), (dict(x=np.array([1, 2])), "x"), (dict(x=np.zeros((0, 4), np.float32)), "x"),
    (dict(x=np.array([1.0, np.nan], np.float32)), "x"), (dict(bits=0), "bits"),
    (dict(bits=9), "bits"), (dict(bits=4.0), "bits"), (dict(bits=True), "bits"),
    (dict(block=(1, 2)), "block"), (dict(block=(0, None, None)), "block"),
    (dict(block="row"), "block"), (dict(block=(1.5, None, None)), "block"),
    (dict(rounding="nearest"), "rounding"), (dict(rounding=None), "rounding"),
    (dict(scale_dtype="fp8"), "scale_dtype"), (dict(zero_scale="zero"), "zero_scale"),
    (dict(arithmetic="fp17"), "arithmetic"), (dict(symmetric="yes"), "symmetric"),
    (dict(signed="no"), "signed"), (dict(scale=np.float32(-1)), "scale"),
    (dict(scale=np.float32(np.nan)), "scale"), (dict(scale=np.ones(7, np.float32)), "scale"),
    (dict(x=np.full(4, 1e9, np.float32), scale_dtype="fp16"), "x"),
]


@pytest.mark.parametrize("kw,name", BAD_QUANTIZE,
                         ids=[f"{next(iter(k))}={next(iter(k.values()))!r}"[:30]
                              for k, _ in BAD_QUANTIZE])
def test_quantize_bad_arguments(hostile, kw, name):
    args = dict(x=X, bits=8)
    args.update(kw)
    x, bits = args.pop("x"), args.pop("bits")
    hostile.error(lambda: nx.quantize(x, bits, **args), name, start=True)


@settings(max_examples=40, **SETTINGS)
@given(data=st.lists(st.floats(-1e30, 1e30).map(np.float32), min_size=1, max_size=16),
       bits=st.sampled_from([2, 3, 4, 8]), symmetric=st.booleans(),
       rounding=st.sampled_from(["half_even", "half_away", "half_up", "floor", "toward_zero"]))
def test_quantize_property(hostile, data, bits, symmetric, rounding):
    """Any finite data: a clear error (a scale beyond its dtype) or codes in range whose
    dequantized values are within a scale (one step; two for floor) of the input."""
    x = np.asarray(data, np.float32)

    def check(q):
        lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
        assert q.codes.min() >= lo and q.codes.max() <= hi
        err = np.abs(nx.dequantize(q, dtype="fp64") - x.astype(np.float64))
        assert (err <= 1.01 * np.asarray(q.scale, np.float64) * 2 + 1e-30).all(), err.max()
        return True

    hostile.either(lambda: nx.quantize(x, bits, symmetric=symmetric, rounding=rounding),
                   ("scale", "x"), check, case=f"{bits} {symmetric} {rounding}")


@pytest.mark.parametrize("kw,name", [
    (dict(codes=np.zeros(8, np.float32)), "codes"), (dict(codes=np.full(8, 200)), "codes"),
    (dict(from_bits=8, to_bits=8), "to_bits"), (dict(to_bits=5), "to_bits"),
    (dict(group=0), "group"), (dict(group=-2), "group"), (dict(axis=4), "axis"),
    (dict(group=2.0), "group"),
])
def test_requantize_bad_arguments(hostile, kw, name):
    args = dict(codes=np.arange(-4, 4, dtype=np.int8), from_bits=8, to_bits=4)
    args.update(kw)
    codes = args.pop("codes")
    hostile.error(lambda: nx.requantize(codes, **args), name, start=True)


@pytest.mark.parametrize("call,name", [
    (lambda: nx.pack(np.array([0, 16]), 4), "codes"), (lambda: nx.pack(np.array([-1]), 4), "codes"),
    (lambda: nx.pack(np.array([1.0]), 4), "codes"), (lambda: nx.pack(np.array([1]), 5), "bits"),
    (lambda: nx.unpack(np.zeros(2, np.uint8), 4, 5), "n"),
    (lambda: nx.unpack(np.zeros(2, np.int8), 4, 4), "packed"),
    (lambda: nx.unpack(np.zeros(2, np.uint8), 4, -1), "n"),
    (lambda: nx.int_matmul(np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8)), "b"),
    (lambda: nx.int_matmul(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int8)), "a"),
    (lambda: nx.int_matmul(np.zeros((2, 3), np.int8), "b"), "b"),
])
def test_packing_and_gemm_bad_arguments(hostile, call, name):
    hostile.error(call, name, start=True)


@settings(max_examples=25, **SETTINGS)
@given(codes=st.lists(st.integers(0, 15), min_size=1, max_size=40))
def test_pack_roundtrip_property(hostile, codes):
    c = np.asarray(codes, np.uint8)
    hostile.correct(lambda: nx.unpack(nx.pack(c, 4), 4, c.size),
                    lambda u: np.array_equal(np.asarray(u).reshape(-1), c))


# ---- references ----------------------------------------------------------------------------
RNG = np.random.default_rng(0)
Q = RNG.standard_normal((1, 4, 5, 8))
K = RNG.standard_normal((1, 2, 7, 8))
V = RNG.standard_normal((1, 2, 7, 8))


@pytest.mark.parametrize("kw,name", [
    (dict(causal="yes"), "causal"), (dict(is_causal=1), "is_causal"),
    (dict(causal=False, is_causal=True), "is_causal"), (dict(return_lse=1), "return_lse"),
    (dict(sm_scale=-1.0), "sm_scale"), (dict(sm_scale=1e308), "sm_scale"),
    (dict(sm_scale="1"), "sm_scale"), (dict(tensor_layout="HDN"), "tensor_layout"),
    (dict(q=Q[:, :3]), "q"), (dict(k=K[..., :4]), "k"), (dict(v=V[:, :, :3]), "v"),
    (dict(q=np.full_like(Q, np.nan)), "q"), (dict(q=Q[:, :, :0]), "q"),
    (dict(q=Q * 1e160, k=K * 1e160), "q"),
])
def test_ref_attention_bad_arguments(hostile, kw, name):
    args = dict(q=Q, k=K, v=V)
    args.update(kw)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    hostile.error(lambda: ref.attention(q, k, v, **args), name, start=True)


@pytest.mark.parametrize("kw,name", [
    (dict(dtype="fp8"), "dtype"), (dict(dtype=None), "dtype"), (dict(causal=1), "causal"),
    (dict(is_causal="no"), "is_causal"), (dict(sm_scale=1e35), "sm_scale"),
    (dict(q=Q * 1e5), "q"), (dict(v=V * 1e6), "v"), (dict(tensor_layout=1), "tensor_layout"),
])
def test_ref_sdpa_bad_arguments(hostile, kw, name):
    args = dict(q=Q, k=K, v=V, dtype="fp16")
    args.update(kw)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    hostile.error(lambda: ref.sdpa(q, k, v, **args), name, start=True)


def test_ref_conventions(hostile):
    torch = pytest.importorskip("torch")
    base, lse = ref.attention(Q, K, V, causal=True, return_lse=True)
    nhd = tuple(x.swapaxes(1, 2) for x in (Q, K, V))
    hostile.correct(lambda: ref.attention(*nhd, is_causal=True, tensor_layout="NHD",
                                          return_lse=True),
                    lambda r: np.array_equal(r[0].swapaxes(1, 2), base) and np.array_equal(r[1], lse))
    hostile.correct(lambda: ref.attention(*(torch.from_numpy(x) for x in (Q, K, V)), causal=True),
                    lambda o: np.array_equal(o, base))
    hostile.correct(lambda: ref.sdpa(*nhd, causal=np.bool_(True), tensor_layout="NHD"),
                    lambda o: np.abs(o.swapaxes(1, 2) - base).max() < 1e-5)
    hostile.correct(lambda: ref.attention(Q, K, V, sm_scale=1e100),     # the argmax, exactly
                    lambda o: np.isfinite(o).all())
