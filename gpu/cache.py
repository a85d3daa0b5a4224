"""KV caches for decode: :func:`build_cache` and the three cache classes.

    import torch, gpu
    k = torch.randn(8, 32, 4096, 128, device="cuda", dtype=torch.float16); v = torch.randn_like(k)
    cache = gpu.build_cache(k, v, method="turbo")          # INT8 buffer + INT4/INT2 per head
    cache.append(k_new, v_new)                             # [8, 32, n, 128], decode growth
    out = gpu.decode(q, cache)                             # q [8, Hq, 1, 128]

- ``turbo`` (:class:`TurboKVCache`): the state of ``sim.kvcache.TurboCache`` on the device, field
  for field — INT8 block scales (f32), the INT8 buffer of the newest ``< buffer_tokens`` tokens,
  and per head the flushed tokens re-quantized to ``high_bits``/``low_bits`` (packed codes in the
  ``sim.numerics.pack`` layout, uint8 scale and int8 zero per group). Built by the prefill's INT8
  quantization kernel then :func:`gpu.kernels.cache.requant_pack_kernel` over all full blocks;
  :meth:`~TurboKVCache.append` runs :func:`gpu.kernels.cache.append_int8_kernel` and flushes every
  full buffer with the same pack kernel. Heads are stored in one tensor per bit width.
  Head bits: ``sim.kvcache.head_bits`` of the calibration's priority (``calibration``: a
  ``sim.kvcache.HeadPriority`` or a path to one); ``None`` ranks the call's own K/V ("oracle",
  ``(max - min) * std`` computed in float64 by torch on the device: its summation order differs
  from numpy's, which matters only for heads whose priorities tie to ~1e-15).
- ``double_sparse`` (:class:`DoubleSparseCache`): the full FP16 K/V plus the label cache of the
  ``r`` calibrated channels (``sim.sparse.label_cache``: packed asymmetric codes + fp16 scale +
  int32 zero point per token, or fp16 labels). ``calibration`` is required (a
  ``sim.sparse.Calibration`` or a path): the ``qk`` channel metric needs queries, which a cache
  does not have. fp16 inputs only (the method's operand format).
- ``fp16_flash`` (:class:`FP16Cache`): the plain FP16/BF16 K/V.

Every cache grows by doubling its token capacity (a copy), so ``append`` is amortised O(n).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from sim.spec import MethodSpec, load_method

from .ops import (ROUNDING_IDS, _check_inputs, _kernels, _torch, check_prefill_spec,
                  interpreting, quantize_operand, triton_cdiv)

__all__ = ["build_cache", "TurboKVCache", "DoubleSparseCache", "FP16Cache", "CACHE_METHODS"]

CACHE_METHODS = ("turbo", "double_sparse", "fp16_flash")


def _cache_kernels():
    _kernels()  # triton import + interpreter compatibility
    from .kernels import cache as kc
    from .kernels import labels as kl
    return kc, kl


def _resolve(method: str, spec) -> MethodSpec:
    if not isinstance(method, str) or method not in CACHE_METHODS:
        raise ValueError(f"method: expected one of {CACHE_METHODS}, got {method!r}")
    if spec is None:
        return load_method(method)
    if isinstance(spec, (str, os.PathLike)):
        spec = load_method(spec)
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec: expected a MethodSpec, a method name, a path or None, got "
                        f"{type(spec).__name__}")
    if spec.method != method:
        raise ValueError(f"spec: expected a {method!r} spec, got method {spec.method!r}")
    return spec


def _check_kv(k, v, dtypes=("float16", "bfloat16"), what="k"):
    return _check_inputs(k, k, v, True, dtypes=dtypes, what=what)


def _check_new(cache, k_new, v_new, dtypes):
    shp = _check_kv(k_new, v_new, dtypes, "k_new")
    if (shp.B, shp.Hkv, shp.D) != (cache.B, cache.Hkv, cache.D):
        raise ValueError(f"k_new: expected [B={cache.B}, Hkv={cache.Hkv}, n, D={cache.D}], got "
                         f"{tuple(k_new.shape)}")
    if k_new.dtype != cache.dtype:
        raise TypeError(f"k_new: expected dtype {cache.dtype} like the cache, got {k_new.dtype}")
    if k_new.device != cache.device:
        raise ValueError(f"k_new: expected device {cache.device}, got {k_new.device}")
    return shp.Lk


def _grow(t, axis: int, new: int):
    """A copy of ``t`` with ``axis`` extended to ``new`` (new entries zero)."""
    torch = _torch()
    shape = list(t.shape)
    shape[axis] = new
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out.narrow(axis, 0, t.shape[axis]).copy_(t)
    return out


def _capacity(need: int, have: int, quantum: int) -> int:
    return -(-max(need, 2 * have, quantum) // quantum) * quantum


# ---------------------------------------------------------------------------------------------
# fp16
# ---------------------------------------------------------------------------------------------
class _DenseKV:
    """FP16/BF16 K and V ``[B, Hkv, capacity, D]`` of which ``length`` tokens are valid."""

    def _init_dense(self, k, v):
        B, Hkv, L, D = k.shape
        self.B, self.Hkv, self.D, self.dtype, self.device = B, Hkv, D, k.dtype, k.device
        cap = _capacity(L, 0, 64)
        self._k = _grow(k, 2, cap)
        self._v = _grow(v, 2, cap)
        self.length = L

    def _append_dense(self, k_new, v_new):
        n = k_new.shape[2]
        if self.length + n > self._k.shape[2]:
            cap = _capacity(self.length + n, self._k.shape[2], 64)
            self._k, self._v = _grow(self._k, 2, cap), _grow(self._v, 2, cap)
        self._k[:, :, self.length:self.length + n].copy_(k_new)
        self._v[:, :, self.length:self.length + n].copy_(v_new)
        self.length += n

    @property
    def k(self):
        return self._k[:, :, :self.length]

    @property
    def v(self):
        return self._v[:, :, :self.length]


class FP16Cache(_DenseKV):
    """Plain FP16/BF16 KV cache (the decode baseline)."""

    method = "fp16_flash"

    def __init__(self, k, v, spec: MethodSpec):
        self.spec = spec
        self._init_dense(k, v)

    def append(self, k_new, v_new) -> "FP16Cache":
        """Append ``[B, Hkv, n, D]`` tokens."""
        _check_new(self, k_new, v_new, ("float16", "bfloat16"))
        self._append_dense(k_new, v_new)
        return self

    def nbytes(self) -> int:
        return 2 * self.B * self.Hkv * self.length * self.D * self._k.element_size()


# ---------------------------------------------------------------------------------------------
# double sparse
# ---------------------------------------------------------------------------------------------
class DoubleSparseCache(_DenseKV):
    """FP16 K/V plus the label cache (see the module docstring)."""

    method = "double_sparse"

    def __init__(self, k, v, spec: MethodSpec, calibration):
        from sim.sparse import as_calibration
        if calibration is None:
            raise ValueError("calibration: double_sparse needs a sim.sparse.Calibration (or a "
                             "path to one); the 'qk' channel metric needs queries a cache lacks")
        B, Hkv, L, D = k.shape
        calibration = as_calibration(calibration, spec, Hkv, D)
        sp = spec.sparse
        r = sp.r(D)
        if r & (r - 1) or r < 2:
            raise ValueError(f"spec.sparse: the label kernels need r = {r} label channels to be a "
                             f"power of two >= 2")
        if sp.label_bits not in (2, 4, 8, 16):
            raise ValueError(f"spec.sparse.label_bits: expected 2, 4, 8 or 16, got {sp.label_bits}")
        if spec.tiling.block_n not in (16, 32, 64, 128):
            raise ValueError(f"spec.tiling.block_n: expected 16, 32, 64 or 128, got "
                             f"{spec.tiling.block_n}")
        torch = _torch()
        self.spec, self.calibration, self.r, self.bits = spec, calibration, r, sp.label_bits
        self.channels_np = calibration.channels(r)
        self.channels = torch.as_tensor(self.channels_np.astype(np.int32), device=k.device)
        self._init_dense(k, v)
        cap = self._k.shape[2]
        if self.bits == 16:
            self._lab = torch.zeros((B, Hkv, cap, r), dtype=torch.float16, device=k.device)
        else:
            self._lab = torch.zeros((B, Hkv, cap, r * self.bits // 8), dtype=torch.uint8,
                                    device=k.device)
        self._lsc = torch.ones((B, Hkv, cap), dtype=torch.float16, device=k.device)
        self._lzp = torch.zeros((B, Hkv, cap), dtype=torch.int32, device=k.device)
        self._labels(0, L)

    def _labels(self, lo: int, hi: int) -> None:
        """Label-build kernel over tokens [lo, hi) of the stored K."""
        if hi <= lo:
            return
        _, kl = _cache_kernels()
        n = hi - lo
        src = self._k[:, :, lo:hi]
        rows = 16 if interpreting() else 64
        kl.label_build_kernel[(triton_cdiv(n, rows), self.B * self.Hkv)](
            src, self.channels, self._lab, self._lsc, self._lzp, n, self.Hkv, self._lab.shape[2],
            lo, *src.stride(), R=self.r, ROWS=rows, BITS=self.bits, num_warps=4,
            enable_fp_fusion=False)
        if self.bits != 16:
            torch = _torch()
            if bool(torch.isinf(self._lsc[:, :, lo:hi]).any()):
                raise ValueError("k: a token's label range exceeds the fp16 scale maximum")
            zp_big = self._lzp[:, :, lo:hi].abs() > (1 << 16)
            if bool(zp_big.any()):
                raise ValueError(f"k: {int(zp_big.sum())} token(s) need a label zero point beyond "
                                 f"+-2^16 steps")

    def append(self, k_new, v_new) -> "DoubleSparseCache":
        """Append ``[B, Hkv, n, D]`` fp16 tokens and their labels."""
        _check_new(self, k_new, v_new, ("float16",))
        lo = self.length
        self._append_dense(k_new, v_new)
        cap = self._k.shape[2]
        if self._lab.shape[2] < cap:
            self._lab, self._lsc, self._lzp = (_grow(t, 2, cap) for t in
                                              (self._lab, self._lsc, self._lzp))
        self._labels(lo, self.length)
        return self

    def label_arrays(self) -> dict:
        """Numpy copies comparable with ``sim.sparse.label_cache``: ``codes`` (unpacked uint8
        [B, Hkv, L, r]), ``scale`` (f32 [B, Hkv, L, 1]), ``zero_point`` (int32), or ``values``
        (fp16 labels as f32) for 16 bits."""
        L = self.length
        if self.bits == 16:
            return {"values": self._lab[:, :, :L].float().cpu().numpy()}
        from sim.numerics import unpack
        raw = self._lab[:, :, :L].cpu().numpy()
        codes = raw if self.bits == 8 else unpack(raw, self.bits, self.r)
        return {"codes": codes, "packed": raw,
                "scale": self._lsc[:, :, :L].float().cpu().numpy()[..., None],
                "zero_point": self._lzp[:, :, :L].cpu().numpy()[..., None]}

    def nbytes(self) -> int:
        """FP16 K/V plus labels (``sim.sparse.LabelCache.nbytes`` counts a 2-byte zero point;
        this cache stores 4)."""
        L = self.length
        lab = (self.r * 2 if self.bits == 16 else self.r * self.bits // 8 + 2 + 4)
        return self.B * self.Hkv * L * (2 * self.D * 2 + lab)


# ---------------------------------------------------------------------------------------------
# turbo
# ---------------------------------------------------------------------------------------------
class TurboKVCache:
    """TurboAttention's progressive cache on the device (see the module docstring).

    Fields (token capacity ``cap``, a multiple of ``nb = buffer_tokens``):
    ``store[bits] = (heads int32 [ng], k_codes uint8 [B, ng, cap, D*bits/8], v_codes)``;
    ``k_scale``/``k_zero`` ``[B, Hkv, cap, D/k_group_channels]`` uint8/int8; ``v_scale``/``v_zero``
    ``[B, Hkv, cap/v_group_tokens, D]``; ``k_scale8``/``v_scale8`` f32 ``[B, Hkv, cap/nb + 1]``
    (flushed blocks, then the open block); ``k_buf``/``v_buf`` int8 ``[B, Hkv, nb, D]``.
    """

    method = "turbo"

    def __init__(self, k, v, spec: MethodSpec, calibration):
        from sim.kvcache import HeadPriority, _kvcache, as_head_priority, head_bits
        torch = _torch()
        check_prefill_spec(spec)
        kvc = _kvcache(spec)  # the simulator's own validation of the cache section
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
        cap = _capacity(L // nb * nb, 0, nb)
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
        cap = _capacity(tokens, self.cap, self.nb)
        for bits, (heads, kc, vc) in self.store.items():
            self.store[bits] = (heads, _grow(kc, 2, cap), _grow(vc, 2, cap))
        self.k_scale, self.k_zero = _grow(self.k_scale, 2, cap), _grow(self.k_zero, 2, cap)
        vg = self.kvc.v_group_tokens
        self.v_scale = _grow(self.v_scale, 2, cap // vg)
        self.v_zero = _grow(self.v_zero, 2, cap // vg)
        self.k_scale8 = _grow(self.k_scale8, 2, cap // self.nb + 1)
        self.v_scale8 = _grow(self.v_scale8, 2, cap // self.nb + 1)

    def _pack(self, k8, v8, n_blocks: int, dst0: int, b0: int = 0) -> None:
        """requant_pack_kernel over ``n_blocks`` INT8 blocks of k8/v8 (strided [Bs, Hkv, L, D],
        the cache's batches ``b0 .. b0 + Bs``) to store tokens ``dst0 ..``, one launch per bit
        width."""
        if n_blocks == 0:
            return
        kc_mod, _ = _cache_kernels()
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
            kq = quantize_operand(k[b:b + 1], spec.k, spec.tiling.block_n, check=False)
            vq = quantize_operand(v[b:b + 1], spec.v, spec.tiling.block_n, check=False)
            self._pack(kq.codes, vq.codes, nf, 0, b)
            nblk = kq.scale.shape[2]
            self.k_scale8[b, :, :nblk].copy_(kq.scale[0])
            self.v_scale8[b, :, :nblk].copy_(vq.scale[0])
            if tail:  # the open block: the quant kernel's codes of the partial last block
                self.k_buf[b, :, :tail].copy_(kq.codes[0, :, nf * nb:])
                self.v_buf[b, :, :tail].copy_(vq.codes[0, :, nf * nb:])
        self.length, self.nbuf = L, tail

    def append(self, k_new, v_new) -> "TurboKVCache":
        """Append ``[B, Hkv, n, D]`` tokens: INT8 append kernel into the open block (re-scaling
        its codes when the block's absmax grows, as ``sim.kvcache.TurboCache.append``), flush
        kernel whenever the buffer fills."""
        n = _check_new(self, k_new, v_new, ("float16", "bfloat16"))
        kc_mod, _ = _cache_kernels()
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
                if bool(_torch().isinf(self.k_scale8[:, :, slot_idx]).any() |
                        _torch().isinf(self.v_scale8[:, :, slot_idx]).any()):
                    raise ValueError("k_new: absmax / 127 exceeds the fp16 scale maximum")
            pos += take
            self.nbuf += take
            self.length += take
            if self.nbuf == nb:
                self._reserve(self.length)
                self._pack(self.k_buf, self.v_buf, 1, self.length - nb)
                self.nbuf = 0
        return self

    # -- reading (for validation) ----------------------------------------------------------
    def packed(self, h: int) -> dict:
        """Head ``h``'s flushed store as numpy, the fields of ``sim.kvcache._Packed``."""
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
        """Bytes by the accounting of ``sim.kvcache.cache_nbytes`` (buffer at capacity)."""
        from sim.kvcache import cache_nbytes
        return cache_nbytes(self.spec, self.bits, self.length, self.D, batch=self.B,
                            detail=detail)


# ---------------------------------------------------------------------------------------------
# public
# ---------------------------------------------------------------------------------------------
def build_cache(k, v, method: str = "turbo", spec: MethodSpec | str | None = None,
                calibration: Any = None):
    """A decode KV cache of ``k``/``v`` ``[B, Hkv, L, D]`` (contiguous CUDA tensors, CPU under
    ``TRITON_INTERPRET=1``; fp16 or bf16, fp16 only for double_sparse; D in (64, 128); finite;
    L >= 1) for ``method`` (turbo, double_sparse, fp16_flash); see the module docstring.

    >>> cache = gpu.build_cache(k, v, method="turbo")        # doctest: +SKIP
    >>> cache.append(k1, v1); out = gpu.decode(q, cache)     # doctest: +SKIP
    """
    s = _resolve(method, spec)
    dtypes = ("float16",) if method == "double_sparse" else ("float16", "bfloat16")
    _check_kv(k, v, dtypes)
    if method == "turbo":
        return TurboKVCache(k, v, s, calibration)
    if calibration is not None and method == "fp16_flash":
        raise ValueError("calibration: fp16_flash takes none")
    if method == "double_sparse":
        return DoubleSparseCache(k, v, s, calibration)
    return FP16Cache(k, v, s)
