"""The prefill forward launcher shared by every method whose prefill is the flash forward
(float operands, or INT8 Q/K/V with quantized P): spec checks, choice of kernel, default launch,
argument set, launch. Knows no method by name: the method modules of :mod:`gpu.methods` call
it with their spec.

Two kernels compute the same numbers: the portable Triton forward
(``gpu.kernels.flash_fwd.attn_fwd_kernel``: every architecture, and the interpreter) and the
Gluon sm_90 forward (``gpu.kernels.flash_fwd_sm90``, launched by :mod:`gpu.prefill_sm90`).
:func:`forward_kernel` picks one: the device architecture's launch table
(``configs/kernels/<arch>/launch.yaml``, read through :mod:`sim.arch`, which the cost model
reads too) names the kernel per method and head dim (``kernel: triton | gluon``) with its
launch; a ``launch`` argument overrides it (``{"kernel": "gluon", "num_stages": 4, "gluon":
{...}}``; a launch with only ``block_m``/``num_warps``/``num_stages``/``pipe`` is a portable
launch). Specs the Gluon kernel does not implement run the portable one; the fused arithmetic
(``spec.arith``, ``p.arithmetic: fp32_fma``) runs only in the Gluon kernel and is refused
elsewhere.

Every numeric choice comes from the spec; choices the kernels do not implement raise
ValueError before anything is launched (:func:`check_float_spec`, :func:`check_integer_spec`,
cached per spec). Under the interpreter: the portable kernel with small row blocks.
"""
from __future__ import annotations

import functools

import numpy as np

from sim.arch import arch_of_capability, prefill_kernel_launch, prefill_launch
from sim.engine import qk_scale_of
from sim.spec import MethodSpec

from .common import (QK_GRANULARITIES, V_GRANULARITIES, PrefillCall, cdiv, check_operand_quant,
                     interpreting, kernels, p_constants, p_mode, sas_constants, torch_module)
from .prefill_sm90 import check_fused_spec, sm90_call, unsupported

__all__ = ["check_float_spec", "check_integer_spec", "default_launch", "device_arch",
           "forward_kernel", "PrefillCall", "prefill_call", "launch_prefill", "fused"]

_PORTABLE_KEYS = {"block_m", "num_warps", "num_stages", "pipe"}


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
    check_fused_spec(spec)   # the fused variants: the Gluon kernel's limits
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


def fused(spec: MethodSpec) -> bool:
    """The spec asks for fused arithmetic, which only the Gluon sm_90 forward implements."""
    return spec.arith.fused or (spec.p is not None and spec.p.arithmetic == "fp32_fma")


def forward_kernel(spec: MethodSpec, D: int, dtype_name: str, device=None,
                   launch: dict | None = None) -> tuple[str, dict]:
    """``(kernel, launch)`` of a prefill forward on ``device`` (None: the current CUDA device;
    ``meta``: no device, for compiling): ``("gluon", {num_stages, gluon})`` or ``("triton",
    {block_m, num_warps, num_stages[, pipe]})`` (the latter possibly empty: the table's). See
    the module docstring. ValueError when the spec's fused arithmetic cannot run (not a Hopper
    GPU, the interpreter, or a portable launch asked for) or the launch does not fit."""
    torch = torch_module()
    launch = dict(launch or {})
    kernel = launch.pop("kernel", None)
    if kernel not in (None, "triton", "gluon"):
        raise ValueError(f"launch['kernel']: expected 'triton' or 'gluon', got {kernel!r}")
    dev_type = "cuda" if device is None else torch.device(device).type
    on_gpu = dev_type == "cuda" and not interpreting()
    arch = device_arch(device) if on_gpu else None
    table = prefill_kernel_launch(arch, spec.method, D, spec.tiling.block_n) if on_gpu else None
    portable_launch = bool(launch) and set(launch) <= _PORTABLE_KEYS
    if kernel is None:
        kernel = "triton" if portable_launch or table is None else table["kernel"]
        if kernel == "gluon" and unsupported(spec, dtype_name) is not None and not fused(spec):
            kernel = "triton"
        if kernel == "triton" and fused(spec) and arch == "hopper" and not portable_launch:
            kernel = "gluon"   # the only kernel that implements the spec
    if kernel == "gluon":
        if dev_type != "meta" and arch != "hopper":
            where = "under TRITON_INTERPRET" if interpreting() else f"on {arch or dev_type}"
            raise ValueError(f"launch['kernel']: the Gluon forward runs on Hopper (sm_90) "
                             f"GPUs only, not {where}" + (" (the spec's fused arithmetic runs "
                                                          "in no other kernel)" if fused(spec)
                                                          else ""))
        why = unsupported(spec, dtype_name)
        if why is not None:
            raise ValueError(f"spec: the Gluon forward does not implement {why}")
        tab = table if table is not None and table["kernel"] == "gluon" else {}
        g = dict(tab.get("gluon", {}))
        g.update(launch.pop("gluon", None) or {})
        stages = int(launch.pop("num_stages", tab.get("num_stages", 4)))
        if launch.pop("block_m", 128) != 128:
            raise ValueError("launch['block_m']: the Gluon forward runs 128 rows per program")
        launch.pop("num_warps", None)
        if launch:
            raise ValueError(f"launch: keys {sorted(launch)} do not apply to the Gluon forward "
                             f"(kernel, num_stages, gluon)")
        return "gluon", {"num_stages": stages, "gluon": g}
    if fused(spec):
        raise ValueError("spec.arith / spec.p.arithmetic: the fused variants run only in the "
                         "sm_90 Gluon forward (gpu.kernels.flash_fwd_sm90); the portable kernel "
                         "implements the unfused sequence")
    if "gluon" in launch:
        raise ValueError("launch['gluon']: Gluon options need kernel 'gluon'")
    return "triton", launch


def default_launch(method: str, D: int, Lq: int, device=None) -> dict:
    """Program tile and pipeline of the forward: ``{block_m, num_warps, num_stages}`` from the
    device architecture's launch table; the interpreter uses small row blocks."""
    if interpreting():
        return {"block_m": 16 if Lq <= 16 else 32, "num_warps": 4, "num_stages": 1}
    return prefill_launch(device_arch(device), method, D)


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
    """Launch the forward (:func:`forward_kernel` picks the kernel). Integer specs take
    :class:`gpu.common.QuantizedOperand` ``qq, kq, vq``; float specs the raw ``q, k, v`` (pass
    ``qq = kq = vq = None``). Inputs are assumed checked. Returns ``out`` or, with ``trace``,
    ``(out, trace dict)`` (:class:`PrefillCall`)."""
    x = qq.codes if spec.integer else q
    kernel, cfg = forward_kernel(spec, x.shape[-1], str(x.dtype).removeprefix("torch."),
                                 x.device, launch)
    if kernel == "gluon":
        c = sm90_call(qq, kq, vq, spec, causal=causal, sm_scale=sm_scale, out_dtype=out_dtype,
                      q=q, k=k, v=v, trace=trace, stages=cfg["num_stages"],
                      options=cfg["gluon"])
    else:
        c = prefill_call(qq, kq, vq, spec, causal=causal, sm_scale=sm_scale,
                         out_dtype=out_dtype, q=q, k=k, v=v, trace=trace, launch=cfg or None)
    c.launch()
    if trace:
        return c.out, c.trace
    return c.out


