"""TurboAttention KV cache: priority, requant round trip, packing, bytes, flush rule, simulate."""

import numpy as np
import pytest

import ref
from sim import load_method
from sim.methods.turbo import (HeadPriority, TurboCache, cache_nbytes, compressed_len,
                               compression_vs_fp16, group_grid, head_bits, head_priority,
                               simulate_turbo_cache)
from sim.numerics.quantize import quantize
from sim.numerics.requantize import requantize
from sim.simulate import simulate


def _kv(B=1, H=4, L=130, D=64, seed=0):
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((B, H, L, D)).astype(np.float16)
    v = rng.standard_normal((B, H, L, D)).astype(np.float16)
    return k, v


@pytest.mark.parametrize("name", ["turbo", "turbo_token_k"])
def test_default_share_reaches_paper_compression(name):
    c = compression_vs_fp16(load_method(name), tokens=4096, head_dim=128, kv_heads=32)
    print(name, "compression at 4K tokens, D=128, 32 KV heads:", c)
    assert 4.4 <= c < 4.5


def test_bytes_hand_derived_tiny_case():
    # 130 tokens, D=64, buffer 64: 128 tokens flushed, 2 INT8 blocks.
    spec = load_method("turbo")
    int4 = (128 * 32 * 2              # K and V codes: 64 ch x 4 bits = 32 B per token
            + 2 * 64 * 2              # K per channel: 2 blocks of 64 tokens x 64 channels, s+z
            + 128 * 2 * 2             # V per token: 2 groups of 32 channels per token, s+z
            + 2 * 4 * 2               # fp32 INT8 block scales of 2 flushed blocks, K and V
            + 64 * 128 + 8)           # buffer capacity: 64 tokens x (64 + 64) INT8 + 2 fp32 scales
    assert cache_nbytes(spec, [4], 130, 64) == int4
    int2 = int4 - 128 * 16 * 2
    assert cache_nbytes(spec, [2], 130, 64) == int2
    k, v = _kv()
    cache = TurboCache.from_prefill(k, v, spec)
    assert cache.nbytes() == cache_nbytes(spec, cache.bits, 130, 64)
    old = load_method("turbo_token_k")    # the same counts with the axes swapped
    assert cache_nbytes(old, [4], 130, 64) == int4
    assert cache_nbytes(spec, [4], 130, 64, detail=True)["k_scale_zero"] == 2 * 64 * 2
    assert cache_nbytes(old, [4], 130, 64, detail=True)["k_scale_zero"] == 128 * 2 * 2


def test_group_grid_and_spec_checks():
    assert group_grid("per_channel", 64, 192, 128) == (3, 128)
    assert group_grid("per_token", 32, 192, 100) == (192, 4)     # partial last channel group
    with pytest.raises(ValueError, match="k_group_size"):
        load_method("turbo", kvcache__k_group_size=48)          # 48 does not divide 64
    with pytest.raises(ValueError, match="k_groups"):
        load_method("turbo", kvcache__k_groups="per_head")


def test_per_channel_k_per_token_v_hand_example():
    """Exact integers: one flushed block whose INT8 scale is 1 (absmax 127), D = 4, INT4.
    K channel 0 holds 0 except +127 (token 5) and -127 (token 6): s = ceil(254 / 15) = 17,
    z = -127, codes (0 + 127 + 8) // 17 = 7 -> 7 * 17 - 127 = -8, 15 -> 128 clamped to 127,
    0 -> -127. Channel 1 is constant 3 (s = 1, z = 3, exact); channel 2 ramps -20 .. 43
    (s = ceil(63 / 15) = 5, z = -20). V token 0 = [127, -127, 0, 5] is one 4-channel group
    (v_group_size 32 > D): s = 17, z = -127, read back [127, -127, -8, 9]."""
    spec = load_method("turbo", kvcache__low_share=0.0)
    k = np.zeros((1, 1, 64, 4), np.float16)
    v = np.zeros((1, 1, 64, 4), np.float16)
    k[0, 0, :, 1] = 3
    k[0, 0, 5, 0], k[0, 0, 6, 0] = 127, -127
    k[0, 0, :, 2] = np.arange(64) - 20
    k[0, 0, :, 3] = -1
    v[0, 0, 0] = [127, -127, 0, 5]
    v[0, 0, 1:] = [1, 2, 3, 4]
    cache = TurboCache.from_prefill(k, v, spec, priority=HeadPriority(np.ones(1)))
    st = cache.store[0]
    assert st.k_scale.shape == (1, 1, 4) and st.v_scale.shape == (1, 64, 1)
    assert st.k_scale[0, 0].tolist() == [17, 1, 5, 1]
    assert st.k_zero[0, 0].tolist() == [-127, 3, -20, -1]
    assert (st.v_scale[0, :3, 0].tolist(), st.v_zero[0, :3, 0].tolist()) == ([17, 1, 1],
                                                                              [-127, 1, 1])
    kh, vh = cache.int8()
    assert kh[0, 0, 4:8, 0].tolist() == [-8, 127, -127, -8]
    assert kh[0, 0, :4, 2].tolist() == [-20, -20, -20, -15]   # (1 + 2) // 5 = 0, (3 + 2) // 5 = 1
    assert (kh[0, 0, :, 1] == 3).all() and (kh[0, 0, :, 3] == -1).all()
    assert vh[0, 0, 0].tolist() == [127, -127, -8, 9] and vh[0, 0, 1].tolist() == [1, 2, 3, 4]


