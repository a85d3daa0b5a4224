"""turbo, the kernel path. Prefill: the INT8 quantization kernels and the integer forward with
SAS (as int8_flash). Decode: TurboAttention's progressive cache on the device and the split-K
passes of ``gpu.kernels.decode``.

The cache (:class:`TurboKVCache`) is the state of ``sim.methods.turbo.TurboCache`` on the device, field
  for field — INT8 block scales (f32), the INT8 buffer of the newest ``< buffer_tokens`` tokens,
  and per head the flushed tokens re-quantized to ``high_bits``/``low_bits`` (packed codes in the
  ``sim.numerics.pack`` layout, uint8 scale and int8 zero per group). Built by the prefill's INT8
  quantization kernel then :func:`gpu.kernels.cache.requant_pack_kernel` over all full blocks;
  :meth:`~TurboKVCache.append` runs :func:`gpu.kernels.cache.append_int8_kernel` and flushes every
  full buffer with the same pack kernel. Heads are stored in one tensor per bit width.
  Head bits: ``sim.methods.turbo.head_bits`` of the calibration's priority (``calibration``: a
  ``sim.methods.turbo.HeadPriority`` or a path to one); ``None`` ranks the call's own K/V ("oracle",
  ``(max - min) * std`` computed in float64 by torch on the device: its summation order differs
  from numpy's, which matters only for heads whose priorities tie to ~1e-15).

Decode: Q quantized by the prefill's INT8 kernel (``spec.q``), then the two-pass split-K of
:mod:`gpu.kernels.decode` (scores, then SAS / PQUANT / int8 PV per split, then an in-order
combine). S_int, P codes and O_int equal ``sim.simulate(q, k, v, spec, kv_cache=True)``'s tile
walk exactly; the output differs only by f32 rounding of the regrouped recurrence (split count
> 1) and rowsum order.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sim.engine import qk_scale_of
from sim.methods.turbo import (HeadPriority, as_head_priority, cache_nbytes, check_cache_spec,
                               head_bits)

from ..common import (ROUNDING_IDS, capacity, cdiv, grow, interpreting, kernels, p_constants,
                      quantize_operand, sas_constants, torch_module)
from ..decoding import DecodeCache, decode_launch
from ..prefill import check_integer_spec
from .base import KernelPath
from .int8_flash import integer_prefill


@functools.lru_cache(maxsize=64)
def _check_spec(spec) -> None:
    check_integer_spec(spec)


class TurboKVCache(DecodeCache):
    """TurboAttention's progressive cache on the device (see the module docstring).

    Fields (token capacity ``cap``, a multiple of ``nb = buffer_tokens``):
    ``store[bits] = (heads int32 [ng], k_codes uint8 [B, ng, cap, D*bits/8], v_codes)``;
    ``k_scale``/``k_zero`` ``[B, Hkv, cap, D/k_group_channels]`` uint8/int8; ``v_scale``/``v_zero``
    ``[B, Hkv, cap/v_group_tokens, D]``; ``k_scale8``/``v_scale8`` f32 ``[B, Hkv, cap/nb + 1]``
    (flushed blocks, then the open block); ``k_buf``/``v_buf`` int8 ``[B, Hkv, nb, D]``.
    """

    method = "turbo"

    def __init__(self, k, v, spec, calibration):
        torch = torch_module()
        check_integer_spec(spec)
        kvc = check_cache_spec(spec)  # the simulator's own validation of the cache section
        B, Hkv, L, D = k.shape
        if D % kvc.k_group_channels:
            raise ValueError(f"spec.kvcache.k_group_channels: expected a divisor of D={D}, got "
                             f"{kvc.k_group_channels}")
        for name, val in (("buffer_tokens", kvc.buffer_tokens),
                          ("v_group_tokens", kvc.v_group_tokens),
                          ("k_group_channels", kvc.k_group_channels)):
            if val & (val - 1):
                raise ValueError(f"spec.kvcache.{name}: the kernels need a power of two, got {val}")
        if kvc.buffer_tokens < 16:
            raise ValueError(f"spec.kvcache.buffer_tokens: expected >= 16, got {kvc.buffer_tokens}")
        for b_ in (kvc.high_bits, kvc.low_bits):
            if b_ not in (2, 4):
                raise ValueError(f"spec.kvcache: the pack kernels implement 2 and 4 bits, got {b_}")
        if calibration is None:
            kk = k.double().transpose(0, 1).reshape(Hkv, -1)
            vv = v.double().transpose(0, 1).reshape(Hkv, -1)
            x = torch.cat([kk, vv], dim=1)
            pr = (x.amax(1) - x.amin(1)) * x.std(1, correction=0)
            calibration = HeadPriority(pr.cpu().numpy().astype(np.float64), "oracle")
        calibration = as_head_priority(calibration, Hkv)
        self.spec, self.kvc, self.priority = spec, kvc, calibration
        self.bits = head_bits(kvc, calibration.priority)
        self.B, self.Hkv, self.D, self.dtype, self.device = B, Hkv, D, k.dtype, k.device
        nb = self.nb = kvc.buffer_tokens
        self.length = 0
        self.nbuf = 0
        dev = k.device
        self.slot = np.zeros(Hkv, np.int64)
        self.store = {}
        cap = capacity(L // nb * nb, 0, nb)
        for bits in sorted(set(self.bits.tolist()), reverse=True):
            heads = np.nonzero(self.bits == bits)[0]
            self.slot[heads] = np.arange(len(heads))
            rb = D * bits // 8
            shape = (B, len(heads), cap, rb)
            self.store[bits] = (torch.as_tensor(heads.astype(np.int32), device=dev),
                                torch.zeros(shape, dtype=torch.uint8, device=dev),
                                torch.zeros(shape, dtype=torch.uint8, device=dev))
        ng = D // kvc.k_group_channels
        self.k_scale = torch.zeros((B, Hkv, cap, ng), dtype=torch.uint8, device=dev)
        self.k_zero = torch.zeros((B, Hkv, cap, ng), dtype=torch.int8, device=dev)
        self.v_scale = torch.zeros((B, Hkv, cap // kvc.v_group_tokens, D), dtype=torch.uint8,
                                   device=dev)
        self.v_zero = torch.zeros((B, Hkv, cap // kvc.v_group_tokens, D), dtype=torch.int8,
                                  device=dev)
        self.k_scale8 = torch.ones((B, Hkv, cap // nb + 1), dtype=torch.float32, device=dev)
        self.v_scale8 = torch.ones((B, Hkv, cap // nb + 1), dtype=torch.float32, device=dev)
        self.k_buf = torch.zeros((B, Hkv, nb, D), dtype=torch.int8, device=dev)
        self.v_buf = torch.zeros((B, Hkv, nb, D), dtype=torch.int8, device=dev)
        self._prefill(k, v, L)

    # -- construction ----------------------------------------------------------------------
    @property
    def cap(self) -> int:
        return self.k_scale.shape[2]

    @property
    def flushed(self) -> int:
        return self.length - self.nbuf

    def _reserve(self, tokens: int) -> None:
        if tokens <= self.cap:
            return
        cap = capacity(tokens, self.cap, self.nb)
        for bits, (heads, kc, vc) in self.store.items():
            self.store[bits] = (heads, grow(kc, 2, cap), grow(vc, 2, cap))
        self.k_scale, self.k_zero = grow(self.k_scale, 2, cap), grow(self.k_zero, 2, cap)
        vg = self.kvc.v_group_tokens
        self.v_scale = grow(self.v_scale, 2, cap // vg)
        self.v_zero = grow(self.v_zero, 2, cap // vg)
        self.k_scale8 = grow(self.k_scale8, 2, cap // self.nb + 1)
        self.v_scale8 = grow(self.v_scale8, 2, cap // self.nb + 1)

    def _pack(self, k8, v8, n_blocks: int, dst0: int, b0: int = 0) -> None:
        """requant_pack_kernel over ``n_blocks`` INT8 blocks of k8/v8 (strided [Bs, Hkv, L, D],
        the cache's batches ``b0 .. b0 + Bs``) to store tokens ``dst0 ..``, one launch per bit
        width."""
        if n_blocks == 0:
            return
        kc_mod = kernels("cache")
        kvc = self.kvc
        for bits, (heads, kc, vc) in self.store.items():
            ng = heads.shape[0]
            kc_mod.requant_pack_kernel[(n_blocks, k8.shape[0] * ng)](
                k8, v8, kc, vc, self.k_scale, self.k_zero, self.v_scale, self.v_zero, heads,
                *k8.stride(), *v8.stride(), 0, dst0, b0, self.Hkv, ng, self.cap,
                self.v_scale.shape[2], D=self.D, NB=self.nb, KG=kvc.k_group_channels,
                VG=kvc.v_group_tokens, BITS=bits, num_warps=4)

    def _prefill(self, k, v, L: int) -> None:
        """The prefill's INT8 quantization kernel, then the pack kernel over the full blocks,
        one batch at a time (bounds the INT8 scratch, and keeps the quantization kernel's int32
        offsets below 2^31 at long contexts)."""
        spec, nb = self.spec, self.nb
        nf = L // nb
        tail = L - nf * nb
        for b in range(self.B):
            kq = quantize_operand(k[b:b + 1], spec.k, spec.tiling.block_n, check=False, name="k")
            vq = quantize_operand(v[b:b + 1], spec.v, spec.tiling.block_n, check=False, name="v")
            self._pack(kq.codes, vq.codes, nf, 0, b)
            nblk = kq.scale.shape[2]
            self.k_scale8[b, :, :nblk].copy_(kq.scale[0])
            self.v_scale8[b, :, :nblk].copy_(vq.scale[0])
            if tail:  # the open block: the quant kernel's codes of the partial last block
                self.k_buf[b, :, :tail].copy_(kq.codes[0, :, nf * nb:])
                self.v_buf[b, :, :tail].copy_(vq.codes[0, :, nf * nb:])
        self.length, self.nbuf = L, tail

    def _append(self, k_new, v_new) -> None:
        """INT8 append kernel into the open block (re-scaling its codes when the block's absmax
        grows, as ``sim.methods.turbo.TurboCache.append``), flush kernel whenever the buffer
        fills."""
        n = k_new.shape[2]
        kc_mod = kernels("cache")
        spec, nb = self.spec, self.nb
        pos = 0
        while pos < n:
            take = min(nb - self.nbuf, n - pos)
            slot_idx = self.flushed // nb
            for x, buf, s8, op in ((k_new, self.k_buf, self.k_scale8, spec.k),
                                   (v_new, self.v_buf, self.v_scale8, spec.v)):
                xs = x[:, :, pos:pos + take]
                kc_mod.append_int8_kernel[(self.B * self.Hkv,)](
                    xs, buf, s8, self.nbuf, take, slot_idx, s8.shape[2], *xs.stride(),
                    H=self.Hkv, D=self.D, NB=nb, ROUNDING=ROUNDING_IDS[op.rounding],
                    SCALE_FP16=op.scale_dtype == "fp16", FRESH=self.nbuf == 0, num_warps=4,
                    enable_fp_fusion=False)
            if spec.k.scale_dtype == "fp16" or spec.v.scale_dtype == "fp16":
                torch = torch_module()
                if bool(torch.isinf(self.k_scale8[:, :, slot_idx]).any() |
                        torch.isinf(self.v_scale8[:, :, slot_idx]).any()):
                    raise ValueError("k_new: absmax / 127 exceeds the fp16 scale maximum")
            pos += take
            self.nbuf += take
            self.length += take
            if self.nbuf == nb:
                self._reserve(self.length)
                self._pack(self.k_buf, self.v_buf, 1, self.length - nb)
                self.nbuf = 0

    # -- reading (for validation) ----------------------------------------------------------
    def packed(self, h: int) -> dict:
        """Head ``h``'s flushed store as numpy, the fields of ``sim.methods.turbo._Packed``."""
        T = self.flushed
        bits = int(self.bits[h])
        _, kc, vc = self.store[bits]
        s = int(self.slot[h])
        vg = self.kvc.v_group_tokens
        return {"k_codes": kc[:, s, :T].cpu().numpy(), "v_codes": vc[:, s, :T].cpu().numpy(),
                "k_scale": self.k_scale[:, h, :T].cpu().numpy(),
                "k_zero": self.k_zero[:, h, :T].cpu().numpy(),
                "v_scale": self.v_scale[:, h, :T // vg].cpu().numpy(),
                "v_zero": self.v_zero[:, h, :T // vg].cpu().numpy()}

    def scales8(self):
        """INT8 block scales ``[B, Hkv, ceil(length / nb)]`` (K, V) as numpy."""
        nblk = -(-self.length // self.nb)
        return (self.k_scale8[:, :, :nblk].cpu().numpy(), self.v_scale8[:, :, :nblk].cpu().numpy())

    def nbytes(self, detail: bool = False):
        """Bytes by the accounting of ``sim.methods.turbo.cache_nbytes`` (buffer at capacity)."""
        return cache_nbytes(self.spec, self.bits, self.length, self.D, batch=self.B,
                            detail=detail)


def _decode(q, cache: TurboKVCache, sm: float, launch: dict | None, trace: bool):
    torch = torch_module()
    kd = kernels("decode")
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
    qq = quantize_operand(q, qop, spec.tiling.block_m, check=False, name="q")
    q8 = qq.codes.reshape(B, Hq, D)
    qs = qq.scale.reshape(B, Hq)
    qk_scale = float(qk_scale_of(sm))
    NT = cdiv(L, nb)
    NT_FL = cache.flushed // nb
    LKP = NT * nb
    dev = q.device
    cfg = decode_launch(NT, B * Hkv, launch)
    splits = int(cfg["splits"])
    tps = cdiv(NT, splits)
    splits = cdiv(NT, tps)
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
    pconst = p_constants(spec.p)
    sas = dict(sas_constants(spec.softmax))
    sas.pop("SAS")
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
    # the simulator's names and layouts (Lq = 1): s_int, p_codes [B, Hq, 1, L]; o_int
    # [B, Hq, n_tiles, 1, D]; m, the running max after each tile [B, Hq, n_tiles, 1]
    return out, {"q_codes": qq.codes, "q_scale": qq.scale, "s_int": tsi[:, :, None],
                 "p_codes": tp[:, :, None], "o_int": to[:, :, :, None],
                 "s": sout[:, :, None, :L], "m": torch.cummax(tmax, dim=2).values[..., None],
                 "splits": splits, "fold": fold}


def compare_cache(cache: TurboKVCache, k, v, calibration) -> dict:
    """The device cache against ``sim.methods.turbo.TurboCache.from_prefill`` of the same
    ``k``/``v`` (numpy) and head priority: the packed low-bit store (codes, integer scales and
    zeros) byte for byte, and the INT8 block scales (:class:`gpu.compare.KeyAgreement`)."""
    from sim.methods.turbo import TurboCache

    from ..compare import KeyAgreement

    ref = TurboCache.from_prefill(k, v, cache.spec, priority=calibration)
    eq = tot = 0
    for h in range(cache.Hkv):
        got, want = cache.packed(h), ref.store[h]
        for name, a in got.items():
            b = np.asarray(getattr(want, name))
            if a.shape != b.shape:
                return {"packed": KeyAgreement(0, 0, True, f"head {h} {name}: kernel {a.shape}, "
                                                           f"sim {b.shape}")}
            eq += int((a.astype(np.int64) == b.astype(np.int64)).sum())
            tot += a.size
    ks8, vs8 = cache.scales8()
    n = ks8.shape[2]
    a = np.concatenate([ks8, vs8], 1)
    b = np.concatenate([ref.k_scale8[:, :, :n], ref.v_scale8[:, :, :n]], 1)
    return {"packed": KeyAgreement(tot, eq, True),
            "scales8": KeyAgreement(a.size, int((a == b).sum()), True)}


def _cache(k, v, spec, calibration):
    if spec.softmax.exp != "sas":
        raise ValueError("spec.softmax.exp: the turbo decode kernels implement SAS only, got "
                         f"{spec.softmax.exp!r}")
    return TurboKVCache(k, v, spec, calibration)


PATH = KernelPath("turbo", check_spec=_check_spec, prefill=integer_prefill, cache=_cache,
                  decode=_decode, compare_cache=compare_cache)
