"""turbo, the simulator path: TurboAttention's prefill runs the dense integer path
(:mod:`sim.dense` with SAS, docs/numerics.md "turbo"); its decode state is the FlashQ KV cache,
an INT8 buffer + progressive INT4/INT2 storage per head, below.

Layout and rules (docs/numerics.md, "turbo KV cache"), per (batch, KV head):

- INT8 codes: K and V are quantized as the compute path does (``spec.k`` / ``spec.v``, per block
  of ``block_n`` tokens aligned at position 0, one fp32 scale per block). The buffer length
  ``buffer_tokens`` must equal that block, so a flushed group is exactly one INT8 block and its
  scale travels with it.
- Flush rule: tokens are appended one position at a time; after token ``t`` is appended (cache
  length ``t + 1``), if the buffer holds ``buffer_tokens`` tokens it is re-quantized and emptied.
  So when the row at absolute position ``p`` attends (after its own token was appended), keys
  ``j < c(p) = floor((p + 1) / nb) * nb`` are read re-quantized and keys ``c(p) <= j <= p`` as
  INT8: the buffer always holds the newest ``(p + 1) mod nb < nb`` tokens.
- Re-quantization (``sim.numerics.requantize``, integer scale and zero) of each flushed block,
  grouped as ``spec.kvcache`` says (``k_groups``/``v_groups``, sizes along the other axis):
  ``per_channel`` = one scale/zero per channel over ``group_size`` consecutive tokens of the
  block (``requantize(axis=-2)``), ``per_token`` = one per token over ``group_size`` consecutive
  channels (``axis=-1``). Default (KIVI's axes): K per channel over the block's 64 tokens, V per
  token over 32 channels; ``turbo_token_k`` ships the opposite layout. High-priority heads get
  ``high_bits``, the ``round(low_share * Hkv)`` lowest-priority heads ``low_bits``.
- Reading: ``to_int8`` (integer only), then the int8 tile sequence with the INT8 block scale.
- Head priority (``range_std``): ``(max - min) * std`` over all K and V entries of the head
  (every batch and token), from a calibration (:class:`HeadPriority`) or the call's own inputs
  ("oracle"). Ties rank the lower head index as lower priority.

Byte accounting (:meth:`TurboCache.nbytes`, per (batch, KV head)), every stored field counted:
packed codes (``ceil(D * bits / 8)`` bytes per token for K and for V), the scale+zero of every
K and V group (``scale_bits + zero_bits`` each: per_channel ``ceil(T / size) * D`` groups,
per_token ``T * ceil(D / size)`` for ``T`` flushed tokens), the
fp32 INT8 block scale of every flushed block (K and V), and the INT8 buffer at its full capacity
``buffer_tokens`` (codes + its two fp32 scales), since that memory is reserved whatever its fill.

>>> from sim import load_method
>>> spec = load_method("turbo")
>>> round(compression_vs_fp16(spec, tokens=4096, head_dim=128, kv_heads=32), 2)
4.41
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import check_qkv, check_sm_scale
from ..dense import IntegerOperands, exact_dot, run_dense
from ..engine import SimResult, online_softmax, qk_scale_of
from ..numerics.packing import pack, unpack
from ..numerics.quantize import quantize
from ..numerics.requantize import Requantized, requantize
from ..operands import int_kv_bytes, pquant, quantize_operand, token_scale, v_tile_factor
from ..softmax import exp_fns
from .base import CalibrationKind, SimMethod

__all__ = ["HeadPriority", "head_priority", "head_bits", "TurboCache", "cache_nbytes",
           "compression_vs_fp16", "compressed_len", "simulate_turbo_cache", "group_grid",
           "requant_axis"]


# --------------------------------------------------------------------------------------------
# head priority
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HeadPriority:
    """Per-KV-head priority ``(max - min) * std`` of the head's K and V entries (float64 [Hkv])."""

    priority: np.ndarray
    source: str = "oracle"

    def __post_init__(self):
        p = np.asarray(self.priority)
        if p.ndim != 1 or p.dtype != np.float64 or not np.isfinite(p).all() or p.size == 0:
            raise ValueError(f"priority: expected a finite float64 [Hkv] array, got {p.dtype} {p.shape}")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"kind": "turbo.head_priority", "source": self.source,
                                    "priority": [float(x) for x in self.priority]}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadPriority":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path: no head-priority file at {path}")
        d = json.loads(path.read_text())
        if d.get("kind") != "turbo.head_priority":
            raise ValueError(f"path: {path} holds {d.get('kind')!r}, not turbo.head_priority")
        return cls(np.asarray(d["priority"], np.float64), d["source"])


