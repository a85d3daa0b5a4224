"""Same-precision torch baseline: ``scaled_dot_product_attention`` with :mod:`ref.attention`'s semantics.

This is the "plain FP16 (or FP32/BF16) attention" whose error against float64 bounds what a
quantized method may lose. Semantics match :func:`ref.attention`:

- GQA: kv heads are expanded with ``repeat_interleave(group, dim=1)``, so query head ``h`` reads
  kv head ``h // group``.
- Causal, bottom-right aligned: torch's ``is_causal=True`` is aligned top-left (row ``i`` sees
  ``j <= i``), which differs when ``Lq != Lk``. It is only used for ``Lq == Lk``; otherwise an
  explicit boolean mask ``j <= i + (Lk - Lq)`` is passed (``Lq x Lk`` bools).
- Rows that see no key are set to 0 explicitly after the call, chosen by the mask geometry
  (:func:`sim.checks.visible_key_count`), not by inspecting values. Backends disagree there:
  torch 2.13's CPU kernels and torch 2.11's CUDA math and efficient backends return 0, older
  math backends returned NaN, and torch 2.11's cuDNN backend (the CUDA default for fp16 on an
  H100) returned finite non-zero garbage for a fully masked row.

torch is imported when a function here is first called, not when ``ref`` is imported.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sim.checks import (check_qkv, check_sm_scale, from_hnd, resolve_causal, resolve_layout,
                        visible_key_count)

__all__ = ["sdpa", "SDPA_DTYPES"]

SDPA_DTYPES = ("fp32", "fp16", "bf16")


def _torch_dtype(torch, dtype: str):
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if not isinstance(dtype, str) or dtype not in table:
        raise ValueError(f"dtype must be one of {list(SDPA_DTYPES)}, got {dtype!r}")
    return table[dtype]


def sdpa(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: bool | None = None,
    sm_scale: float | None = None,
    dtype: str = "fp32",
    is_causal: bool | None = None,
    tensor_layout: str = "HND",
) -> Any:
    """Attention by ``torch.nn.functional.scaled_dot_product_attention`` in ``dtype``.

    Args:
        q, k, v: as for :func:`ref.attention` (``[B, Hq, Lq, D]``, ``[B, Hkv, Lk, D]``,
            ``[B, Hkv, Lk, Dv]``), numpy arrays or torch tensors of any float dtype. Each is
            rounded to ``dtype`` with ``Tensor.to``. numpy inputs run on the CPU; torch inputs run
            on ``q``'s device.
        causal: bottom-right aligned causal mask, as in :func:`ref.attention` (default False;
            ``is_causal`` is an alias).
        sm_scale: default ``1/sqrt(D)``; refused when the scores would overflow float32
            (:func:`sim.checks.check_sm_scale`).
        dtype: compute dtype, ``"fp32"``, ``"fp16"`` or ``"bf16"``. Inputs beyond its range
            (``|x| > 65504`` for fp16) are refused: they would round to Inf.
        tensor_layout: "HND" (``[B, H, L, D]``, default) or "NHD" (``[B, L, H, D]``) for the
            inputs and the output (a view).

    Returns:
        ``[B, Hq, Lq, Dv]`` float32 (an exact widening of the ``dtype`` result): a numpy array if
        ``q`` is a numpy array, a torch tensor on ``q``'s device if ``q`` is a torch tensor.
        Rows that see no key are 0.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((1, 4, 2, 8)); kv = rng.standard_normal((1, 2, 5, 8))
    >>> o = sdpa(q, kv, kv, causal=True, dtype="fp16")
    >>> o.dtype, o.shape
    (dtype('float32'), (1, 4, 2, 8))
    """
    import torch
    import torch.nn.functional as F

    q, k, v = resolve_layout(q, k, v, tensor_layout)
    shp = check_qkv(q, k, v)
    scale = check_sm_scale(sm_scale, shp.D, shp.absmax)
    causal = resolve_causal(causal, is_causal)
    tdt = _torch_dtype(torch, dtype)
    top = float(torch.finfo(tdt).max)
    for name, a in zip("qkv", shp.absmax):
        if a > top:
            raise ValueError(f"{name}: values up to {a:.4g} are beyond the {dtype} range "
                             f"(max {top:.6g}) and would round to Inf; expected |x| <= {top:.6g}")

    torch_in = isinstance(q, torch.Tensor)
    device = q.device if torch_in else torch.device("cpu")

    def to_torch(x):
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        return t.detach().to(device=device, dtype=tdt)

    qt, kt, vt = to_torch(q), to_torch(k), to_torch(v)
    if shp.group > 1:
        kt = kt.repeat_interleave(shp.group, dim=1)
        vt = vt.repeat_interleave(shp.group, dim=1)

    mask = None
    is_causal = False
    if causal and shp.Lq == shp.Lk:
        is_causal = True  # top-left == bottom-right for a square mask
    elif causal:
        i = torch.arange(shp.Lq, device=device)[:, None]
        j = torch.arange(shp.Lk, device=device)[None, :]
        mask = j <= i + (shp.Lk - shp.Lq)  # True = may attend

    with torch.no_grad():
        out = F.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=mask, is_causal=is_causal, scale=scale
        ).float()
    if causal and shp.Lq > shp.Lk:
        empty = torch.from_numpy(visible_key_count(np.arange(shp.Lq), shp.Lq, shp.Lk) == 0)
        out[:, :, empty.to(device)] = 0.0
    out = from_hnd(out, tensor_layout)
    return out if torch_in else out.cpu().numpy()
