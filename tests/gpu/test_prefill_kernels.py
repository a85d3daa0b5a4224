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
from gpu.compare import compare
from gpu.methods.int8_flash import PATH as INT8_PATH
from sim import load_method, simulate
from tests.gpu.helpers import make_qkv, np32, report

SHAPES = [  # label, B, Hq, Hkv, Lq, Lk, D
    ("L1", 1, 2, 2, 1, 1, 64),
    ("L17-gqa", 1, 4, 2, 17, 17, 64),
    ("Lq17-Lk97-gqa", 2, 4, 1, 17, 97, 128),
    ("L97-b2", 2, 2, 2, 97, 97, 64),
    ("Lq97-Lk40", 1, 2, 1, 97, 40, 64),  # causal: first 57 rows see nothing
]
ULP_BOUND = {"int8_flash": 2, "turbo": 2, "fp16_flash": 8}


def _check(method, shape, causal, dtype=torch.float16, spec=None):
    label, B, Hq, Hkv, Lq, Lk, D = shape
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype=dtype, seed=Lq * 7 + Lk)
    kr = gpu.attention_trace(q, k, v, method=method, causal=causal, spec=spec)
    sim = simulate(np32(q), np32(k), np32(v), kr.spec, causal=causal, trace=True)
    dt = str(dtype).removeprefix("torch.")
    cmp = compare(sim, kr, dtype=dt, ulp_bound=ULP_BOUND[method], ulp_floor=2.0**-16)
    figures = {key: f"{a.mismatches}/{a.total}" for key, a in cmp.ints.items() if a.mismatches}
    figures["max_ulp"] = f"{cmp.out.max_ulp:.2f}"
    report(f"{method} {label} causal={causal} {dt}", **figures)
    assert np.isfinite(np32(kr.out)).all()
    if kr.spec.integer:
        assert set(cmp.ints) >= {"q_codes", "k_codes", "v_codes", "q_scale", "k_scale", "v_scale",
                                 "s_int", "p_codes", "o_int", "o_int_from_kernel_p"}
        # exp2 P codes may differ where the hardware / interpreter exp2 rounds differently
        # (at most 0.1%); SAS codes never (exp-free)
        assert cmp.failures(p_code_tolerance=1e-3) == []
        np.testing.assert_array_equal(np32(kr.trace["p_codes"])[~sim.trace["visible"]], 0)
    else:  # float scores: dot order differs, within 1e-5 relative
        vis = sim.trace["visible"]
        np.testing.assert_allclose(np32(kr.trace["s"])[vis], sim.trace["s"][vis], rtol=1e-5,
                                   atol=1e-5)
        assert cmp.failures() == []


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
        INT8_PATH.check_spec(spec)
    INT8_PATH.check_spec(load_method("turbo"))


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
    assert plain.trace.keys() == piped.trace.keys()
    assert torch.equal(plain.out, piped.out)
    for name in plain.trace:
        assert torch.equal(plain.trace[name], piped.trace[name]), name
    key = "s_int" if "s_int" in plain.trace else "s"
    assert plain.trace[key].abs().sum() > 0  # the trace saw the tiles
