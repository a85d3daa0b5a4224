"""Decode machinery shared by the methods' decode paths: the split-K launch choice, the query
checks, the growable dense K/V store, and the split-K flash-decode over all keys or over gathered
slots (``gpu.kernels.decode``'s flash_decode kernels + combine). Knows no method by name.
"""
from __future__ import annotations

import functools

from sim.engine import qk_scale_of

from .common import (capacity, cdiv, check_inputs, check_tensors, grow, interpreting, kernels,
                     torch_module)

__all__ = ["default_decode_launch", "decode_launch", "check_query", "check_new", "DecodeCache",
           "DenseKV", "flash_decode", "sm_count"]


def sm_count() -> int:
    """Multiprocessors of the current device (4 under the interpreter); cached per device."""
    if interpreting():
        return 4
    torch = torch_module()
    return _sm_count(torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _sm_count(device: int) -> int:
    return torch_module().cuda.get_device_properties(device).multi_processor_count


def default_decode_launch(n_tiles: int, programs: int, per_sm: int = 4) -> dict:
    """Splits of the key tiles so that about ``per_sm`` programs per SM run (``splits``),
    warps, stages. ``launch={"per_sm": 8}`` (or an explicit ``splits``) overrides it."""
    target = per_sm * sm_count()
    splits = max(1, min(n_tiles, -(-target // max(programs, 1))))
    return {"splits": splits, "num_warps": 4, "num_stages": 1 if interpreting() else 3}


def decode_launch(n_tiles: int, programs: int, launch: dict | None) -> dict:
    """:func:`default_decode_launch` updated by the caller's ``launch`` dict."""
    launch = dict(launch or {})
    cfg = default_decode_launch(n_tiles, programs, int(launch.pop("per_sm", 4)))
    cfg.update(launch)
    return cfg


def check_query(q, cache, check_finite: bool = True) -> int:
    """``q`` ``[B, Hq, 1, D]`` against ``cache`` (its dtype, device, B, D, a multiple of its Hkv
    heads); returns Hq. ``check_finite`` costs a device reduction and a device-to-host sync."""
    check_tensors({"q": q})
    if q.ndim != 4:
        raise ValueError(f"q: expected [B, Hq, 1, D], got shape {tuple(q.shape)}")
    if q.shape[2] != 1:
        raise ValueError(f"q: decode takes one query row per head (q_len 1), got q_len "
                         f"{q.shape[2]}; use gpu.attention for prefill")
    if cache.length < 1:
        raise ValueError("cache: empty (length 0); decode needs at least one key")
    if q.dtype != cache.dtype:
        raise TypeError(f"q: expected dtype {cache.dtype} like the cache, got {q.dtype}")
    if q.device != cache.device:
        raise ValueError(f"q: expected device {cache.device} like the cache, got {q.device}")
    if q.shape[0] != cache.B or q.shape[3] != cache.D:
        raise ValueError(f"q: expected [B={cache.B}, Hq, 1, D={cache.D}], got {tuple(q.shape)}")
    if q.shape[1] % cache.Hkv:
        raise ValueError(f"q: Hq={q.shape[1]} must be a multiple of the cache's Hkv={cache.Hkv}")
    if check_finite and not bool(torch_module().isfinite(q).all()):
        raise ValueError("q: contains NaN or Inf")
    return q.shape[1]


def check_new(cache, k_new, v_new, dtypes):
    """New tokens ``[B, Hkv, n, D]`` for ``cache``: same B, Hkv, D, dtype and device; returns n.
    Shapes and types only (no device-to-host sync): values are :meth:`DecodeCache.append`'s."""
    shp = check_inputs(k_new, k_new, v_new, False, dtypes=dtypes,
                       names=("k_new", "k_new", "v_new"))
    if (shp.B, shp.Hkv, shp.D) != (cache.B, cache.Hkv, cache.D):
        raise ValueError(f"k_new: expected [B={cache.B}, Hkv={cache.Hkv}, n, D={cache.D}], got "
                         f"{tuple(k_new.shape)}")
    if k_new.dtype != cache.dtype:
        raise TypeError(f"k_new: expected dtype {cache.dtype} like the cache, got {k_new.dtype}")
    if k_new.device != cache.device:
        raise ValueError(f"k_new: expected device {cache.device}, got {k_new.device}")
    return shp.Lk


class DecodeCache:
    """Base of the methods' decode caches: ``spec``, ``B``, ``Hkv``, ``D``, ``dtype``, ``device``,
    ``length``; :meth:`append` checks the new tokens (``dtypes``), then the method's ``_append``.

    Appends are transactional: every check runs before the first write, so a refused append
    leaves the cache exactly as it was."""

    dtypes = ("float16", "bfloat16")

    def append(self, k_new, v_new, check_finite: bool = True):
        """Append ``[B, Hkv, n, D]`` tokens (decode growth); returns the cache.

        ``check_finite`` (default): refuse NaN/Inf tokens, and values the method cannot store
        (e.g. an INT8 scale beyond its dtype), with one device reduction and one
        device-to-host sync before anything is written. ``check_finite=False`` skips that sync
        (a decode loop whose tokens are known to be finite, or a CUDA graph); such inputs then
        give undefined (but memory-safe) cache contents."""
        check_new(self, k_new, v_new, self.dtypes)
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite: expected a bool, got {type(check_finite).__name__}")
        self._append(k_new, v_new, check_finite)
        return self

    def _check_values(self, k_new, v_new) -> None:
        """Refuse NaN/Inf new tokens (one device reduction, one sync)."""
        torch = torch_module()
        ok_k, ok_v = torch.stack([torch.isfinite(k_new).all(),
                                  torch.isfinite(v_new).all()]).tolist()     # one sync
        for ok, name in ((ok_k, "k_new"), (ok_v, "v_new")):
            if not ok:
                raise ValueError(f"{name}: expected finite values, got NaN or Inf")

    def _append(self, k_new, v_new, check: bool) -> None:  # pragma: no cover - every cache has one
        """Every check (``check``: :meth:`_check_values`) before the first write."""
        raise NotImplementedError


class DenseKV(DecodeCache):
    """FP16/BF16 K and V ``[B, Hkv, capacity, D]`` of which ``length`` tokens are valid."""

    def _init_dense(self, k, v):
        B, Hkv, L, D = k.shape
        self.B, self.Hkv, self.D, self.dtype, self.device = B, Hkv, D, k.dtype, k.device
        cap = capacity(L, 0, 64)
        self._k = grow(k, 2, cap)
        self._v = grow(v, 2, cap)
        self.length = L

    def _append(self, k_new, v_new, check: bool) -> None:
        if check:
            self._check_values(k_new, v_new)
        n = k_new.shape[2]
        if self.length + n > self._k.shape[2]:
            cap = capacity(self.length + n, self._k.shape[2], 64)
            self._k, self._v = grow(self._k, 2, cap), grow(self._v, 2, cap)
        self._k[:, :, self.length:self.length + n].copy_(k_new)
        self._v[:, :, self.length:self.length + n].copy_(v_new)
        self.length += n

    @property
    def k(self):
        return self._k[:, :, :self.length]

    @property
    def v(self):
        return self._v[:, :, :self.length]


def flash_decode(q, k, v, idx, count: int, sm: float, bn: int, launch: dict | None):
    """Split-K flash-decode of q over ``count`` slots (``idx`` [B*Hq, count] int32 or None)."""
    torch = torch_module()
    kd = kernels("decode")
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    dev = q.device
    launch = dict(launch or {})
    gather = idx is not None
    # grouped: the G query heads of a KV head share one program (K/V read once per KV head,
    # tensor-core dots over G rows padded to 16). Not with gather: each query head has its own
    # selection, so its K/V rows differ. Default for every G: on H100 (reports/bench/decode_gqa.md)
    # it was faster also at G = 1 (1.56 vs 1.70 ms, B=8 H=32 D=128 L=32K).
    grouped = bool(launch.pop("grouped", True)) and not gather
    # gather: tensor-core dots and pipelined gathers (default), or CUDA-core products
    launch_gather_dot = bool(launch.pop("gather_dot", True))
    nt = cdiv(count, bn)
    cfg = decode_launch(nt, B * (Hkv if grouped else Hq), launch)
    splits = int(cfg["splits"])
    sps = cdiv(nt, splits) * bn
    splits = cdiv(count, sps)
    m = torch.empty((B * Hq, splits), dtype=torch.float32, device=dev)
    ls = torch.empty((B * Hq, splits), dtype=torch.float32, device=dev)
    acc = torch.empty((B * Hq, splits, D), dtype=torch.float32, device=dev)
    qk = float(qk_scale_of(sm))
    warps, stages = int(cfg["num_warps"]), int(cfg["num_stages"])
    if grouped:
        kd.flash_decode_group_kernel[(splits, B * Hkv)](
            q, k, v, m, ls, acc, qk, Hq, Hkv, G, count, splits, sps,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            D=D, BN=bn, BG=max(16, 1 << (G - 1).bit_length()),
            P_BF16=q.dtype == torch.bfloat16, DOT_F32=interpreting(),
            num_warps=warps, num_stages=stages, enable_fp_fusion=False)
    elif gather and launch_gather_dot:
        kd.flash_decode_gather_kernel[(splits, B * Hq)](
            q, k, v, idx, m, ls, acc, qk, Hq, G, count, splits, sps,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), idx.stride(0),
            D=D, BN=bn, P_BF16=q.dtype == torch.bfloat16, DOT_F32=interpreting(),
            num_warps=warps, num_stages=stages, enable_fp_fusion=False)
    else:
        cnt = torch.full((B * Hq,), count, dtype=torch.int32, device=dev)
        ix = idx if gather else cnt
        kd.flash_decode_kernel[(splits, B * Hq)](
            q, k, v, ix, cnt, m, ls, acc, qk, Hq, G, splits, sps,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), ix.stride(0) if gather else 0,
            D=D, BN=bn, GATHER=gather, P_BF16=q.dtype == torch.bfloat16,
            num_warps=warps, num_stages=stages, enable_fp_fusion=False)
    out = torch.empty((B, Hq, 1, D), dtype=q.dtype, device=dev)
    kd.flash_combine_kernel[(B * Hq,)](m, ls, acc, out, splits, out.stride(0), out.stride(1), Hq,
                                       D=D, SPLIT_P2=max(2, 1 << (splits - 1).bit_length()),
                                       num_warps=1, enable_fp_fusion=False)
    return out
