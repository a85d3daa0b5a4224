"""Builders shared by the methods' cost paths: the FlashAttention-style prefill forward on float
or integer operands, the split-K flash-decode, SageAttention v1 as a peer kernel, the decode
query's INT8 quantization. They know no method by name: the method modules of
:mod:`sim.cost.methods` compose them with their spec.

Inputs of integer methods arrive pre-quantized at prefill (the papers time the attention kernel
only), except ``sage_v1`` whose Q/K quantization pre-pass is a launch of its own.
"""
from __future__ import annotations

from ..arch import GLUON_DEFAULTS, prefill_kernel_launch
from . import kernels as K
from .calibrated import Program
from .counted import KernelRequest
from .foreign import evaluate, grid_trips, load_foreign
from .mixes import mixes
from .shape import Shape

__all__ = ["prefill_common", "float_prefill", "integer_prefill", "decode_common",
           "float_decode", "integer_decode", "sage_quant", "q_quant", "int_softmax", "int_tc",
           "scale_bytes", "ceil_div", "FLOAT_BYTES", "prefill_program", "foreign_launches"]

FLOAT_BYTES = {"fp16": 2.0, "bf16": 2.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def int_tc(spec) -> str:
    """Tensor-core dtype of an integer spec's QK^T: int4 when Q/K have <= 4 bits."""
    return "int4" if max(spec.q.bits, spec.k.bits) <= 4 else "int8"


def scale_bytes(op) -> float:
    return 2.0 if op.scale_dtype == "fp16" else 4.0


def int_softmax(spec) -> tuple[dict, dict]:
    """Per-element and per-row-tile counts of an integer spec's softmax (SAS or exp2 + PQUANT)."""
    if spec.softmax.exp == "sas":
        return K.sas_counts(spec.softmax.sas.degree)
    return K.SOFTMAX_INT8, K.ROW_TILE_EXP


def prefill_common(spec, s: Shape, ctx) -> dict:
    """The :func:`kernels.flash` arguments every prefill shares. ``ctx.launch``: the program
    tile ``block_m`` (default ``tiling.block_m``), ``num_warps`` (default one per 32 rows, at
    least 4) and ``num_stages`` (K/V buffers, default 2)."""
    lc = ctx.launch or {}
    t = spec.tiling
    return dict(ctas_cols=s.batch * s.q_heads, kv_heads_total=s.batch * s.kv_heads,
                group_cols=s.group, q_len=s.q_len, kv_len=s.kv_len,
                bm=int(lc.get("block_m", t.block_m)), causal=s.causal, ideal=ctx.ideal,
                warps=lc.get("num_warps"), stages=int(lc.get("num_stages", 2)), bn=t.block_n,
                d=s.head_dim)


def prefill_program(spec, s: Shape, ctx) -> Program:
    """The calibrated tier's :class:`Program` of our prefill forward (gpu/kernels/flash_fwd.py
    ``attn_fwd_kernel``): the launch the launcher would make (the arch's launch table, the
    caller's override on top) and every CTA's loop trips (:func:`kernels.prefill_trips`)."""
    table = prefill_kernel_launch(ctx.arch, spec.method, s.head_dim, spec.tiling.block_n)
    over = dict(ctx.launch or {})
    if over and "kernel" not in over and not set(over) & {"gluon"}:
        # a portable launch (block_m / num_warps / num_stages) names the portable kernel, as
        # gpu.prefill.forward_kernel reads it
        lc = dict(over, kernel="triton")
        lc = {**{k: table[k] for k in ("block_m", "num_warps", "num_stages")}, **lc}
    else:
        lc = {**table, **over}
    if lc.get("kernel") == "gluon":
        g = {**GLUON_DEFAULTS, **(lc.get("gluon") or {})}
        lc["gluon"] = g
        ctas = K.gluon_prefill_trips(s.batch * s.q_heads, s.q_len, s.kv_len,
                                     spec.tiling.block_n, s.causal, merged=g["merged"],
                                     one_loop=g["one_loop"], unroll=g["unroll"])
        return Program(KernelRequest.make("prefill", ctx.arch, spec, s, _freeze(lc)), ctas,
                       "attn_fwd_sm90_kernel")
    lc.pop("gluon", None)
    req = KernelRequest.make("prefill", ctx.arch, spec, s, _freeze(lc))
    ctas = K.prefill_trips(s.batch * s.q_heads, s.q_len, s.kv_len, int(lc["block_m"]),
                           spec.tiling.block_n, s.causal)
    return Program(req, ctas, "attn_fwd_kernel")


def _freeze(launch: dict) -> dict:
    """A launch whose nested options are hashable (KernelRequest keys requests by value)."""
    return {k: (tuple(sorted(v.items())) if isinstance(v, dict) else v)
            for k, v in launch.items()}


def foreign_launches(name: str, s: Shape, ctx) -> list[K.Launch]:
    """The launches of a described foreign kernel (:mod:`sim.cost.foreign`) at ``s``: Triton
    launches carry their :class:`Program` (priced from their SASS at the calibrated tier),
    others only their HBM bytes (priced as memory traffic, and flagged)."""
    desc = load_foreign(name)
    env = desc.env(s)
    out = []
    for la in desc.active(s):
        hbm = float(evaluate(la.hbm_bytes, env))
        if la.triton:
            g = [int(evaluate(x, env)) for x in la.grid]
            opts = {k: int(evaluate(v, env)) for k, v in la.options}
            lau = K.Launch(f"{name}.{la.name}", max(1, g[0] * g[1] * g[2]),
                           opts.get("num_warps", 4), 0, 32)
            if ctx.counted:
                lau.program = Program(KernelRequest.make(f"foreign.{name}.{la.name}", ctx.arch,
                                                         shape=s), grid_trips(la, env),
                                      f"{name}.{la.name}")
        else:
            lau = K.Launch(f"{name}.{la.name}", max(1, ctx.sm_count * 4), 4, 0, 32)
        lau.hbm = lau.l2 = hbm
        out.append(lau)
    return out


def float_prefill(kernel: str, spec, s: Shape, ctx, mix_variant: str | None) -> list[K.Launch]:
    """The forward on float operands (``spec.operands``); ``mix_variant``: the counted SASS mix
    of the arch's ``mixes.yaml`` that prices it (None: the per-element tables)."""
    fmt = spec.operands.format
    by = FLOAT_BYTES[fmt]
    dt = "fp8" if by == 1.0 else fmt
    table = K.SOFTMAX_FP8 if by == 1.0 else K.SOFTMAX_FP16
    mix = mixes(ctx.arch)[mix_variant] if mix_variant else None
    lau = K.flash(kernel, qk=dt, pv=dt, qb=by, kb=by, vb=by, kv_row_extra=0.0, elem=table,
                  row_tile=K.ROW_TILE_EXP, mix=mix, **prefill_common(spec, s, ctx))
    if ctx.counted and mix_variant:
        lau.program = prefill_program(spec, s, ctx)
    return [lau]


def integer_prefill(kernel: str, spec, s: Shape, ctx, mix_variant: str | None) -> list[K.Launch]:
    """The forward on integer Q/K/V with INT8 P (``spec.q/k/v/p``)."""
    t = spec.tiling
    elem, row = int_softmax(spec)
    kextra = scale_bytes(spec.k) if spec.k.granularity == "per_token" else \
        scale_bytes(spec.k) / t.block_n
    mix = mixes(ctx.arch)[mix_variant] if mix_variant and int_tc(spec) == "int8" else None
    lau = K.flash(kernel, qk=int_tc(spec), pv="int8", qb=spec.q.bits / 8, kb=spec.k.bits / 8,
                  vb=spec.v.bits / 8, kv_row_extra=kextra, elem=elem, row_tile=row, mix=mix,
                  **prefill_common(spec, s, ctx))
    if ctx.counted and mix_variant:
        lau.program = prefill_program(spec, s, ctx)
    return [lau]


def decode_common(spec, s: Shape, ctx) -> dict:
    """The :func:`kernels.decode` arguments every decode shares."""
    return dict(B=s.batch, Hq=s.q_heads, Hkv=s.kv_heads, q_len=s.q_len, kv_len=s.kv_len,
                sm_count=ctx.sm_count, ideal=ctx.ideal, bn=spec.tiling.block_n, d=s.head_dim)


def float_decode(kernel: str, spec, s: Shape, ctx) -> list[K.Launch]:
    """The optimal split-K flash-decode on float K/V (one CTA per KV head and split)."""
    by = FLOAT_BYTES[spec.operands.format]
    dt = "fp8" if by == 1.0 else spec.operands.format
    return K.decode(kernel, qk=dt, pv=dt, qb=by, kb=by, vb=by, kv_row_extra=0.0,
                    elem=K.SOFTMAX_FP16, row_tile=K.ROW_TILE_EXP, **decode_common(spec, s, ctx))


def integer_decode(kernel: str, spec, s: Shape, ctx) -> list[K.Launch]:
    """The optimal split-K flash-decode on integer K/V with per-token K scales."""
    elem, row = int_softmax(spec)
    kextra = scale_bytes(spec.k) if spec.k.granularity == "per_token" else 0.0
    return K.decode(kernel, qk=int_tc(spec), pv="int8", qb=spec.q.bits / 8, kb=spec.k.bits / 8,
                    vb=spec.v.bits / 8, kv_row_extra=kextra, elem=elem, row_tile=row,
                    **decode_common(spec, s, ctx))


def sage_quant(s: Shape, bn: int, ideal: bool, decode: bool = False) -> K.Launch:
    """SageAttention v1 pre-pass: K mean over tokens (smoothing), per-block absmax and INT8
    codes of Q and K. Decode quantizes Q and the new key only (the cache holds INT8 K)."""
    lk = 1 if decode else s.kv_len
    q_el = s.batch * s.q_heads * s.q_len * s.head_dim
    k_el = s.batch * s.kv_heads * lk * s.head_dim
    lau = K.Launch("sage_quant", max(1, (q_el + k_el) // (128 * 64)), 4, 0, 32)
    # read fp16, write int8 (+ fp32 scale per block); K read twice (mean, then quantize)
    lau.hbm = 2 * q_el + 3 * k_el + (q_el + k_el) + 8 * (q_el + k_el) / (bn * s.head_dim)
    lau.l2 = 0.0 if ideal else lau.hbm
    # per element: sub mean (k), |x| max, FMUL by 1/scale, F2I.S8 (XU), PRMT pack
    lau.add({"fp32": 2.0, "cvt": 1.0, "int32": 0.25}, q_el + k_el)
    lau.add({"fp32": 1.0}, k_el)
    return lau


def q_quant(B: int, Hq: int, D: int) -> K.Launch:
    """gpu.ops.quantize_operand of the decode query (per-token INT8): one row per program."""
    lau = K.Launch("q_quant", B * Hq, 4, 0, 32)
    lau.hbm = lau.l2 = B * Hq * (D * 2 + D + 4)
    # absmax (FMNMX), scale, FMUL by 1/scale, F2I.S8 (XU), PRMT pack
    lau.add({"fp32": 3.0, "cvt": 1.0, "int32": 0.25}, B * Hq * D)
    K.serial_chain(lau, 1, 2, 1.0)                     # load row; reduce; store codes
    return lau


