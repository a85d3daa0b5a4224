"""Launchers for the Triton kernels: input checks, spec checks, strides, grids, public functions.

Prefill (this module's public API, re-exported by :mod:`gpu`)::

    import torch, gpu
    q = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 2, 1000, 128, device="cuda", dtype=torch.float16)   # GQA: 4 q heads / kv head
    v = torch.randn_like(k)
    out = gpu.attention(q, k, v, method="int8_flash", causal=True)       # [2, 8, 1000, 128] fp16

Every numeric choice comes from the method spec (``spec=None``: ``configs/methods/<method>.yaml``;
for fp16_flash the operand format follows the input dtype). Choices the kernels do not implement
raise ValueError before anything is launched (:func:`check_prefill_spec`).

On a machine without a GPU, set ``TRITON_INTERPRET=1`` before importing triton: the same kernels
then run on CPU tensors through the Triton interpreter (small sizes; that is how CI tests them).

Layout conventions the decode half can reuse: quantized operands are :class:`QuantizedOperand`
(int8 codes + float32 scales ``[B, H, n_groups]`` + the group length in tokens, 0 = per head);
V codes are stored transposed ``[B, H, D, Lpad]`` so the PV product's operand is K-major.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.checks import check_qkv, check_sm_scale
from sim.cost.launch import prefill_launch
from sim.simulate import qk_scale_of
from sim.spec import MethodSpec, OperandQuant, load_method

__all__ = ["attention", "attention_trace", "quantize_operand", "quantize_qkv",
           "attention_quantized", "prefill_call", "PrefillCall", "empty_quantized",
           "default_launch", "check_prefill_spec", "resolve_spec", "QuantizedOperand",
           "PREFILL_METHODS", "HEAD_DIMS", "ROUNDING_IDS", "interpreting"]

PREFILL_METHODS = ("fp16_flash", "int8_flash", "turbo")
HEAD_DIMS = (64, 128)
ROUNDING_IDS = {"half_even": 0, "half_away": 1, "half_up": 2, "floor": 3, "toward_zero": 4}
_QK_GRANULARITIES = ("per_token", "per_block", "per_head")
_V_GRANULARITIES = ("per_head", "per_block")


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels():
    """Import triton and the kernels on first use (``import gpu`` stays light)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton ships with the venv
        raise RuntimeError("gpu kernels need triton (pip install triton)") from e
    if interpreting():
        from ._interpreter_compat import install
        install()
    from .kernels import flash_fwd, quant
    return quant, flash_fwd


def _torch():
    import torch
    return torch


# ---------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------
def resolve_spec(method: str, spec: MethodSpec | str | None, dtype: Any = None) -> MethodSpec:
    """The spec a call runs: ``spec`` (a MethodSpec, name or path) or the shipped one for
    ``method``; with ``spec=None`` fp16_flash takes ``operands.format`` from ``dtype``."""
    if not isinstance(method, str) or method not in PREFILL_METHODS:
        raise ValueError(f"method: expected one of {PREFILL_METHODS}, got {method!r}")
    if spec is None:
        s = load_method(method)
        if method == "fp16_flash" and dtype is not None and str(dtype).endswith("bfloat16"):
            s = s.replace(operands__format="bf16")
    elif isinstance(spec, MethodSpec):
        s = spec
    elif isinstance(spec, (str, os.PathLike)):
        s = load_method(spec)
    else:
        raise TypeError(f"spec: expected a MethodSpec, a spec name/path or None, "
                        f"got {type(spec).__name__}")
    if s.method != method:
        raise ValueError(f"spec: method {method!r} was asked for but spec {s.name!r} describes "
                         f"{s.method!r}")
    return s


def _check_operand(name: str, oq: OperandQuant, allowed: tuple[str, ...]) -> None:
    if oq.bits != 8 or not oq.symmetric:
        raise ValueError(f"spec.{name}: the Triton kernels quantize to symmetric INT8, got "
                         f"bits={oq.bits}, symmetric={oq.symmetric}")
    if oq.granularity not in allowed:
        raise ValueError(f"spec.{name}.granularity: the Triton kernels support {allowed}, "
                         f"got {oq.granularity!r}")


