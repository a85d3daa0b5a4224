"""ref.sdpa: torch SDPA baseline with ref.attention's semantics (GQA, bottom-right causal, empty rows)."""
import numpy as np
import pytest

import ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (label, B, Hq, Hkv, Lq, Lk, D, Dv)
SHAPES = [
    ("mha_97", 2, 2, 2, 97, 97, 64, 64),
    ("gqa4", 1, 8, 2, 17, 17, 32, 32),
    ("decode", 2, 4, 2, 1, 97, 64, 64),
    ("chunk_lq<lk", 1, 4, 2, 17, 97, 16, 16),
    ("lq>lk", 1, 2, 1, 97, 17, 16, 16),
    ("d1", 1, 2, 1, 17, 17, 1, 1),
    ("one_token", 1, 1, 1, 1, 1, 8, 8),
    ("dv_ne_d", 1, 4, 2, 17, 33, 16, 8),
]
IDS = [s[0] for s in SHAPES]


def make_qkv(B, Hq, Hkv, Lq, Lk, D, Dv, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((B, Hq, Lq, D)),
        rng.standard_normal((B, Hkv, Lk, D)),
        rng.standard_normal((B, Hkv, Lk, Dv)),
    )


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_fp32_matches_float64(shape, causal):
    q, k, v = make_qkv(*shape[1:])
    exact = ref.attention(q, k, v, causal=causal)
    got = ref.sdpa(q, k, v, causal=causal, dtype="fp32")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == exact.shape
    err = np.abs(got - exact).max()
    print(f"{shape[0]} causal={causal}: fp32 max err {err:.3e}")
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] not in ("one_token", "d1")], ids=lambda s: s[0])
def test_lower_precision_error_ordering(shape, causal):
    # one_token / d1 are left out: with one key (or D=1 and few keys) the low-precision result can
    # be as exact as fp32's, so the ordering is not a property of those shapes.
    q, k, v = make_qkv(*shape[1:], seed=1)
    exact = ref.attention(q, k, v, causal=causal)
    err = {dt: float(np.abs(ref.sdpa(q, k, v, causal=causal, dtype=dt) - exact).max()) for dt in ref.SDPA_DTYPES}
    print(f"{shape[0]} causal={causal}: max err vs float64 " + ", ".join(f"{d}={e:.3e}" for d, e in err.items()))
    assert err["fp32"] < err["fp16"] < err["bf16"]
    assert err["fp16"] < 4e-3 and err["bf16"] < 3e-2  # a wrong mask or head mapping is O(1) off


def test_torch_is_causal_is_top_left_so_sdpa_builds_its_own_mask():
    # q = 0: row i averages the one-hot value rows it can see.
    Lq, Lk = 2, 5
    q = np.zeros((1, 1, Lq, 3), np.float32)
    k = np.ones((1, 1, Lk, 3), np.float32)
    v = np.eye(Lk, dtype=np.float32)[None, None]
    top_left = F.scaled_dot_product_attention(*(torch.from_numpy(x) for x in (q, k, v)), is_causal=True)
    np.testing.assert_allclose(top_left[0, 0].numpy(), [[1, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0]], atol=1e-7)
    ours = ref.sdpa(q, k, v, causal=True)
    np.testing.assert_allclose(ours[0, 0], [[0.25, 0.25, 0.25, 0.25, 0], [0.2] * 5], atol=1e-7)
    np.testing.assert_allclose(ours, ref.attention(q, k, v, causal=True), atol=1e-7)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_empty_rows_are_zero(dtype):
    q, k, v = make_qkv(2, 4, 2, 5, 2, 8, 8, seed=2)
    got = ref.sdpa(q, k, v, causal=True, dtype=dtype)
    assert np.array_equal(got[:, :, :3], np.zeros((2, 4, 3, 8), np.float32))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref.attention(q, k, v, causal=True), atol=3e-2 if dtype == "bf16" else 4e-3)


