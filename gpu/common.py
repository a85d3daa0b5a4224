"""Shared launch machinery of the kernel paths: lazy imports, input checks, INT8 operand
quantization, small helpers. Knows no method by name (the method modules in :mod:`gpu.methods`
compose it).

``import gpu`` needs neither a GPU nor triton: torch and triton are imported when a kernel
runs. Kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (the Triton
interpreter: small sizes, how CI tests them).

Quantized operands are :class:`QuantizedOperand` (int8 codes + float32 scales ``[B, H,
n_groups]`` + the group length in tokens, 0 = one per head); V codes are stored transposed
``[B, H, D, Lpad]`` so the PV product's operand is K-major.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.checks import check_qkv
from sim.spec import OperandQuant

__all__ = ["interpreting", "kernels", "torch_module", "check_tensors", "check_inputs",
           "p_mode", "PrefillCall",
           "QuantizedOperand", "quantize_operand", "empty_quantized", "quantize_qkv",
           "cdiv", "grow", "capacity", "sas_constants", "p_constants", "check_operand_quant",
           "HEAD_DIMS", "ROUNDING_IDS", "QK_GRANULARITIES", "V_GRANULARITIES"]

HEAD_DIMS = (64, 128)
ROUNDING_IDS = {"half_even": 0, "half_away": 1, "half_up": 2, "floor": 3, "toward_zero": 4}
QK_GRANULARITIES = ("per_token", "per_block", "per_head")
V_GRANULARITIES = ("per_head", "per_block")


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels(*names: str):
    """The kernel modules ``gpu.kernels.<name>`` (triton imported on first use, with the
    interpreter's compatibility patch when interpreting)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton ships with the venv
        raise RuntimeError("gpu kernels need triton (pip install triton)") from e
    if interpreting():
        from ._interpreter_compat import install
        install()
    import importlib
    mods = tuple(importlib.import_module(f"gpu.kernels.{n}") for n in names)
    return mods[0] if len(mods) == 1 else mods


def torch_module():
    import torch
    return torch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def check_tensors(named: dict[str, Any], contiguous: str = "all") -> None:
    """Each value a torch tensor, on CUDA (or CPU under the interpreter), all on one device;
    ``contiguous="all"``: packed, ``"last"``: the last dimension packed (stride 1), the others
    free (kernels that take every stride: the prefill forward and the quantization kernels).
    Messages name the argument."""
    torch = torch_module()
    if contiguous not in ("all", "last"):
        raise ValueError(f"contiguous: expected 'all' or 'last', got {contiguous!r}")
    dev = None
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if contiguous == "all" and not x.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor, got strides {tuple(x.stride())} "
                             f"for shape {tuple(x.shape)} (call .contiguous())")
        if contiguous == "last" and x.ndim and x.stride(-1) != 1 and x.shape[-1] != 1:
            raise ValueError(f"{name}: expected the last dimension contiguous (stride 1), got "
                             f"strides {tuple(x.stride())} for shape {tuple(x.shape)} (call "
                             f".contiguous())")
        if x.device.type != "cuda" and not interpreting():
            raise ValueError(f"{name}: expected a CUDA tensor, got device {x.device} (CPU tensors "
                             f"run only under TRITON_INTERPRET=1, the Triton interpreter)")
        if dev is None:
            dev = x.device
        elif x.device != dev:
            raise ValueError(f"{name}: expected device {dev} like the other inputs, got {x.device}")


def check_inputs(q, k, v, check_finite: bool, dtypes=("float16", "bfloat16"),
                 names=("q", "k", "v"), contiguous: str = "all"):
    """Device/contiguity checks (``contiguous``: see :func:`check_tensors`), then
    ``sim.checks.check_qkv``, then the kernels' own limits (head dim, Dv == D). ``names`` are
    the user's argument names (``("q", "k_new", "v_new")``); ``q is k`` checks K/V alone."""
    nq, nk, nv = names
    check_tensors({nq: q, nk: k, nv: v} if q is not k else {nk: k, nv: v}, contiguous)
    shp = check_qkv(q, k, v, check_finite=check_finite, allow_dtypes=set(dtypes),
                    require_same_dtype=True, names=names)
    if shp.D not in HEAD_DIMS:
        raise ValueError(f"{nq if q is not k else nk}: head dim D={shp.D} is not supported by "
                         f"the kernels; expected one of {HEAD_DIMS}")
    if shp.Dv != shp.D:
        raise ValueError(f"{nv}: head dim Dv={shp.Dv} must equal D={shp.D}")
    return shp


