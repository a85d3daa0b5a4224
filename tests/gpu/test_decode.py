"""Decode kernels vs the simulator (interpreter in CI; QSATTN_GPU_TESTS=1 runs them on the GPU).

turbo: q codes, S_int, P codes, O_int per tile and the running max equal ``sim.simulate(q, k,
v, spec, kv_cache=True, trace=True)``'s exactly (``gpu.compare``), for the default cache layout
(K per channel, V per token) and ``turbo_token_k`` (K per token, V per channel); the fp16 output
is within 1 fp16 ulp of the simulator's f32 output rounded (the split-K regrouping changes only
f32 rounding).
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
from gpu.compare import compare
from sim import load_method, simulate
from sim.methods.double_sparse import calibrate
from sim.methods.turbo import head_priority
from tests.gpu.helpers import DEVICE, make_qkv, np32, report, ulp

BIG = os.environ.get("QSATTN_GPU_TESTS") == "1"


TURBO = [  # (label, spec, B, Hq, Hkv, L, D, dtype, splits)
    ("gqa-L150-D64-split2", "turbo", 1, 4, 2, 150, 64, torch.float16, 2),
    ("mha-L128-D128-nobuffer", "turbo", 2, 2, 2, 128, 128, torch.float16, 1),
    ("L17-bufferonly-bf16", "turbo", 1, 2, 1, 17, 64, torch.bfloat16, 1),
    ("L1", "turbo", 1, 2, 2, 1, 64, torch.float16, 1),
    ("L200-split4-G3", "turbo", 1, 3, 1, 200, 64, torch.float16, 4),
    ("G16-L70", "turbo", 1, 16, 1, 70, 64, torch.float16, 2),
    ("token_k-gqa-L150", "turbo_token_k", 1, 4, 2, 150, 64, torch.float16, 2),
    ("token_k-mha-L200-D128", "turbo_token_k", 1, 2, 2, 200, 128, torch.float16, 3),
]
if BIG:
    TURBO += [("big-L4097-D128", "turbo", 2, 8, 2, 4097, 128, torch.float16, None),
              ("big-token_k-L4097", "turbo_token_k", 2, 8, 8, 4097, 128, torch.float16, None)]


@pytest.mark.parametrize("case", TURBO, ids=[c[0] for c in TURBO])
def test_turbo_decode_equals_sim(case):
    name, spec_name, B, Hq, Hkv, L, D, dtype, splits = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, dtype=dtype, seed=L + Hq)
    spec = load_method(spec_name)
    pr = head_priority(np32(k), np32(v))
    if L > 64:  # grow the cache: whole blocks appended reproduce the prefill codes
        cache = gpu.build_cache(k[:, :, :64].contiguous(), v[:, :, :64].contiguous(), "turbo",
                                spec=spec, calibration=pr)
        cache.append(k[:, :, 64:].contiguous(), v[:, :, 64:].contiguous())
    else:
        cache = gpu.build_cache(k, v, "turbo", spec=spec, calibration=pr)
    kr = gpu.decode_trace(q, cache, launch=None if splits is None else {"splits": splits})
    res = simulate(np32(q), np32(k), np32(v), spec, kv_cache=True, trace=True, calibration=pr)
    cmp = compare(res, kr, dtype=str(dtype).removeprefix("torch."), ulp_bound=1.0)
    assert set(cmp.ints) >= {"q_codes", "s_int", "p_codes", "o_int", "m"}
    err = np.abs(np32(kr.out) - res.out) / ulp(res.out, dtype)
    report(f"turbo decode {name}", splits=kr.trace["splits"], max_err_ulp=round(cmp.out.max_ulp, 3),
           share_within_half_ulp=float((err <= 0.5).mean()))
    assert cmp.failures() == []
    assert float((err <= 0.5).mean()) >= 0.99  # f32 outputs agree to a few f32 ulps


def _clamped_elements(cache) -> tuple[int, int]:
    """(K, V) elements of the flushed store whose ``code * scale + zero`` exceeds 127 (the
    clamp of the INT8 read-back triggers), counted with numpy over every head, on the
    simulator's group grids."""
    from sim.numerics import unpack
    kvc = cache.kvc
    n = [0, 0]
    for h in range(cache.Hkv):
        p = cache.packed(h)
        bits = int(cache.bits[h])
        for i, (x, groups, size) in enumerate((("k", kvc.k_groups, kvc.k_group_size),
                                               ("v", kvc.v_groups, kvc.v_group_size))):
            c = unpack(p[f"{x}_codes"], bits, cache.D).astype(np.int32)
            ax = 1 if groups == "per_channel" else 2
            s_ = np.repeat(p[f"{x}_scale"].astype(np.int32), size, ax)[:, :c.shape[1], :c.shape[2]]
            z_ = np.repeat(p[f"{x}_zero"].astype(np.int32), size, ax)[:, :c.shape[1], :c.shape[2]]
            n[i] += int((c * s_ + z_ > 127).sum())
    return n[0], n[1]


