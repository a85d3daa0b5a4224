"""ref.hf_attention: qsattn attention inside a (tiny, random) transformers Llama."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ref  # noqa: E402
from ref.hf_attention import SimAttention, check_head_dim, register, registered_name  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    """2 layers, 4 query heads, 2 KV heads (GQA), head dim 16, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 97, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        base = model(x).logits
    return model, x, base


def _logits(model, x, name, backend, **kw):
    model.config._attn_implementation = register(name, backend)
    with torch.no_grad():
        return model(x, **kw).logits


def test_exact_reference_matches_transformers_sdpa(tiny):
    model, x, base = tiny
    be = SimAttention(reference="exact")
    out = _logits(model, x, "t_exact", be)
    err = (out - base).abs().max().item()
    print(f"exact vs transformers sdpa fp32: max |dlogit| = {err:.3e}")
    assert be.calls == 2  # one call per layer, so the function really ran
    assert err < 1e-4


def test_registration_names_both_interfaces(tiny):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = register("t_names", SimAttention(reference="fp32"))
    assert name == "qsattn_t_names" == registered_name("t_names")
    assert name in AttentionInterface._global_mapping
    assert name in AttentionMaskInterface._global_mapping
    with pytest.raises(ValueError, match="name"):
        registered_name("bad name!")
    with pytest.raises(TypeError, match="backend"):
        register("t_bad", 3)


def test_causal_mask_is_applied(tiny):
    """Changing a later token must not change earlier logits (mask honoured, not dropped)."""
    model, x, _ = tiny
    be = SimAttention("fp16_flash")
    a = _logits(model, x, "t_causal", be)
    y = x.clone()
    y[:, 30:] = (y[:, 30:] + 1) % 97
    b = _logits(model, y, "t_causal", be)
    assert torch.equal(a[:, :30], b[:, :30])
    assert not torch.equal(a[:, 30:], b[:, 30:])


def test_simulated_methods_are_close_to_exact(tiny):
    model, x, base = tiny
    errs = {}
    for name, kw in [("fp16_flash", {}), ("int8_flash", {}), ("turbo", {"kv_cache": True}),
                     ("double_sparse", {})]:
        be = SimAttention(name, **kw)
        errs[name] = (_logits(model, x, "t_" + name, be) - base).abs().max().item()
    print("max |dlogit| vs fp32 sdpa:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert errs["fp16_flash"] < 1e-3
    assert errs["fp16_flash"] < errs["int8_flash"] < 0.5
    assert all(np.isfinite(v) for v in errs.values())


def test_decode_with_cache_matches_full_forward(tiny):
    """Prefill + cached decode (Lq < Lk, a materialised bottom-right mask) equals one pass."""
    model, x, base = tiny
    name = register("t_cache", SimAttention(reference="exact"))
    model.config._attn_implementation = name
    import inspect
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        pre = model(x[:, :25], use_cache=True)
        dec = model(x[:, 25:], use_cache=True, **{key: pre[key]})
    err = (torch.cat([pre.logits, dec.logits], 1) - base).abs().max().item()
    assert err < 1e-4


def test_layer_routing_capture_and_dense_layers(tiny):
    model, x, _ = tiny
    be = SimAttention("double_sparse", dense_layers=1, capture_layers=[0, 1])
    _logits(model, x[:1], "t_dense", be)
    assert set(be.captured) == {0, 1}
    c = be.captured[0]
    assert c["q"].shape == (1, 4, 37, 16) and c["k"].shape == (1, 2, 37, 16)
    assert c["q"].dtype == np.float32
    # layer 0 is dense: exactly the fp16 reference; layer 1 ran Double Sparsity (info recorded)
    o0 = be.run(c["q"], c["k"], c["v"], causal=True, sm_scale=0.25, layer=0)
    r0 = ref.sdpa(c["q"], c["k"], c["v"], causal=True, sm_scale=0.25, dtype="fp16")
    np.testing.assert_array_equal(o0, r0)
    assert 0 not in be.info and 1 in be.info


def test_calibration_per_layer_is_used_and_required(tiny):
    from sim.methods.double_sparse import calibrate

    model, x, _ = tiny
    cap = SimAttention(reference="fp32", capture_layers=[0, 1])
    _logits(model, x[:1], "t_cap", cap)
    cal = {i: calibrate(c["q"], c["k"], "qk", source="test") for i, c in cap.captured.items()}
    be = SimAttention("double_sparse", calibration=cal)
    _logits(model, x[:1], "t_cal", be)
    assert be.info[1]["calibration"] == "test"
    missing = SimAttention("double_sparse", calibration={0: cal[0]})
    with pytest.raises(ValueError, match="layer 1"):
        _logits(model, x[:1], "t_cal_missing", missing)


def test_bad_arguments_and_masks(tiny):
    model, x, _ = tiny
    with pytest.raises(ValueError, match="exactly one"):
        SimAttention("fp16_flash", reference="exact")
    with pytest.raises(ValueError, match="reference"):
        SimAttention(reference="fp64")
    with pytest.raises(ValueError, match="kv_cache"):
        SimAttention("int8_flash", kv_cache=True)
    with pytest.raises(ValueError, match="calibration"):
        SimAttention("fp16_flash", calibration={})
    # right padding is a mask the executors cannot run: refused, never silently dropped
    model.set_attn_implementation(register("t_pad", SimAttention(reference="exact")))
    am = torch.ones(2, 37, dtype=torch.long)
    am[0, -5:] = 0
    with pytest.raises(ValueError, match="left padding"), torch.no_grad():
        model(x, attention_mask=am)
    # so is a KV-cache mode on a left-padded batch (padding would enter its blocks)
    model.set_attn_implementation(register("t_pad_kv", SimAttention("turbo", kv_cache=True)))
    am = torch.ones(2, 37, dtype=torch.long)
    am[0, :5] = 0
    with pytest.raises(ValueError, match="left-padded"), torch.no_grad():
        model(x, attention_mask=am)


@pytest.mark.parametrize("method", ["exact", "int8_flash"])
def test_left_padded_batch_equals_each_sequence_alone(tiny, method):
    """Row 0 padded by 5 on the left gives, at its real tokens, the logits of its 32 tokens run
    alone (positions from the mask); row 1 (no padding) those of a plain run; pad rows are
    finite."""
    model, x, _ = tiny
    be = SimAttention(reference="exact") if method == "exact" else SimAttention(method)
    model.set_attn_implementation(register("t_left_" + method, be))
    am = torch.ones(2, 37, dtype=torch.long)
    am[0, :5] = 0
    pos = (am.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        both = model(x, attention_mask=am, position_ids=pos).logits
        alone0 = model(x[:1, 5:]).logits
        alone1 = model(x[1:]).logits
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[0, 5:], alone0[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1], alone1[0], rtol=0, atol=1e-5)


def test_check_head_dim():
    check_head_dim("fp16_flash", 64)
    from sim import load_method

    spec = load_method("double_sparse", **{"sparse.label_channels": 32})
    with pytest.raises(ValueError, match="head dim 16"):
        check_head_dim(spec, 16)
