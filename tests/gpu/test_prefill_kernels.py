"""Prefill kernels == sim.simulate (trace=True): integers identical, floats within the bound.

Bounds (|kernel - sim| on the output, elementwise, in ulps of the output dtype (fp16 or bf16)
at the simulator's value, with an absolute floor 2^-16 for values near 0):
- int8_flash, turbo: codes, scales, S_int, O_int identical; turbo P codes identical (SAS has no
  hardware exp); int8_flash P codes may differ where exp2 differs by an ulp (numpy's float32 exp2
  in the interpreter, ex2.approx on the GPU vs the simulator's float64 exp2): at most 0.1% of
  codes, and O_int must then equal dot(P8_kernel, V8) exactly. Output: <= 2 ulp (the only float
  differences are the rowsum order of p and, on the GPU, exp2).
- fp16_flash: S within 1e-5 relative (dot order), output <= 8 ulp: an exp2 that differs by
  one f32 ulp can move f16(p) by one fp16 ulp, and one such term moves the output by up to a
  few output ulps; the share within 1 ulp is printed (> 99.9% here).
"""
import numpy as np
import pytest
import torch

import gpu
from sim import load_method, simulate
from tests.gpu.helpers import ulp, make_qkv, np32, report

SHAPES = [  # label, B, Hq, Hkv, Lq, Lk, D
    ("L1", 1, 2, 2, 1, 1, 64),
    ("L17-gqa", 1, 4, 2, 17, 17, 64),
    ("Lq17-Lk97-gqa", 2, 4, 1, 17, 97, 128),
    ("L97-b2", 2, 2, 2, 97, 97, 64),
    ("Lq97-Lk40", 1, 2, 1, 97, 40, 64),  # causal: first 57 rows see nothing
]
ULP_BOUND = {"int8_flash": 2, "turbo": 2, "fp16_flash": 8}


def _visible(Lq, Lk, causal):
    if not causal:
        return np.ones((Lq, Lk), bool)
    return np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + (Lk - Lq)


def _check(method, shape, causal, dtype=torch.float16, spec=None):
    label, B, Hq, Hkv, Lq, Lk, D = shape
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype=dtype, seed=Lq * 7 + Lk)
    tr = gpu.attention_trace(q, k, v, method=method, causal=causal, spec=spec)
    s = spec or gpu.ops.resolve_spec(method, None, q.dtype)
    sim = simulate(np32(q), np32(k), np32(v), s, causal=causal, trace=True)
    st = sim.trace
    vis = np.broadcast_to(_visible(Lq, Lk, causal), (B, Hq, Lq, Lk))
    figures = {}
    if s.integer:
        for name in ("q", "k", "v"):
            np.testing.assert_array_equal(tr[f"{name}_codes"].cpu().numpy(), st[f"{name}_codes"])
            np.testing.assert_array_equal(tr[f"{name}_scale"].cpu().numpy(),
                                          st[f"{name}_scale"].reshape(tr[f"{name}_scale"].shape))
        np.testing.assert_array_equal(tr["S"].cpu().numpy()[vis], st["s_int"][vis])
        p_k = tr["P"].cpu().numpy()
        np.testing.assert_array_equal(p_k[~vis], 0)
        diff = np.count_nonzero(p_k != st["p_codes"])
        figures["p_code_diff"] = f"{diff}/{p_k.size}"
        o_k = tr["O_int"].cpu().numpy()
        if s.softmax.exp == "sas":
            assert diff == 0
        else:
            assert diff <= 1e-3 * p_k.size
        if diff == 0:
            np.testing.assert_array_equal(o_k, st["o_int"])
        # O_int is the exact integer product of the kernel's own P codes and V codes
        bn = s.tiling.block_n
        v8 = st["v_codes"].astype(np.int64)
        g = Hq // Hkv
        for t in range(o_k.shape[2]):
            sl = slice(t * bn, min((t + 1) * bn, Lk))
            exp = np.einsum("bhqk,bhkd->bhqd", p_k[..., sl].astype(np.int64),
                            np.repeat(v8[:, :, sl], g, axis=1))
            np.testing.assert_array_equal(o_k[:, :, t], exp)
    else:
        S_k = tr["S"].cpu().numpy()[vis]
        S_s = (st["s"][vis] / st["qk_scale"])
        np.testing.assert_allclose(S_k, S_s, rtol=1e-5, atol=1e-5)
    out_k = np32(tr["out"])
    out_s = sim.out.astype(np.float64)
    ulps = np.abs(out_k - out_s) / np.maximum(ulp(out_s, dtype), 2.0**-16)
    figures["max_ulp"] = f"{ulps.max():.2f}"
    figures["share<=1ulp"] = f"{np.mean(ulps <= 1):.4f}"
    report(f"{method} {label} causal={causal} {str(dtype)[6:]}", **figures)
    assert np.isfinite(out_k).all()
    assert ulps.max() <= ULP_BOUND[method]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("method", ["int8_flash", "turbo", "fp16_flash"])