CLAMP = [  # (label, spec, B, Hq, Hkv, L, D, splits, low_share): uniform data clamps many groups
    ("mha-int4-L256", "turbo", 1, 2, 2, 256, 64, 2, 0.0),
    ("mha-int2-L200", "turbo", 1, 2, 2, 200, 128, 3, 1.0),
    ("gqa4-mixed-L192", "turbo", 1, 8, 2, 192, 64, 2, 0.5),
    ("token_k-gqa2-int4-L130", "turbo_token_k", 2, 4, 2, 130, 64, 1, 0.0),
]


@pytest.mark.parametrize("case", CLAMP, ids=[c[0] for c in CLAMP])
def test_turbo_clamped_groups(case):
    """Blocks whose read-back clamps (asserted present) give the simulator's integers with the
    default clamp (every block) and with the clamp only in the blocks the flush kernel flagged
    (``launch={"clamp": "flags"}``): the flags mark every block that needs it."""
    name, spec_name, B, Hq, Hkv, L, D, splits, low = case
    g = torch.Generator().manual_seed(L + 7 * Hq)
    u = lambda *s: (torch.rand(*s, generator=g) * 2 - 1)  # noqa: E731
    q = u(B, Hq, 1, D).to(torch.float16).to(DEVICE)
    k = u(B, Hkv, L, D).to(torch.float16).to(DEVICE)
    v = u(B, Hkv, L, D).to(torch.float16).to(DEVICE)
    spec = load_method(spec_name).replace(kvcache__low_share=low)
    pr = head_priority(np32(k), np32(v))
    cache = gpu.build_cache(k, v, "turbo", spec=spec, calibration=pr)
    nk, nv = _clamped_elements(cache)
    fk, fv = cache.clamp_flags()
    assert nk > 0 and nv > 0, (nk, nv)
    assert 0 < fk.sum() and 0 < fv.sum()
    kr = gpu.decode_trace(q, cache, launch={"splits": splits})
    kr2 = gpu.decode_trace(q, cache, launch={"splits": splits, "clamp": "flags"})
    for key in ("s_int", "p_codes", "o_int", "s", "m"):
        np.testing.assert_array_equal(np32(kr.trace[key]), np32(kr2.trace[key]), err_msg=key)
    np.testing.assert_array_equal(np32(kr.out), np32(kr2.out))
    res = simulate(np32(q), np32(k), np32(v), spec, kv_cache=True, trace=True, calibration=pr)
    assert compare(res, kr, ulp_bound=1.0).failures() == []
    report(f"turbo clamp {name}", clamped_k=nk, clamped_v=nv, flagged_blocks=(int(fk.sum()),
                                                                             int(fv.sum())))


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
    kr = gpu.decode_trace(q, cache, launch=None if splits is None else {"splits": splits})
    res = simulate(np32(q), np32(k), np32(v), spec, calibration=cal, trace=True)
    cmp = compare(res, kr, ulp_bound=2.0, abs_slack=2.0**-12)
    report(f"double_sparse decode {name}", **cmp.extras, **cmp.ints["indices"].row(),
           rows_compared=cmp.out.rows, max_ulp=round(cmp.out.max_ulp, 3))
    assert cmp.extras["approx_scores_max_rel_err"] <= 1e-5
    assert cmp.failures() == []   # indices equal outside near ties; outputs within the bound


