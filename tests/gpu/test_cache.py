"""Cache kernels == the simulator's caches, byte for byte (atol = rtol = 0).

turbo: packed INT4/INT2 codes (sim.numerics.pack layout), integer scales and zeros, INT8 block
scales, the INT8 buffer and head bits equal ``sim.methods.turbo.TurboCache`` after ``from_prefill`` and
after ``append`` in uneven chunks (which exercises the open block's re-scaling).
double_sparse: label codes, fp16 scales and zero points equal ``sim.methods.double_sparse.label_cache``.
"""
import numpy as np
import pytest
import torch

import gpu
from sim import load_method
from sim.methods.turbo import TurboCache, cache_nbytes, head_priority
from sim.methods.double_sparse import calibrate, label_cache
from tests.gpu.helpers import DEVICE, make_qkv, np32

_FIELDS = ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero")


def _assert_same_turbo(cache, ref):
    assert cache.length == ref.length and cache.flushed == ref.flushed
    np.testing.assert_array_equal(cache.bits, ref.bits)
    for h, st in enumerate(ref.store):
        got = cache.packed(h)
        for f in _FIELDS:
            np.testing.assert_array_equal(got[f], getattr(st, f), err_msg=f"head {h} {f}")
    ks8, vs8 = cache.scales8()
    np.testing.assert_array_equal(ks8, ref.k_scale8)
    np.testing.assert_array_equal(vs8, ref.v_scale8)
    nbuf = cache.nbuf
    np.testing.assert_array_equal(cache.k_buf[:, :, :nbuf].cpu().numpy(), ref.k_buf)
    np.testing.assert_array_equal(cache.v_buf[:, :, :nbuf].cpu().numpy(), ref.v_buf)
    assert cache.nbytes() == ref.nbytes()
    assert cache.device_nbytes() >= cache.nbytes()


TURBO_BUILD = [  # (label, spec, B, Hkv, L, D, dtype)
    ("L150-D64", "turbo", 1, 2, 150, 64, torch.float16),
    ("L128-D128-B2", "turbo", 2, 2, 128, 128, torch.float16),   # no buffer: every block flushed
    ("L17-bf16", "turbo", 1, 3, 17, 64, torch.bfloat16),        # buffer only
    ("token_k-L150-D128", "turbo_token_k", 1, 2, 150, 128, torch.float16),
]


@pytest.mark.parametrize("case", TURBO_BUILD, ids=[c[0] for c in TURBO_BUILD])
def test_turbo_build_equals_sim(case, monkeypatch):
    _, spec_name, B, Hkv, L, D, dtype = case
    _, k, v = make_qkv(B, Hkv, Hkv, 1, L, D, dtype=dtype, seed=L + D)
    spec = load_method(spec_name)
    import gpu.methods.turbo as gt
    monkeypatch.setattr(gt, "_CHUNK", 64)   # stream the build in one-block chunks
    pr = head_priority(np32(k), np32(v))
    cache = gpu.build_cache(k, v, method="turbo", spec=spec, calibration=pr)
    ref = TurboCache.from_prefill(np32(k), np32(v), spec, priority=pr)
    _assert_same_turbo(cache, ref)
    assert cache.nbytes() == cache_nbytes(spec, ref.bits, L, D, batch=B)


def test_turbo_oracle_priority_and_mixed_bits():
    """calibration=None ranks heads by the call's own K/V (torch float64 on the device)."""
    _, k, v = make_qkv(1, 8, 8, 1, 70, 64, seed=3)
    k[:, 5] *= 3.0  # clearly separated priorities
    k[:, 2] *= 0.3
    cache = gpu.build_cache(k, v, method="turbo")
    ref_bits = TurboCache.from_prefill(np32(k), np32(v), load_method("turbo")).bits
    np.testing.assert_array_equal(cache.bits, ref_bits)
    assert sorted(set(cache.bits.tolist())) == [2, 4]
    assert cache.priority.source == "oracle"