# ---------------------------------------------------------------------------------------------
# INT8 operand quantization (the kernels of gpu.kernels.quant)
# ---------------------------------------------------------------------------------------------
def check_operand_quant(name: str, oq: OperandQuant, allowed: tuple[str, ...]) -> None:
    if oq.bits != 8 or not oq.symmetric:
        raise ValueError(f"spec.{name}: the Triton kernels quantize to symmetric INT8, got "
                         f"bits={oq.bits}, symmetric={oq.symmetric}")
    if oq.granularity not in allowed:
        raise ValueError(f"spec.{name}.granularity: the Triton kernels support {allowed}, "
                         f"got {oq.granularity!r}")


def _group_tokens(oq: OperandQuant, tile: int) -> int:
    """Tokens per scale along L (0 = one scale per head)."""
    return 0 if oq.granularity == "per_head" else int(oq.block(tile)[2])


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


def empty_quantized(x, oq: OperandQuant, tile: int, *, transpose: bool = False
                    ) -> QuantizedOperand:
    """The uninitialized :class:`QuantizedOperand` buffers :func:`quantize_operand` fills for
    ``x`` ``[B, H, L, D]`` (on x's device; a ``meta`` tensor gives shapes and strides only)."""
    torch = torch_module()
    B, H, L, D = x.shape
    group = _group_tokens(oq, tile)
    if transpose:
        codes = torch.empty((B, H, D, cdiv(L, 16) * 16), dtype=torch.int8, device=x.device)
    else:
        codes = torch.empty((B, H, L, D), dtype=torch.int8, device=x.device)
    ng = L if group == 1 else cdiv(L, L if group == 0 else group)
    scale = torch.empty((B, H, ng), dtype=torch.float32, device=x.device)
    return QuantizedOperand(codes, scale, group, L, transpose)


def quantize_operand(x, oq: OperandQuant, tile: int, *, transpose: bool = False,
                     check: bool = True, name: str = "x") -> QuantizedOperand:
    """Quantize ``x`` ``[B, H, L, D]`` (fp16/bf16) as ``oq`` says, with ``tile`` the kernel tile
    along L (block_m for Q, block_n for K/V) that per_block granularity defaults to.

    Equals ``sim.numerics.quantize(x, 8, block=oq.block(tile), rounding=oq.rounding,
    scale_dtype=oq.scale_dtype)`` (codes and scales identical)."""
    torch = torch_module()
    quant = kernels("quant")
    if check:
        check_tensors({name: x}, "last")     # the kernels take every stride of x
    if x.ndim != 4 or x.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"{name}: expected [B, H, L, D] with D in {HEAD_DIMS}, got "
                         f"{tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: expected float16 or bfloat16, got {x.dtype}")
    check_operand_quant("operand", oq, QK_GRANULARITIES)
    qo = empty_quantized(x, oq, tile, transpose=transpose)
    codes, scale, group = qo.codes, qo.scale, qo.group
    B, H, L, D = x.shape
    cs = (codes.stride(0), codes.stride(1), 1, codes.stride(2)) if transpose else codes.stride()
    rnd = ROUNDING_IDS[oq.rounding]
    arith16 = oq.arithmetic == "fp16"
    fp16 = oq.scale_dtype == "fp16" or arith16
    fast = not interpreting()   # Markstein quotient (exact, see gpu.kernels.quant)
    if group == 1:
        rows = 16 if interpreting() else 64
        quant.quant_rows_kernel[(cdiv(L, rows), B * H)](
            x, codes, scale, L, H, *x.stride(), *cs, D=D, ROWS=rows, ROUNDING=rnd,
            SCALE_FP16=fp16, ARITH_FP16=arith16, FAST=fast, num_warps=4,
            enable_fp_fusion=False)
    elif group == 0 and L > 2 * (chunk := 16 if interpreting() else 64):
        # one scale per head: chunk maxima, then codes per chunk (B * H * L / chunk programs)
        nc = cdiv(L, chunk)
        part = torch.empty((B * H, nc), dtype=torch.float32, device=x.device)
        quant.absmax_chunks_kernel[(nc, B * H)](
            x, part, L, H, nc, *x.stride(), D=D, CHUNK=chunk, ARITH_FP16=arith16, num_warps=4)
        quant.quant_chunks_kernel[(nc, B * H)](
            x, part, codes, scale, L, H, nc, *x.stride(), *cs, D=D, CHUNK=chunk,
            NCP=1 << max(0, (nc - 1).bit_length()), ROUNDING=rnd, SCALE_FP16=fp16,
            ARITH_FP16=arith16, FAST=fast, num_warps=4, enable_fp_fusion=False)
    else:
        T = L if group == 0 else group
        ng = cdiv(L, T)
        chunk = min(64, 1 << max(0, (min(T, L) - 1).bit_length()))
        quant.quant_groups_kernel[(ng, B * H)](
            x, codes, scale, L, H, T, ng, *x.stride(), *cs, D=D, CHUNK=chunk, ROUNDING=rnd,
            SCALE_FP16=fp16, ARITH_FP16=arith16, FAST=fast, num_warps=4,
            enable_fp_fusion=False)
    if fp16 and x.dtype == torch.bfloat16 and bool(torch.isinf(scale).any()):
        raise ValueError(f"{name}: absmax / 127 (or, with arithmetic fp16, a value) exceeds the "
                         f"fp16 maximum 65504; use scale_dtype and arithmetic fp32 or a finer "
                         f"granularity")
    return qo


