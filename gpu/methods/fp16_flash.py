"""fp16_flash, the kernel path: FlashAttention-2 forward (``gpu.kernels.flash_fwd`` on float
operands) for prefill; a plain FP16/BF16 cache and the grouped split-K flash-decode (the G query
heads of a KV head in one program, K/V read once per KV head, tensor-core dots) for decode."""
from __future__ import annotations

from ..decoding import DenseKV, flash_decode
from ..prefill import check_float_spec, launch_prefill
from .base import KernelPath


def _spec_for_dtype(spec, dtype):
    if str(dtype).endswith("bfloat16") and spec.operands.format == "fp16":
        return spec.replace(operands__format="bf16")
    return spec


def _prefill(q, k, v, spec, *, causal, sm_scale, launch, trace):
    return launch_prefill(None, None, None, spec, causal=causal, sm_scale=sm_scale,
                          out_dtype=q.dtype, q=q, k=k, v=v, trace=trace, launch=launch)


class FP16Cache(DenseKV):
    """Plain FP16/BF16 KV cache (the decode baseline)."""

    method = "fp16_flash"

    def __init__(self, k, v, spec):
        self.spec = spec
        self._init_dense(k, v)

    def nbytes(self) -> int:
        return 2 * self.B * self.Hkv * self.length * self.D * self._k.element_size()


def _cache(k, v, spec, calibration):
    if calibration is not None:
        raise ValueError("calibration: fp16_flash takes none")
    return FP16Cache(k, v, spec)


def _decode(q, cache, sm_scale, launch, trace):
    out = flash_decode(q, cache.k, cache.v, None, cache.length, sm_scale,
                       cache.spec.tiling.block_n, launch)
    return (out, {}) if trace else out


PATH = KernelPath("fp16_flash", check_spec=check_float_spec, prefill=_prefill,
                  spec_for_dtype=_spec_for_dtype, cache=_cache, decode=_decode)
