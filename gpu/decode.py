"""Decode launcher: one query row per head against a cache from :func:`gpu.build_cache`.

    out = gpu.decode(q, cache)                 # q [B, Hq, 1, D] -> [B, Hq, 1, D] in q's dtype

- turbo: Q quantized by the prefill's INT8 kernel (``spec.q``), then the two-pass split-K of
  :mod:`gpu.kernels.decode` (scores, then SAS / PQUANT / int8 PV per split, then an in-order
  combine). S_int, P codes and O_int equal ``sim.simulate(q, k, v, spec, kv_cache=True)``'s tile
  walk exactly; the output differs only by f32 rounding of the regrouped recurrence (split count
  > 1) and rowsum order.
- double_sparse: label-score kernel (f32 approximate scores and int64 selection keys), then
  ``torch.topk`` on the keys (no two keys are equal, so the selection is the simulator's: best
  score first, ties to the lower index; sink/recent tokens forced), ``torch.sort`` of the chosen
  indices (ascending, as the contract walks them), then the split-K flash-decode gathering the
  selected rows inside the kernel.
- fp16_flash: split-K flash-decode over all keys with the G = Hq / Hkv query heads of a KV
  head in one program (K/V read once per KV head, tensor-core dots);
  ``launch={"grouped": False}`` runs the per-query-head kernel instead.

``decode_trace`` returns the intermediates for validation.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sim.checks import check_sm_scale
from sim.simulate import qk_scale_of

from .cache import DoubleSparseCache, FP16Cache, TurboKVCache
from .ops import (ROUNDING_IDS, _check_tensors, _kernels, _sas_constants, _torch,
                  interpreting, quantize_operand, triton_cdiv)

__all__ = ["decode", "decode_trace", "decode_unchecked", "default_decode_launch"]


def _decode_kernels():
    _kernels()
    from .kernels import decode as kd
    from .kernels import labels as kl
    return kd, kl


def _sm_count() -> int:
    if interpreting():
        return 4
    torch = _torch()
    return torch.cuda.get_device_properties(0).multi_processor_count


def default_decode_launch(n_tiles: int, programs: int, per_sm: int = 4) -> dict:
    """Splits of the key tiles so that about ``per_sm`` programs per SM run (``splits``),
    warps, stages. ``launch={"per_sm": 8}`` (or an explicit ``splits``) overrides it."""
    target = per_sm * _sm_count()
    splits = max(1, min(n_tiles, -(-target // max(programs, 1))))
    return {"splits": splits, "num_warps": 4, "num_stages": 1 if interpreting() else 3}


def _launch(n_tiles: int, programs: int, launch: dict | None) -> dict:
    launch = dict(launch or {})
    cfg = default_decode_launch(n_tiles, programs, int(launch.pop("per_sm", 4)))
    cfg.update(launch)
    return cfg


def _check_q(q, cache):
    if not isinstance(cache, (TurboKVCache, DoubleSparseCache, FP16Cache)):
        raise TypeError(f"cache: expected a cache from gpu.build_cache, got {type(cache).__name__}")
    _check_tensors({"q": q})
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
    if not bool(_torch().isfinite(q).all()):
        raise ValueError("q: contains NaN or Inf")
    return q.shape[1]


# ---------------------------------------------------------------------------------------------
# turbo
# ---------------------------------------------------------------------------------------------
def _turbo(q, cache: TurboKVCache, sm: float, trace: bool, launch: dict | None):
    torch = _torch()
    kd, _ = _decode_kernels()
    spec = cache.spec
    B, Hq, _, D = q.shape
    Hkv, nb, L = cache.Hkv, cache.nb, cache.length
    G = Hq // Hkv
    launch = dict(launch or {})
    kvc = cache.kvc
    # fold (default): flushed tiles never dequantized (S and O folded per group, int8 tl.dot;
    # one query row is padded to 16 dot rows, more rows are computed as >= 16); the INT8
    # buffer tile and fold=False: G <= 2 rows CUDA-core int32 products, more int8 tl.dot
    fold = bool(launch.pop("fold", True)) and kvc.v_group_tokens % nb == 0
    use_dot = G > 2 or (fold and G > 1)
    BG = max(16, 1 << (G - 1).bit_length()) if use_dot else 1 << (G - 1).bit_length()
    ngrp = D // kvc.k_group_channels
    ngp = max(ngrp, -(-16 // BG))
    # one query row: per_block / per_head / per_token Q scales all cover exactly that row, so
    # the per-token kernel computes the spec's codes and scales (and avoids looping a 128-token
    # group over a single row)
    qop = dataclasses.replace(spec.q, granularity="per_token", block_tokens=None)
    qq = quantize_operand(q, qop, spec.tiling.block_m, check=False)
    q8 = qq.codes.reshape(B, Hq, D)
    qs = qq.scale.reshape(B, Hq)
    qk_scale = float(qk_scale_of(sm))
    NT = triton_cdiv(L, nb)
    NT_FL = cache.flushed // nb
    LKP = NT * nb
    dev = q.device
    cfg = _launch(NT, B * Hkv, launch)
    splits = int(cfg["splits"])
    tps = triton_cdiv(NT, splits)
    splits = triton_cdiv(NT, tps)
    sout = torch.empty((B, Hq, LKP), dtype=torch.float32, device=dev)
    tmax = torch.empty((B, Hq, NT), dtype=torch.float32, device=dev)
    acc = torch.empty((B, Hq, splits, D), dtype=torch.float32, device=dev)
    ls = torch.empty((B, Hq, splits), dtype=torch.float32, device=dev)
    as_ = torch.empty((B, Hq, splits), dtype=torch.float32, device=dev)
    if trace:
        tsi = torch.zeros((B, Hq, L), dtype=torch.int32, device=dev)
        tp = torch.zeros((B, Hq, L), dtype=torch.int8, device=dev)
        to = torch.zeros((B, Hq, NT, D), dtype=torch.int32, device=dev)
    else:
        tsi = tp = to = torch.empty(1, dtype=torch.int32, device=dev)
    p = spec.p
    pconst = dict(LEVELS=int(p.levels), P_FP16=p.arithmetic == "fp16",
                  P_ROUNDING=ROUNDING_IDS[p.rounding], P_SATURATE=bool(p.saturate),
                  ROWSUM_Q=p.rowsum == "quantized")
    sas = _sas_constants(spec)
    if not sas.pop("SAS"):
        raise ValueError("spec.softmax.exp: the turbo decode kernel implements SAS only")
    warps, stages = int(cfg["num_warps"]), int(cfg["num_stages"])
    for bits, (heads, kc, vc) in cache.store.items():
        ng = heads.shape[0]
        kd.turbo_scores_kernel[(splits, B * ng)](
            q8, qs, kc, cache.k_scale, cache.k_zero, cache.k_buf, cache.k_scale8, sout, tmax,
            tsi, heads, qk_scale, Hq, Hkv, G, ng, L, NT, NT_FL, cache.cap,
            cache.k_scale8.shape[2], LKP, tps, D=D, BN=nb, BG=BG, KG=kvc.k_group_channels,
            BITS=bits, TRACE=bool(trace), USE_DOT=use_dot, FOLD=fold, NGP=ngp,
            num_warps=warps, num_stages=stages, enable_fp_fusion=False)
    for bits, (heads, kc, vc) in cache.store.items():
        ng = heads.shape[0]
        kd.turbo_pv_kernel[(splits, B * ng)](
            sout, tmax, vc, cache.v_scale, cache.v_zero, cache.v_buf, cache.v_scale8, acc, ls,
            as_, tp, to, heads, Hq, Hkv, G, ng, L, NT, NT_FL, cache.cap,
            cache.v_scale.shape[2], cache.v_scale8.shape[2], LKP, tps, splits,
            D=D, BN=nb, BG=BG, VG=kvc.v_group_tokens, BITS=bits, **pconst, **sas,
            EXACT_FMA_F64=interpreting(), TMCHUNK=64, TRACE=bool(trace), USE_DOT=use_dot,
            FOLD=fold, num_warps=warps,
            num_stages=stages, enable_fp_fusion=False)
    out = torch.empty((B, Hq, 1, D), dtype=q.dtype, device=dev)
    kd.turbo_combine_kernel[(B * Hq,)](acc, ls, as_, out, splits, out.stride(0), out.stride(1),
                                       Hq, D=D, num_warps=1, enable_fp_fusion=False)
    if not trace:
        return out
    return out, {"q_codes": qq.codes, "q_scale": qq.scale, "S": tsi, "P": tp, "O_int": to,
                 "s": sout[:, :, :L], "tile_max": tmax, "splits": splits, "fold": fold}


# ---------------------------------------------------------------------------------------------
# fp16 / double sparse
# ---------------------------------------------------------------------------------------------
def _flash_decode(q, k, v, idx, count: int, sm: float, bn: int, launch: dict | None):
    """Split-K flash-decode of q over ``count`` slots (``idx`` [B*Hq, count] int32 or None)."""
    torch = _torch()
    kd, _ = _decode_kernels()
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
    nt = triton_cdiv(count, bn)
    cfg = _launch(nt, B * (Hkv if grouped else Hq), launch)
    splits = int(cfg["splits"])
    sps = triton_cdiv(nt, splits) * bn
    splits = triton_cdiv(count, sps)
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


def _select(q, cache: DoubleSparseCache, want_approx: bool = True, method: str = "radix"):
    """Label scores, selection keys, top-k: (approx f32 [B, Hq, L] or None, idx int32
    [B*Hq, kcount]). ``method`` "radix" (Triton radix select on uint32 keys, ascending by
    construction) or "torch" (int64 keys, ``torch.topk`` + ``torch.sort``); same indices."""
    if method not in ("radix", "torch"):
        raise ValueError(f"method: expected 'radix' or 'torch', got {method!r}")
    from sim.sparse import row_budget
    torch = _torch()
    _, kl = _decode_kernels()
    B, Hq, _, D = q.shape
    L = cache.length
    sp = cache.spec.sparse
    approx = torch.empty((B, Hq, L) if want_approx else (1,), dtype=torch.float32,
                         device=q.device)
    radix = method == "radix"
    keys = torch.empty((B, Hq, L), dtype=torch.int32 if radix else torch.int64, device=q.device)
    block = 16 if interpreting() else 256
    kl.label_score_kernel[(triton_cdiv(L, block), B * Hq)](
        q, cache.channels, cache._lab, cache._lsc, cache._lzp, approx, keys, L,
        cache._lab.shape[2], Hq, cache.Hkv, Hq // cache.Hkv, sp.sink_tokens, sp.recent_tokens,
        q.stride(0), q.stride(1), q.stride(3), R=cache.r, BLOCK=block, BITS=cache.bits,
        WRITE_APPROX=want_approx, KEY32=radix, num_warps=4, enable_fp_fusion=False)
    budget = int(row_budget(sp, np.array([L]))[0])
    j = np.arange(L)
    forced = int(((j < sp.sink_tokens) | (j >= L - sp.recent_tokens)).sum()) if (
        sp.sink_tokens or sp.recent_tokens) else 0
    kcount = min(L, budget + forced)
    if radix:
        idx = torch.empty((B * Hq, kcount), dtype=torch.int32, device=q.device)
        kl.topk_select_kernel[(B * Hq,)](keys, idx, L, kcount, idx.stride(0),
                                         BLOCK=64 if interpreting() else 2048, num_warps=8)
    else:
        top = torch.topk(keys.view(B * Hq, L), kcount, dim=1, sorted=False).indices
        idx = torch.sort(top, dim=1).values.to(torch.int32).contiguous()
    return (approx if want_approx else None), idx


def _dispatch(q, cache, sm_scale, trace: bool, launch: dict | None):
    Hq = _check_q(q, cache)
    sm = check_sm_scale(sm_scale, cache.D)
    if isinstance(cache, TurboKVCache):
        return _turbo(q, cache, sm, trace, launch)
    bn = cache.spec.tiling.block_n
    if isinstance(cache, DoubleSparseCache):
        approx, idx = _select(q, cache, want_approx=trace)
        out = _flash_decode(q, cache.k, cache.v, idx, idx.shape[1], sm, bn, launch)
        if trace:
            return out, {"approx_scores": approx,
                         "indices": idx.view(q.shape[0], Hq, 1, idx.shape[1])}
        return out
    out = _flash_decode(q, cache.k, cache.v, None, cache.length, sm, bn, launch)
    return (out, {}) if trace else out


def decode_unchecked(q, cache, sm: float, launch: dict | None = None):
    """:func:`decode` without input checks (no host synchronisation): for timing loops whose
    inputs were checked once. ``sm`` is the softmax scale (not None)."""
    if isinstance(cache, TurboKVCache):
        return _turbo(q, cache, sm, False, launch)
    bn = cache.spec.tiling.block_n
    if isinstance(cache, DoubleSparseCache):
        _, idx = _select(q, cache, want_approx=False)
        return _flash_decode(q, cache.k, cache.v, idx, idx.shape[1], sm, bn, launch)
    return _flash_decode(q, cache.k, cache.v, None, cache.length, sm, bn, launch)


def decode(q, cache, sm_scale: float | None = None, launch: dict | None = None):
    """One decode step: ``softmax(q k^T * sm_scale) v`` over every token of ``cache``.

    ``q`` ``[B, Hq, 1, D]``: contiguous, the cache's dtype and device, finite, ``Hq`` a multiple
    of the cache's ``Hkv``. ``sm_scale`` defaults to ``1/sqrt(D)``. ``launch`` overrides the
    launch configuration (:func:`default_decode_launch`; numerics do not depend on it except
    for f32 rounding). Returns ``[B, Hq, 1, D]``.

    >>> out = gpu.decode(q, gpu.build_cache(k, v, method="turbo"))     # doctest: +SKIP
    """
    return _dispatch(q, cache, sm_scale, False, launch)


def decode_trace(q, cache, sm_scale: float | None = None, launch: dict | None = None):
    """:func:`decode` plus intermediates: turbo ``q_codes``, ``q_scale``, ``S`` (int32 S_int
    ``[B, Hq, L]``), ``P`` (int8 codes), ``O_int`` (int32 ``[B, Hq, n_tiles, D]``), ``s``
    (f32 scores), ``tile_max``, ``splits``; double_sparse ``approx_scores`` ``[B, Hq, L]`` and
    ``indices`` ``[B, Hq, 1, k]`` ascending. ``launch`` overrides :func:`default_decode_launch`
    (e.g. ``{"splits": 3}``). Returns ``(out, dict)``."""
    return _dispatch(q, cache, sm_scale, True, launch)