def test_prefill_matches_sim(method, shape, causal):
    _check(method, shape, causal)


@pytest.mark.parametrize("method", ["int8_flash", "turbo", "fp16_flash"])
def test_prefill_bf16(method):
    _check(method, ("bf16-L97", 1, 2, 1, 33, 97, 128), True, dtype=torch.bfloat16)


@pytest.mark.parametrize("overrides", [
    {"p__rounding": "half_even", "p__arithmetic": "fp32", "p__rowsum": "quantized"},
    {"p__saturate": True, "q__granularity": "per_block", "k__scale_dtype": "fp32",
     "v__granularity": "per_block", "tiling__block_n": 32},
    {"softmax__exp": "exp2"},  # turbo without SAS: the bench's "what SAS buys" variant
    {"p__rounding": "half_even", "p__arithmetic": "fp32"},  # P_MODE 2, unquantized rowsum
    {"p__rounding": "half_away"},  # P_MODE 1 (equals half_up for p >= 0)
    {"p__rounding": "half_even"},  # fp16 arithmetic, generic PQUANT path (P_MODE 0)
    {"softmax__sas__arithmetic": "fp32", "p__rounding": "half_even", "p__arithmetic": "fp32"},
], ids=["pquant-fp32-even-qsum", "perblock-bn32-sat", "turbo-exp2", "pquant-fp32-even",
        "pquant-fp16-away", "pquant-fp16-even", "turbo-sas-fp32-p-fp32-even"])
def test_prefill_spec_variants(overrides):
    base = "turbo" if any(k.startswith("softmax__") for k in overrides) else "int8_flash"
    spec = load_method(base, **overrides)
    _check(base, ("L97-b2", 2, 2, 1, 97, 97, 64), True, spec=spec)


def test_sas_poly_floor_checked():
    """The kernel skips f16(LUT[n] * poly) (exact while the product is a normal fp16): specs
    whose polynomial can fall below 2^(lut_entries - 15) on [0, 1] are refused."""
    spec = load_method("turbo", softmax__sas__coefficients=[1.0, -1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="coefficients"):
        gpu.ops.check_prefill_spec(spec)
    gpu.ops.check_prefill_spec(load_method("turbo"))


PIPE_SHAPES = [  # block_n 32: Lk 200 has 6 full tiles (pipelined loop) + a masked tail
    ("Lq40-Lk200-gqa", 1, 4, 2, 40, 200, 64),
    ("L17", 1, 2, 2, 17, 17, 64),  # no full tile: the pipelined loop is empty
    ("Lq33-Lk64", 1, 2, 1, 33, 64, 128),  # two full tiles, no tail
]


@pytest.mark.parametrize("shape", PIPE_SHAPES, ids=[s[0] for s in PIPE_SHAPES])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("method", ["int8_flash", "turbo", "fp16_flash"])
def test_prefill_pipe_identical(method, shape, causal):
    """Launch option ``pipe`` (QK^T of tile j+1 issued before tile j's softmax) changes no
    number: every traced integer and float equals the plain loop's bit for bit."""
    label, B, Hq, Hkv, Lq, Lk, D = shape
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype=torch.float16, seed=Lq * 5 + Lk)
    spec = load_method(method, tiling__block_n=32)
    plain = gpu.attention_trace(q, k, v, method=method, causal=causal, spec=spec)
    piped = gpu.attention_trace(q, k, v, method=method, causal=causal, spec=spec,
                                launch={"pipe": True})
    assert plain.keys() == piped.keys()
    for name in plain:
        assert torch.equal(plain[name], piped[name]), name
    assert plain["S"].abs().sum() > 0  # the trace saw the tiles
