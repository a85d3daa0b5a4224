"""int8_flash, the kernel path: the Q/K/V INT8 quantization kernels, then the integer forward of
``gpu.kernels.flash_fwd`` (INT8 dots, INT8 P). No decode kernel."""
from __future__ import annotations

from ..common import quantize_qkv
from ..prefill import check_integer_spec, launch_prefill
from .base import KernelPath


def integer_prefill(q, k, v, spec, *, causal, sm_scale, launch, trace):
    """Quantize, then the integer forward; with ``trace`` the codes and scales join the trace
    (``[B, H, L, D]`` codes, float32 ``[B, H, n_groups]`` scales)."""
    qq, kq, vq = quantize_qkv(q, k, v, spec, check=False)
    res = launch_prefill(qq, kq, vq, spec, causal=causal, sm_scale=sm_scale, out_dtype=q.dtype,
                         trace=trace, launch=launch)
    if not trace:
        return res
    out, tr = res
    for name, x in (("q", qq), ("k", kq), ("v", vq)):
        tr[f"{name}_codes"] = x.codes_bhld().contiguous()
        tr[f"{name}_scale"] = x.scale
    return out, tr


PATH = KernelPath("int8_flash", check_spec=check_integer_spec, prefill=integer_prefill)
