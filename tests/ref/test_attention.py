"""ref.attention: float64 exact attention against an independent pure-Python triple loop."""
import importlib
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ref

ROOT = Path(__file__).resolve().parents[2]


def naive_attention(q, k, v, causal, sm_scale=None):
    """Row-by-row pure Python float64; its own statement of GQA and bottom-right causal rules."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    ql, kl, vl = q.astype(np.float64).tolist(), k.astype(np.float64).tolist(), v.astype(np.float64).tolist()
    out = np.zeros((B, Hq, Lq, Dv))
    lse = np.full((B, Hq, Lq), -math.inf)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hkv)
            for i in range(Lq):
                keys = [j for j in range(Lk) if not causal or j - (Lk - Lq) <= i]
                if not keys:
                    continue
                s = [scale * math.fsum(ql[b][h][i][d] * kl[b][g][j][d] for d in range(D)) for j in keys]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                tot = math.fsum(e)
                for c in range(Dv):
                    out[b, h, i, c] = math.fsum(e[t] * vl[b][g][j][c] for t, j in enumerate(keys)) / tot
                lse[b, h, i] = m + math.log(tot)
    return out, lse


# (label, B, Hq, Hkv, Lq, Lk, D, Dv)
SHAPES = [
    ("mha_17", 2, 2, 2, 17, 17, 16, 16),
    ("gqa4", 1, 8, 2, 17, 17, 8, 8),
    ("mqa", 1, 3, 1, 13, 13, 8, 8),
    ("decode", 2, 4, 2, 1, 97, 16, 16),
    ("chunk_lq<lk", 1, 4, 2, 17, 97, 8, 8),
    ("lq>lk", 1, 2, 2, 97, 17, 4, 4),
    ("d1", 1, 2, 1, 17, 17, 1, 1),
    ("one_token", 1, 1, 1, 1, 1, 4, 4),
    ("dv_ne_d", 1, 4, 2, 17, 33, 8, 5),
]


def make_qkv(B, Hq, Hkv, Lq, Lk, D, Dv, dtype=np.float64, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    q = (scale * rng.standard_normal((B, Hq, Lq, D))).astype(dtype)
    k = (scale * rng.standard_normal((B, Hkv, Lk, D))).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_matches_naive(shape, causal):
    q, k, v = make_qkv(*shape[1:])
    out, lse = ref.attention(q, k, v, causal=causal, return_lse=True)
    exp_out, exp_lse = naive_attention(q, k, v, causal)
    assert out.dtype == np.float64 and out.shape == exp_out.shape
    assert lse.dtype == np.float64 and lse.shape == exp_lse.shape
    err = np.abs(out - exp_out).max()
    print(f"{shape[0]} causal={causal}: max |ref - naive| = {err:.3e}")
    np.testing.assert_allclose(out, exp_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, exp_lse, rtol=1e-12, atol=1e-13)
    assert np.array_equal(out, ref.attention(q, k, v, causal=causal))  # return_lse does not change out


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_input_dtypes_are_read_exactly(dtype):
    q, k, v = make_qkv(1, 4, 2, 9, 11, 8, 8, dtype=dtype)
    out = ref.attention(q, k, v, causal=True, sm_scale=0.3)
    exp_out, _ = naive_attention(q, k, v, True, sm_scale=0.3)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, exp_out, rtol=1e-12, atol=1e-13)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    q, k, v = make_qkv(1, 4, 2, 9, 11, 8, 8)
    qt, kt, vt = (torch.from_numpy(x).to(torch.bfloat16) for x in (q, k, v))
    out = ref.attention(qt, kt, vt, causal=True)
    expect = ref.attention(*(x.double().numpy() for x in (qt, kt, vt)), causal=True)
    assert isinstance(out, np.ndarray) and np.array_equal(out, expect)


def test_bottom_right_causal_hand_case():
    # q = 0 makes every visible score equal, so row i averages the visible one-hot value rows.
    Lq, Lk = 2, 5
    q = np.zeros((1, 1, Lq, 3))
    k = np.ones((1, 1, Lk, 3))
    v = np.eye(Lk)[None, None]
    out, lse = ref.attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_array_equal(out[0, 0, 0], [0.25, 0.25, 0.25, 0.25, 0.0])  # keys 0..3
    np.testing.assert_array_equal(out[0, 0, 1], [0.2] * 5)  # keys 0..4
    np.testing.assert_array_equal(lse[0, 0], [math.log(4), math.log(5)])
    # decode: the single row sees everything
    np.testing.assert_array_equal(ref.attention(q[:, :, :1], k, v, causal=True)[0, 0, 0], [0.2] * 5)


def test_empty_rows_policy():
    # Lq=5 > Lk=2, causal: rows 0..2 see no key -> out 0, lse -inf; rows 3, 4 see keys 0 and 0..1.
    q, k, v = make_qkv(2, 4, 2, 5, 2, 8, 3, seed=3)
    out, lse = ref.attention(q, k, v, causal=True, return_lse=True)
    assert np.array_equal(out[:, :, :3], np.zeros((2, 4, 3, 3)))
    assert np.all(lse[:, :, :3] == -np.inf)
    assert np.isfinite(out).all() and np.isfinite(lse[:, :, 3:]).all()
    # row 3 sees only key 0: the output is exactly v[key 0] of its kv head, lse the single score
    np.testing.assert_array_equal(out[:, :, 3], np.repeat(v[:, :, 0], 2, axis=1))
    exp_out, exp_lse = naive_attention(q, k, v, True)
    np.testing.assert_allclose(out, exp_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(exp_lse))
    # a block made entirely of empty rows (Lq=9 > Lk=1: rows 0..7 empty)
    q, k, v = make_qkv(1, 1, 1, 9, 1, 4, 4)
    out = ref.attention(q, k, v, causal=True)
    assert np.array_equal(out[0, 0, :8], np.zeros((8, 4))) and np.array_equal(out[0, 0, 8], v[0, 0, 0])


def test_gqa_head_mapping():
    # Each kv head holds a constant value g; query head h must output h // group.
    B, Hq, Hkv, Lq, Lk, D = 1, 6, 3, 4, 7, 5
    q, k, _ = make_qkv(B, Hq, Hkv, Lq, Lk, D, D)
    v = np.broadcast_to(np.arange(Hkv, dtype=np.float64)[None, :, None, None], (B, Hkv, Lk, 1)).copy()
    out = ref.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out[0, :, :, 0], np.repeat(np.arange(Hkv), Hq // Hkv)[:, None] * np.ones(Lq), atol=1e-14)


def test_stable_for_large_scores():
    # scores ~ 1e4 overflow exp() unless the row max is subtracted
    q, k, v = make_qkv(1, 2, 1, 17, 23, 8, 8, scale=40.0)
    out, lse = ref.attention(q, k, v, causal=True, sm_scale=1.0, return_lse=True)
    assert np.isfinite(out).all() and np.abs(lse).max() > 1e3
    exp_out, exp_lse = naive_attention(q, k, v, True, sm_scale=1.0)
    np.testing.assert_allclose(out, exp_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, exp_lse, rtol=1e-12)


def test_score_overflow_raises():
    q, k, v = make_qkv(1, 1, 1, 3, 3, 4, 4)
    with pytest.raises(ValueError, match="^q, k: scores can reach .*float64's range"):
        ref.attention(q * 1e160, k * 1e160, v)


def test_sm_scale_is_applied():
    q, k, v = make_qkv(1, 2, 2, 5, 6, 8, 8)
    np.testing.assert_allclose(
        ref.attention(q, k, v, sm_scale=0.7), ref.attention(q * 0.7, k, v, sm_scale=1.0), rtol=1e-13, atol=1e-14
    )
    np.testing.assert_allclose(ref.attention(q, k, v), ref.attention(q, k, v, sm_scale=1.0 / math.sqrt(8)), rtol=0, atol=0)


@pytest.mark.parametrize("block", [1, 7, 50])
def test_row_blocking_is_invisible(monkeypatch, block):
    # Blocks that straddle query-head boundaries inside a GQA group, with causal trimming.
    mod = importlib.import_module("ref.attention")
    q, k, v = make_qkv(2, 8, 2, 17, 23, 8, 8)
    whole, whole_lse = ref.attention(q, k, v, causal=True, return_lse=True)
    monkeypatch.setattr(mod, "_BLOCK_SCORES", block * 23)
    part, part_lse = ref.attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_allclose(part, whole, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(part_lse, whole_lse, rtol=1e-13, atol=1e-14)


def test_non_contiguous_inputs():
    q, k, v = make_qkv(1, 4, 2, 9, 11, 8, 8)
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # [B, L, H, D] storage
    assert not qt.flags.c_contiguous
    np.testing.assert_array_equal(ref.attention(qt, k, v, causal=True), ref.attention(q, k, v, causal=True))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_memory_stays_below_one_score_matrix(causal):
    L, D = 4096, 64
    q, k, v = make_qkv(1, 1, 1, L, L, D, D, dtype=np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = ref.attention(q, k, v, causal=causal)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = L * L * 8
    print(f"L={L} causal={causal}: peak {peak / 2**20:.1f} MiB, one LxL float64 = {full / 2**20:.0f} MiB")
    assert out.shape == (1, 1, L, D) and np.isfinite(out).all()
    assert peak < full


@settings(max_examples=25, deadline=None)
@given(
    Hkv=st.integers(1, 2),
    group=st.integers(1, 3),
    Lq=st.integers(1, 9),
    Lk=st.integers(1, 9),
    D=st.integers(1, 5),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_naive(Hkv, group, Lq, Lk, D, causal, seed):
    q, k, v = make_qkv(1, Hkv * group, Hkv, Lq, Lk, D, D, seed=seed)
    out, lse = ref.attention(q, k, v, causal=causal, return_lse=True)
    exp_out, exp_lse = naive_attention(q, k, v, causal)
    np.testing.assert_allclose(out, exp_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, exp_lse, rtol=1e-12, atol=1e-13)


def test_validation_is_applied():
    q, k, v = make_qkv(1, 4, 2, 3, 5, 8, 8)
    k_nan = k.copy()
    k_nan[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"^k has 1 non-finite value"):
        ref.attention(q, k_nan, v)
    with pytest.raises(ValueError, match=r"^q: heads Hq \(3\) must be a multiple of k\'s Hkv \(2\)"):
        ref.attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match=r"^q: empty sequence"):
        ref.attention(q[:, :, :0], k, v)
    with pytest.raises(TypeError, match=r"^v must have a floating-point dtype, got int64"):
        ref.attention(q, k, v.astype(np.int64))
    with pytest.raises(ValueError, match=r"^sm_scale: expected a positive finite number, got -1.0"):
        ref.attention(q, k, v, sm_scale=-1.0)
    with pytest.raises(TypeError, match=r"^causal: expected a bool, got str"):
        ref.attention(q, k, v, causal="yes")
    with pytest.raises(TypeError, match=r"^return_lse: expected a bool, got int"):
        ref.attention(q, k, v, return_lse=1)


def test_import_ref_does_not_import_torch():
    code = "import sys, ref; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
