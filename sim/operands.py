"""Per-method operand preparation for the tiled engine: float casts, FP8 per-tensor scaling,
INT8 quantization of Q/K/V (``spec.q/k/v``) and of the softmax numerator P (``spec.p``).

Everything here follows docs/numerics.md; the engine (:mod:`sim.engine`) only sees the results.

- :func:`cast_operand` — Q/K/V of fp16_flash / fp8_flash / double_sparse: ``f16(x)`` (or bf16, or
  ``round_float(f32(x) / sx, fp8, saturate=True)`` with the per-tensor scale ``sx``).
- :func:`quantize_operand` — INT8 Q/K/V via :func:`sim.numerics.quantize` with the spec's block
  (``OperandQuant.block(tile)``, tile = BLOCK_M for Q, BLOCK_N for K and V), ``zero_scale="one"``,
  ``arithmetic="fp32"``.
- :func:`token_scale` — a per-token (or coarser) scale grid expanded to one float32 per token.
- :func:`pquant` — ``PQUANT(p)``: INT8 P codes with the fixed scale ``1 / levels`` (fp16 steps,
  fp32 steps, or ``fp32_fma``: the exact product rounded once, half-even).

Supported granularities: Q and K need one scale per token row (per_tensor, per_head,
per_token, per_block): their scale factors out of the QK^T dot. V's scale must be constant over
each key tile's tokens (per_tensor, per_head, per_channel, or per_block / per_channel_block with
a token block that is a multiple of BLOCK_N): it factors out of the PV dot of one tile.
"""
from __future__ import annotations

import functools

import numpy as np

from .numerics import quantize, round_float, round_to_int
from .numerics.formats import float_format

__all__ = ["cast_operand", "check_representable", "quantize_operand", "token_scale",
           "v_tile_factor", "pquant", "pquant_table_f32", "round_p", "float_kv_bytes",
           "int_kv_bytes"]

_ROW_GRANULARITIES = ("per_tensor", "per_head", "per_token", "per_block")
_V_GRANULARITIES = ("per_tensor", "per_head", "per_channel", "per_block", "per_channel_block")


def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 else x.astype(np.float32)


def check_representable(cast: np.ndarray, fmt: str, name: str) -> np.ndarray:
    """``cast`` (an input rounded to ``fmt`` without scaling) when every value stayed finite;
    otherwise ValueError naming the argument: a finite input beyond the format's range
    (fp16: ``|x| >= 65520`` rounds to Inf) has no value in the method's arithmetic, and
    computing on the Inf would return zeros or NaN rows, not an answer. The policy is an
    error, not saturation (docs/numerics.md, "Operand range")."""
    if not np.isfinite(cast).all():
        bad = int(cast.size - np.count_nonzero(np.isfinite(cast)))
        top = float_format(fmt).max_normal
        raise ValueError(f"{name}: {bad} value(s) beyond the {fmt} range of the method's "
                         f"operands (|x| > {top:g} rounds to Inf); expected |x| <= {top:g} "
                         f"(scale the inputs, or use a method with scaled operands)")
    return cast


def cast_operand(x: np.ndarray, ops, name: str = "x") -> tuple[np.ndarray, np.float32 | None]:
    """Cast Q, K or V to ``ops.format`` (``spec.operands``); returns (float32 values, scale).
    ``name``: the argument the values came from (error messages).

    ``scale: none``: ``f16(x)`` / ``bf16(x)``, one rounding from the input's own value; scale None;
    values beyond the format's range are refused (:func:`check_representable`).
    ``scale: per_tensor``: ``sx = f32(absmax(f32(x)) / max_normal)`` rounded to ``scale_dtype``
    (an all-zero tensor takes ``sx = 1``), values ``round_float(f32(x) / sx, format,
    saturate=True)``.
    """
    fmt = ops.format
    if ops.scale == "none":
        if fmt == "fp16" and x.dtype == np.float16:
            return x.astype(np.float32), None
        cast = _f32(round_float(x if x.dtype != np.float16 else x.astype(np.float32), fmt))
        return check_representable(cast, fmt, name), None
    x32 = _f32(x)
    amax = np.float32(np.max(np.abs(x32)))
    sx = np.float32(amax / np.float32(float_format(fmt).max_normal))
    sx = np.float32(round_float(np.float32(sx), ops.scale_dtype))
    if sx == 0:
        sx = np.float32(1.0)
    return _f32(round_float(x32 / sx, fmt, saturate=True)), sx