def test_append_is_transactional():
    """An append that raises leaves every array and the length as they were."""
    spec = load_method("turbo", v__scale_dtype="fp16")
    k, v = _kv(H=2, L=100)
    cache = TurboCache.from_prefill(k[:, :, :60], v[:, :, :60], spec)
    before = cache.int8(), cache.nbytes(detail=True), cache.k_scale8.copy(), cache.length
    big = np.full((1, 2, 10, 64), 1e7, np.float32)      # absmax / 127 beyond the fp16 scale range
    with pytest.raises(ValueError):                     # K is appended first, then V fails
        cache.append(k[:, :, 60:70], big)
    bad = k[:, :, 60:70].astype(np.float32)
    bad[0, 1, 3, 5] = np.nan
    with pytest.raises(ValueError):
        cache.append(bad, v[:, :, 60:70])
    after = cache.int8(), cache.nbytes(detail=True), cache.k_scale8, cache.length
    for a, b in zip(before[0], after[0]):
        assert np.array_equal(a, b)
    assert before[1] == after[1] and np.array_equal(before[2], after[2]) and before[3] == after[3]
    cache.append(k[:, :, 60:], v[:, :, 60:])             # still usable, and equal to a fresh one
    fresh = TurboCache.from_prefill(k[:, :, :60], v[:, :, :60], spec).append(k[:, :, 60:],
                                                                              v[:, :, 60:])
    for a, b in zip(cache.int8(), fresh.int8()):
        assert np.array_equal(a, b)


def test_priority_and_head_bits():
    k, v = _kv(H=4)
    k[:, 2] *= 5
    pr = head_priority(k, v)
    x = np.concatenate([k[0, 0].ravel(), v[0, 0].ravel()]).astype(np.float64)
    assert pr.priority[0] == pytest.approx((x.max() - x.min()) * x.std(), rel=1e-12)
    bits = head_bits(load_method("turbo").kvcache, pr.priority)     # round(0.4375 * 4) = 2 low
    assert bits[2] == 4 and (bits == 2).sum() == 2


def test_priority_save_load(tmp_path):
    pr = HeadPriority(np.array([1.0, 3.0]), "slice")
    back = HeadPriority.load(pr.save(tmp_path / "p.json"))
    assert np.array_equal(back.priority, pr.priority) and back.source == "slice"


@pytest.mark.parametrize("name, k_axis, k_group, v_axis, v_group",
                         [("turbo", -2, 64, -1, 32), ("turbo_token_k", -1, 32, -2, 64)])
