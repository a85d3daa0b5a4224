"""Triton kernels (only ``@triton.jit`` code; launchers live in :mod:`gpu.ops`).

- :mod:`.rounding` — float -> integer rounding modes of ``sim.numerics.round_to_int``.
- :mod:`.quant` — per-token / per-block / per-head symmetric INT8 quantization of Q, K, V.
- :mod:`.sas` — TurboAttention's SAS exponential (threshold, LUT x fp16 Horner) and its rescale.
- :mod:`.flash_fwd` — the prefill forward for fp16_flash, int8_flash and turbo.

Importing this package imports triton; :mod:`gpu` imports it only when a kernel is launched.
"""