def _snapshot(cache) -> dict:
    """Every device tensor of a turbo cache, as numpy, and its lengths."""
    out = {"length": cache.length, "nbuf": cache.nbuf}
    for name in ("k_scale", "k_zero", "v_scale", "v_zero", "k_flag", "v_flag", "k_scale8",
                 "v_scale8", "k_buf", "v_buf"):
        out[name] = getattr(cache, name).float().cpu().numpy()
    for bits, (_, kc, vc) in cache.store.items():
        out[f"kc{bits}"], out[f"vc{bits}"] = kc.cpu().numpy(), vc.cpu().numpy()
    return out


def test_turbo_refused_append_leaves_cache_unchanged():
    """A refused append (NaN token, INT8 scale beyond fp16) changes nothing on the device, the
    cache stays usable, and equals the simulator's after the next append."""
    B, Hkv, D = 1, 2, 64
    _, k, v = make_qkv(B, Hkv, Hkv, 1, 100, D, dtype=torch.bfloat16, seed=12)
    spec = load_method("turbo", v__scale_dtype="fp16")
    pr = head_priority(np32(k), np32(v))
    cache = gpu.build_cache(k[:, :, :60].contiguous(), v[:, :, :60].contiguous(), "turbo",
                            spec=spec, calibration=pr)
    before = _snapshot(cache)
    bad = k[:, :, 60:70].clone()
    bad[0, 1, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cache.append(bad, v[:, :, 60:70].contiguous())
    big = torch.full_like(v[:, :, 60:70], 1e7)         # absmax / 127 > 65504: fp16 scale inf
    with pytest.raises(ValueError, match="fp16"):
        cache.append(k[:, :, 60:70].contiguous(), big)
    after = _snapshot(cache)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(before[key]), err_msg=key)
    cache.append(k[:, :, 60:].contiguous(), v[:, :, 60:].contiguous())
    ref = TurboCache.from_prefill(np32(k)[:, :, :60], np32(v)[:, :, :60], spec, priority=pr)
    ref.append(np32(k)[:, :, 60:], np32(v)[:, :, 60:])
    _assert_same_turbo(cache, ref)


def test_dense_refused_append_leaves_cache_unchanged():
    _, k, v = make_qkv(1, 2, 2, 1, 60, 64, seed=6)
    for method, kw in (("fp16_flash", {}),
                       ("double_sparse", {"calibration": calibrate(np32(k), np32(k), "qk")})):
        cache = gpu.build_cache(k[:, :, :40].contiguous(), v[:, :, :40].contiguous(), method,
                                **kw)
        kb = cache.k.clone()
        bad = k[:, :, 40:50].clone()
        bad[0, 0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match="NaN or Inf"):
            cache.append(bad, v[:, :, 40:50].contiguous())
        assert cache.length == 40 and torch.equal(cache.k, kb)
        cache.append(k[:, :, 40:].contiguous(), v[:, :, 40:].contiguous())
        assert torch.equal(cache.k, k) and torch.equal(cache.v, v)