def head_priority(k, v, *, source: str = "oracle") -> HeadPriority:
    """``range * std`` of each KV head's K and V entries together (all batches and tokens)."""
    B, _, Hkv, _, Lk, D, Dv, _ = check_qkv(k, k, v)
    kk = np.asarray(k, np.float64).transpose(1, 0, 2, 3).reshape(Hkv, -1)
    vv = np.asarray(v, np.float64).transpose(1, 0, 2, 3).reshape(Hkv, -1)
    x = np.concatenate([kk, vv], axis=1)
    return HeadPriority((x.max(1) - x.min(1)) * x.std(1), source)


def head_bits(kvcache, priority: np.ndarray) -> np.ndarray:
    """Bits per KV head: ``low_bits`` for the ``round_half_up(low_share * Hkv)`` lowest-priority
    heads (ties: lower index first), ``high_bits`` for the rest.

    >>> from sim import load_method
    >>> head_bits(load_method("turbo").kvcache, np.array([3.0, 1.0, 2.0, 1.0])).tolist()
    [4, 2, 4, 2]
    """
    p = np.asarray(priority, np.float64)
    n_low = int(math.floor(kvcache.low_share * p.size + 0.5))
    bits = np.full(p.size, kvcache.high_bits, np.int64)
    bits[np.argsort(p, kind="stable")[:n_low]] = kvcache.low_bits
    return bits


