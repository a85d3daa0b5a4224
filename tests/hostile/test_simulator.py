"""Hostile inputs to ``sim.simulate``: types, shapes, dtypes, values, flags, layouts, options."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ref
from sim import load_method, simulate
from sim.methods.double_sparse import calibrate

METHODS = ("fp16_flash", "fp8_flash", "int8_flash", "turbo", "double_sparse")
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _qkv(Lq=9, Lk=13, Hq=4, Hkv=2, D=16, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((1, Hkv, Lk, D)).astype(dtype)
    v = (1.0 + rng.random((1, Hkv, Lk, D))).astype(dtype)     # in [1, 2): a zero row is wrong
    return q, k, v


# how far a method's V (and P) rounding may move an output outside V's range
SLACK = {"fp16_flash": 0.01, "double_sparse": 0.01, "int8_flash": 0.05, "turbo": 0.05,
         "fp8_flash": 0.15}


def _in_hull(out, v, group, slack=0.05):
    """Every output row a convex combination of V rows: within V's per-column range, give or
    take the method's operand rounding (V in [1, 2), so zeros, NaN and Inf rows all fail)."""
    out = np.asarray(out, np.float64)
    lo = v.min(axis=2).repeat(group, axis=1)[:, :, None, :] - slack
    hi = v.max(axis=2).repeat(group, axis=1)[:, :, None, :] + slack
    assert np.isfinite(out).all(), "non-finite output"
    assert ((out >= lo) & (out <= hi)).all(), f"output outside V's range: {out.min()}..{out.max()}"
    return True


Q, K, V = _qkv()


# ---- the tensors -------------------------------------------------------------------------
BAD_TENSORS = [
    ("q", lambda: (Q.tolist(), K, V), "q"),
    ("k", lambda: (Q, None, V), "k"),
    ("v", lambda: (Q, K, "v"), "v"),
    ("ndim", lambda: (Q[0], K, V), "q"),
    ("ndim5", lambda: (Q, K[None], V), "k"),
    ("int dtype", lambda: (Q, K, V.astype(np.int32)), "v"),
    ("complex", lambda: (Q.astype(np.complex64), K, V), "q"),
    ("bool", lambda: (Q, K.astype(bool), V), "k"),
    ("float128", lambda: (Q.astype(np.longdouble), K, V), "q"),
    ("empty Lq", lambda: (Q[:, :, :0], K, V), "q"),
    ("empty Lk", lambda: (Q, K[:, :, :0], V[:, :, :0]), "k"),
    ("empty D", lambda: (Q[..., :0], K[..., :0], V), "q"),
    ("empty B", lambda: (Q[:0], K[:0], V[:0]), "q"),
    ("GQA", lambda: (Q[:, :3], K, V), "q"),
    ("k v len", lambda: (Q, K, V[:, :, :5]), "v"),
    ("batch", lambda: (Q, np.concatenate([K, K]), np.concatenate([V, V])), "k"),
    ("head dim", lambda: (Q, K[..., :8], V), "k"),
    ("nan q", lambda: (np.where(Q > 1.5, np.nan, Q), K, V), "q"),
    ("inf k", lambda: (Q, np.where(K > 1.5, np.inf, K), V), "k"),
    ("-inf v", lambda: (Q, K, np.where(V > 1.9, -np.inf, V)), "v"),
    ("object", lambda: (Q.astype(object), K, V), "q"),
]


