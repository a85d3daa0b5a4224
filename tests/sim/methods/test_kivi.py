"""kivi: KIVI's cache (FP16 residual, K per channel, V per token) on the simulator."""
import numpy as np
import pytest

import ref
from sim import load_method, simulate
from sim.methods.kivi import fake_quant, kivi_cache_bytes


def test_group_quantizer_by_hand():
    # one channel over 4 tokens (per_channel), 2 bits: min 0, scale 1
    x = np.array([0.0, 1.0, 2.0, 3.0], np.float32).reshape(1, 1, 4, 1)
    assert fake_quant(x, 2, "per_channel", 4).ravel().tolist() == [0, 1, 2, 3]
    # range 3 over 3 levels: scale f16(1.0); 1.4 -> code 1 -> 1.0, 1.6 -> 2
    x = np.array([0.0, 1.4, 1.6, 3.0], np.float32).reshape(1, 1, 1, 4)
    assert fake_quant(x, 2, "per_token", 4).ravel().tolist() == [0, 1, 2, 3]
    # K per channel: a channel whose values are constant is exact whatever the other channels do
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, 1, 32, 8)).astype(np.float32)
    k[..., 3] = 0.5
    assert (fake_quant(k, 2, "per_channel", 32)[..., 3] == 0.5).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        fake_quant(k[:, :, :20], 2, "per_channel", 32)


def test_residual_rows_are_fp16_and_decode_matches_prefill_rows():
    rng = np.random.default_rng(1)
    L = 300
    q = rng.standard_normal((1, 4, L, 64)).astype(np.float16)
    k = rng.standard_normal((1, 2, L, 64)).astype(np.float16)
    v = rng.standard_normal((1, 2, L, 64)).astype(np.float16)
    exact = ref.attention(q, k, v, causal=True)
    fp16 = simulate(q, k, v, load_method("fp16_flash"), causal=True).out
    e16 = np.linalg.norm(fp16 - exact) / np.linalg.norm(exact)
    errs = {}
    for bits in (4, 2):
        sp = load_method("kivi", kvcache__high_bits=bits, kvcache__low_bits=bits)
        out = simulate(q, k, v, sp, causal=True, kv_cache=True, trace=True)
        assert out.trace["compressed"][:127].max() == 0 and out.trace["compressed"][-1] == 256
        # rows before the first full residual read FP16 K/V only
        np.testing.assert_allclose(out.out[:, :, :127], fp16[:, :, :127], rtol=0, atol=1e-4)
        # a decode row over the cache reads the same K/V as that row of the causal run (equal up
        # to the f32 dots' summation order, which BLAS picks by the number of rows and threads:
        # up to ~1e-5 seen on a loaded 2-core machine; a different K/V code would move the
        # output by a quantization step, ~1e-2)
        dec = simulate(q[:, :, -1:], k, v, sp, causal=True, kv_cache=True).out
        np.testing.assert_allclose(dec[:, :, 0], out.out[:, :, -1], rtol=0, atol=5e-5)
        errs[bits] = np.linalg.norm(out.out - exact) / np.linalg.norm(exact)
        # the plain mode is KIVI's full-precision prefill
        np.testing.assert_array_equal(simulate(q, k, v, sp, causal=True).out, fp16)
    print(f"rel. error vs float64: fp16 {e16:.2e}, KIVI-4 {errs[4]:.3e}, KIVI-2 {errs[2]:.3e}")
    assert e16 < errs[4] < errs[2] < 0.5


def test_bytes_and_spec_checks():
    sp = load_method("kivi")
    # 4096 tokens, D = 128: codes 4096*64*2 + groups (128*128 K + 4096*4 V) * 4 B + residual
    want = 4096 * 64 * 2 + (128 * 128 + 4096 * 4) * 4 + 128 * 256 * 2
    assert kivi_cache_bytes(sp, 4096, 128) == want
    with pytest.raises(ValueError, match="kvcache.low_share"):
        load_method("kivi", kvcache__low_share=0.5)
    with pytest.raises(ValueError, match="kvcache.high_bits"):
        load_method("kivi", kvcache__high_bits=8)
