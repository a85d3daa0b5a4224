"""Exact attention references.

- :func:`attention` — float64 numpy ground truth (stable softmax, blockwise so long sequences
  never hold an ``Lq x Lk`` matrix), optionally with the per-row log-sum-exp (``return_lse``).
- :func:`sdpa` — the same attention through ``torch.nn.functional.scaled_dot_product_attention``
  in fp32, fp16 or bf16: the same-precision baseline approximate methods are judged against.
  torch is imported on first call, so ``import ref`` stays light.

Shared semantics (defined in :mod:`sim.checks`, which also validates the inputs):

- layout ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]``, ``v [B, Hkv, Lk, Dv]``;
- GQA: query head ``h`` reads kv head ``h // (Hq // Hkv)``;
- ``sm_scale`` defaults to ``1/sqrt(D)``;
- causal masks are bottom-right aligned: row ``i`` sees keys ``j <= i + (Lk - Lq)``
  (decode, ``Lq = 1``, sees every key);
- a row that sees no key (causal with ``Lq > Lk``) outputs zeros; its lse is ``-inf``.

Example::

    import numpy as np
    import ref

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 8, 17, 64)).astype(np.float16)   # 8 query heads
    k = rng.standard_normal((1, 2, 97, 64)).astype(np.float16)   # 2 kv heads (GQA)
    v = rng.standard_normal((1, 2, 97, 64)).astype(np.float16)
    exact, lse = ref.attention(q, k, v, causal=True, return_lse=True)  # float64
    fp16 = ref.sdpa(q, k, v, causal=True, dtype="fp16")                # float32 numpy
    err = np.abs(fp16 - exact).max()
"""
from ref.attention import attention
from ref.torch_sdpa import SDPA_DTYPES, sdpa

__all__ = ["attention", "sdpa", "SDPA_DTYPES"]
