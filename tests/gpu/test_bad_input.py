"""Bad input raises a clear error before any kernel launch."""
import pytest

import gpu
from sim import load_method
from tests.gpu.helpers import make_qkv


def _qkv(**kw):
    args = dict(B=1, Hq=2, Hkv=2, Lq=17, Lk=17, D=64)
    args.update(kw)
    return make_qkv(**args)


def test_non_contiguous():
    """Only the last dimension must be packed: other strides reach the kernels as they are."""
    q, k, v = _qkv()
    strided = q.transpose(1, 2).contiguous().transpose(1, 2)     # [B, H, L, D] view of NHD
    assert not strided.is_contiguous()
    assert (gpu.attention(strided, k, v) == gpu.attention(q, k, v)).all()
    wide, _, _ = _qkv(D=128)
    with pytest.raises(ValueError, match="q: expected the last dimension contiguous"):
        gpu.attention(wide[..., ::2], k, v)


def test_wrong_dtype():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="dtype"):
        gpu.attention(q.float(), k.float(), v.float())
    with pytest.raises(TypeError, match="share one dtype"):
        gpu.attention(q, k.bfloat16(), v)


def test_not_a_tensor():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="q: expected a torch.Tensor"):
        gpu.attention(q.cpu().numpy(), k, v)


def test_cpu_outside_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = (x.cpu() for x in _qkv())
    with pytest.raises(ValueError, match="expected a CUDA tensor"):
        gpu.attention(q, k, v)


def test_unsupported_head_dim():
    q, k, v = _qkv(D=96)
    with pytest.raises(ValueError, match="head dim D=96"):
        gpu.attention(q, k, v)


def test_gqa_divisibility():
    q, k, v = _qkv(Hq=3, Hkv=2)
    with pytest.raises(ValueError, match="multiple of k's Hkv"):
        gpu.attention(q, k, v)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite(bad):
    q, k, v = _qkv()
    v = v.clone()
    v[0, 1, 3, 5] = bad
    with pytest.raises(ValueError, match="v has 1 non-finite"):
        gpu.attention(q, k, v, method="turbo")


def test_bad_method_and_spec():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="method: expected one of"):
        gpu.attention(q, k, v, method="double_sparse")
    with pytest.raises(ValueError, match="describes 'turbo'"):
        gpu.attention(q, k, v, method="int8_flash", spec=load_method("turbo"))
    with pytest.raises(TypeError, match="causal: expected a bool"):
        gpu.attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="is_causal: an alias of causal"):
        gpu.attention(q, k, v, causal=True, is_causal=False)
    with pytest.raises(ValueError, match="sm_scale"):
        gpu.attention(q, k, v, sm_scale=-1.0)


@pytest.mark.parametrize("overrides,match", [
    ({"v__granularity": "per_token"}, "spec.v.granularity"),
    ({"q__bits": 4}, "symmetric INT8"),
    ({"v__granularity": "per_block", "v__block_tokens": 96}, "multiple of tiling.block_n"),
    ({"tiling__block_n": 256}, "block_n"),
    ({"p__levels": 200, "p__saturate": True}, "levels must be <= 127"),
])
def test_unsupported_spec(overrides, match):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=match):
        gpu.attention(q, k, v, method="int8_flash", spec=load_method("int8_flash", **overrides))


def test_import_gpu_is_light():
    import subprocess
    import sys
    code = "import sys, gpu; print('triton' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("overrides,field", [
    ({"sparse__selection": "exact"}, "spec.sparse.selection"),
    ({"sparse__selection": "recent"}, "spec.sparse.selection"),
    ({"sparse__label_scope": "q_head"}, "spec.sparse.label_scope"),
    ({"sparse__q_label_bits": 4}, "spec.sparse.q_label_bits"),
])
def test_double_sparse_protocol_options_the_kernels_lack(overrides, field):
    """The simulator's Double Sparsity protocol options the decode kernels do not implement are
    refused by name, never run as label selection."""
    from gpu.api import resolve
    with pytest.raises(ValueError, match=field):
        resolve("double_sparse", load_method("double_sparse", **overrides), phase="decode")
    assert resolve("double_sparse", load_method("double_sparse", sparse__short_rows="dense",
                                                sparse__token_budget=16), phase="decode")