FP16 = [  # (label, B, Hq, Hkv, L, D, dtype, splits)
    ("L1", 1, 2, 2, 1, 64, torch.float16, 1),
    ("gqa-L200-split3", 2, 4, 2, 200, 64, torch.float16, 3),
    ("L97-D128-bf16", 1, 2, 1, 97, 128, torch.bfloat16, 2),
    ("gqa-G4-L150-split2", 1, 8, 2, 150, 64, torch.float16, 2),   # grouped kernel, G = 4
    ("gqa-G8-L70-D128", 1, 8, 1, 70, 128, torch.float16, 1),       # grouped kernel, G = 8
    ("gqa-G4-L90-bf16", 1, 4, 1, 90, 64, torch.bfloat16, 3),
]
if BIG:
    FP16 += [("big-L16384", 2, 8, 8, 16384, 128, torch.float16, None),
             ("big-gqa-G4-L16384", 2, 8, 2, 16384, 128, torch.float16, None),
             ("big-gqa-G8-L8192", 2, 16, 2, 8192, 128, torch.float16, None)]


@pytest.mark.parametrize("case", FP16, ids=[c[0] for c in FP16])
def test_fp16_decode_equals_sim(case):
    name, B, Hq, Hkv, L, D, dtype, splits = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, dtype=dtype, seed=L)
    cache = gpu.build_cache(k, v, "fp16_flash")
    out = gpu.decode(q, cache, launch=None if splits is None else {"splits": splits})
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


@pytest.mark.parametrize("G", [1, 2, 4, 8])
def test_fp16_decode_grouped_matches_per_head(G):
    """The grouped kernel (one program per KV head) and the per-query-head kernel agree within
    the contract's tolerance (same sequence, only the f32 summation order differs)."""
    B, Hkv, L, D = 2, 2, 130, 64
    q, k, v = make_qkv(B, G * Hkv, Hkv, 1, L, D, seed=G)
    cache = gpu.build_cache(k, v, "fp16_flash")
    a = np32(gpu.decode(q, cache, launch={"splits": 2}))
    b = np32(gpu.decode(q, cache, launch={"splits": 2, "grouped": False}))
    err = np.abs(a - b)
    report(f"fp16 decode grouped vs per-head G={G}", max_abs=float(err.max()))
    assert np.all(err <= 2 * ulp(b) + 2.0**-12)


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


SELECT = [  # (label, rows, L, K, distinct key values): ties, K = L - 1, K = 1, tile remainders
    ("ties-L600-K63", 2, 600, 63, 7),
    ("distinct-L300-K20", 2, 300, 20, None),
    ("all-equal-L129-K5", 1, 129, 5, 1),
    ("K-almost-L-97", 2, 97, 96, 40),
    ("K1-L64", 2, 64, 1, None),
    ("gauss-L3000-K188", 2, 3000, 188, "gauss"),
]


