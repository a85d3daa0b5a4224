"""qsattn.hf: registered names through transformers' public API, use(), the method caches in
generate(), left padding, and no deprecation warnings. Runs on the transformers installed;
``python tools/transformers_versions.py`` runs it on the oldest and newest the pin allows."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import qsattn.hf as hf  # noqa: E402

N_LAYERS = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """2 layers, 4 query heads, 2 KV heads (GQA), head dim 16, random weights, saved so
    from_pretrained can load it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                      num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    x = torch.randint(3, 97, (2, 70), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        base = model(x).logits
    return model, path, x, base


def _greedy(model, ids, **kw):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)     # past_key_values deprecation etc.
        return hf.generate(model, ids, do_sample=False, max_new_tokens=4, pad_token_id=0, **kw)


def test_every_name_is_accepted_by_the_public_setters(tiny):
    from transformers import AutoModelForCausalLM

    model, path, x, base = tiny
    names = hf.names()
    assert "qsattn_int8_fa" in names and "qsattn_turbo_kvcache" in names
    assert not any("flash" in n for n in names)                # transformers' special case
    for name, d in names.items():
        model.set_attn_implementation(name)
        assert model.config._attn_implementation == name
        if d["executor"] == "sim":
            with torch.no_grad():
                out = model(x[:1, :20]).logits
            err = (out - base[:1, :20]).abs().max().item()
            print(f"{name}: max |dlogit| vs sdpa {err:.2e}")
            assert torch.isfinite(out).all() and err < 1.0
    m2 = AutoModelForCausalLM.from_pretrained(path, attn_implementation="qsattn_int8_fa").eval()
    assert m2.config._attn_implementation == "qsattn_int8_fa"
    with torch.no_grad():
        assert (m2(x[:1, :20]).logits - base[:1, :20]).abs().max().item() < 0.5


def test_use_returns_the_backend_with_options(tiny):
    model, _, x, base = tiny
    be = hf.use(model, "double_sparse", set={"sparse.token_fraction": 0.5}, dense_layers=1)
    assert hf.backend_of(model) is be and be.spec.sparse.token_fraction == 0.5
    with torch.no_grad():
        model(x[:1, :40])
    assert be.calls == N_LAYERS and 1 in be.info and 0 not in be.info
    ref = hf.use(model, "exact")
    with torch.no_grad():
        assert (model(x).logits - base).abs().max().item() < 1e-4
    assert ref.calls == N_LAYERS
    with pytest.raises(ValueError, match="method"):
        hf.use(model, "nope")
    with pytest.raises(ValueError, match="kv_cache"):
        hf.use(model, "int8_flash", kv_cache=True)
    with pytest.raises(TypeError, match="model"):
        hf.use(object(), "int8_flash")


def test_turbo_generates_through_its_progressive_cache(tiny):
    from sim.methods.turbo import cache_nbytes, head_bits

    model, _, x, _ = tiny
    be = hf.use(model, "turbo", kv_cache=True)
    cache = hf.make_cache(model)
    assert type(cache).__name__ == "TurboCache"
    out = _greedy(model, x[:1, :66], cache=cache)
    assert out.shape == (1, 70)
    st = cache.layers[0]
    assert st.state.length == 69 and st.calibration.source == "prompt"   # 66 + 3 fed back
    kb = cache.kv_bytes()
    actual = sum(layer.state.nbytes() for layer in cache.layers)
    assert kb["method"] == pytest.approx(actual) and kb["ratio"] > 1 and kb["tokens"] == 69
    bits = head_bits(be.spec.kvcache, st.calibration.priority)
    assert st.state.nbytes() == cache_nbytes(be.spec, bits, 69, 16)
    # the same generation through a plain cache with the prompt's head priority as calibration
    prio = {i: layer.calibration for i, layer in enumerate(cache.layers)}
    hf.use(model, "turbo", kv_cache=True, calibration=prio)
    from transformers import DynamicCache
    plain = _greedy(model, x[:1, :66], cache=DynamicCache(config=model.config))
    assert torch.equal(out, plain)


