"""turbo, the kernel path. Prefill: the INT8 quantization kernels and the integer forward with
SAS (as int8_flash). Decode: TurboAttention's progressive cache on the device and the split-K
passes of ``gpu.kernels.turbo_decode``.

The cache (:class:`TurboKVCache`) is the state of ``sim.methods.turbo.TurboCache`` on the device,
field for field: INT8 block scales (f32), the INT8 buffer of the newest ``< buffer_tokens``
tokens, and per head the flushed tokens re-quantized to ``high_bits``/``low_bits`` (packed codes
in the ``sim.numerics.pack`` layout, uint8 scale and int8 zero per group on the spec's axes:
``k_groups``/``v_groups``), plus one clamp flag per flushed block and operand (derived data: the
decode kernels clamp only those blocks). Built by the prefill's INT8 quantization kernel then
:func:`gpu.kernels.cache.requant_pack_kernel`, streaming ``_CHUNK`` tokens of one batch at a
time (the INT8 scratch stays small at any context); :meth:`~TurboKVCache.append` runs
:func:`gpu.kernels.cache.append_int8_kernel` and flushes every full buffer with the same pack
kernel. Heads are stored in one tensor per bit width. Head bits:
``sim.methods.turbo.head_bits`` of the calibration's priority (``calibration``: a
``sim.methods.turbo.HeadPriority`` or a path to one); ``None`` ranks the call's own K/V
("oracle", ``(max - min) * std`` in float64 on the device, two passes per head and chunk, so no
float64 copy of the cache: the summation order differs from numpy's, which matters only for
heads whose priorities tie to ~1e-15).

Decode: Q quantized by the prefill's INT8 kernel (``spec.q``), then the two-pass split-K of
:mod:`gpu.kernels.turbo_decode` (scores, then SAS / PQUANT / PV per split, then an in-order
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
                               group_grid, head_bits)

from ..common import (ROUNDING_IDS, capacity, cdiv, grow, interpreting, kernels, p_constants,
                      quantize_operand, sas_constants, torch_module)
from ..decoding import DecodeCache, decode_launch
from ..prefill import check_integer_spec
from .base import KernelPath
from .int8_flash import integer_prefill

_CHUNK = 8192          # tokens quantized to INT8 at a time when a cache is built
_CLAMP_MODES = {"never": 0, "flags": 1, "always": 2}
_PRIORITY_CHUNK = 1 << 24   # elements of one head summed in float64 at a time (oracle priority)


@functools.lru_cache(maxsize=64)
def _check_spec(spec) -> None:
    check_integer_spec(spec)


@functools.lru_cache(maxsize=64)
def check_cache_layout(spec, head_dim: int) -> None:
    """Raise ValueError for a cache layout the decode kernels do not implement (cached)."""
    kvc = check_cache_spec(spec)  # the simulator's own validation of the cache section
    nb = kvc.buffer_tokens
    if nb & (nb - 1) or not 16 <= nb <= 128:
        raise ValueError(f"spec.kvcache.buffer_tokens: the kernels need a power of two in "
                         f"[16, 128], got {nb}")
    for b_ in (kvc.high_bits, kvc.low_bits):
        if b_ not in (2, 4):
            raise ValueError(f"spec.kvcache: the decode kernels implement 2 and 4 bits, got {b_}")
    if spec.softmax.exp != "sas":
        raise ValueError("spec.softmax.exp: the turbo decode kernels implement SAS only, got "
                         f"{spec.softmax.exp!r}")
    for name in ("k", "v"):
        groups = getattr(kvc, f"{name}_groups")
        size = getattr(kvc, f"{name}_group_size")
        if groups == "per_channel" and size != nb:
            raise ValueError(f"spec.kvcache.{name}_group_size: per_channel groups must span the "
                             f"whole flushed block ({nb} tokens) in the kernels, got {size}")
        if groups == "per_token":
            low = min(kvc.high_bits, kvc.low_bits)
            if head_dim % size or size & (size - 1) or size * low < 32:
                raise ValueError(f"spec.kvcache.{name}_group_size: per_token groups must be a "
                                 f"power of two dividing D={head_dim} that fills a 32-bit word "
                                 f"of codes (>= {32 // low} channels at {low} bits), got {size}")


def _grid_rows(groups: str, size: int, tokens: int) -> int:
    """Rows of a head's scale grid for ``tokens`` tokens (columns: see group_grid)."""
    return group_grid(groups, size, tokens, 1)[0]