@pytest.mark.parametrize("fill", [float("nan"), 123.0], ids=["nan", "garbage"])
def test_empty_rows_zeroed_whatever_the_backend_returns(monkeypatch, fill):
    # For rows whose mask is all False, older torch math backends return NaN and torch 2.11's
    # cuDNN backend (seen on an H100) returns finite garbage; emulate both.
    real = F.scaled_dot_product_attention

    def nan_on_empty_rows(q, k, v, attn_mask=None, **kw):
        out = real(q, k, v, attn_mask=attn_mask, **kw)
        if attn_mask is not None:
            out[..., ~attn_mask.any(dim=-1), :] = fill
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", nan_on_empty_rows)
    q, k, v = make_qkv(1, 2, 1, 6, 3, 8, 8, seed=4)
    got = ref.sdpa(q, k, v, causal=True)
    assert np.array_equal(got[:, :, :3], np.zeros((1, 2, 3, 8), np.float32))
    np.testing.assert_allclose(got, ref.attention(q, k, v, causal=True), rtol=1e-5, atol=1e-5)


def test_torch_in_torch_out():
    q, k, v = make_qkv(1, 4, 2, 9, 13, 16, 16)
    qt, kt, vt = (torch.from_numpy(x).to(torch.float16) for x in (q, k, v))
    got = ref.sdpa(qt, kt, vt, causal=True, dtype="fp16")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.device == qt.device
    # fp16 inputs are already fp16: same answer as numpy fp16 inputs
    from_np = ref.sdpa(*(x.numpy() for x in (qt, kt, vt)), causal=True, dtype="fp16")
    np.testing.assert_array_equal(got.numpy(), from_np)
    # mixed: numpy k/v with a torch q
    mixed = ref.sdpa(qt, kt.numpy(), vt.numpy(), causal=True, dtype="fp16")
    np.testing.assert_array_equal(mixed.numpy(), from_np)


def test_inputs_rounded_to_dtype():
    # float64 inputs are rounded to fp16 first: same result as inputs pre-rounded by numpy.
    q, k, v = make_qkv(1, 2, 2, 7, 7, 8, 8)
    a = ref.sdpa(q, k, v, dtype="fp16")
    b = ref.sdpa(*(x.astype(np.float16) for x in (q, k, v)), dtype="fp16")
    np.testing.assert_array_equal(a, b)


def test_sm_scale_passed_through():
    q, k, v = make_qkv(1, 2, 1, 7, 9, 8, 8)
    for scale in (0.05, 1.0, 3.0):
        got = ref.sdpa(q, k, v, causal=True, sm_scale=scale)
        np.testing.assert_allclose(got, ref.attention(q, k, v, causal=True, sm_scale=scale), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    q, k, v = make_qkv(1, 4, 2, 3, 5, 8, 8)
    with pytest.raises(ValueError, match=r"^dtype must be one of \['fp32', 'fp16', 'bf16'\], got 'fp8'"):
        ref.sdpa(q, k, v, dtype="fp8")
    with pytest.raises(ValueError, match=r"^dtype must be one of"):
        ref.sdpa(q, k, v, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^q: heads Hq \(4\) must be a multiple of k\'s Hkv \(3\)"):
        ref.sdpa(q, np.zeros((1, 3, 5, 8)), np.zeros((1, 3, 5, 8)))
    bad = q.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"^q has 1 non-finite value"):
        ref.sdpa(bad, k, v)
    with pytest.raises(TypeError, match=r"^k must have a floating-point dtype, got int32"):
        ref.sdpa(q, torch.zeros(1, 2, 5, 8, dtype=torch.int32), v)
    with pytest.raises(ValueError, match=r"^sm_scale: expected a positive finite number"):
        ref.sdpa(q, k, v, sm_scale=0.0)
    with pytest.raises(TypeError, match=r"^causal: expected a bool, got str"):
        ref.sdpa(q, k, v, causal="yes")