def test_double_sparse_generates_through_its_label_cache(tiny):
    from sim.methods import SIMULATORS
    from sim.methods.double_sparse import label_cache

    model, _, x, _ = tiny
    hf.use(model, "double_sparse", set={"sparse.token_fraction": 0.25})
    cache = hf.make_cache(model)
    assert type(cache).__name__ == "LabelCache"
    _greedy(model, x[:, :50], cache=cache)
    layer = cache.layers[1]
    k = layer.keys.float().numpy()
    ch = layer.calibration.channels(layer.spec.sparse.r(16))
    want = label_cache(k, ch, layer.spec.sparse.label_bits).values
    np.testing.assert_array_equal(layer.label_values(), want)   # grown == built on all of K
    kb = cache.kv_bytes()
    m = SIMULATORS.get("double_sparse")
    per_layer = 2 * m.kv_bytes(layer.spec, tokens=53, head_dim=16, kv_heads=2, mode=None,
                               calibration=None)
    assert kb["method"] == pytest.approx(N_LAYERS * per_layer)
    assert kb["method"] == pytest.approx(sum(lay.nbytes() for lay in cache.layers))


def test_left_padded_generation_equals_each_prompt_alone(tiny):
    model, _, x, _ = tiny
    hf.use(model, "int8_flash")
    ids = x[:, :30].clone()
    ids[0, :6] = 0
    am = torch.ones_like(ids)
    am[0, :6] = 0
    both = _greedy(model, ids, attention_mask=am)
    alone = _greedy(model, x[:1, 6:30])
    assert torch.equal(both[0, 30:], alone[0, 24:])
    assert torch.equal(both[1], _greedy(model, x[1:, :30])[0])


def test_refusals_name_the_reason(tiny):
    model, _, x, _ = tiny
    hf.use(model, "turbo", kv_cache=True)
    ids = x[:, :30].clone()
    am = torch.ones_like(ids)
    am[0, :6] = 0
    with pytest.raises(ValueError, match="left-padded"):
        _greedy(model, ids, attention_mask=am, cache=hf.make_cache(model))
    with pytest.raises(ValueError, match="beam search"):
        _greedy(model, x[:1, :20], num_beams=2, cache=hf.make_cache(model))
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="runs no qsattn attention"):
        hf.make_cache(model)


def test_plain_methods_get_a_dynamic_cache_and_no_warning(tiny):
    from transformers import DynamicCache

    model, _, x, _ = tiny
    model.set_attn_implementation("qsattn_fp16_fa")
    cache = hf.make_cache(model)
    assert type(cache) is DynamicCache
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = model(x[:1, :10], use_cache=True, **{hf.cache_keyword(model): cache})
    assert hf.output_cache(out) is cache and cache.get_seq_length() == 10


GPU_SCRIPT = r'''
import torch
from transformers import LlamaConfig, LlamaForCausalLM
import qsattn.hf as hf

torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=61, hidden_size=128, intermediate_size=96, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=64)
model = LlamaForCausalLM(cfg).eval()
x = torch.randint(0, 61, (1, 40), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    model.set_attn_implementation("sdpa")
    base = model(x).logits
    model.set_attn_implementation("qsattn_gpu_int8_fa")      # the registered default
    named = model(x).logits
    be = hf.use(model, "int8_flash", executor="gpu")
    used = model(x).logits
assert be.calls == 1 and torch.equal(named, used), (be.calls,)
err = (used - base).abs().max().item()
print("gpu executor int8_flash vs sdpa: max |dlogit|", err)
assert err < 0.1, err
try:
    hf.use(model, "double_sparse", executor="gpu")
except ValueError as e:
    assert "no prefill kernel" in str(e), e
else:
    raise AssertionError("double_sparse has no prefill kernel: expected a ValueError")
'''


@pytest.mark.slow
def test_gpu_executor_runs_the_triton_kernel_under_the_interpreter():
    """executor='gpu' and the qsattn_gpu_* names run gpu.attention (here on the CPU through
    TRITON_INTERPRET=1, set before triton is imported: a fresh interpreter)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", GPU_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=900, cwd=Path(__file__).resolve().parents[2])
    print(r.stdout)
    assert r.returncode == 0, r.stderr[-3000:]