def round_p(p: np.ndarray, fmt: str) -> np.ndarray:
    """``P`` (float32, in [0, 1]) cast to the PV operand format, as float32 values (RNE)."""
    if fmt == "fp16":
        return p.astype(np.float16).astype(np.float32)  # numpy's f32 -> f16 cast rounds to nearest even
    return round_float(p, fmt, saturate=True)


def quantize_operand(x: np.ndarray, oq, tile: int, name: str):
    """INT8 (or fewer bits) symmetric quantization of Q, K or V per ``oq`` (a spec OperandQuant).

    Returns a :class:`sim.numerics.Quantized` (``.codes`` int8 [B, H, L, D], ``.scale`` float32
    grid). ``name`` ("q", "k" or "v") selects the granularities allowed (module docstring)."""
    allowed = _V_GRANULARITIES if name == "v" else _ROW_GRANULARITIES
    if oq.granularity not in allowed:
        raise ValueError(f"spec.{name}.granularity: expected one of {allowed} for {name!r} "
                         f"(its scale must factor out of the tile's integer dot), "
                         f"got {oq.granularity!r}")
    if not oq.symmetric:
        raise ValueError(f"spec.{name}.symmetric: the attention GEMMs take symmetric codes, got False")
    block = oq.block(tile)
    if name == "v" and oq.granularity in ("per_block", "per_channel_block") and block[2] % tile:
        raise ValueError(f"spec.v.block_tokens: expected a multiple of tiling.block_n = {tile} "
                         f"(one V scale per key tile), got {block[2]}")
    if oq.arithmetic == "fp16":
        # the quantizer divides in fp16 (the authors' torch code): an input beyond fp16's range
        # has no value there; refused naming the argument (docs/numerics.md, "Operand range")
        with np.errstate(over="ignore"):
            check_representable(np.asarray(x, np.float32).astype(np.float16), "fp16", name)
    return quantize(x, oq.bits, symmetric=True, block=block, rounding=oq.rounding,
                    scale_dtype=oq.scale_dtype, zero_scale="one", arithmetic=oq.arithmetic)


def token_scale(qz, L: int) -> np.ndarray:
    """Scale of each token, float32 ``[B, H, L]``, from a row-granular Quantized (block[3] = D)."""
    s = qz.scale[..., 0]  # [B or 1, H or 1, n_blocks]
    tb = qz.block[2]
    s = np.repeat(s, tb, axis=2)[:, :, :L]
    return np.broadcast_to(s, qz.codes.shape[:2] + (L,))


def v_tile_factor(vz, levels: int, b: int, h: int, tile: int, block_n: int) -> np.ndarray:
    """``vf = f32(v_scale) / f32(levels)`` for key tile ``tile`` of (batch b, kv head h):
    float32 scalar array (per-tensor / per-head / per-block) or ``[Dv]`` (per-channel)."""
    s = vz.scale[min(b, vz.scale.shape[0] - 1), min(h, vz.scale.shape[1] - 1)]  # [n_blocks, n_c]
    blk = (tile * block_n) // vz.block[2]
    row = s[min(blk, s.shape[0] - 1)]
    vf = row / np.float32(levels)
    return vf[0] if vf.shape[0] == 1 else vf


