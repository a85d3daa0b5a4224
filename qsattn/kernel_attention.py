"""The real-model attention hook backed by the Triton kernels (``gpu.attention``).

:class:`ref.hf_attention.SimAttention` runs a method through the CPU simulator; this subclass
runs the same spec as the prefill kernel on the model's device (a CUDA GPU, or CPU tensors
under ``TRITON_INTERPRET=1``). It lives in ``qsattn`` because ``ref`` must not import ``gpu``
(dependency direction ``sim <- ref <- gpu <- qsattn``).

The kernels take fp16/bf16 operands: q/k/v are cast to fp16 first, so the kernel computes
``sim.simulate`` of the fp16-rounded inputs (the tests compare exactly that). Methods without a
prefill kernel (turbo's KV-cache mode, double_sparse, fp8_flash) are refused here; the study
runs them on the simulator and says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ref.hf_attention import SimAttention


def kernel_supports(spec: Any, *, kv_cache: bool = False) -> bool:
    """True when ``gpu.attention`` has a prefill kernel for ``spec`` (without the KV-cache mode)."""
    import gpu

    return spec is not None and not kv_cache and spec.method in gpu.prefill_methods()


class KernelAttention(SimAttention):
    """``SimAttention`` whose method runs as the Triton prefill kernel on ``device``.

    Args: as :class:`SimAttention` (a spec is required), plus ``device`` for the kernel's
    tensors (default ``"cuda"``; ``"cpu"`` only under ``TRITON_INTERPRET=1``). Dense layers and
    references still run ``ref`` on the CPU, as in ``SimAttention``.
    """

    def __init__(self, spec: Any, *, device: str = "cuda", **kw: Any):
        super().__init__(spec, **kw)
        if not kernel_supports(self.spec, kv_cache=self.kv_cache):
            import gpu

            raise ValueError(f"spec: no prefill kernel for {self.spec.method!r}"
                             f"{' with kv_cache' if self.kv_cache else ''}; kernels exist for "
                             f"{sorted(gpu.prefill_methods())} without kv_cache")
        self.device = device

    @property
    def label(self) -> str:
        return super().label + " (Triton kernel)"

    def run(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool,
            sm_scale: float, layer: int | None) -> np.ndarray:
        if layer is not None and layer < self.dense_layers:
            return super().run(q, k, v, causal=causal, sm_scale=sm_scale, layer=layer)
        import torch

        import gpu

        def dev(x: np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float16)).to(self.device)

        out = gpu.attention(dev(q), dev(k), dev(v), method=self.spec.method, spec=self.spec,
                            causal=causal, sm_scale=sm_scale)
        return out.float().cpu().numpy()