# --------------------------------------------------------------------------------------------
# byte accounting
# --------------------------------------------------------------------------------------------
def compressed_len(length: int, buffer_tokens: int) -> int:
    """Tokens already re-quantized when the cache holds ``length`` tokens (flush rule above)."""
    return (length // buffer_tokens) * buffer_tokens


def requant_axis(groups: str) -> int:
    """The ``requantize`` axis of a ``[..., tokens, channels]`` block for ``k_groups`` /
    ``v_groups``: per_channel groups run along tokens (-2), per_token along channels (-1)."""
    if groups not in ("per_channel", "per_token"):
        raise ValueError(f"groups: expected 'per_channel' or 'per_token', got {groups!r}")
    return -2 if groups == "per_channel" else -1


def group_grid(groups: str, size: int, tokens: int, dim: int) -> tuple[int, int]:
    """Shape ``(rows, cols)`` of the scale (and zero) grid of ``tokens`` flushed tokens of
    ``dim`` channels: per_channel ``(ceil(tokens / size), dim)``, per_token
    ``(tokens, ceil(dim / size))``.

    >>> group_grid("per_channel", 64, 128, 32), group_grid("per_token", 32, 128, 64)
    ((2, 32), (128, 2))
    """
    if requant_axis(groups) == -2:
        return -(-tokens // size), dim
    return tokens, -(-dim // size)


def _head_bytes(kvc, bits: int, tokens: int, D: int, Dv: int) -> dict:
    tc = compressed_len(tokens, kvc.buffer_tokens)
    gbytes = (kvc.scale_bits + kvc.zero_bits) / 8
    return {
        "k_codes": tc * math.ceil(D * bits / 8),
        "v_codes": tc * math.ceil(Dv * bits / 8),
        "k_scale_zero": math.prod(group_grid(kvc.k_groups, kvc.k_group_size, tc, D)) * gbytes,
        "v_scale_zero": math.prod(group_grid(kvc.v_groups, kvc.v_group_size, tc, Dv)) * gbytes,
        "int8_block_scales": 2 * 4 * (tc // kvc.buffer_tokens),
        "buffer": kvc.buffer_tokens * (D + Dv) + 2 * 4,
    }


def cache_nbytes(spec, bits_per_head, tokens: int, head_dim: int, v_dim: int | None = None,
                 batch: int = 1, detail: bool = False):
    """Bytes of the cache holding ``tokens`` tokens for heads of ``bits_per_head`` (see module
    doc); ``detail=True`` returns the per-field sums instead of the total."""
    kvc = check_cache_spec(spec)
    if not isinstance(tokens, (int, np.integer)) or tokens < 0:
        raise ValueError(f"tokens: expected a non-negative int, got {tokens!r}")
    v_dim = head_dim if v_dim is None else v_dim
    tot: dict[str, float] = {}
    for b in np.asarray(bits_per_head).tolist():
        for key, val in _head_bytes(kvc, int(b), int(tokens), head_dim, v_dim).items():
            tot[key] = tot.get(key, 0) + batch * val
    return tot if detail else sum(tot.values())


def compression_vs_fp16(spec, *, tokens: int = 4096, head_dim: int = 128, kv_heads: int = 32,
                        bits_per_head=None) -> float:
    """FP16 K+V bytes / cache bytes at ``tokens`` tokens. ``bits_per_head`` defaults to the
    spec's share: ``round(low_share * kv_heads)`` heads at low_bits."""
    kvc = check_cache_spec(spec)
    if bits_per_head is None:
        bits_per_head = head_bits(kvc, np.arange(kv_heads, dtype=np.float64))
    fp16 = kv_heads * tokens * head_dim * 2 * 2
    return fp16 / cache_nbytes(spec, bits_per_head, tokens, head_dim)


def check_cache_spec(spec):
    kvc = getattr(spec, "kvcache", None)
    if kvc is None:
        raise ValueError(f"spec: expected a turbo spec with a kvcache section, got "
                         f"{getattr(spec, 'method', type(spec).__name__)!r}")
    if kvc.buffer_tokens != spec.tiling.block_n:
        raise ValueError(f"spec.kvcache.buffer_tokens: expected the INT8 block "
                         f"(tiling.block_n = {spec.tiling.block_n}) so a flushed group is one "
                         f"INT8 block, got {kvc.buffer_tokens}")
    for name in ("k", "v"):
        op = getattr(spec, name)
        if op.granularity != "per_block" or (op.block_tokens or spec.tiling.block_n) != kvc.buffer_tokens:
            raise ValueError(f"spec.{name}: the KV cache needs per_block INT8 codes with "
                             f"{kvc.buffer_tokens}-token blocks, got {op.granularity} "
                             f"({op.block_tokens or spec.tiling.block_n} tokens)")
    return kvc


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------
def _quant8(x: np.ndarray, op, block_n: int, name: str = "k"):
    """The compute path's INT8 quantization (sim.operands.quantize_operand)."""
    q = quantize_operand(np.ascontiguousarray(x), op, block_n, name)
    return q.codes, q.scale[..., 0]          # int8 [B, H, L, D], f32 [B, H, nblocks]


@dataclass(eq=False)
class _Packed:
    """One head's re-quantized store: packed codes + integer scale/zero (one batch axis kept)."""

    k_codes: np.ndarray      # uint8 [B, T, ceil(D*bits/8)]
    k_scale: np.ndarray      # uint8 [B, *group_grid(k_groups, k_group_size, T, D)]
    k_zero: np.ndarray       # int8, as k_scale
    v_codes: np.ndarray      # uint8 [B, T, ceil(Dv*bits/8)]
    v_scale: np.ndarray      # uint8 [B, *group_grid(v_groups, v_group_size, T, Dv)]
    v_zero: np.ndarray


def _read_int8(codes: np.ndarray, scale, zero, bits: int, groups: str, size: int) -> np.ndarray:
    """``clamp(code * scale + zero, -127, 127)`` of one head's flushed codes ``[B, T, D]``
    (``sim.numerics.requantize``'s read-back, on the group grid of ``groups``)."""
    axis = requant_axis(groups) % 3
    g = min(size, codes.shape[axis])
    block = (1, g, 1) if axis == 1 else (1, 1, g)
    return Requantized(codes, scale, zero, bits, 8, axis, g, block).to_int8()


@dataclass(eq=False)
class TurboCache:
    """Progressive FlashQ KV cache for ``[B, Hkv, L, D]`` K/V (see the module docstring).

    Build with :meth:`from_prefill`, grow with :meth:`append`; :meth:`int8` returns the INT8
    codes a decode step reads (flushed part re-quantized and back to INT8 with integers only).
    """

    spec: object
    bits: np.ndarray                     # [Hkv] bits per KV head
    k_scale8: np.ndarray                 # f32 [B, Hkv, nblocks] INT8 block scales
    v_scale8: np.ndarray
    store: list                          # [Hkv] of _Packed (flushed tokens)
    k_buf: np.ndarray                    # int8 [B, Hkv, nbuf, D]
    v_buf: np.ndarray
    length: int = 0
    source: str = "oracle"
    _Dv: int = field(default=0, repr=False)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_prefill(cls, k, v, spec, *, priority: HeadPriority | None = None) -> "TurboCache":
        """The cache after appending all of ``k``/``v`` token by token."""
        kvc = check_cache_spec(spec)
        B, _, Hkv, _, L, D, Dv, _ = check_qkv(k, k, v)
        pr = priority if priority is not None else head_priority(k, v)
        if pr.priority.shape != (Hkv,):
            raise ValueError(f"priority: expected {Hkv} KV heads, got {pr.priority.shape[0]}")
        k8, ks = _quant8(k, spec.k, spec.tiling.block_n)
        v8, vs = _quant8(v, spec.v, spec.tiling.block_n, "v")
        tc = compressed_len(L, kvc.buffer_tokens)
        bits = head_bits(kvc, pr.priority)
        store = [cls._compress(kvc, int(bits[h]), k8[:, h, :tc], v8[:, h, :tc]) for h in range(Hkv)]
        return cls(spec, bits, ks, vs, store, k8[:, :, tc:].copy(), v8[:, :, tc:].copy(), L,
                   pr.source, Dv)

    @staticmethod
    def _requant(kvc, bits: int, k8h: np.ndarray, v8h: np.ndarray):
        rk = requantize(k8h, 8, bits, axis=requant_axis(kvc.k_groups), group=kvc.k_group_size)
        rv = requantize(v8h, 8, bits, axis=requant_axis(kvc.v_groups), group=kvc.v_group_size)
        return rk, rv

    @classmethod
    def _compress(cls, kvc, bits: int, k8h: np.ndarray, v8h: np.ndarray) -> _Packed:
        B, T, D = k8h.shape
        Dv = v8h.shape[-1]
        if T == 0:
            z = np.zeros
            kg = (B, *group_grid(kvc.k_groups, kvc.k_group_size, 0, D))
            vg = (B, *group_grid(kvc.v_groups, kvc.v_group_size, 0, Dv))
            return _Packed(z((B, 0, math.ceil(D * bits / 8)), np.uint8), z(kg, np.uint8),
                           z(kg, np.int8), z((B, 0, math.ceil(Dv * bits / 8)), np.uint8),
                           z(vg, np.uint8), z(vg, np.int8))
        if bits == 8:
            raise ValueError("bits: a re-quantized head must have fewer than 8 bits")
        rk, rv = cls._requant(kvc, bits, k8h, v8h)
        return _Packed(pack(rk.codes, bits), rk.scale, rk.zero, pack(rv.codes, bits), rv.scale,
                       rv.zero)

    def append(self, k_new, v_new) -> "TurboCache":
        """Append ``[B, Hkv, n, D]`` tokens (decode growth), flushing every full buffer.

        The open INT8 block's scale is its absmax so far: when a new token raises it, the
        buffer's codes are re-scaled in integers-from-float32 as ``rint(code * s_old / s_new)``
        (half-even, f32), the cost of quantizing a block whose tokens arrive one by one. A
        block appended whole gets exactly the codes of :meth:`from_prefill`.

        Transactional: an append that raises (bad shape, non-finite token, a scale beyond its
        dtype's range) leaves the cache exactly as it was.
        """
        kvc = check_cache_spec(self.spec)
        B, _, Hkv, _, n, D, Dv, _ = check_qkv(k_new, k_new, v_new)
        if (B, Hkv, D, Dv) != (self.k_buf.shape[0], self.k_buf.shape[1], self.k_buf.shape[3],
                               self.v_buf.shape[3]):
            raise ValueError(f"k_new: expected [B={self.k_buf.shape[0]}, Hkv={self.k_buf.shape[1]}, "
                             f"n, D={self.k_buf.shape[3]}], got {tuple(np.shape(k_new))}")
        saved = self._state()
        try:
            self._append(kvc, np.asarray(k_new), np.asarray(v_new), n)
        except BaseException:
            self._restore(saved)
            raise
        return self

    _FIELDS = ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero")

    def _state(self) -> tuple:
        """References to every array the append replaces (it never writes one in place)."""
        return (self.k_buf, self.v_buf, self.k_scale8, self.v_scale8, self.length,
                [tuple(getattr(st, f) for f in self._FIELDS) for st in self.store])

    def _restore(self, saved: tuple) -> None:
        self.k_buf, self.v_buf, self.k_scale8, self.v_scale8, self.length, store = saved
        for st, arrays in zip(self.store, store):
            for f, a in zip(self._FIELDS, arrays):
                setattr(st, f, a)

    def _append(self, kvc, k_new: np.ndarray, v_new: np.ndarray, n: int) -> None:
        nb = kvc.buffer_tokens
        pos = 0
        while pos < n:
            room = nb - self.k_buf.shape[2]
            take = min(room, n - pos)
            self._extend(k_new[:, :, pos:pos + take], v_new[:, :, pos:pos + take])
            pos += take
            self.length += take
            if self.k_buf.shape[2] == nb:
                self._flush(kvc)

    def _extend(self, kc: np.ndarray, vc: np.ndarray) -> None:
        fresh = self.k_buf.shape[2] == 0
        for name, x, op in (("k", kc, self.spec.k), ("v", vc, self.spec.v)):
            buf = getattr(self, f"{name}_buf")
            sc = getattr(self, f"{name}_scale8")
            codes_new, s_new = _quant8(x, op, self.spec.tiling.block_n, name)
            s_new = s_new[..., 0]
            if fresh:
                merged_s = s_new
                old = buf
            else:
                s_old = sc[..., -1]
                merged_s = np.maximum(s_old, s_new)
                ratio = (s_old / merged_s).astype(np.float32)[..., None, None]
                old = np.rint(buf.astype(np.float32) * ratio).astype(np.int8)
                if np.any(s_new < merged_s):        # requantize the new tokens on the open scale
                    codes_new = quantize(np.ascontiguousarray(x), 8, symmetric=True,
                                         block=(1, 1, None, None), rounding=op.rounding,
                                         scale_dtype=op.scale_dtype,
                                         scale=merged_s[..., None, None]).codes
            setattr(self, f"{name}_buf", np.concatenate([old, codes_new], axis=2))
            if fresh:
                setattr(self, f"{name}_scale8", np.concatenate([sc, merged_s[..., None]], axis=2))
            else:
                sc = sc.copy()
                sc[..., -1] = merged_s
                setattr(self, f"{name}_scale8", sc)

    def _flush(self, kvc) -> None:
        for h, st in enumerate(self.store):
            new = self._compress(kvc, int(self.bits[h]), self.k_buf[:, h], self.v_buf[:, h])
            for f in self._FIELDS:
                setattr(st, f, np.concatenate([getattr(st, f), getattr(new, f)], axis=1))
        self.k_buf = self.k_buf[:, :, :0]
        self.v_buf = self.v_buf[:, :, :0]

    # -- reading ---------------------------------------------------------------------------
    @property
    def flushed(self) -> int:
        return compressed_len(self.length, self.spec.kvcache.buffer_tokens)

    def int8(self) -> tuple[np.ndarray, np.ndarray]:
        """INT8 K and V codes ``[B, Hkv, length, D]`` as a decode step reads them."""
        kvc = self.spec.kvcache
        tc = self.flushed
        B, Hkv, _, D = self.k_buf.shape
        Dv = self.v_buf.shape[3]
        k8 = np.empty((B, Hkv, self.length, D), np.int8)
        v8 = np.empty((B, Hkv, self.length, Dv), np.int8)
        k8[:, :, tc:] = self.k_buf
        v8[:, :, tc:] = self.v_buf
        if tc:
            for h, st in enumerate(self.store):
                bits = int(self.bits[h])
                k8[:, h, :tc] = _read_int8(unpack(st.k_codes, bits, D), st.k_scale, st.k_zero,
                                           bits, kvc.k_groups, kvc.k_group_size)
                v8[:, h, :tc] = _read_int8(unpack(st.v_codes, bits, Dv), st.v_scale, st.v_zero,
                                           bits, kvc.v_groups, kvc.v_group_size)
        return k8, v8

    def nbytes(self, detail: bool = False):
        """Bytes actually held: the packed arrays, scales/zeros, INT8 block scales of flushed
        blocks (fp32) and the buffer at capacity; equals :func:`cache_nbytes` for this state."""
        kvc = self.spec.kvcache
        B, Hkv, _, D = self.k_buf.shape
        Dv = self.v_buf.shape[3]
        gb = (kvc.scale_bits + kvc.zero_bits) / 8
        d = {"k_codes": 0, "v_codes": 0, "k_scale_zero": 0, "v_scale_zero": 0,
             "int8_block_scales": 2 * 4 * B * Hkv * (self.flushed // kvc.buffer_tokens),
             "buffer": B * Hkv * (kvc.buffer_tokens * (D + Dv) + 2 * 4)}
        for st in self.store:
            d["k_codes"] += st.k_codes.size
            d["v_codes"] += st.v_codes.size
            d["k_scale_zero"] += st.k_scale.size * gb
            d["v_scale_zero"] += st.v_scale.size * gb
        return d if detail else sum(d.values())


# --------------------------------------------------------------------------------------------
# cache-mode simulate
# --------------------------------------------------------------------------------------------
def as_head_priority(calibration, Hkv: int) -> HeadPriority:
    """``calibration`` (a HeadPriority or a path to a saved one) checked for ``Hkv`` KV heads.
    Shared by the simulator and the GPU cache so both accept and refuse the same inputs."""
    if isinstance(calibration, (str, os.PathLike)):
        calibration = HeadPriority.load(calibration)
    if not isinstance(calibration, HeadPriority):
        raise TypeError(f"calibration: expected a sim.methods.turbo.HeadPriority, a path to one, or "
                        f"None; got {type(calibration).__name__}")
    if calibration.priority.shape != (Hkv,):
        raise ValueError(f"calibration: expected a priority per KV head ({Hkv}), got "
                         f"{calibration.priority.shape[0]}")
    return calibration


def _priority_for(calibration, k, v, Hkv) -> HeadPriority:
    return head_priority(k, v) if calibration is None else as_head_priority(calibration, Hkv)


def simulate_turbo_cache(q, k, v, spec, *, causal: bool = False, sm_scale=None,
                         calibration=None, trace: bool = False):
    """Turbo with K/V read from the progressive cache (``simulate(..., kv_cache=True)``).

    Row ``i`` is the query at absolute position ``p = i + Lk - Lq`` (causal) and reads the cache
    as it is after token ``p`` was appended: keys ``j < compressed_len(p + 1)`` re-quantized
    (INT4/INT2 -> INT8 with integers), the rest as INT8. Without ``causal`` every row reads the
    cache after all ``Lk`` tokens (``compressed_len(Lk)`` keys re-quantized). Then the int8 tile
    sequence of docs/numerics.md (turbo) with the spec's EXP (SAS or exp2): S_int from the row's
    K codes, ``(f32(S_int) * qf) * k_scale``, PQUANT, ``O_int = P8 . V8`` (the row's V codes),
    ``f32(O_int) * vf``.

    Trace: the dense path's integer intermediates (``q_codes``, ``k_codes``/``v_codes`` (the
    INT8 codes before the cache), ``s_int``, ``p_codes``, ``p``, ``o_int``, ``visible``: S_int
    and O_int of the keys as the row reads them), ``head_bits`` [Hkv], ``priority``,
    ``calibration`` ("oracle" or the source),
    ``compressed`` [Lq] (re-quantized keys per row), ``k_cache_int8`` / ``v_cache_int8`` (the
    final cache read back as INT8), ``cache_bytes`` (per field) and ``compression_vs_fp16``,
    and the engine's ``m``/``l``/``alpha`` per tile ``[B, Hq, n_tiles, Lq]`` (the dense layout).
    """
    if spec.method != "turbo":
        raise ValueError(f"spec: expected a turbo spec, got method {spec.method!r}")
    kvc = check_cache_spec(spec)
    B, Hq, Hkv, Lq, Lk, D, Dv, G = check_qkv(q, k, v)
    sm = check_sm_scale(sm_scale, D)
    pr = _priority_for(calibration, k, v, Hkv)
    cache = TurboCache.from_prefill(k, v, spec, priority=pr)
    k_hat, v_hat = cache.int8()
    bm, bn = spec.tiling.block_m, spec.tiling.block_n
    Q = quantize_operand(np.ascontiguousarray(q), spec.q, bm, "q")
    K = quantize_operand(np.ascontiguousarray(k), spec.k, bn, "k")
    V = quantize_operand(np.ascontiguousarray(v), spec.v, bn, "v")
    qs, ks_all = token_scale(Q, Lq), token_scale(K, Lk)
    pq = spec.p
    if pq.levels > 127:
        raise ValueError(f"spec.p.levels: expected <= 127 for int8 P codes, got {pq.levels}")
    qk_scale = qk_scale_of(sm)
    exp, rescale = exp_fns(spec.softmax)
    levels = np.float32(pq.levels)

    pos = np.arange(Lq) + (Lk - Lq) if causal else np.full(Lq, Lk - 1)
    comp = np.where(pos >= 0, (np.maximum(pos, -1) + 1) // kvc.buffer_tokens
                    * kvc.buffer_tokens, 0)
    n_tiles = -(-Lk // bn)
    out = np.zeros((B, Hq, Lq, Dv), np.float32)
    tm = tl = ta = None
    if trace:  # the dense path's layout: [B, Hq, n_tiles, Lq]
        tm = np.full((B, Hq, n_tiles, Lq), -np.inf, np.float32)
        tl = np.zeros((B, Hq, n_tiles, Lq), np.float32)
        ta = np.ones((B, Hq, n_tiles, Lq), np.float32)
        t_s = np.zeros((B, Hq, Lq, Lk), np.float32)      # S_int held exactly in f32
        t_p = np.zeros((B, Hq, Lq, Lk), np.float32)
        t_c = np.zeros((B, Hq, Lq, Lk), np.int8)
        t_o = np.zeros((B, Hq, n_tiles, Lq, Dv), np.float32)
    R = G * Lq
    row_pos = np.tile(pos, G)
    row_comp = np.tile(comp, G)
    keys = np.arange(Lk)
    for b in range(B):
        for g in range(Hkv):
            heads = slice(g * G, (g + 1) * G)
            qc = Q.codes[b, heads].reshape(R, D).astype(np.float32)
            qf = (qs[b, heads].reshape(R).astype(np.float32) * qk_scale)[:, None]
            kr = np.ascontiguousarray(K.codes[b, g].T.astype(np.float32))
            kh = np.ascontiguousarray(k_hat[b, g].T.astype(np.float32))
            vr, vh = V.codes[b, g].astype(np.float32), v_hat[b, g].astype(np.float32)
            ksg = np.asarray(ks_all[b, g], np.float32)
            vf = [v_tile_factor(V, pq.levels, b, g, t, bn) for t in range(n_tiles)]

            def hat(sl):
                return keys[sl][None, :] < row_comp[:, None]

            def scores(sl):
                S = np.where(hat(sl), exact_dot(qc, kh[:, sl]), exact_dot(qc, kr[:, sl]))
                if trace:
                    g_s[:, sl] = S
                S = S * qf
                S *= ksg[None, sl]
                return S.astype(np.float32)

            def valid(sl):
                if not causal:
                    return None
                return keys[sl][None, :] <= row_pos[:, None]

            def pv(p, sl):
                codes = pquant(p, pq)
                if spec.softmax.exp == "sas" and not pq.saturate and codes.max() > 127:
                    raise ValueError("spec.p.saturate: a P code exceeds 127; set p.saturate")
                c32 = codes.astype(np.float32)
                m = hat(sl)
                O = exact_dot(np.where(m, c32, 0), vh[sl]) + exact_dot(np.where(m, 0, c32), vr[sl])
                contrib = O * vf[sl.start // bn]
                psum = (p if pq.rowsum == "unquantized" else c32 / levels).sum(
                    axis=1, dtype=np.float32)
                if trace:
                    g_p[:, sl], g_c[:, sl], g_o[sl.start // bn] = p, codes, O
                return contrib, psum

            sub = {} if trace else None
            if trace:  # this group's rows [G * Lq, ...]; the engine skips fully masked tiles
                g_s = np.zeros((R, Lk), np.float32)
                g_p = np.zeros((R, Lk), np.float32)
                g_c = np.zeros((R, Lk), np.int8)
                g_o = np.zeros((n_tiles, R, Dv), np.float32)
            og = out[b, heads].reshape(R, Dv)
            og[:] = online_softmax(scores, exp, pv, n_slots=Lk, block_n=bn, valid=valid, rows=R,
                                   dv=Dv, trace=sub, rescale=rescale)
            if trace:
                for name, arr in (("m", tm), ("l", tl), ("alpha", ta)):
                    arr[b, heads] = sub[name].reshape(n_tiles, G, Lq).transpose(1, 0, 2)
                t_s[b, heads] = g_s.reshape(G, Lq, Lk)
                t_p[b, heads] = g_p.reshape(G, Lq, Lk)
                t_c[b, heads] = g_c.reshape(G, Lq, Lk)
                t_o[b, heads] = g_o.reshape(n_tiles, G, Lq, Dv).transpose(1, 0, 2, 3)
    fp16 = B * Hkv * Lk * (D + Dv) * 2
    nbytes = cache.nbytes(detail=True)
    info = {"kv_cache": True, "calibration": pr.source, "head_bits": cache.bits.tolist(),
            "cache_bytes": float(sum(nbytes.values())),
            "compression_vs_fp16": fp16 / sum(nbytes.values())}
    tr = None
    if trace:
        vis_all = np.ones((Lq, Lk), bool) if not causal else \
            keys[None, :] <= pos[:, None]
        vis_all = np.broadcast_to(vis_all, (B, Hq, Lq, Lk))
        tr = {"method": "turbo", "kv_cache": True, "qk_scale": qk_scale,
              "calibration": pr.source, "priority": pr.priority, "head_bits": cache.bits,
              "compressed": comp, "k_cache_int8": k_hat, "v_cache_int8": v_hat,
              "k_codes": K.codes, "v_codes": V.codes, "q_codes": Q.codes,
              "cache_bytes": nbytes, "compression_vs_fp16": info["compression_vs_fp16"],
              "m": tm, "l": tl, "alpha": ta, "visible": vis_all,
              "s_int": np.where(vis_all, t_s, 0).astype(np.int32),
              "p_codes": np.where(vis_all, t_c, 0).astype(np.int8),
              "p": np.where(vis_all, t_p, 0).astype(np.float32),
              "o_int": t_o.astype(np.int32)}
    return SimResult(out, tr, spec, info)


# --------------------------------------------------------------------------------------------
# registry entry
# --------------------------------------------------------------------------------------------
def _run(q, k, v, spec, shp, *, causal, sm_scale, calibration, trace, mode):
    if mode == "kv_cache":
        return simulate_turbo_cache(q, k, v, spec, causal=causal, sm_scale=sm_scale,
                                    calibration=calibration, trace=trace)
    return run_dense(q, k, v, spec, shp, causal, sm_scale, trace, IntegerOperands)


def _kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration):
    """The progressive cache (``kv_cache``: head bits from ``calibration``'s priority, or the
    spec's share when None), else the INT8 K/V of the compute path with their scales."""
    if mode != "kv_cache":
        return int_kv_bytes(spec, tokens=tokens, head_dim=head_dim, kv_heads=kv_heads)
    prio = calibration.priority if calibration is not None else \
        np.arange(kv_heads, dtype=np.float64)
    return float(cache_nbytes(spec, head_bits(spec.kvcache, prio), tokens, head_dim))


CALIBRATION = CalibrationKind(
    "turbo_head_priority",
    compute=lambda q, k, v, spec, source: head_priority(k, v, source=source),
    load=HeadPriority.load, key=lambda spec: spec.kvcache.priority, suffix=".json")

METHOD = SimMethod("turbo", sections=frozenset({"q", "k", "v", "p", "kvcache"}),
                   exps=("exp2", "sas"), run=_run, kv_bytes=_kv_bytes, modes=("kv_cache",),
                   calibrated=("kv_cache",), calibration=CALIBRATION, decode_mode="kv_cache",
                   doc="FlashQ blockwise INT8 attention, progressive INT4/INT2 KV cache, SAS")