@functools.lru_cache(maxsize=16)
def _pquant_table_fp16(levels: int, rounding: str, saturate: bool) -> np.ndarray:
    """PQUANT code (int32) for every fp16 bit pattern of ``t = f16(p)``.

    Steps in fp16 (each a correctly rounded fp16 operation: numpy computes float16 arithmetic in
    float32 and rounds once more, which is exact for * and + of two fp16 values because
    24 >= 2 * 11 + 2, Figueroa 1995): ``t = f16(t * levels)``, then half_up / half_away:
    ``trunc(f16(t + 0.5))``, half_even: ``rint(t)``, floor: ``floor(t)``, toward_zero:
    ``trunc(t)``."""
    t = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(invalid="ignore", over="ignore"):
        t = (t * np.float16(levels)).astype(np.float16)
        if rounding in ("half_up", "half_away"):
            r = np.trunc((t + np.float16(0.5)).astype(np.float16))
            if rounding == "half_away":
                r = np.where(t < 0, np.trunc((t - np.float16(0.5)).astype(np.float16)), r)
        elif rounding == "half_even":
            r = np.rint(t)
        elif rounding == "floor":
            r = np.floor(t)
        else:
            r = np.trunc(t)
        r = np.nan_to_num(r.astype(np.float64), nan=0.0, posinf=1e9, neginf=-1e9)
    if saturate:
        r = np.clip(r, 0, levels)
    return np.clip(r, -(1 << 20), 1 << 20).astype(np.int32)


@functools.lru_cache(maxsize=16)
def _pquant_table_i8(levels: int, rounding: str, saturate: bool) -> np.ndarray:
    # int8 view for the hot path; entries beyond int8 belong to p > p_max and are never indexed
    return np.clip(_pquant_table_fp16(levels, rounding, saturate), -128, 127).astype(np.int8)


@functools.lru_cache(maxsize=16)
def pquant_table_f32(levels: int, rounding: str, saturate: bool) -> np.ndarray:
    return _pquant_table_fp16(levels, rounding, saturate).astype(np.float32)


def pquant(p: np.ndarray, pq, *, as_float: bool = False) -> np.ndarray:
    """INT8 P codes (``PQUANT`` of docs/numerics.md) for float32 ``p`` in [0, 1].

    ``as_float=True`` returns the same integer codes as float32 (exact, unclipped: a code above
    127 shows up as such), ready for the exact float GEMM; otherwise int8, and callers guarantee
    the codes fit (exp2 gives p <= 1, so codes <= levels <= 127; SAS outputs are checked)."""
    if pq.arithmetic == "fp16":
        bits = p.astype(np.float16).view(np.uint16)
        if as_float:
            return pquant_table_f32(pq.levels, pq.rounding, pq.saturate)[bits]
        return _pquant_table_i8(pq.levels, pq.rounding, pq.saturate)[bits]
    if pq.arithmetic == "fp32_fma":  # rint of the exact product (f64 holds it: 24 + 8 bits)
        r = np.rint(p.astype(np.float64) * pq.levels).astype(np.float32)
        if pq.saturate:
            r = np.clip(r, 0, pq.levels)
        return r if as_float else r.astype(np.int8)
    t = p * np.float32(pq.levels)
    r = round_to_int(t, pq.rounding)
    if pq.saturate:
        r = np.clip(r, 0, pq.levels)
    return r if as_float else r.astype(np.int8)


def float_kv_bytes(ops, *, tokens: int, head_dim: int, kv_heads: int) -> float:
    """Bytes of K and V held in ``ops.format`` (``spec.operands``) for ``tokens`` tokens of
    ``kv_heads`` heads, plus one per-tensor scale each when the format is scaled."""
    fmt = float_format(ops.format)
    elems = tokens * kv_heads * head_dim
    scales = 0 if ops.scale == "none" else 2 * (2 if ops.scale_dtype == "fp16" else 4)
    return 2 * elems * fmt.bits / 8 + scales


def int_kv_bytes(spec, *, tokens: int, head_dim: int, kv_heads: int) -> float:
    """Bytes of the integer K and V codes (``spec.k``, ``spec.v``) with their scale grids."""
    import math
    elems = tokens * kv_heads * head_dim
    total = 0.0
    for op in (spec.k, spec.v):
        t = op.block_tokens or spec.tiling.block_n
        nscale = {"per_tensor": 1, "per_head": kv_heads, "per_token": kv_heads * tokens,
                  "per_block": kv_heads * math.ceil(tokens / t), "per_channel": kv_heads * head_dim,
                  "per_channel_block": kv_heads * head_dim * math.ceil(tokens / t)}[op.granularity]
        total += elems * op.bits / 8 + nscale * (2 if op.scale_dtype == "fp16" else 4)
    return total