@pytest.mark.parametrize("case", SELECT, ids=[c[0] for c in SELECT])
def test_topk_select_kernel_equals_stable_topk(case):
    """The K largest uint32 keys, equal keys to the lower index, ascending -- identical to a
    stable descending sort (numpy) cut at K -- on keys with many ties (the bracket misses and
    the exact fallback runs), keys spanning the whole uint32 range (sign bit, 0, 2^32 - 1), and
    score-like keys (the bracket path)."""
    from gpu.common import interpreting, kernels
    name, rows, L, K, distinct = case
    rng = np.random.default_rng(L + K)
    if distinct is None:
        u = rng.choice(np.uint64(1) << np.uint64(32), size=(rows, L), replace=False)
    elif distinct == "gauss":   # keys of f32 scores, as label_score_kernel writes them
        f = rng.standard_normal((rows, L)).astype(np.float32)
        b = f.view(np.int32)
        u = (np.where(b < 0, b ^ 0x7FFFFFFF, b) ^ np.int32(-2**31)).view(np.uint32)
    else:
        vals = np.array([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 12345, 2**31 + 7], np.uint64)
        vals = np.concatenate([vals, rng.integers(0, 2**32, 64, dtype=np.uint64)])[:distinct]
        u = vals[rng.integers(0, len(vals), size=(rows, L))]
    u = u.astype(np.uint32)
    keys = torch.from_numpy(u.view(np.int32).copy()).to(DEVICE)
    idx = torch.full((rows, K), -1, dtype=torch.int32, device=DEVICE)
    cap = 256 if interpreting() else 4096
    cand = torch.empty((rows, cap), dtype=torch.int64, device=DEVICE)
    kl = kernels("labels")
    kl.topk_select_kernel[(rows,)](keys, idx, cand, L, K, idx.stride(0),
                                   NSAMPLE=64 if interpreting() else 4096, CAP=cap,
                                   CH=128 if interpreting() else 2048, num_warps=8)
    want = np.sort(np.argsort(-u.astype(np.int64), axis=1, kind="stable")[:, :K], axis=1)
    np.testing.assert_array_equal(idx.cpu().numpy(), want)


def test_double_sparse_bracket_select_equals_torch_topk():
    """The bracket select of gpu.decode's selection returns the indices of the int64-key
    torch.topk + torch.sort path, with forced sink/recent tokens and 2-bit labels (many equal
    approximate scores)."""
    from gpu.methods.double_sparse import select as _select
    B, Hq, Hkv, L, D = 2, 4, 2, 700, 64
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, seed=3)
    spec = load_method("double_sparse").replace(sparse__label_bits=2, sparse__sink_tokens=3,
                                                sparse__recent_tokens=4)
    cal = calibrate(np32(q), np32(k), "qk")
    cache = gpu.build_cache(k, v, "double_sparse", spec=spec, calibration=cal)
    a1, i1 = _select(q, cache, True, "bracket")
    a2, i2 = _select(q, cache, True, "torch")
    np.testing.assert_array_equal(a1.cpu().numpy(), a2.cpu().numpy())
    ap = a1.cpu().numpy().reshape(B * Hq, L)
    ties = sum(len(r) - len(np.unique(r)) for r in ap)
    assert ties > 0  # the tie rule is exercised
    np.testing.assert_array_equal(i1.cpu().numpy(), i2.cpu().numpy())
    with pytest.raises(ValueError, match="method"):
        _select(q, cache, True, "heap")


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU (QSATTN_GPU_TESTS=1)")
@pytest.mark.parametrize("method", ["fp16_flash", "turbo", "double_sparse"])
def test_decode_step_replays_in_a_cuda_graph(method):
    """One decode step (check_finite=False: no host sync) captured in a CUDA graph and replayed
    on a new query gives the eager call's output bit for bit."""
    B, Hq, Hkv, L, D = 2, 8, 2, 3000, 128
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, seed=21)
    kw = {"calibration": calibrate(np32(q), np32(k), "qk")} if method == "double_sparse" else {}
    cache = gpu.build_cache(k, v, method, **kw)
    static_q = q.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):            # compile and warm up outside the capture
        for _ in range(2):
            gpu.decode(static_q, cache, check_finite=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = gpu.decode(static_q, cache, check_finite=False)
    q2 = make_qkv(B, Hq, Hkv, 1, L, D, seed=22)[0]
    static_q.copy_(q2)
    graph.replay()
    torch.cuda.synchronize()
    want = gpu.decode(q2, cache)
    assert torch.equal(static_out, want)