def check_prefill_spec(spec: MethodSpec) -> None:
    """Raise ValueError for any spec choice the prefill kernels do not implement."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec: expected a MethodSpec, got {type(spec).__name__}")
    if spec.method not in PREFILL_METHODS:
        raise ValueError(f"spec.method: prefill kernels exist for {PREFILL_METHODS}, "
                         f"got {spec.method!r}")
    bn = spec.tiling.block_n
    if not 16 <= bn <= 128:
        raise ValueError(f"spec.tiling.block_n: the kernels need 16 <= block_n <= 128 "
                         f"(tl.dot minimum, register budget), got {bn}")
    if spec.method == "fp16_flash":
        if spec.operands.p not in ("fp16", "bf16"):
            raise ValueError(f"spec.operands.p_format: expected fp16 or bf16, got {spec.operands.p!r}")
        if spec.operands.p != spec.operands.format:
            raise ValueError("spec.operands.p_format: the kernel casts P to the operand format; "
                             f"got format {spec.operands.format!r}, p_format {spec.operands.p!r}")
        return
    _check_operand("q", spec.q, _QK_GRANULARITIES)
    _check_operand("k", spec.k, _QK_GRANULARITIES)
    _check_operand("v", spec.v, _V_GRANULARITIES)
    if spec.v.granularity == "per_block":
        vg = spec.v.block_tokens or bn
        if vg % bn:
            raise ValueError(f"spec.v.block_tokens: per-block V scales must cover whole key tiles "
                             f"(a multiple of tiling.block_n = {bn}), got {vg}")
    if spec.p.levels > 127:
        raise ValueError(f"spec.p.levels: P codes are int8 in the kernel, levels must be <= 127, "
                         f"got {spec.p.levels}")
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


def _group_tokens(oq: OperandQuant, tile: int, length: int) -> int:
    """Tokens per scale along L (0 = one scale per head)."""
    g = oq.block(tile)[2]
    if oq.granularity == "per_head":
        return 0
    return int(g)


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_tensors(named: dict[str, Any]) -> None:
    torch = _torch()
    dev = None
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor, got strides {tuple(x.stride())} "
                             f"for shape {tuple(x.shape)} (call .contiguous())")
        if x.device.type != "cuda" and not interpreting():
            raise ValueError(f"{name}: expected a CUDA tensor, got device {x.device} (CPU tensors "
                             f"run only under TRITON_INTERPRET=1, the Triton interpreter)")
        if dev is None:
            dev = x.device
        elif x.device != dev:
            raise ValueError(f"{name}: expected device {dev} like the other inputs, got {x.device}")


def _check_inputs(q, k, v, check_finite: bool, dtypes=("float16", "bfloat16"), what="q"):
    """Device/contiguity checks, then sim.checks.check_qkv, then the kernels' own limits (head
    dim, Dv == D). ``what`` names the tensor a bad head dim is reported on."""
    _check_tensors({"q": q, "k": k, "v": v} if q is not k else {"k": k, "v": v})
    shp = check_qkv(q, k, v, check_finite=check_finite, allow_dtypes=set(dtypes),
                    require_same_dtype=True)
    if shp.D not in HEAD_DIMS:
        raise ValueError(f"{what}: head dim D={shp.D} is not supported by the kernels; expected "
                         f"one of {HEAD_DIMS}")
    if shp.Dv != shp.D:
        raise ValueError(f"v: head dim Dv={shp.Dv} must equal D={shp.D}")
    return shp


# ---------------------------------------------------------------------------------------------
# quantization
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizedOperand:
    """INT8 codes of a [B, H, L, D] operand and their scales.

    ``codes``: int8, ``[B, H, L, D]`` or, with ``transposed``, ``[B, H, D, Lpad]`` (Lpad = L
    rounded up to 16; columns >= L are never read). ``scale``: float32 ``[B, H, n_groups]``
    holding values of the spec's scale dtype. ``group``: tokens per scale (0 = one per head)."""

    codes: Any
    scale: Any
    group: int
    length: int
    transposed: bool

    def codes_bhld(self):
        """Codes as ``[B, H, L, D]`` (a view of the transposed storage when transposed)."""
        return self.codes[..., :self.length].transpose(-1, -2) if self.transposed else self.codes


