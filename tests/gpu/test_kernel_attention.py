"""qsattn.kernel_attention: the real-model hook on the Triton kernels (interpreter on CPU).

The hook casts q/k/v to fp16 for the kernel, so it must equal ``sim.simulate`` of the
fp16-rounded inputs: outputs within 2 fp16 ulp (the kernels' stated bound where P codes agree).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qsattn.kernel_attention import KernelAttention, kernel_supports  # noqa: E402
from ref.hf_attention import SimAttention, register  # noqa: E402
from sim import load_method, simulate  # noqa: E402
from tests.gpu.helpers import DEVICE  # noqa: E402  (cpu under the interpreter, cuda on a GPU)


@pytest.fixture(scope="module")
def llama64():
    """1 layer, 2 query heads, 1 KV head (GQA), head dim 64 (a kernel head dim), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=61, hidden_size=128, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                      max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 61, (1, 37), generator=torch.Generator().manual_seed(1))
    cap = SimAttention(reference="fp32", capture_layers=[0])
    model.config._attn_implementation = register("t_capture64", cap)
    with torch.no_grad():
        model(x)
    return model, x, cap.captured[0]


@pytest.mark.parametrize("method", ["fp16_flash", "int8_flash", "turbo"])
def test_kernel_hook_equals_simulator_on_fp16_inputs(llama64, method):
    _, _, qkv = llama64
    q, k, v = (qkv[n].astype(np.float16) for n in ("q", "k", "v"))
    spec = load_method(method)
    got = KernelAttention(spec, device=DEVICE).run(q, k, v, causal=True, sm_scale=0.125, layer=0)
    want = simulate(q, k, v, spec, causal=True, sm_scale=0.125).out
    ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32)
    err_ulp = float((np.abs(got - want) / ulp).max())
    print(f"{method}: max |kernel - sim| = {err_ulp:.2f} fp16 ulp")
    assert got.shape == want.shape and got.dtype == np.float32
    assert err_ulp <= 2.0


def test_kernel_hook_runs_inside_the_model(llama64):
    model, x, _ = llama64
    be = KernelAttention(load_method("int8_flash"), device=DEVICE)
    model.config._attn_implementation = register("t_kernel_int8", be)
    with torch.no_grad():
        got = model(x).logits
    sim_be = SimAttention(load_method("int8_flash"))
    model.config._attn_implementation = register("t_sim_int8", sim_be)
    with torch.no_grad():
        want = model(x).logits
    err = (got - want).abs().max().item()
    print(f"int8_flash logits, kernel vs simulator (fp32 inputs): max |d| = {err:.3e}")
    assert be.calls == 1 and be.label.endswith("(Triton kernel)")
    # The kernel quantizes fp16-rounded inputs, the simulator the fp32 ones: close, not equal.
    assert err < 5e-2


def test_methods_without_a_prefill_kernel_are_refused():
    assert kernel_supports(load_method("int8_flash"))
    assert not kernel_supports(load_method("turbo"), kv_cache=True)
    with pytest.raises(ValueError, match="no prefill kernel for 'double_sparse'"):
        KernelAttention(load_method("double_sparse"))
    with pytest.raises(ValueError, match="with kv_cache"):
        KernelAttention(load_method("turbo"), kv_cache=True)


def test_study_executor_is_checked_before_work(monkeypatch):
    from qsattn.model import _check_executor, build_variants, load_config

    variants = build_variants(load_config(quick=True))
    with pytest.raises(ValueError, match="--executor: expected one of"):
        _check_executor("tpu", variants)
    assert _check_executor("sim", variants) == ("sim", frozenset())
    # under the interpreter the kernels run on CPU tensors: every variant with a kernel is chosen
    _, chosen = _check_executor("gpu", variants)
    want = {v.id for v in variants if v.spec is not None and not v.kv_cache
            and v.spec.method in ("fp16_flash", "int8_flash", "turbo")}
    assert chosen == want and chosen
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            _check_executor("gpu", variants)
