"""The prefill forward launcher shared by every method whose prefill runs
``gpu.kernels.flash_fwd.attn_fwd_kernel`` (float operands, or INT8 Q/K/V with quantized P): spec
checks, default launch, argument set, launch. Knows no method by name: the method modules of
:mod:`gpu.methods` call it with their spec.

Every numeric choice comes from the spec; choices the kernel does not implement raise
ValueError before anything is launched (:func:`check_float_spec`, :func:`check_integer_spec`,
cached per spec). The default launch is the architecture's table
(``configs/kernels/<arch>/launch.yaml``, read through :mod:`sim.arch`, which the cost model
reads too); under the interpreter small row blocks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.arch import arch_of_capability, prefill_launch
from sim.engine import qk_scale_of
from sim.spec import MethodSpec

from .common import (QK_GRANULARITIES, V_GRANULARITIES, cdiv, check_operand_quant, interpreting,
                     kernels, p_constants, sas_constants, torch_module)

__all__ = ["check_float_spec", "check_integer_spec", "default_launch", "device_arch",
           "PrefillCall", "prefill_call", "launch_prefill"]


@functools.lru_cache(maxsize=64)
def check_float_spec(spec: MethodSpec) -> None:
    """Raise ValueError for a float-operand spec choice the forward does not implement."""
    _check_tile(spec)
    if spec.operands.p not in ("fp16", "bf16"):
        raise ValueError(f"spec.operands.p_format: expected fp16 or bf16, got {spec.operands.p!r}")
    if spec.operands.p != spec.operands.format:
        raise ValueError("spec.operands.p_format: the kernel casts P to the operand format; "
                         f"got format {spec.operands.format!r}, p_format {spec.operands.p!r}")


def _check_tile(spec: MethodSpec) -> None:
    bn = spec.tiling.block_n
    if not 16 <= bn <= 128:
        raise ValueError(f"spec.tiling.block_n: the kernels need 16 <= block_n <= 128 "
                         f"(tl.dot minimum, register budget), got {bn}")


@functools.lru_cache(maxsize=64)
def check_integer_spec(spec: MethodSpec) -> None:
    """Raise ValueError for an INT8-operand spec choice the forward does not implement (checked
    once per spec: specs are frozen)."""
    _check_tile(spec)
    bn = spec.tiling.block_n
    check_operand_quant("q", spec.q, QK_GRANULARITIES)
    check_operand_quant("k", spec.k, QK_GRANULARITIES)
    check_operand_quant("v", spec.v, V_GRANULARITIES)
    if spec.v.granularity == "per_block":
        vg = spec.v.block_tokens or bn
        if vg % bn:
            raise ValueError(f"spec.v.block_tokens: per-block V scales must cover whole key tiles "
                             f"(a multiple of tiling.block_n = {bn}), got {vg}")
    if spec.p.levels > 127:
        raise ValueError(f"spec.p.levels: P codes are int8 in the kernel, levels must be <= 127, "
                         f"got {spec.p.levels}")
    if spec.arith.fused or spec.p.arithmetic == "fp32_fma":
        raise ValueError("spec.arith / spec.p.arithmetic: the fused variants run in the sm_90 "
                         "kernels only (gpu.kernels.flash_fwd_sm90); the portable kernel "
                         "implements the unfused sequence")
    if spec.softmax.exp == "sas":
        sas = spec.softmax.sas
        if sas.degree not in (2, 3):
            raise ValueError(f"spec.softmax.sas.degree: the kernel implements degrees 2 and 3, "
                             f"got {sas.degree}")
        if sas.lut_entries > 126:
            raise ValueError(f"spec.softmax.sas.lut_entries: at most 126, got {sas.lut_entries}")
        if sas.arithmetic == "fp16" and sas.lut_entries <= 13:
            # the kernel skips f16(LUT[n] * poly), exact while the product is a normal fp16
            from sim.softmax import fp16_unit_interval, sas_poly
            pmin = float(np.min(sas_poly(sas.coefficients, fp16_unit_interval(), "fp16")))
            if pmin < 2.0 ** (sas.lut_entries - 15):
                raise ValueError(f"spec.softmax.sas.coefficients: poly(f) must stay >= "
                                 f"2^(lut_entries - 15) on [0, 1] (LUT[n] * poly a normal fp16), "
                                 f"got min {pmin!r}")


@functools.lru_cache(maxsize=8)
def _arch_of_device(index: int) -> str:
    torch = torch_module()
    return arch_of_capability(torch.cuda.get_device_capability(index)).name


def device_arch(device=None) -> str:
    """The :mod:`sim.arch` architecture of a CUDA device (default: the current one)."""
    torch = torch_module()
    idx = torch.cuda.current_device() if device is None else torch.device(device).index or 0
    return _arch_of_device(idx)


def default_launch(method: str, D: int, Lq: int, device=None) -> dict:
    """Program tile and pipeline of the forward: ``{block_m, num_warps, num_stages}`` from the
    device architecture's launch table; the interpreter uses small row blocks."""
    if interpreting():
        return {"block_m": 16 if Lq <= 16 else 32, "num_warps": 4, "num_stages": 1}
    return prefill_launch(device_arch(device), method, D)


def p_mode(p) -> int:
    """PQUANT kernel path (gpu.kernels.flash_fwd): 1 = fp16 half_up/half_away (p >= 0: the same),
    2 = fp32 half_even, 0 = generic. Saturation is a no-op for p in [0, 1] with codes <= levels,
    but only the generic path applies it; 1 also keeps the unquantized rowsum."""
    if p.saturate:
        return 0
    if p.arithmetic == "fp16" and p.rounding in ("half_up", "half_away") and \
            p.rowsum == "unquantized":
        return 1
    if p.arithmetic == "fp32" and p.rounding == "half_even":
        return 2
    return 0