@pytest.mark.parametrize("case,make,name", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
@pytest.mark.parametrize("method", ("fp16_flash", "int8_flash"))
def test_bad_tensors(hostile, case, make, name, method):
    q, k, v = make()
    hostile.error(lambda: simulate(q, k, v, method), name, start=True, case=case)


# ---- values beyond the method's arithmetic -----------------------------------------------
@pytest.mark.parametrize("method", ("fp16_flash", "double_sparse"))
@pytest.mark.parametrize("which", "qkv")
def test_fp16_range(hostile, method, which):
    """float32 inputs beyond fp16 for an fp16 method: an error naming the tensor, not Inf/zero
    rows (the documented policy: refused, never saturated)."""
    args = dict(q=Q, k=K, v=V)
    args[which] = args[which] * np.float32(1e5)
    hostile.error(lambda: simulate(args["q"], args["k"], args["v"], method), which, start=True)


def test_fp16_quantizer_refuses_values_beyond_fp16(hostile):
    """int8_flash as shipped divides by its scales in fp16 (its authors' quantizer): Q beyond
    the fp16 range is refused, naming the argument, not quantized from Inf."""
    hostile.error(lambda: simulate(Q * np.float32(1e5), K, V, "int8_flash"), "q", start=True)


@pytest.mark.parametrize("method", ("int8_flash_fp32", "turbo", "fp8_flash"))
def test_scaled_methods_take_large_inputs(hostile, method):
    """Methods that scale their operands in fp32 take values beyond fp16 and stay correct."""
    if method == "int8_flash_fp32":     # the shipped int8_flash quantizes in fp16 (its authors')
        method = load_method("int8_flash", q__arithmetic="fp32", k__arithmetic="fp32",
                             v__arithmetic="fp32")
    q, k, v = Q * np.float32(1e5), K * np.float32(1e-3), V
    exact = ref.attention(q, k, v)
    hostile.correct(lambda: simulate(q, k, v, method).out,
                    lambda o: np.abs(o - exact).max() < 0.1, case=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sm_scale", (1e36, 1e38, 3e38, 1e300))
def test_sm_scale_overflow_is_refused(hostile, method, sm_scale):
    hostile.error(lambda: simulate(Q, K, V, method, sm_scale=sm_scale), "sm_scale", start=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sm_scale", (1e-30, 1e-3, 30.0, 1e6, 1e20))
def test_sm_scale_extremes_stay_meaningful(hostile, method, sm_scale):
    """Small and large scales below the bound: a convex combination of V rows (uniform as the
    scale vanishes, one-hot as it grows), never zeros or NaN."""
    hostile.correct(lambda: simulate(Q, K, V, method, sm_scale=sm_scale).out,
                    lambda o: _in_hull(o, V, 2, SLACK[method]), case=f"{method} {sm_scale}")


@pytest.mark.parametrize("bad", ("0.1", True, np.bool_(True), 1j, [0.1], 0, -1.0, math.nan,
                                 math.inf, 10 ** 400))
def test_sm_scale_bad_values(hostile, bad):
    hostile.error(lambda: simulate(Q, K, V, "int8_flash", sm_scale=bad), "sm_scale", start=True)


@settings(max_examples=40, **SETTINGS)
@given(log_scale=st.floats(-8, 40), log_mag=st.floats(-6, 8),
       method=st.sampled_from(("fp16_flash", "int8_flash", "turbo")))
def test_scale_and_magnitude_property(hostile, log_scale, log_mag, method):
    """Any scale and input magnitude: a clear error (sm_scale, or the tensor out of the fp16
    range) or an output inside V's range; close to the float64 reference when the softmax is
    well conditioned."""
    sm, mag = 10.0 ** log_scale, np.float32(10.0 ** log_mag)
    q, k = Q * mag, K
    exact = ref.attention(q.astype(np.float16).astype(np.float64) if method == "fp16_flash"
                          else q, k, V, sm_scale=min(sm, 1e300)) \
        if sm * float(np.abs(q).max()) * float(np.abs(k).max()) * 16 < 50 else None

    def check(o):
        _in_hull(o, V, 2, SLACK[method])
        if exact is not None:
            assert np.abs(o - exact).max() < 0.1, np.abs(o - exact).max()
        return True

    hostile.either(lambda: simulate(q, k, V, method, sm_scale=sm).out, ("sm_scale", "q"), check,
                   case=f"{method} sm={sm:.3g} |q|~{mag:.3g}")


# ---- flags and options ---------------------------------------------------------------------
@pytest.mark.parametrize("kw,name", [
    ({"causal": 1}, "causal"), ({"causal": "yes"}, "causal"), ({"causal": "no"}, "causal"),
    ({"causal": np.array([True])}, "causal"), ({"is_causal": 0}, "is_causal"),
    ({"causal": True, "is_causal": False}, "is_causal"),
    ({"trace": "true"}, "trace"), ({"kv_cache": 1}, "kv_cache"),
    ({"return_lse": "yes"}, "return_lse"),
    ({"tensor_layout": "BHLD"}, "tensor_layout"), ({"tensor_layout": None}, "tensor_layout"),
    ({"tensor_layout": "nhd"}, "tensor_layout"),
    ({"kv_cache": True}, "kv_cache"), ({"calibration": "nope.npz"}, "calibration"),
])
def test_bad_flags(hostile, kw, name):
    hostile.error(lambda: simulate(Q, K, V, "int8_flash", **kw), name, start=True)


@pytest.mark.parametrize("spec,name", [
    ("nope", "spec"), (3, "spec"), (None, "spec"), ("/no/such/spec.yaml", "spec.yaml"),
])
def test_bad_spec(hostile, spec, name):
    hostile.error(lambda: simulate(Q, K, V, spec), name)


def test_flags_accept_numpy_bools_and_aliases(hostile):
    base = simulate(Q, K, V, "int8_flash", causal=True).out
    for kw in ({"causal": np.bool_(True)}, {"is_causal": True}, {"is_causal": np.True_},
               {"causal": True, "is_causal": True}):
        hostile.correct(lambda: simulate(Q, K, V, "int8_flash", **kw).out,
                        lambda o: np.array_equal(o, base), case=str(kw))


def test_trace_too_large(hostile):
    q = np.zeros((1, 1, 6000, 8), np.float32)
    hostile.error(lambda: simulate(q, q, q, "fp16_flash", trace=True), "trace", start=True)


def test_kv_cache_return_lse_is_refused(hostile):
    hostile.error(lambda: simulate(Q, K, V, "turbo", kv_cache=True, return_lse=True),
                  "return_lse", start=True)


def test_double_sparse_budget_above_context(hostile):
    spec = load_method("double_sparse", sparse__token_budget=100)
    hostile.error(lambda: simulate(Q, K, V, spec), "sparse.token_budget", start=True)
    wide = load_method("double_sparse", sparse__label_channels=64)
    hostile.error(lambda: simulate(Q, K, V, wide), "sparse.label_channels", start=True)


def test_double_sparse_bad_calibration(hostile):
    cal = calibrate(Q, K, "q")            # the spec's metric is qk
    hostile.error(lambda: simulate(Q, K, V, "double_sparse", calibration=cal), "calibration",
                  start=True)
    other = calibrate(Q[..., :8], K[..., :8], "qk")
    hostile.error(lambda: simulate(Q, K, V, "double_sparse", calibration=other), "calibration",
                  start=True)
    hostile.error(lambda: simulate(Q, K, V, "double_sparse", calibration=3), "calibration",
                  start=True)


# ---- conventions: layouts, torch tensors, lse ----------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_nhd_layout_equals_hnd(hostile, method):
    base = simulate(Q, K, V, method, causal=True).out
    hostile.correct(lambda: simulate(*(x.swapaxes(1, 2) for x in (Q, K, V)), method,
                                     causal=True, tensor_layout="NHD").out,
                    lambda o: o.shape == (1, 9, 4, 16) and np.array_equal(o.swapaxes(1, 2), base),
                    case=method)


def test_ambiguous_layout_is_refused_not_guessed(hostile):
    """[B, L, H, D] inputs declared HND (the default): their shapes are inconsistent as HND, so
    the error names q and points at NHD instead of reading them wrongly."""
    q, k, v = (x.swapaxes(1, 2) for x in (Q, K, V))
    e = hostile.error(lambda: simulate(q, k, v, "fp16_flash"), "q", start=True)
    assert "tensor_layout='NHD'" in str(e)
    e = hostile.error(lambda: simulate(Q, K, V, "fp16_flash", tensor_layout="NHD"), "q",
                      start=True)
    assert "tensor_layout='NHD'" in str(e)


def test_torch_tensors(hostile):
    torch = pytest.importorskip("torch")
    base = simulate(Q, K, V, "fp16_flash").out
    for conv in (torch.from_numpy, lambda x: torch.from_numpy(x).double(),
                 lambda x: torch.from_numpy(x).permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)):
        hostile.correct(lambda: simulate(*(conv(x) for x in (Q, K, V)), "fp16_flash").out,
                        lambda o: np.abs(o - base).max() < 1e-6)
    bf = simulate(*(torch.from_numpy(x).bfloat16() for x in (Q, K, V)), "fp16_flash").out
    hostile.correct(lambda: bf, lambda o: np.abs(o - base).max() < 0.05, case="bf16")
    hostile.error(lambda: simulate(torch.zeros(1, 4, 9, 16, dtype=torch.int32), K, V,
                                   "fp16_flash"), "q", start=True)
    hostile.error(lambda: simulate(torch.from_numpy(Q), K, torch.full_like(
        torch.from_numpy(V), float("nan")), "fp16_flash"), "v", start=True)


@pytest.mark.parametrize("method", ("fp16_flash", "int8_flash", "turbo", "fp8_flash"))
def test_return_lse(hostile, method):
    q, k, v = _qkv(Lq=13, Lk=9)        # causal with Lq > Lk: the first rows see no key
    _, lse = ref.attention(q, k, v, causal=True, return_lse=True)
    tol = {"fp16_flash": 1e-2, "fp8_flash": 0.2}.get(method, 0.05)

    def check(r):
        seen = np.isfinite(lse)
        assert r.lse.shape == (1, 4, 13) and (np.isneginf(r.lse) == ~seen).all()
        assert np.abs(r.lse[seen] - lse[seen]).max() < tol
        return True

    hostile.correct(lambda: simulate(q, k, v, method, causal=True, return_lse=True), check,
                    case=method)


def test_turbo_cache_names_the_caller_arguments(hostile):
    """The simulator's turbo cache names k_new / v_new (not q, k) and refuses before changing."""
    from sim.methods.turbo import TurboCache
    spec = load_method("turbo")
    _, k, v = _qkv(Lk=70)
    cache = TurboCache.from_prefill(k, v, spec)
    for kn, vn, name in ((np.full((1, 2, 1, 16), np.nan, np.float32), k[:, :, :1], "k_new"),
                         (k[:, :, :1], np.full((1, 2, 1, 16), np.inf, np.float32), "v_new"),
                         (k[:, :, :1], k[:, :, :2], "v_new"), (k[:, :1, :1], k[:, :1, :1], "k_new"),
                         (k[:, :, :1].tolist(), k[:, :, :1], "k_new")):
        hostile.error(lambda: cache.append(kn, vn), name, start=True)
    hostile.correct(lambda: cache.length, lambda n: n == 70)
    hostile.error(lambda: TurboCache.from_prefill(k, v[:, :, :3], spec), "v", start=True)


@pytest.mark.parametrize("calibration", (3, "nope.json", np.ones(2)), ids=("int", "path", "array"))
def test_turbo_calibration(hostile, calibration):
    hostile.error(lambda: simulate(Q, K, V, "turbo", kv_cache=True, calibration=calibration),
                  ("calibration", "path"), exc=(ValueError, TypeError, FileNotFoundError))


@pytest.mark.parametrize("content", (b"not a file", b"PK\x03\x04junk", b'{"kind": 3}',
                                     b'{"kind": "turbo.head_priority"}',
                                     b'{"kind": "turbo.head_priority", "priority": ["a"], '
                                     b'"source": "x"}', b"\xff\xfe"),
                         ids=("text", "zip", "kind", "no priority", "bad priority", "bytes"))
@pytest.mark.parametrize("kind", ("double_sparse", "turbo"))
def test_damaged_calibration_files(hostile, tmp_path, content, kind):
    from sim.methods.double_sparse import Calibration
    from sim.methods.turbo import HeadPriority
    path = tmp_path / ("cal.npz" if kind == "double_sparse" else "cal.json")
    path.write_bytes(content)
    load = Calibration.load if kind == "double_sparse" else HeadPriority.load
    hostile.error(lambda: load(path), "path", start=True)
    kw = {"kv_cache": True} if kind == "turbo" else {}
    hostile.error(lambda: simulate(Q, K, V, kind, calibration=path, **kw), "path", start=True)
