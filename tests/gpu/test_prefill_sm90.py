"""The Gluon sm_90 prefill forward (gpu/kernels/flash_fwd_sm90.py) == sim.simulate, through
gpu.compare, on a Hopper GPU (QSATTN_GPU_TESTS=1 on an sm_90 device; skipped elsewhere: Gluon
kernels do not run under the interpreter).

Every method with a prefill kernel, the fused fast variant (int8_flash_fast: its arithmetic runs
in no other kernel), causal and not, GQA, ragged lengths (partial tiles, Lq != Lk, causal rows
that see nothing, Lk % 16 != 0 where the K-row permutation is off), head dims 64 and 128, and
the launch structures of the launch table. Bounds as tests/gpu/test_prefill_kernels.py: integer
intermediates identical (P codes through hardware exp2 within 0.1%), outputs within the ULP
bounds.
"""
import os

import numpy as np
import pytest
import torch

import gpu
from gpu.compare import compare
from sim import load_method, simulate
from tests.gpu.helpers import make_qkv, np32, report


def _hopper() -> bool:
    return (os.environ.get("QSATTN_GPU_TESTS") == "1" and torch.cuda.is_available()
            and torch.cuda.get_device_capability() == (9, 0))


pytestmark = pytest.mark.skipif(not _hopper(), reason="needs QSATTN_GPU_TESTS=1 and an sm_90 "
                                "GPU (the Gluon kernels do not run under the interpreter)")

SHAPES = [  # label, B, Hq, Hkv, Lq, Lk, D
    ("gqa-L304", 1, 4, 2, 304, 304, 128),        # partial last tile and program
    ("b2-L336-d64", 2, 2, 2, 336, 336, 64),
    ("Lq160-Lk400-gqa", 1, 2, 1, 160, 400, 128),  # causal offset 240
    ("Lq336-Lk200", 1, 2, 2, 336, 200, 128),      # rows that see nothing; Lk % 16 != 0
]
METHODS = [  # label, method, spec overrides / spec name, ULP bound
    ("int8", "int8_flash", None, 2),
    ("int8_fast", "int8_flash", "int8_flash_fast", 2),
    ("turbo", "turbo", None, 2),
    ("turbo_exp2", "turbo", {"softmax__exp": "exp2"}, 2),
    ("fp16", "fp16_flash", None, 8),
]
STRUCTURES = {  # Gluon launch options (sim.arch.GLUON_OPTIONS)
    "m1": {"merged": True, "one_loop": True, "unroll": False},
    "s1": {"merged": False, "one_loop": True, "unroll": False},
    "v2": {"merged": False, "one_loop": False, "unroll": True},
    "m2": {"merged": True, "one_loop": False, "unroll": True},
}


def _spec(method, spec):
    if isinstance(spec, dict):
        return load_method(method, **spec)
    return load_method(spec) if spec else load_method(method)


def check(label, method, spec, bound, shape, causal, launch):
    _, B, Hq, Hkv, Lq, Lk, D = shape
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, seed=Lq * 3 + Lk + D)
    kr = gpu.attention_trace(q, k, v, method=method, causal=causal, spec=_spec(method, spec),
                             launch=launch)
    sim = simulate(np32(q), np32(k), np32(v), kr.spec, causal=causal, trace=True)
    cmp = compare(sim, kr, dtype="float16", ulp_bound=bound, ulp_floor=2.0 ** -16)
    figures = {key: f"{a.mismatches}/{a.total}" for key, a in cmp.ints.items() if a.mismatches}
    figures["max_ulp"] = f"{cmp.out.max_ulp:.2f}"
    report(f"{label} {shape[0]} causal={causal} {launch}", **figures)
    assert np.isfinite(np32(kr.out)).all()
    if kr.spec.integer:
        assert cmp.failures(p_code_tolerance=1e-3) == []
    else:
        vis = sim.trace["visible"]
        np.testing.assert_allclose(np32(kr.trace["s"])[vis], sim.trace["s"][vis], rtol=1e-5,
                                   atol=1e-5)
        assert cmp.failures() == []
    return cmp


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("m", METHODS, ids=[m[0] for m in METHODS])
def test_gluon_default_launch_matches_sim(m, causal, shape):
    """The launch table's Gluon launch (forced, so a table that names the portable kernel still
    tests the Gluon one)."""
    label, method, spec, bound = m
    check(label, method, spec, bound, shape, causal, {"kernel": "gluon"})


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("m", METHODS, ids=[m[0] for m in METHODS])
def test_gluon_structures_match_sim(m, structure):
    label, method, spec, bound = m
    check(label, method, spec, bound, SHAPES[0], True,
          {"kernel": "gluon", "gluon": STRUCTURES[structure]})


def test_table_picks_gluon_on_hopper():
    from gpu.prefill import forward_kernel
    spec = load_method("int8_flash")
    kernel, cfg = forward_kernel(spec, 128, "float16", torch.device("cuda"))
    from sim.arch import prefill_kernel_launch
    assert kernel == prefill_kernel_launch("hopper", "int8_flash", 128, 64)["kernel"]
    # the fused variant runs on the Gluon kernel whatever the table says
    assert forward_kernel(load_method("int8_flash_fast"), 128, "float16",
                          torch.device("cuda"))[0] == "gluon"
    with pytest.raises(ValueError, match="fused"):
        forward_kernel(load_method("int8_flash_fast"), 128, "float16", torch.device("cuda"),
                       {"block_m": 64, "num_warps": 4, "num_stages": 3})