@dataclass(frozen=True)
class PrefillCall:
    """One ``attn_fwd_kernel`` launch, as :func:`launch_prefill` makes it: ``grid``, ``args``
    (positional, in the kernel's order), ``constexprs`` (keyword), ``options`` (``num_warps``,
    ``num_stages``, ``enable_fp_fusion``), the ``out`` buffer and, with trace, the ``trace``
    buffers named as the simulator's trace (``s_int``, ``p_codes``, ``o_int`` for integer
    operands; ``s``, ``p`` for float ones), else None."""

    grid: tuple
    args: tuple
    constexprs: dict
    options: dict
    out: Any
    trace: dict | None


def prefill_call(qq, kq, vq, spec: MethodSpec, *, causal: bool, sm_scale: float, out_dtype,
                 q=None, k=None, v=None, trace: bool = False,
                 launch: dict | None = None) -> PrefillCall:
    """The argument set of the forward (:func:`launch_prefill`'s inputs; allocates ``out`` and
    the trace buffers on the inputs' device, so ``meta`` tensors with an explicit ``launch``
    give a launch-free call that ``gpu.sass`` compiles)."""
    torch = torch_module()
    kernels("flash_fwd")
    import triton.language as tl
    integer = spec.integer
    if integer:
        B, Hq, Lq, D = qq.codes.shape
        Hkv, Lk = kq.codes.shape[1], kq.codes.shape[2]
        Q, K, V = qq.codes, kq.codes, vq.codes
        sv = (V.stride(0), V.stride(1), 1, V.stride(2)) if vq.transposed else V.stride()
        QS, KS, VS = qq.scale, kq.scale, vq.scale
        nqs, nks, nvs = QS.shape[-1], KS.shape[-1], VS.shape[-1]
        qg, kg, vg = qq.group, kq.group, vq.group
        dev = Q.device
    else:
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        Q, K, V = q, k, v
        sv = V.stride()
        dev = q.device
        QS = KS = VS = torch.ones(1, dtype=torch.float32, device=dev)
        nqs = nks = nvs = 1
        qg = kg = vg = 0
    bn = spec.tiling.block_n
    if integer and vg % bn:
        raise ValueError(f"v scales: group {vg} is not a multiple of tiling.block_n {bn}")
    cfg = dict(launch or {}) if dev.type == "meta" else \
        dict(default_launch(spec.method, D, Lq, dev if dev.type == "cuda" else None),
             **(launch or {}))
    bm = int(cfg["block_m"])
    nt = cdiv(Lk, bn)
    out = torch.empty((B, Hq, Lq, D), dtype=out_dtype, device=dev)
    if trace:
        TS = torch.zeros((B, Hq, Lq, Lk), dtype=torch.int32 if integer else torch.float32, device=dev)
        TP = torch.zeros((B, Hq, Lq, Lk), dtype=torch.int8 if integer else torch.float32, device=dev)
        TO = torch.zeros((B, Hq, nt, Lq, D), dtype=torch.int32, device=dev)
    else:
        TS = TP = TO = torch.empty(1, dtype=torch.int32, device=dev)
    if integer:
        pconst = dict(p_constants(spec.p), P_MODE=p_mode(spec.p))
        op = "fp16"
    else:
        pconst = dict(LEVELS=127, P_FP16=True, P_ROUNDING=0, P_SATURATE=False, ROWSUM_Q=False,
                      P_MODE=0)
        op = spec.operands.format
    qk_scale = float(qk_scale_of(sm_scale))  # the contract's f32(sm_scale * log2(e))
    args = (Q, K, V, QS, KS, VS, out, TS, TP, TO, qk_scale,
            *Q.stride(), *K.stride(), *sv, *out.stride(),
            Hq, Hkv, Hq // Hkv, Lq, Lk, nqs, nks, nvs, nt)
    constexprs = dict(
        HEAD_D=D, BLOCK_M=bm, BLOCK_N=bn, INT8=integer,
        OP_DTYPE=tl.bfloat16 if op == "bf16" else tl.float16, CAUSAL=bool(causal),
        Q_GROUP=qg, K_GROUP=kg, V_GROUP=vg, **pconst, **sas_constants(spec.softmax),
        EXACT_FMA_F64=interpreting(), USE_ASM=not interpreting(), TRACE=bool(trace),
        PIPE=bool(cfg.get("pipe", False)))
    options = dict(num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]),
                   enable_fp_fusion=False)
    names = ("s_int", "p_codes", "o_int") if integer else ("s", "p", "o_int")
    tr = dict(zip(names, (TS, TP, TO))) if trace else None
    if tr is not None and not integer:
        del tr["o_int"]
    return PrefillCall((cdiv(Lq, bm), B * Hq), args, constexprs, options, out, tr)


def launch_prefill(qq, kq, vq, spec: MethodSpec, *, causal: bool, sm_scale: float,
                   out_dtype, q=None, k=None, v=None, trace: bool = False,
                   launch: dict | None = None):
    """Launch the forward. Integer specs take :class:`gpu.common.QuantizedOperand` ``qq, kq,
    vq``; float specs the raw ``q, k, v`` (pass ``qq = kq = vq = None``). Inputs are assumed
    checked. Returns ``out`` or, with ``trace``, ``(out, trace dict)`` (:class:`PrefillCall`)."""
    flash = kernels("flash_fwd")
    c = prefill_call(qq, kq, vq, spec, causal=causal, sm_scale=sm_scale, out_dtype=out_dtype,
                     q=q, k=k, v=v, trace=trace, launch=launch)
    flash.attn_fwd_kernel[c.grid](*c.args, **c.constexprs, **c.options)
    if trace:
        return c.out, c.trace
    return c.out


