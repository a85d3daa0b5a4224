"""Decode kernels vs the simulator (interpreter in CI; QSATTN_GPU_TESTS=1 runs them on the GPU).

turbo: S_int, P codes, O_int per tile and the running max equal ``sim.simulate(q, k, v, spec,
kv_cache=True, trace=True)`` exactly (the simulator's trace holds q codes, the cache read back
as INT8 and ``m`` per tile; S_int, P, O_int are recomputed from them with the simulator's own
``sas_exp2`` / ``pquant``); the fp16 output is within 1 fp16 ulp of the simulator's f32 output
rounded (the split-K regrouping changes only f32 rounding).
double_sparse: label scores within 1e-5 of the row's largest |score|, selected indices identical to
``simulate(..., trace=True)["indices"]`` except rows with a near-tie at the selection boundary
(counted, asserted none at these sizes); output within 2 fp16 ulp + 2^-12 of the simulator.
fp16_flash: output within 2 ulp + 2^-12 (fp16) / 2^-9 (bf16) of the simulator (hardware exp2,
summation order, P rounded to the operand format).
"""
import os

import numpy as np
import pytest
import torch

import gpu
from sim import load_method, simulate
from sim.kvcache import head_priority
from sim.operands import pquant
from sim.softmax import sas_exp2
from sim.sparse import calibrate
from tests.gpu.helpers import DEVICE, make_qkv, np32, report, ulp

BIG = os.environ.get("QSATTN_GPU_TESTS") == "1"


def _turbo_expected(res, cache, Hq):
    """S_int, s, P codes, O_int from the simulator's trace (integers; f32 as the contract)."""
    T = res.trace
    spec = res.spec
    nb = spec.tiling.block_n
    Hkv = T["k_cache_int8"].shape[1]
    G = Hq // Hkv
    L = T["k_cache_int8"].shape[2]
    k8 = np.repeat(T["k_cache_int8"], G, 1).astype(np.int64)
    v8 = np.repeat(T["v_cache_int8"], G, 1).astype(np.int64)
    S = np.einsum("bhd,bhld->bhl", T["q_codes"][:, :, 0].astype(np.int64), k8)
    m = T["m"][:, :, 0, :]                                       # [B, Hq, n_tiles]
    return S, m, k8, v8, nb, L


TURBO = [  # (label, B, Hq, Hkv, L, D, dtype, splits); G = Hq / Hkv > 2 takes the tl.dot path
    ("gqa-L150-D64-split2", 1, 4, 2, 150, 64, torch.float16, 2),
    ("mha-L128-D128-nobuffer", 2, 2, 2, 128, 128, torch.float16, 1),
    ("L17-bufferonly-bf16", 1, 2, 1, 17, 64, torch.bfloat16, 1),
    ("L1", 1, 2, 2, 1, 64, torch.float16, 1),
    ("L200-split4-G3", 1, 3, 1, 200, 64, torch.float16, 4),
    ("G16-dot-L70", 1, 16, 1, 70, 64, torch.float16, 2),
]
if BIG:
    TURBO += [("big-L4097-D128", 2, 8, 2, 4097, 128, torch.float16, None)]