def test_turbo_append_equals_sim():
    """Uneven chunks: open-block re-scaling, flushes inside a chunk, capacity growth."""
    B, Hkv, D = 2, 2, 64
    _, k, v = make_qkv(B, Hkv, Hkv, 1, 200, D, seed=11)
    k[:, :, 40] *= 6.0  # a token that raises its open block's absmax
    spec = load_method("turbo")
    pr = head_priority(np32(k), np32(v))
    cache = gpu.build_cache(k[:, :, :5].contiguous(), v[:, :, :5].contiguous(), "turbo",
                            calibration=pr)
    ref = TurboCache.from_prefill(np32(k)[:, :, :5], np32(v)[:, :, :5], spec, priority=pr)
    for a, b in ((5, 6), (6, 9), (9, 41), (41, 130), (130, 200)):
        kn, vn = k[:, :, a:b].contiguous(), v[:, :, a:b].contiguous()
        cache.append(kn, vn)
        ref.append(np32(kn), np32(vn))
        _assert_same_turbo(cache, ref)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_labels_equal_sim(bits):
    B, Hq, Hkv, L, D = 2, 4, 2, 90, 64
    q, k, v = make_qkv(B, Hq, Hkv, 1, L, D, seed=bits)
    spec = load_method("double_sparse", **{"sparse.label_bits": bits})
    cal = calibrate(np32(q), np32(k), "qk")
    cache = gpu.build_cache(k[:, :, :50].contiguous(), v[:, :, :50].contiguous(),
                            "double_sparse", spec=spec, calibration=cal)
    cache.append(k[:, :, 50:].contiguous(), v[:, :, 50:].contiguous())
    ref = label_cache(np32(k), cal.channels(spec.sparse.r(D)), bits)
    got = cache.label_arrays()
    if bits == 16:
        np.testing.assert_array_equal(got["values"], ref.values)
    else:
        np.testing.assert_array_equal(got["codes"], ref.codes)
        np.testing.assert_array_equal(got["scale"], ref.scale)
        np.testing.assert_array_equal(got["zero_point"], ref.zero_point)
    np.testing.assert_array_equal(cache.k.cpu().numpy(), k.cpu().numpy())


def test_fp16_cache_append():
    _, k, v = make_qkv(1, 2, 2, 1, 100, 64, seed=5)
    cache = gpu.build_cache(k[:, :, :30].contiguous(), v[:, :, :30].contiguous(), "fp16_flash")
    for a, b in ((30, 31), (31, 100)):
        cache.append(k[:, :, a:b].contiguous(), v[:, :, a:b].contiguous())
    assert torch.equal(cache.k, k) and torch.equal(cache.v, v)


# ---------------------------------------------------------------------------------------------
# bad input: clear errors before any launch
# ---------------------------------------------------------------------------------------------
def _kv(L=20, D=64, dtype=torch.float16):
    _, k, v = make_qkv(1, 2, 2, 1, L, D, dtype=dtype)
    return k, v


def test_build_rejects_bad_input(monkeypatch):
    k, v = _kv()
    with pytest.raises(ValueError, match="method"):
        gpu.build_cache(k, v, method="int8_flash")
    with pytest.raises(ValueError, match="contiguous"):
        gpu.build_cache(k.transpose(2, 3), v.transpose(2, 3), "fp16_flash")
    with pytest.raises((TypeError, ValueError), match="dtype|float"):
        gpu.build_cache(k.float(), v.float(), "turbo")
    with pytest.raises(ValueError, match="head dim"):
        gpu.build_cache(*_kv(D=96), method="fp16_flash")
    with pytest.raises(ValueError):
        gpu.build_cache(k[:, :, :0].contiguous(), v[:, :, :0].contiguous(), "turbo")
    bad = k.clone()
    bad[0, 1, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN|finite|Inf"):
        gpu.build_cache(bad, v, "turbo")
    with pytest.raises(ValueError, match="calibration"):
        gpu.build_cache(k, v, "double_sparse")
    with pytest.raises((TypeError, ValueError), match="dtype|float16"):
        gpu.build_cache(*_kv(dtype=torch.bfloat16), method="double_sparse",
                        calibration=calibrate(np32(k), np32(k), "qk"))
    with pytest.raises(TypeError, match="calibration"):
        gpu.build_cache(k, v, "turbo", calibration=np.ones(2))
    with pytest.raises(ValueError, match="spec"):
        gpu.build_cache(k, v, "turbo", spec=load_method("int8_flash"))
    cache = gpu.build_cache(k, v, "turbo")
    with pytest.raises(ValueError, match="k_new"):
        cache.append(*_kv(L=3, D=128))
    with pytest.raises(TypeError, match="dtype"):
        kb, vb = _kv(L=3, dtype=torch.bfloat16)
        cache.append(kb, vb)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA"):
            gpu.build_cache(k, v, "turbo")