def quantize_qkv(q, k, v, spec, *, check: bool = True):
    """The three quantization kernels of an integer spec: Q with tile block_m, K and V with
    tile block_n; V stored transposed."""
    tm, tn = spec.tiling.block_m, spec.tiling.block_n
    return (quantize_operand(q, spec.q, tm, check=check, name="q"),
            quantize_operand(k, spec.k, tn, check=check, name="k"),
            quantize_operand(v, spec.v, tn, transpose=True, check=check, name="v"))


# ---------------------------------------------------------------------------------------------
# spec -> kernel constants (cached per spec: specs are frozen and hashable)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def sas_constants(softmax) -> dict:
    """The SAS constexprs of ``gpu.kernels.sas`` for a ``spec.softmax`` (SAS=False for exp2)."""
    if softmax.exp != "sas":
        return dict(SAS=False, THRESHOLD=0.0, LUT_ENTRIES=1, C0=1.0, C1=0.0, C2=0.0, C3=0.0,
                    DEGREE=2, POLY_FP16=True)
    sas = softmax.sas
    c = [float(x) for x in sas.coefficients] + [0.0]
    return dict(SAS=True, THRESHOLD=float(np.float32(sas.threshold)),
                LUT_ENTRIES=int(sas.lut_entries), C0=c[0], C1=c[1], C2=c[2], C3=c[3],
                DEGREE=int(sas.degree), POLY_FP16=sas.arithmetic == "fp16")


@functools.lru_cache(maxsize=64)
def p_constants(p) -> dict:
    """The PQUANT constexprs for a ``spec.p``."""
    return dict(LEVELS=int(p.levels), P_FP16=p.arithmetic == "fp16",
                P_ROUNDING=ROUNDING_IDS[p.rounding], P_SATURATE=bool(p.saturate),
                ROWSUM_Q=p.rowsum == "quantized")


# ---------------------------------------------------------------------------------------------
# growable device buffers (caches)
# ---------------------------------------------------------------------------------------------
def grow(t, axis: int, new: int):
    """A copy of ``t`` with ``axis`` extended to ``new`` (new entries zero)."""
    torch = torch_module()
    shape = list(t.shape)
    shape[axis] = new
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out.narrow(axis, 0, t.shape[axis]).copy_(t)
    return out


def capacity(need: int, have: int, quantum: int) -> int:
    """Token capacity for ``need`` tokens: at least double ``have``, a multiple of ``quantum``."""
    return cdiv(max(need, 2 * have, quantum), quantum) * quantum


# ---------------------------------------------------------------------------------------------
# prefill launches (gpu.prefill: portable Triton forward; gpu.prefill_sm90: Gluon sm_90 forward)
# ---------------------------------------------------------------------------------------------
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
    """One prefill forward launch, as ``gpu.prefill.prefill_call`` (``kernel`` "triton":
    ``gpu.kernels.flash_fwd.attn_fwd_kernel``) or ``gpu.prefill_sm90.sm90_call`` ("gluon":
    ``gpu.kernels.flash_fwd_sm90.attn_fwd_sm90_kernel``) makes it: ``grid``, ``args``
    (positional, in the kernel's order), ``constexprs`` (keyword), ``options`` (``num_warps``,
    ``num_stages`` or ``maxnreg``, ``enable_fp_fusion``), the ``out`` buffer and, with trace,
    the ``trace`` buffers named as the simulator's trace (``s_int``, ``p_codes``, ``o_int`` for
    integer operands; ``s``, ``p`` for float ones), else None."""

    grid: tuple
    args: tuple
    constexprs: dict
    options: dict
    out: Any
    trace: dict | None
    kernel: str = "triton"

    def fn(self):
        """The jit function this call launches."""
        if self.kernel == "gluon":
            return kernels("flash_fwd_sm90").attn_fwd_sm90_kernel
        return kernels("flash_fwd").attn_fwd_kernel

    def launch(self):
        self.fn()[self.grid](*self.args, **self.constexprs, **self.options)