def quantize_operand(x, oq: OperandQuant, tile: int, *, transpose: bool = False,
                     check: bool = True) -> QuantizedOperand:
    """Quantize ``x`` ``[B, H, L, D]`` (fp16/bf16) as ``oq`` says, with ``tile`` the kernel tile
    along L (block_m for Q, block_n for K/V) that per_block granularity defaults to.

    Equals ``sim.numerics.quantize(x, 8, block=oq.block(tile), rounding=oq.rounding,
    scale_dtype=oq.scale_dtype)`` (codes and scales identical)."""
    torch = _torch()
    quant, _ = _kernels()
    if check:
        _check_tensors({"x": x})
    if x.ndim != 4 or x.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"x: expected [B, H, L, D] with D in {HEAD_DIMS}, got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"x: expected float16 or bfloat16, got {x.dtype}")
    _check_operand("operand", oq, _QK_GRANULARITIES)
    qo = empty_quantized(x, oq, tile, transpose=transpose)
    codes, scale, group = qo.codes, qo.scale, qo.group
    B, H, L, D = x.shape
    cs = (codes.stride(0), codes.stride(1), 1, codes.stride(2)) if transpose else codes.stride()
    rnd = ROUNDING_IDS[oq.rounding]
    fp16 = oq.scale_dtype == "fp16"
    if group == 1:
        rows = 16 if interpreting() else 64
        quant.quant_rows_kernel[(triton_cdiv(L, rows), B * H)](
            x, codes, scale, L, H, *x.stride(), *cs, D=D, ROWS=rows, ROUNDING=rnd,
            SCALE_FP16=fp16, num_warps=4, enable_fp_fusion=False)
    else:
        T = L if group == 0 else group
        ng = triton_cdiv(L, T)
        chunk = min(64, 1 << max(0, (min(T, L) - 1).bit_length()))
        quant.quant_groups_kernel[(ng, B * H)](
            x, codes, scale, L, H, T, ng, *x.stride(), *cs, D=D, CHUNK=chunk, ROUNDING=rnd,
            SCALE_FP16=fp16, num_warps=4, enable_fp_fusion=False)
    if fp16 and x.dtype == torch.bfloat16 and bool(torch.isinf(scale).any()):
        raise ValueError("x: absmax / 127 exceeds the fp16 maximum 65504 for some block; use "
                         "scale_dtype fp32 or a finer granularity")
    return qo