def _grid(groups: str, size: int, B: int, Hkv: int, cap: int, D: int, dev):
    """Zeroed scale and zero grids ``[B, Hkv, *group_grid(...)]``: per token uint8 / int8; per
    channel the kernels' fp16 operand form (gpu.kernels.cache._store_grid)."""
    torch = torch_module()
    shape = (B, Hkv, *group_grid(groups, size, cap, D))
    if groups == "per_channel":
        return (torch.zeros(shape, dtype=torch.float16, device=dev),
                torch.zeros(shape, dtype=torch.float16, device=dev))
    return (torch.zeros(shape, dtype=torch.uint8, device=dev),
            torch.zeros(shape, dtype=torch.int8, device=dev))


def _integer_grid(sp, kp, bits: int):
    """uint8 scale and int8 zero ``[B, rows, D]`` (channel order) of a per-channel fp16 grid
    ``(s', k')`` [B, rows, D] in plane-major order (exact inverse of _store_grid)."""
    b = 4 if bits == 4 else 6
    per = 8 // bits
    B, R, D = sp.shape
    sp = sp.astype(np.float64).reshape(B, R, per, D // per).transpose(0, 1, 3, 2).reshape(B, R, D)
    kp = kp.astype(np.float64).reshape(B, R, per, D // per).transpose(0, 1, 3, 2).reshape(B, R, D)
    s = sp * 2.0 ** b
    return s.astype(np.uint8), (kp + 1024 * sp).astype(np.int8)


class TurboKVCache(DecodeCache):
    """TurboAttention's progressive cache on the device (see the module docstring).

    Fields (token capacity ``cap``, a multiple of ``nb = buffer_tokens``):
    ``store[bits] = (heads int32 [ng], k_codes uint8 [B, ng, cap, D*bits/8], v_codes)``;
    ``k_scale``/``k_zero`` uint8/int8 ``[B, Hkv, *group_grid(k_groups, k_group_size, cap, D)]``,
    ``v_scale``/``v_zero`` likewise; ``k_flag``/``v_flag`` uint8 ``[B, Hkv, cap/nb]`` (1: the
    flushed block has an element that reads back above 127); ``k_scale8``/``v_scale8`` f32
    ``[B, Hkv, cap/nb + 1]`` (flushed blocks, then the open block); ``k_buf``/``v_buf`` int8
    ``[B, Hkv, nb, D]``.
    """

    method = "turbo"

    def __init__(self, k, v, spec, calibration):
        torch = torch_module()
        check_integer_spec(spec)
        B, Hkv, L, D = k.shape
        check_cache_layout(spec, D)
        kvc = spec.kvcache
        calibration = as_head_priority(calibration if calibration is not None else
                                       _oracle_priority(k, v), Hkv)
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
            shape = (B, len(heads), cap, D * bits // 8)
            self.store[bits] = (torch.as_tensor(heads.astype(np.int32), device=dev),
                                torch.zeros(shape, dtype=torch.uint8, device=dev),
                                torch.zeros(shape, dtype=torch.uint8, device=dev))
        self.k_scale, self.k_zero = _grid(kvc.k_groups, kvc.k_group_size, B, Hkv, cap, D, dev)
        self.v_scale, self.v_zero = _grid(kvc.v_groups, kvc.v_group_size, B, Hkv, cap, D, dev)
        self.k_flag = torch.zeros((B, Hkv, cap // nb), dtype=torch.uint8, device=dev)
        self.v_flag = torch.zeros((B, Hkv, cap // nb), dtype=torch.uint8, device=dev)
        self.k_scale8 = torch.ones((B, Hkv, cap // nb + 1), dtype=torch.float32, device=dev)
        self.v_scale8 = torch.ones((B, Hkv, cap // nb + 1), dtype=torch.float32, device=dev)
        self.k_buf = torch.zeros((B, Hkv, nb, D), dtype=torch.int8, device=dev)
        self.v_buf = torch.zeros((B, Hkv, nb, D), dtype=torch.int8, device=dev)
        self._prefill(k, v, L)

    # -- construction ----------------------------------------------------------------------
    @property
    def cap(self) -> int:
        return self.k_flag.shape[2] * self.nb

    @property
    def flushed(self) -> int:
        return self.length - self.nbuf

    def _reserve(self, tokens: int) -> None:
        if tokens <= self.cap:
            return
        kvc = self.kvc
        cap = capacity(tokens, self.cap, self.nb)
        for bits, (heads, kc, vc) in self.store.items():
            self.store[bits] = (heads, grow(kc, 2, cap), grow(vc, 2, cap))
        kr = _grid_rows(kvc.k_groups, kvc.k_group_size, cap)
        vr = _grid_rows(kvc.v_groups, kvc.v_group_size, cap)
        self.k_scale, self.k_zero = grow(self.k_scale, 2, kr), grow(self.k_zero, 2, kr)
        self.v_scale, self.v_zero = grow(self.v_scale, 2, vr), grow(self.v_zero, 2, vr)
        self.k_flag, self.v_flag = grow(self.k_flag, 2, cap // self.nb), grow(self.v_flag, 2,
                                                                                cap // self.nb)
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
                k8, v8, kc, vc, self.k_scale, self.k_zero, self.v_scale, self.v_zero,
                self.k_flag, self.v_flag, heads, *k8.stride(), *v8.stride(), 0, dst0, b0,
                self.Hkv, ng, self.cap, self.k_flag.shape[2], D=self.D, NB=self.nb,
                KG=kvc.k_group_size, VG=kvc.v_group_size, K_PC=kvc.k_groups == "per_channel",
                V_PC=kvc.v_groups == "per_channel", BITS=bits, num_warps=4)

    def _prefill(self, k, v, L: int) -> None:
        """The prefill's INT8 quantization kernel then the pack kernel, ``_CHUNK`` tokens (whole
        blocks) of one batch at a time: the INT8 scratch is ``2 * Hkv * _CHUNK * D`` bytes."""
        spec, nb = self.spec, self.nb
        nf = L // nb * nb
        chunk = max(nb, _CHUNK // nb * nb)
        for b in range(self.B):
            for c0 in range(0, L, chunk):
                c1 = min(L, c0 + chunk)
                kq = quantize_operand(k[b:b + 1, :, c0:c1], spec.k, spec.tiling.block_n,
                                      check=False, name="k")
                vq = quantize_operand(v[b:b + 1, :, c0:c1], spec.v, spec.tiling.block_n,
                                      check=False, name="v")
                full = (min(c1, nf) - c0) // nb
                self._pack(kq.codes, vq.codes, full, c0, b)
                nblk = kq.scale.shape[2]
                self.k_scale8[b, :, c0 // nb:c0 // nb + nblk].copy_(kq.scale[0])
                self.v_scale8[b, :, c0 // nb:c0 // nb + nblk].copy_(vq.scale[0])
                if c1 > nf:  # the open block: the quant kernel's codes of the partial last block
                    self.k_buf[b, :, :c1 - nf].copy_(kq.codes[0, :, nf - c0:])
                    self.v_buf[b, :, :c1 - nf].copy_(vq.codes[0, :, nf - c0:])
        self.length, self.nbuf = L, L - nf

    def _check_values(self, k_new, v_new) -> None:
        """Finite tokens and, with fp16 INT8 scales, ``absmax / 127`` within fp16: one device
        reduction, one sync, before anything is written."""
        torch = torch_module()
        no = torch.zeros((), dtype=torch.bool, device=k_new.device)
        flags = [~torch.isfinite(k_new).all(), ~torch.isfinite(v_new).all()]
        for x, op in ((k_new, self.spec.k), (v_new, self.spec.v)):
            flags.append(torch.isinf((x.abs().amax().float() / 127).half())
                         if op.scale_dtype == "fp16" else no)
        bad = torch.stack(flags).cpu().tolist()                  # one sync
        for i, name in enumerate(("k_new", "v_new")):
            if bad[i]:
                raise ValueError(f"{name}: expected finite values, got NaN or Inf")
        for i, name in enumerate(("k_new", "v_new")):
            if bad[2 + i]:
                raise ValueError(f"{name}: absmax / 127 of the new tokens exceeds the fp16 "
                                 f"maximum of the INT8 scale (spec.{name[0]}.scale_dtype fp16)")

    def _append(self, k_new, v_new, check: bool) -> None:
        """INT8 append kernel into the open block (re-scaling its codes when the block's absmax
        grows, as ``sim.methods.turbo.TurboCache.append``), flush kernel whenever the buffer
        fills. Every check (:meth:`_check_values`) runs first: nothing after it raises."""
        if check:
            self._check_values(k_new, v_new)
        n = k_new.shape[2]
        kc_mod = kernels("cache")
        spec, nb = self.spec, self.nb
        self._reserve(self.length + n)
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
            pos += take
            self.nbuf += take
            self.length += take
            if self.nbuf == nb:
                self._pack(self.k_buf, self.v_buf, 1, self.length - nb)
                self.nbuf = 0

    # -- reading (for validation) ----------------------------------------------------------
    def packed(self, h: int) -> dict:
        """Head ``h``'s flushed store as numpy, the fields of ``sim.methods.turbo._Packed``."""
        T = self.flushed
        bits = int(self.bits[h])
        _, kc, vc = self.store[bits]
        s = int(self.slot[h])
        kvc = self.kvc
        kr = _grid_rows(kvc.k_groups, kvc.k_group_size, T)
        vr = _grid_rows(kvc.v_groups, kvc.v_group_size, T)
        out = {"k_codes": kc[:, s, :T].cpu().numpy(), "v_codes": vc[:, s, :T].cpu().numpy()}
        for name, sc, zc, r, groups in (("k", self.k_scale, self.k_zero, kr, kvc.k_groups),
                                        ("v", self.v_scale, self.v_zero, vr, kvc.v_groups)):
            a, b = sc[:, h, :r].float().cpu().numpy(), zc[:, h, :r].float().cpu().numpy()
            if groups == "per_channel":
                a, b = _integer_grid(a, b, bits)
            out[f"{name}_scale"], out[f"{name}_zero"] = a.astype(np.uint8), b.astype(np.int8)
        return out

    def clamp_flags(self):
        """(K, V) clamp flags of the flushed blocks ``[B, Hkv, flushed / nb]`` as numpy."""
        n = self.flushed // self.nb
        return self.k_flag[:, :, :n].cpu().numpy(), self.v_flag[:, :, :n].cpu().numpy()

    def scales8(self):
        """INT8 block scales ``[B, Hkv, ceil(length / nb)]`` (K, V) as numpy."""
        nblk = -(-self.length // self.nb)
        return (self.k_scale8[:, :, :nblk].cpu().numpy(), self.v_scale8[:, :, :nblk].cpu().numpy())

    def nbytes(self, detail: bool = False):
        """Bytes by the accounting of ``sim.methods.turbo.cache_nbytes`` (buffer at capacity);
        the clamp flags (one byte per flushed block and operand, derived data) are
        counted by :meth:`device_nbytes`."""
        return cache_nbytes(self.spec, self.bits, self.length, self.D, batch=self.B,
                            detail=detail)

    def device_nbytes(self) -> int:
        """Bytes the device holds for the cache's contents: :meth:`nbytes`, plus the clamp flags
        (a byte per flushed block and operand) and, for per-channel groups, the second byte
        of their fp16 scale and zero (the kernels' operand form, see gpu.kernels.cache)."""
        kvc, n = self.kvc, self.flushed // self.nb
        extra = 2 * self.B * self.Hkv * n
        for groups, size in ((kvc.k_groups, kvc.k_group_size), (kvc.v_groups, kvc.v_group_size)):
            if groups == "per_channel":
                extra += 2 * self.B * self.Hkv * _grid_rows(groups, size, self.flushed) * self.D
        return self.nbytes() + extra


def _oracle_priority(k, v) -> HeadPriority:
    """``(max - min) * std`` of each KV head's K and V entries in float64, two passes over
    chunks of ``_PRIORITY_CHUNK`` elements (no float64 copy of the cache)."""
    torch = torch_module()
    B, Hkv, L, D = k.shape
    step = max(1, _PRIORITY_CHUNK // (B * D))
    n = 2 * B * L * D
    out = np.empty(Hkv, np.float64)
    for h in range(Hkv):
        parts = [(x, t0) for x in (k, v) for t0 in range(0, L, step)]
        mx = mn = tot = None
        for x, t0 in parts:
            c = x[:, h, t0:t0 + step].double()
            a, b_, s_ = c.max(), c.min(), c.sum()
            mx = a if mx is None else torch.maximum(mx, a)
            mn = b_ if mn is None else torch.minimum(mn, b_)
            tot = s_ if tot is None else tot + s_
        mean = tot / n
        sq = sum(((x[:, h, t0:t0 + step].double() - mean) ** 2).sum() for x, t0 in parts)
        out[h] = float((mx - mn) * torch.sqrt(sq / n))
    return HeadPriority(out, "oracle")


def _decode(q, cache: TurboKVCache, sm: float, launch: dict | None, trace: bool):
    torch = torch_module()
    kd = kernels("turbo_decode")
    spec = cache.spec
    B, Hq, _, D = q.shape
    Hkv, nb, L = cache.Hkv, cache.nb, cache.length
    G = Hq // Hkv
    launch = dict(launch or {})
    # the read-back clamp min(., 127): "always" (default: one min.f16x2 per two codes, no
    # branch, so the loop software-pipelines), "flags" (only in blocks the flush kernel flagged:
    # a branch per tile that stops the pipelining; slower on the H200,
    # reports/bench/decode_dev), "never" (a timing variant, wrong where a block clamps)
    clamp = launch.pop("clamp", "always")
    if clamp not in _CLAMP_MODES:
        raise ValueError(f"launch['clamp']: expected one of {list(_CLAMP_MODES)}, got {clamp!r}")
    # timing variants: stop after Q quantization / the scores pass (returns None)
    until = launch.pop("until", None)
    kvc = cache.kvc
    BG = 1 << (G - 1).bit_length()
    # one query row: per_block / per_head / per_token Q scales all cover exactly that row, so
    # the per-token kernel computes the spec's codes and scales (and avoids looping a 128-token
    # group over a single row)
    qop = dataclasses.replace(spec.q, granularity="per_token", block_tokens=None)
    qq = quantize_operand(q, qop, spec.tiling.block_m, check=False, name="q")
    if until == "quant":
        return None
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
    interp = interpreting()
    nfl = cache.k_flag.shape[2]
    kgrid = cache.k_scale[0, 0].numel()
    vgrid = cache.v_scale[0, 0].numel()
    for bits, (heads, kc, vc) in cache.store.items():
        kd.turbo_scores_kernel[(splits, B * heads.shape[0])](
            q8, qs, kc, cache.k_scale, cache.k_zero, cache.k_flag, cache.k_buf, cache.k_scale8,
            sout, tmax, tsi, heads, qk_scale, Hq, Hkv, G, heads.shape[0], L, NT, NT_FL,
            cache.cap, kgrid, nfl, cache.k_scale8.shape[2], LKP, tps, D=D, BN=nb, BG=BG,
            BITS=bits, K_PC=kvc.k_groups == "per_channel", KG=kvc.k_group_size,
            TRACE=bool(trace), INTERP=interp, CLAMP_MODE=_CLAMP_MODES[clamp], num_warps=warps,
            num_stages=stages, enable_fp_fusion=False)
    if until == "scores":
        return None
    for bits, (heads, kc, vc) in cache.store.items():
        kd.turbo_pv_kernel[(splits, B * heads.shape[0])](
            sout, tmax, vc, cache.v_scale, cache.v_zero, cache.v_flag, cache.v_buf,
            cache.v_scale8, acc, ls, as_, tp, to, heads, Hq, Hkv, G, heads.shape[0], L, NT,
            NT_FL, cache.cap, vgrid, nfl, cache.v_scale8.shape[2], LKP, tps, splits,
            D=D, BN=nb, BG=BG, BITS=bits, V_PC=kvc.v_groups == "per_channel",
            VG=kvc.v_group_size, **pconst, **sas, EXACT_FMA_F64=interp, TMCHUNK=64,
            TRACE=bool(trace), INTERP=interp, CLAMP_MODE=_CLAMP_MODES[clamp], num_warps=warps,
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
                 "splits": splits}


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
    return TurboKVCache(k, v, spec, calibration)


PATH = KernelPath("turbo", check_spec=_check_spec, prefill=integer_prefill, cache=_cache,
                  decode=_decode, compare_cache=compare_cache)