def test_round_trip_matches_numerics_exactly(name, k_axis, k_group, v_axis, v_group):
    spec = load_method(name)
    k, v = _kv()
    pr = HeadPriority(np.array([4.0, 1.0, 3.0, 2.0]))
    cache = TurboCache.from_prefill(k, v, spec, priority=pr)
    k8 = quantize(k, 8, block=(1, 1, 64, None)).codes
    v8 = quantize(v, 8, block=(1, 1, 64, None)).codes
    kh, vh = cache.int8()
    for h, bits in enumerate(cache.bits):
        want_k = requantize(k8[:, h, :128], 8, int(bits), axis=k_axis, group=k_group).to_int8()
        want_v = requantize(v8[:, h, :128], 8, int(bits), axis=v_axis, group=v_group).to_int8()
        assert np.array_equal(kh[:, h, :128], want_k) and np.array_equal(vh[:, h, :128], want_v)
    assert np.array_equal(kh[:, :, 128:], k8[:, :, 128:]) and np.array_equal(vh[:, :, 128:], v8[:, :, 128:])
    assert cache.bits.tolist() == [4, 2, 4, 2]


def test_append_whole_blocks_equals_prefill():
    spec = load_method("turbo")
    k, v = _kv()
    full = TurboCache.from_prefill(k, v, spec)
    grown = TurboCache.from_prefill(k[:, :, :64], v[:, :, :64], spec,
                                    priority=head_priority(k, v)).append(k[:, :, 64:], v[:, :, 64:])
    assert grown.length == 130 and grown.flushed == 128
    for a, b in zip(grown.int8(), full.int8()):
        assert np.array_equal(a, b)
    assert grown.nbytes() == full.nbytes()


def test_flush_rule_hand_example():
    # Lq = Lk = 130, buffer 64: rows 0..62 read no compressed group, rows 63..126 group 0,
    # rows 127..129 groups 0 and 1.
    assert [compressed_len(p + 1, 64) for p in (0, 62, 63, 126, 127, 129)] == [0, 0, 64, 64, 128, 128]
    k, v = _kv(H=2)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, 130, 64)).astype(np.float16)
    res = simulate_turbo_cache(q, k, v, load_method("turbo"), causal=True, trace=True)
    comp = res.trace["compressed"]
    assert (comp[:63] == 0).all() and (comp[63:127] == 64).all() and (comp[127:] == 128).all()
    # without compression the cache mode is the prefill path (same INT8 codes, same sequence)
    spec8 = load_method("turbo")
    pre = simulate(q[:, :, :63], k[:, :, :63], v[:, :, :63], spec8, causal=True)
    cm = simulate(q[:, :, :63], k[:, :, :63], v[:, :, :63], spec8, causal=True, kv_cache=True)
    assert np.array_equal(pre.out, cm.out)
    # rows before the first flush agree with the prefill path on the full problem too
    full = simulate(q, k, v, spec8, causal=True)
    assert np.array_equal(res.out[:, :, :63], full.out[:, :, :63])
    assert not np.array_equal(res.out[:, :, 63:], full.out[:, :, 63:])


@pytest.mark.parametrize("causal, Lq, Lk", [(True, 130, 130), (False, 17, 200), (True, 1, 200)])
def test_cache_error_vs_prefill(causal, Lq, Lk):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 4, Lq, 64)).astype(np.float16)
    k, v = _kv(H=2, L=Lk)
    exact = ref.attention(q, k, v, causal=causal)
    err = {}
    for name, share, kvc in (("prefill", 0.0, False), ("int4", 0.0, True), ("int2", 1.0, True)):
        spec = load_method("turbo", kvcache__low_share=share)
        out = simulate(q, k, v, spec, causal=causal, kv_cache=kvc).out
        err[name] = np.linalg.norm(out - exact) / np.linalg.norm(exact)
    print(causal, Lq, Lk, err)
    assert err["prefill"] < err["int4"] < err["int2"] < 1.0   # INT2 on N(0,1) K/V: ~0.2-0.6


def test_bad_inputs():
    k, v = _kv(H=2)
    q = np.zeros((1, 2, 4, 64), np.float16)
    with pytest.raises(ValueError, match="spec"):
        simulate_turbo_cache(q, k, v, load_method("int8_flash"))
    with pytest.raises(ValueError, match="buffer_tokens"):
        TurboCache.from_prefill(k, v, load_method("turbo", kvcache__buffer_tokens=32))
    with pytest.raises(ValueError, match="calibration"):
        simulate_turbo_cache(q, k, v, load_method("turbo"), calibration=HeadPriority(np.ones(3)))
    with pytest.raises(TypeError, match="calibration"):
        simulate_turbo_cache(q, k, v, load_method("turbo"), calibration=3)