def empty_quantized(x, oq: OperandQuant, tile: int, *, transpose: bool = False
                    ) -> QuantizedOperand:
    """The uninitialized :class:`QuantizedOperand` buffers :func:`quantize_operand` fills for
    ``x`` ``[B, H, L, D]`` (on x's device; a ``meta`` tensor gives shapes and strides only)."""
    torch = _torch()
    B, H, L, D = x.shape
    group = _group_tokens(oq, tile, L)
    if transpose:
        lpad = -(-L // 16) * 16
        codes = torch.empty((B, H, D, lpad), dtype=torch.int8, device=x.device)
    else:
        codes = torch.empty((B, H, L, D), dtype=torch.int8, device=x.device)
    ng = L if group == 1 else triton_cdiv(L, L if group == 0 else group)
    scale = torch.empty((B, H, ng), dtype=torch.float32, device=x.device)
    return QuantizedOperand(codes, scale, group, L, transpose)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def quantize_qkv(q, k, v, spec: MethodSpec, *, check: bool = True):
    """The three quantization kernels of an integer method: Q with tile block_m, K and V with
    tile block_n; V stored transposed."""
    tm, tn = spec.tiling.block_m, spec.tiling.block_n
    return (quantize_operand(q, spec.q, tm, check=check),
            quantize_operand(k, spec.k, tn, check=check),
            quantize_operand(v, spec.v, tn, transpose=True, check=check))


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------
def default_launch(D: int, Lq: int, integer: bool, causal: bool) -> dict:
    """Program tile and pipeline for the forward: (block_m, num_warps, num_stages).
    On a GPU: configs/kernels/launch_sm90.yaml (tuned on H100, read by the cost model too);
    the interpreter uses small row blocks."""
    if interpreting():
        bm = 16 if Lq <= 16 else 32
        return {"block_m": bm, "num_warps": 4, "num_stages": 1}
    return prefill_launch(D)


def _p_mode(p) -> int:
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


def _sas_constants(spec: MethodSpec) -> dict:
    if spec.softmax.exp != "sas":
        return dict(SAS=False, THRESHOLD=0.0, LUT_ENTRIES=1, C0=1.0, C1=0.0, C2=0.0, C3=0.0,
                    DEGREE=2, POLY_FP16=True)
    sas = spec.softmax.sas
    c = [float(x) for x in sas.coefficients] + [0.0]
    return dict(SAS=True, THRESHOLD=float(np.float32(sas.threshold)),
                LUT_ENTRIES=int(sas.lut_entries), C0=c[0], C1=c[1], C2=c[2], C3=c[3],
                DEGREE=int(sas.degree), POLY_FP16=sas.arithmetic == "fp16")


@dataclass(frozen=True)
class PrefillCall:
    """One ``attn_fwd_kernel`` launch, as :func:`attention_quantized` makes it: ``grid``,
    ``args`` (positional, in the kernel's order), ``constexprs`` (keyword), ``options``
    (``num_warps``, ``num_stages``, ``enable_fp_fusion``), the ``out`` buffer and, with trace,
    the ``trace`` buffers ``{"S", "P", "O_int"}`` (else None)."""

    grid: tuple
    args: tuple
    constexprs: dict
    options: dict
    out: Any
    trace: dict | None


def prefill_call(qq, kq, vq, spec: MethodSpec, *, causal: bool, sm_scale: float, out_dtype,
                 q=None, k=None, v=None, trace: bool = False,
                 launch: dict | None = None) -> PrefillCall:
    """The argument set of the forward (:func:`attention_quantized`'s inputs; allocates ``out``
    and the trace buffers on the inputs' device, so ``meta`` tensors give a launch-free call
    that ``gpu.sass`` compiles)."""
    torch = _torch()
    _kernels()
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
    cfg = default_launch(D, Lq, integer, causal)
    cfg.update(launch or {})
    bm = int(cfg["block_m"])
    nt = triton_cdiv(Lk, bn)
    out = torch.empty((B, Hq, Lq, D), dtype=out_dtype, device=dev)
    if trace:
        TS = torch.zeros((B, Hq, Lq, Lk), dtype=torch.int32 if integer else torch.float32, device=dev)
        TP = torch.zeros((B, Hq, Lq, Lk), dtype=torch.int8 if integer else torch.float32, device=dev)
        TO = torch.zeros((B, Hq, nt, Lq, D), dtype=torch.int32, device=dev)
    else:
        TS = TP = TO = torch.empty(1, dtype=torch.int32, device=dev)
    if integer:
        p = spec.p
        pconst = dict(LEVELS=int(p.levels), P_FP16=p.arithmetic == "fp16",
                      P_ROUNDING=ROUNDING_IDS[p.rounding], P_SATURATE=bool(p.saturate),
                      ROWSUM_Q=p.rowsum == "quantized", P_MODE=_p_mode(p))
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
        Q_GROUP=qg, K_GROUP=kg, V_GROUP=vg, **pconst, **_sas_constants(spec),
        EXACT_FMA_F64=interpreting(), USE_ASM=not interpreting(), TRACE=bool(trace),
        PIPE=bool(cfg.get("pipe", False)), WS=bool(cfg.get("ws", False)))
    options = dict(num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]),
                   enable_fp_fusion=False)
    if cfg.get("maxnreg"):
        options["maxnreg"] = int(cfg["maxnreg"])
    return PrefillCall((triton_cdiv(Lq, bm), B * Hq), args, constexprs, options, out,
                       {"S": TS, "P": TP, "O_int": TO} if trace else None)


