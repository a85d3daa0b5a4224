"""Which forward runs (gpu.prefill.forward_kernel): the portable kernel under the interpreter and
on meta tensors unless asked, the Gluon kernel's launch options checked, the fused variants
refused where the Gluon kernel cannot run. No GPU needed."""
import pytest
import torch

import gpu
from gpu.prefill import forward_kernel, fused
from gpu.prefill_sm90 import DEFAULT_OPTIONS, unsupported
from sim import load_method
from tests.gpu.helpers import DEVICE, make_qkv


def test_fused_specs():
    assert fused(load_method("int8_flash_fast"))
    assert not fused(load_method("int8_flash")) and not fused(load_method("fp16_flash"))


def test_gluon_support():
    assert unsupported(load_method("int8_flash"), "float16") is None
    assert unsupported(load_method("fp16_flash"), "float16") is None
    assert "fp16" in unsupported(load_method("fp16_flash", operands__format="bf16"), "bfloat16")
    assert "block_n" in unsupported(load_method("int8_flash", tiling__block_n=32), "float16")


def test_meta_device_takes_the_launch_it_is_given():
    spec = load_method("int8_flash")
    meta = torch.device("meta")
    assert forward_kernel(spec, 128, "float16", meta) == ("triton", {})
    k, cfg = forward_kernel(spec, 128, "float16", meta,
                            {"kernel": "gluon", "num_stages": 3, "gluon": {"merged": True}})
    assert k == "gluon" and cfg == {"num_stages": 3, "gluon": {"merged": True}}
    with pytest.raises(ValueError, match="block_m"):
        forward_kernel(spec, 128, "float16", meta, {"kernel": "gluon", "block_m": 64})
    with pytest.raises(ValueError, match="pipe"):
        forward_kernel(spec, 128, "float16", meta, {"kernel": "gluon", "pipe": True})
    with pytest.raises(ValueError, match="kernel"):
        forward_kernel(spec, 128, "float16", meta, {"kernel": "cuda"})
    with pytest.raises(ValueError, match="gluon"):
        forward_kernel(spec, 128, "float16", meta, {"kernel": "triton", "gluon": {}})
    # the fused variant: only the Gluon kernel implements it
    fast = load_method("int8_flash_fast")
    with pytest.raises(ValueError, match="fused"):
        forward_kernel(fast, 128, "float16", meta, {"block_m": 64, "num_warps": 4,
                                                    "num_stages": 3})


def test_gluon_options_are_checked():
    from gpu.prefill_sm90 import _options
    assert _options(None) == DEFAULT_OPTIONS
    with pytest.raises(ValueError, match="mergd"):
        _options({"mergd": True})
    with pytest.raises(ValueError, match="bool"):
        _options({"merged": 1})


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's refusal")
def test_fused_variant_refused_under_the_interpreter():
    q, k, v = make_qkv(1, 2, 2, 17, 17, 64)
    with pytest.raises(ValueError, match="fused"):
        gpu.attention(q, k, v, method="int8_flash", spec="int8_flash_fast")
    with pytest.raises(ValueError, match="Hopper"):
        gpu.attention(q, k, v, method="int8_flash", launch={"kernel": "gluon"})
