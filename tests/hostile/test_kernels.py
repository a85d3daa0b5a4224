"""Hostile inputs to the GPU API (``gpu.attention``, ``attention_trace``, ``build_cache``,
``decode``, cache appends), run through the Triton interpreter on the CPU."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import gpu  # noqa: E402
from sim import load_method  # noqa: E402
from sim.methods.double_sparse import calibrate  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() and not gpu.common.interpreting() else "cpu"


def _t(*shape, seed=0, lo=None, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) if lo is None else lo + torch.rand(*shape, generator=g)
    return x.to(dtype).to(DEV)


Q, K = _t(1, 2, 17, 64), _t(1, 1, 23, 64, seed=1)
V = _t(1, 1, 23, 64, seed=2, lo=1.0)                       # V in [1, 2): zero rows are wrong


def _in_hull(out, v=V, slack=0.02):
    o = out.float()
    assert torch.isfinite(o).all(), "non-finite output"
    lo = v.float().amin(dim=2, keepdim=True) - slack
    hi = v.float().amax(dim=2, keepdim=True) + slack
    assert ((o >= lo) & (o <= hi)).all(), f"outside V's range {o.min()}..{o.max()}"
    return True


BAD_PREFILL = [
    ("numpy", dict(q=Q.cpu().numpy()), "q"), ("float32", dict(q=Q.float(), k=K.float(),
                                                               v=V.float()), "q"),
    ("int", dict(v=V.int()), "v"), ("mixed", dict(k=K.bfloat16()), "q"),
    ("D96", dict(q=_t(1, 2, 17, 96), k=_t(1, 1, 23, 96), v=_t(1, 1, 23, 96)), "q"),
    ("last dim strided", dict(q=_t(1, 2, 17, 128)[..., ::2]), "q"),
    ("ndim3", dict(q=Q[0]), "q"), ("empty", dict(q=Q[:, :, :0]), "q"),
    ("GQA", dict(q=_t(1, 3, 17, 64), k=_t(1, 2, 23, 64), v=_t(1, 2, 23, 64)), "q"),
    ("nan", dict(k=torch.where(K > 1, float("nan"), K)), "k"),
    ("inf", dict(v=torch.where(V > 1.9, float("inf"), V)), "v"),
    ("causal int", dict(causal=1), "causal"), ("causal str", dict(causal="yes"), "causal"),
    ("alias clash", dict(causal=True, is_causal=False), "is_causal"),
    ("layout", dict(tensor_layout="BHSD"), "tensor_layout"),
    ("sm huge", dict(sm_scale=1e36), "sm_scale"), ("sm bool", dict(sm_scale=True), "sm_scale"),
    ("sm nan", dict(sm_scale=float("nan")), "sm_scale"),
    ("method", dict(method="nope"), "method"), ("method decode-only", dict(method="double_sparse"),
                                                "method"),
    ("spec mismatch", dict(method="int8_flash", spec="turbo"), "spec"),
    ("spec choice", dict(method="int8_flash", spec=load_method("int8_flash", p__levels=200,
                                                               p__saturate=True)), "spec.p.levels"),
    ("launch key", dict(launch={"blockm": 64}), "launch"),
    ("launch pow2", dict(launch={"block_m": 24}), "launch['block_m']"),
    ("launch warps", dict(launch={"num_warps": 3}), "launch['num_warps']"),
    ("launch str", dict(launch={"num_stages": "2"}), "launch['num_stages']"),
    ("launch type", dict(launch=(64, 4, 2)), "launch"),
    ("NHD declared HND", dict(q=Q.transpose(1, 2), k=K.transpose(1, 2), v=V.transpose(1, 2)), "q"),
]


@pytest.mark.parametrize("case,kw,name", BAD_PREFILL, ids=[c[0] for c in BAD_PREFILL])
def test_prefill_bad_arguments(hostile, case, kw, name):
    args = dict(q=Q, k=K, v=V, method="fp16_flash")
    args.update(kw)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    hostile.error(lambda: gpu.attention(q, k, v, **args), name, start=True, case=case)
    hostile.error(lambda: gpu.attention_trace(q, k, v, **args), name, start=True, case=case)


@pytest.mark.parametrize("method", ("fp16_flash", "int8_flash"))
def test_prefill_conventions(hostile, method):
    """numpy-bool causal, the is_causal alias, NHD inputs and strided views: the same numbers."""
    base = gpu.attention(Q, K, V, method=method, causal=True)
    _in_hull(base)
    hostile.correct(lambda: gpu.attention(Q, K, V, method=method, causal=np.bool_(True)),
                    lambda o: torch.equal(o, base), case="np.bool_")
    hostile.correct(lambda: gpu.attention(Q, K, V, method=method, is_causal=True),
                    lambda o: torch.equal(o, base), case="is_causal")
    nhd = [x.transpose(1, 2).contiguous() for x in (Q, K, V)]
    hostile.correct(lambda: gpu.attention(*nhd, method=method, causal=True,
                                          tensor_layout="NHD"),
                    lambda o: o.shape == (1, 17, 2, 64) and torch.equal(o.transpose(1, 2), base),
                    case="NHD")


def test_large_sm_scale_stays_meaningful(hostile):
    """A scale far above 1/sqrt(D) but within float32: a one-hot-like softmax, not zeros."""
    hostile.correct(lambda: gpu.attention(Q, K, V, method="fp16_flash", sm_scale=1e20),
                    _in_hull)


# ---- decode caches -------------------------------------------------------------------------
KC, VC = _t(1, 2, 40, 64, seed=3), _t(1, 2, 40, 64, seed=4, lo=1.0)
QD = _t(1, 4, 1, 64, seed=5)


@pytest.mark.parametrize("kw,name", [
    (dict(k=KC.cpu().numpy()), "k"), (dict(v=torch.where(VC > 1.5, float("nan"), VC)), "v"),
    (dict(method="int8_flash"), "method"), (dict(method="fp16_flash", calibration=3),
                                            "calibration"),
    (dict(method="turbo", calibration="nope.json"), "path"),
    (dict(method="double_sparse"), "calibration"),
    (dict(k=_t(1, 2, 40, 96), v=_t(1, 2, 40, 96)), "k"),
])
def test_build_cache_bad_arguments(hostile, kw, name):
    args = dict(k=KC, v=VC, method="fp16_flash")
    args.update(kw)
    k, v = args.pop("k"), args.pop("v")
    hostile.error(lambda: gpu.build_cache(k, v, **args), name, start=True,
                  exc=(ValueError, TypeError, FileNotFoundError))


@pytest.fixture(scope="module")
def fp16_cache():
    return gpu.build_cache(KC, VC, method="fp16_flash")


@pytest.mark.parametrize("kw,name", [
    (dict(q=_t(1, 4, 2, 64)), "q"), (dict(q=QD.bfloat16()), "q"), (dict(q=_t(1, 3, 1, 64)), "q"),
    (dict(q=QD.cpu().numpy()), "q"), (dict(q=torch.full_like(QD, float("nan"))), "q"),
    (dict(cache="cache"), "cache"), (dict(sm_scale=-1), "sm_scale"),
    (dict(sm_scale=1e30, q=QD * 1000), "sm_scale"),
    (dict(launch={"splits": 0}), "launch['splits']"), (dict(launch={"split": 2}), "launch"),
    (dict(launch={"splits": "2"}), "launch['splits']"),
    (dict(launch={"num_warps": 3}), "launch['num_warps']"),
    (dict(launch={"grouped": "no"}), "launch['grouped']"),
])
def test_decode_bad_arguments(hostile, fp16_cache, kw, name):
    args = dict(q=QD, cache=fp16_cache)
    args.update(kw)
    q, cache = args.pop("q"), args.pop("cache")
    hostile.error(lambda: gpu.decode(q, cache, **args), name, start=True)


def test_double_sparse_budget_agrees_with_the_simulator(hostile):
    """A token budget above the cached keys: refused by the decode as by sim and the cost
    model (one rule, sim.methods.double_sparse.check_problem)."""
    spec = load_method("double_sparse", sparse__token_budget=100)
    cal = calibrate(QD.float().cpu().numpy(), KC.float().cpu().numpy(), "qk")
    cache = gpu.build_cache(KC, VC, method="double_sparse", spec=spec, calibration=cal)
    hostile.error(lambda: gpu.decode(QD, cache), "sparse.token_budget", start=True)


@pytest.mark.parametrize("method", ("fp16_flash", "turbo"))
def test_refused_append_leaves_the_cache_as_it_was(hostile, method):
    cache = gpu.build_cache(KC, VC, method=method)
    before = gpu.decode(QD, cache)
    length = cache.length
    for k_new, v_new, name in (
            (_t(1, 2, 3, 64), _t(1, 2, 4, 64), "v_new"),
            (_t(1, 3, 3, 64), _t(1, 3, 3, 64), "k_new"),
            (torch.full((1, 2, 3, 64), float("nan"), dtype=torch.float16, device=DEV),
             _t(1, 2, 3, 64), "k_new"),
            (_t(1, 2, 3, 64), torch.full((1, 2, 3, 64), float("inf"), dtype=torch.float16,
                                         device=DEV), "v_new"),
            (_t(1, 2, 3, 64).bfloat16(), _t(1, 2, 3, 64).bfloat16(), "k_new"),
            (_t(1, 2, 3, 64).cpu().numpy(), _t(1, 2, 3, 64), "k_new")):
        hostile.error(lambda: cache.append(k_new, v_new), name, start=True)
    hostile.correct(lambda: (cache.length, gpu.decode(QD, cache)),
                    lambda r: r[0] == length and torch.equal(r[1], before), case=method)