def attention_quantized(qq, kq, vq, spec: MethodSpec, *, causal: bool, sm_scale: float,
                        out_dtype, q=None, k=None, v=None, trace: bool = False,
                        launch: dict | None = None):
    """Launch the forward. Integer methods take :class:`QuantizedOperand` ``qq, kq, vq``; the
    float method takes the raw ``q, k, v`` (pass ``qq = kq = vq = None``). Inputs are assumed
    checked. Returns ``out`` or, with ``trace``, ``(out, {"S", "P", "O_int"})``."""
    _, flash = _kernels()
    c = prefill_call(qq, kq, vq, spec, causal=causal, sm_scale=sm_scale, out_dtype=out_dtype,
                     q=q, k=k, v=v, trace=trace, launch=launch)
    flash.attn_fwd_kernel[c.grid](*c.args, **c.constexprs, **c.options)
    if trace:
        return c.out, c.trace
    return c.out


def _prepare(q, k, v, method, causal, sm_scale, spec, check_finite=True):
    shp = _check_inputs(q, k, v, check_finite)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    sm = check_sm_scale(sm_scale, shp.D)
    s = resolve_spec(method, spec, q.dtype)
    check_prefill_spec(s)
    return s, sm


def attention(q, k, v, method: str = "int8_flash", causal: bool = False,
              sm_scale: float | None = None, spec: MethodSpec | str | None = None):
    """Prefill attention ``softmax(q k^T * sm_scale) v`` by ``method``'s kernels.

    ``q`` ``[B, Hq, Lq, D]``, ``k``/``v`` ``[B, Hkv, Lk, D]``: contiguous CUDA tensors (CPU under
    ``TRITON_INTERPRET=1``), one dtype, float16 or bfloat16, D in (64, 128), Hq % Hkv == 0,
    finite. ``causal`` aligns bottom-right (row i sees keys j <= i + Lk - Lq; rows that see
    nothing output 0). ``sm_scale`` defaults to 1/sqrt(D). Integer methods run their Q/K/V
    quantization kernels first. Returns ``[B, Hq, Lq, D]`` in q's dtype.

    >>> out = gpu.attention(q, k, v, method="turbo", causal=True)      # doctest: +SKIP
    """
    s, sm = _prepare(q, k, v, method, causal, sm_scale, spec)
    if s.integer:
        qq, kq, vq = quantize_qkv(q, k, v, s, check=False)
        return attention_quantized(qq, kq, vq, s, causal=causal, sm_scale=sm, out_dtype=q.dtype)
    return attention_quantized(None, None, None, s, causal=causal, sm_scale=sm,
                               out_dtype=q.dtype, q=q, k=k, v=v)


def attention_trace(q, k, v, method: str = "int8_flash", causal: bool = False,
                    sm_scale: float | None = None, spec: MethodSpec | str | None = None,
                    launch: dict | None = None) -> dict:
    """:func:`attention` plus its intermediates, for validation against ``sim.simulate``.

    Returns a dict of torch tensors: ``out``; for integer methods ``q_codes``, ``q_scale``,
    ``k_codes``, ``k_scale``, ``v_codes`` (``[B, H, L, D]``), ``v_scale`` (float32 ``[B, H,
    n_groups]``); ``S`` ``[B, Hq, Lq, Lk]`` (int32 ``S_int``, or f32 ``dot(q, k^T)``) and ``P``
    (int8 codes, or f32 p) for every (row, key) in the key tiles a row's program visits (others 0);
    ``O_int`` int32 ``[B, Hq, n_key_tiles, Lq, D]`` (integer methods; zero for skipped tiles)."""
    s, sm = _prepare(q, k, v, method, causal, sm_scale, spec)
    res = {}
    if s.integer:
        qq, kq, vq = quantize_qkv(q, k, v, s, check=False)
        out, tr = attention_quantized(qq, kq, vq, s, causal=causal, sm_scale=sm,
                                      out_dtype=q.dtype, trace=True, launch=launch)
        for name, x in (("q", qq), ("k", kq), ("v", vq)):
            res[f"{name}_codes"] = x.codes_bhld().contiguous()
            res[f"{name}_scale"] = x.scale
    else:
        out, tr = attention_quantized(None, None, None, s, causal=causal, sm_scale=sm,
                                      out_dtype=q.dtype, q=q, k=k, v=v, trace=True, launch=launch)
        tr.pop("O_int")
    res.update(tr)
    res["out"] = out
    return res