@pytest.mark.parametrize("case", TURBO, ids=[c[0] for c in TURBO])
def test_turbo_decode_equals_sim(case):
    name, B, Hq, Hkv, L, D, dtype, splits = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, dtype=dtype, seed=L + Hq)
    spec = load_method("turbo")
    pr = head_priority(np32(k), np32(v))
    if L > 64:  # grow the cache: whole blocks appended reproduce the prefill codes
        cache = gpu.build_cache(k[:, :, :64].contiguous(), v[:, :, :64].contiguous(), "turbo",
                                calibration=pr)
        cache.append(k[:, :, 64:].contiguous(), v[:, :, 64:].contiguous())
    else:
        cache = gpu.build_cache(k, v, "turbo", calibration=pr)
    out, tr = gpu.decode_trace(q, cache, launch=None if splits is None else {"splits": splits})
    res = simulate(np32(q), np32(k), np32(v), spec, kv_cache=True, trace=True, calibration=pr)
    S, m, k8, v8, nb, L = _turbo_expected(res, cache, Hq)
    np.testing.assert_array_equal(tr["q_codes"].cpu().numpy(), res.trace["q_codes"])
    np.testing.assert_array_equal(tr["S"].cpu().numpy(), S)
    tmax = tr["tile_max"].cpu().numpy()
    np.testing.assert_array_equal(np.maximum.accumulate(tmax, axis=2), m)
    s = tr["s"].cpu().numpy()
    m_key = np.repeat(m, nb, axis=2)[:, :, :L]
    P = pquant(sas_exp2((s - m_key).astype(np.float32), spec.softmax.sas), spec.p)
    np.testing.assert_array_equal(tr["P"].cpu().numpy(), P)
    nt = -(-L // nb)
    O = np.stack([np.einsum("bhl,bhld->bhd", P[..., t * nb:(t + 1) * nb].astype(np.int64),
                            v8[:, :, t * nb:(t + 1) * nb]) for t in range(nt)], 2)
    np.testing.assert_array_equal(tr["O_int"].cpu().numpy(), O)
    got = np32(out)[:, :, 0]
    want = res.out[:, :, 0]
    err = np.abs(got - want) / ulp(want, dtype)
    report(f"turbo decode {name}", splits=tr["splits"], max_err_ulp=round(float(err.max()), 3),
           share_within_half_ulp=float((err <= 0.5).mean()))
    assert err.max() <= 1.0
    assert float((err <= 0.5).mean()) >= 0.99  # f32 outputs agree to a few f32 ulps


DS = [  # (label, B, Hq, Hkv, L0, L, D, overrides, splits)
    ("gqa-L300-lb4", 2, 4, 2, 200, 300, 64, {}, 2),
    ("D128-lb16-L97", 1, 2, 2, 97, 97, 128, {"sparse.label_bits": 16}, 1),
    ("sink-recent-lb2", 1, 2, 1, 64, 150, 64,
     {"sparse.label_bits": 2, "sparse.sink_tokens": 2, "sparse.recent_tokens": 5}, 3),
]
if BIG:
    DS += [("big-L8192", 2, 8, 2, 8000, 8192, 128, {}, None)]


@pytest.mark.parametrize("case", DS, ids=[c[0] for c in DS])
def test_double_sparse_decode_equals_sim(case):
    name, B, Hq, Hkv, L0, L, D, ov, splits = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, seed=L)
    spec = load_method("double_sparse", **ov)
    cal = calibrate(np32(q), np32(k), "qk")
    cache = gpu.build_cache(k[:, :, :L0].contiguous(), v[:, :, :L0].contiguous(),
                            "double_sparse", spec=spec, calibration=cal)
    if L > L0:
        cache.append(k[:, :, L0:].contiguous(), v[:, :, L0:].contiguous())
    out, tr = gpu.decode_trace(q, cache, launch=None if splits is None else {"splits": splits})
    res = simulate(np32(q), np32(k), np32(v), spec, calibration=cal, trace=True)
    T = res.trace
    approx = tr["approx_scores"].cpu().numpy()
    ref = T["approx_scores"][:, :, 0]
    scale = np.abs(ref).max(axis=-1, keepdims=True)
    rel = np.abs(approx - ref) / scale           # relative to the row's largest |score|
    got_idx = tr["indices"].cpu().numpy()
    want_idx = T["indices"]
    assert got_idx.shape == want_idx.shape
    rows_diff = np.any(got_idx != want_idx, axis=-1)
    # near-ties: the boundary scores of the selection lie within the score error
    srt = -np.sort(-ref, axis=-1)
    kb = int(T["budget"][0])
    near = (srt[..., kb - 1] - srt[..., min(kb, L - 1)]) <= 4 * (rel * scale).max()
    report(f"double_sparse decode {name}", max_rel_score_err=float(rel.max()),
           rows_differing=int(rows_diff.sum()), near_tie_rows=int(near.sum()),
           rows=int(rows_diff.size))
    assert rel.max() <= 1e-5
    assert not np.any(rows_diff[..., 0] & ~near)
    got = np32(out)[:, :, 0]
    want = res.out[:, :, 0]
    ok = ~rows_diff[..., 0]
    err = np.abs(got - want)
    bound = 2 * ulp(want) + 2.0**-12
    report(f"double_sparse out {name}", max_abs=float(err[ok].max()),
           max_ulp=float((err / ulp(want))[ok].max()))
    assert np.all(err[ok] <= bound[ok])


FP16 = [  # (label, B, Hq, Hkv, L, D, dtype, splits)
    ("L1", 1, 2, 2, 1, 64, torch.float16, 1),
    ("gqa-L200-split3", 2, 4, 2, 200, 64, torch.float16, 3),
    ("L97-D128-bf16", 1, 2, 1, 97, 128, torch.bfloat16, 2),
]
if BIG:
    FP16 += [("big-L16384", 2, 8, 8, 16384, 128, torch.float16, None)]


@pytest.mark.parametrize("case", FP16, ids=[c[0] for c in FP16])
def test_fp16_decode_equals_sim(case):
    name, B, Hq, Hkv, L, D, dtype, splits = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, dtype=dtype, seed=L)
    cache = gpu.build_cache(k, v, "fp16_flash")
    out, _ = gpu.decode_trace(q, cache, launch=None if splits is None else {"splits": splits})
    spec = load_method("fp16_flash", **({"operands.format": "bf16", "operands.p_format": "bf16"}
                                        if dtype == torch.bfloat16 else {}))
    want = simulate(np32(q), np32(k), np32(v), spec).out[:, :, 0]
    got = np32(out)[:, :, 0]
    err = np.abs(got - want)
    report(f"fp16 decode {name}", max_abs=float(err.max()),
           max_ulp=float((err / ulp(want, dtype)).max()))
    # P is rounded to the operand format before PV: a p that rounds the other way (exp2 differs
    # by an ulp of f32) moves the output by up to 2^-(mantissa+1) of p * |v|
    mant = 10 if dtype == torch.float16 else 7
    assert np.all(err <= 2 * ulp(want, dtype) + 2.0**-(mant + 2))


def test_decode_rejects_bad_input(monkeypatch):
    q, k, v = make_qkv(1, 4, 2, 1, 20, 64)
    cache = gpu.build_cache(k, v, "turbo")
    with pytest.raises(ValueError, match="q_len"):
        gpu.decode(make_qkv(1, 4, 2, 2, 20, 64)[0], cache)
    with pytest.raises(TypeError, match="dtype"):
        gpu.decode(q.to(torch.bfloat16), cache)
    with pytest.raises(ValueError, match="contiguous"):
        gpu.decode(torch.zeros(1, 4, 1, 128, dtype=q.dtype, device=q.device)[..., ::2], cache)
    with pytest.raises(ValueError, match="multiple"):
        gpu.decode(make_qkv(1, 3, 2, 1, 20, 64)[0], cache)
    with pytest.raises(ValueError, match="D="):
        gpu.decode(make_qkv(1, 4, 2, 1, 20, 128)[0], cache)
    bad = q.clone()
    bad[0, 1, 0, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        gpu.decode(bad, cache)
    with pytest.raises(TypeError, match="cache"):
        gpu.decode(q, (k, v))
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA"):
            gpu.decode(q, cache)
