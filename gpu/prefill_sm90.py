"""Launcher of the Gluon sm_90 prefill forward (``gpu.kernels.flash_fwd_sm90``: a TMA producer
warp, a ring of K/V stages, consumer warpgroups of 64 rows with QK of the next tile in flight
under the softmax of this one). :mod:`gpu.prefill` runs it in place of the portable Triton
forward when the device is a Hopper GPU and the architecture's launch table
(``configs/kernels/hopper/launch.yaml``, ``kernel: gluon``) selects it for the method and head
dim; everything else (other architectures, the interpreter, specs it does not implement) runs
the portable kernel.

Numerics are the portable kernel's operation by operation (docs/numerics.md); the spec's fused
options map to kernel flags (``arith.scores: fma`` -> ``FMA_SCORES``, ``p.arithmetic:
fp32_fma`` -> ``P_FMA``, ``arith.v_scale: deferred`` -> ``V_DEFERRED``), which only this
kernel implements. The launch options (:data:`sim.arch.GLUON_OPTIONS`) change the schedule
and code shape, never a number: ``merged`` (one 8-warp consumer partition: both warpgroups run
one copy of the code), ``unroll`` (main loop unrolled twice: two score register sets),
``k_perm`` (K rows permuted by the TMA box so P needs no relayout; only when Lk % 16 == 0),
``defer_pv`` (FA3's in-warpgroup order), ``skip_rescale`` (no ``acc * alpha`` when every
alpha of the partition is 1). ``num_stages`` of the table is the ring depth.

Operands are the quantization kernels' layouts (:class:`gpu.common.QuantizedOperand`: int8
codes ``[B, H, L, D]``, V codes transposed ``[B, H, D, Lpad]``, f32 scales) or the fp16
inputs, read through TMA descriptors of their flattened 2-D views (rows of the next head that a
tile overhangs are masked, as out-of-range rows in the portable kernel).
"""
from __future__ import annotations

import functools

from sim.arch import GLUON_DEFAULTS, GLUON_OPTIONS
from sim.engine import qk_scale_of
from sim.spec import MethodSpec

from .common import PrefillCall, cdiv, interpreting, p_constants, p_mode, sas_constants, \
    torch_module

__all__ = ["unsupported", "check_fused_spec", "sm90_call", "OPTION_FLAGS", "DEFAULT_OPTIONS",
           "BLOCK_M"]

BLOCK_M = 128      # query rows per program (two warpgroups of 64)
OPTION_FLAGS = {"merged": "MERGED", "unroll": "UNROLL", "one_loop": "ONE_LOOP",
                "k_perm": "K_PERM", "defer_pv": "DEFER_PV", "skip_rescale": "SKIP_RESCALE"}
assert set(OPTION_FLAGS) == set(GLUON_OPTIONS)
DEFAULT_OPTIONS = dict(GLUON_DEFAULTS)
_BLOCK_NS = (64, 128)
_STAGES = (2, 3, 4, 5, 6)


@functools.lru_cache(maxsize=64)
def check_fused_spec(spec: MethodSpec) -> None:
    """ValueError for a fused-arithmetic choice the Gluon kernel cannot run (checked with the
    spec, whatever the device)."""
    fma = spec.p is not None and spec.p.arithmetic == "fp32_fma"
    if fma:
        p = spec.p
        if p.levels != 127 or p.rowsum != "unquantized" or p.saturate:
            raise ValueError(f"spec.p: arithmetic fp32_fma is implemented for levels 127, "
                             f"rowsum unquantized, saturate false; got levels {p.levels}, "
                             f"rowsum {p.rowsum!r}, saturate {p.saturate}")
    if spec.arith.fused or fma:
        if spec.tiling.block_n not in _BLOCK_NS:
            raise ValueError(f"spec.tiling.block_n: the fused variants run in the sm_90 Gluon "
                             f"kernel, which takes block_n in {_BLOCK_NS}; got "
                             f"{spec.tiling.block_n}")


def unsupported(spec: MethodSpec, dtype_name: str) -> str | None:
    """Why the Gluon forward cannot run ``spec`` on inputs of ``dtype_name`` (None: it can)."""
    bn = spec.tiling.block_n
    if bn not in _BLOCK_NS:
        return f"block_n {bn} (the Gluon kernel takes {_BLOCK_NS})"
    if not spec.integer:
        if spec.operands.format != "fp16" or dtype_name != "float16":
            return "float operands other than fp16 (its P operand is fp16)"
    return None


def _options(launch: dict | None) -> dict:
    opts = dict(DEFAULT_OPTIONS)
    for k, v in (launch or {}).items():
        if k not in OPTION_FLAGS:
            raise ValueError(f"launch['gluon']: expected options from {sorted(OPTION_FLAGS)}, "
                             f"got {k!r}")
        if not isinstance(v, bool):
            raise ValueError(f"launch['gluon'][{k!r}]: expected a bool, got {v!r}")
        opts[k] = v
    return opts


def sm90_call(qq, kq, vq, spec: MethodSpec, *, causal: bool, sm_scale: float, out_dtype,
              q=None, k=None, v=None, trace: bool = False, stages: int = 4,
              options: dict | None = None, ablate: int = 0) -> PrefillCall:
    """The argument set of ``attn_fwd_sm90_kernel`` (allocates ``out`` and the trace buffers on
    the inputs' device; ``meta`` tensors give a launch-free call that ``gpu.sass`` compiles).
    Integer specs take :class:`gpu.common.QuantizedOperand` ``qq, kq, vq``, float specs the
    fp16 ``q, k, v``. ``options``: Gluon launch options (:data:`DEFAULT_OPTIONS` for the rest);
    ``ablate`` (timing only: 1 = no softmax, 2 = MMAs and one add) breaks the numerics."""
    torch = torch_module()
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    if interpreting():
        raise RuntimeError("the Gluon forward does not run under TRITON_INTERPRET")
    if stages not in _STAGES:
        raise ValueError(f"launch['num_stages']: the Gluon ring takes {_STAGES}, got {stages}")
    opts = _options(options)
    if opts["one_loop"] and opts["defer_pv"]:
        raise ValueError("launch['gluon']: defer_pv is a schedule of the two-loop consumer; "
                         "it does not combine with one_loop")
    integer = spec.integer
    bn = spec.tiling.block_n
    if integer:
        B, Hq, Lq, D = qq.codes.shape
        Hkv, Lk = kq.codes.shape[1], kq.codes.shape[2]
        Q, K, V = qq.codes, kq.codes, vq.codes
        if not vq.transposed:
            raise ValueError("v: the Gluon forward reads V codes transposed ([B, H, D, Lpad])")
        QS, KS, VS = qq.scale, kq.scale, vq.scale
        nqs, nks, nvs = QS.shape[-1], KS.shape[-1], VS.shape[-1]
        qg, kg, vg = qq.group, kq.group, vq.group
        dt = gl.int8
    else:
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        Q, K, V = q, k, v
        QS = KS = VS = torch.ones(1, dtype=torch.float32, device=q.device)
        nqs = nks = nvs = 1
        qg = kg = vg = 0
        dt = gl.float16
    dev = Q.device
    why = unsupported(spec, str(Q.dtype).removeprefix("torch.") if not integer else "int8")
    if why:
        raise ValueError(f"spec: the Gluon forward does not implement {why}")
    if integer and vg % bn:
        raise ValueError(f"v scales: group {vg} is not a multiple of tiling.block_n {bn}")
    fma_scores = spec.arith.scores == "fma"
    p_fma = spec.p is not None and spec.p.arithmetic == "fp32_fma"
    v_deferred = spec.arith.v_scale == "deferred"
    if v_deferred and vg != 0:
        raise ValueError("spec.arith.v_scale: deferred needs one V scale per head")
    k_perm = opts["k_perm"] and integer and Lk % 16 == 0
    merged = opts["merged"]
    qr = BLOCK_M if merged else BLOCK_M // 2
    lay = gl.NVMMASharedLayout.get_default_for
    qdesc = TensorDescriptor(Q, [B * Hq * Lq, D], [D, 1], [qr, D], lay([qr, D], dt))
    if k_perm:
        # key 16 b + 4 t + 2 a + e lands at shared row 16 b + 8 a + 2 t + e (see the kernel)
        sw = lay([bn, D], dt).swizzle_byte_width
        kdesc = TensorDescriptor(K, [B * Hkv * Lk // 16, 2, 4, 2, D],
                                 [16 * D, 2 * D, 4 * D, D, 1], [bn // 16, 2, 4, 2, D],
                                 gl.NVMMASharedLayout(swizzle_byte_width=sw, element_bitwidth=8,
                                                      rank=5))
    else:
        kdesc = TensorDescriptor(K, [B * Hkv * Lk, D], [D, 1], [bn, D], lay([bn, D], dt))
    if integer:
        lpad = V.shape[-1]
        vdesc = TensorDescriptor(V, [B * Hkv * D, lpad], [lpad, 1], [D, bn], lay([D, bn], dt))
    else:
        vdesc = TensorDescriptor(V, [B * Hkv * Lk, D], [D, 1], [bn, D], lay([bn, D], dt))
    lay1 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)
    if integer and kg == 1:   # per-key K scales ride with each K tile
        ksdesc = TensorDescriptor(KS, [B * Hkv * nks], [1], [bn], lay1)
    else:                     # unused: a small descriptor
        dummy = torch.zeros(16, dtype=torch.float32, device=dev)
        ksdesc = TensorDescriptor(dummy, [16], [1], [4], lay1)
    nt = cdiv(Lk, bn)
    out = torch.empty((B, Hq, Lq, D), dtype=out_dtype, device=dev)
    if trace:
        TS = torch.zeros((B, Hq, Lq, Lk), dtype=torch.int32 if integer else torch.float32,
                         device=dev)
        TP = torch.zeros((B, Hq, Lq, Lk), dtype=torch.int8 if integer else torch.float32,
                         device=dev)
        TO = torch.zeros((B, Hq, nt, Lq, D), dtype=torch.int32, device=dev)
    else:
        TS = TP = TO = torch.empty(1, dtype=torch.int32, device=dev)
    if integer:
        pconst = dict(p_constants(spec.p), P_MODE=p_mode(spec.p))
    else:
        pconst = dict(LEVELS=127, P_FP16=True, P_ROUNDING=0, P_SATURATE=False, ROWSUM_Q=False,
                      P_MODE=0)
    sas = dict(sas_constants(spec.softmax))
    # the exact 8-instruction SAS (kernel docstring): fp16 polynomial, c0 == 1, and the skipped
    # f16(LUT[n] * poly) exact (lut_entries <= 13, checked with the spec)
    sas_fast = bool(sas["SAS"] and sas["POLY_FP16"] and sas["C0"] == 1.0
                    and sas["LUT_ENTRIES"] <= 13)
    qk_scale = float(qk_scale_of(sm_scale))
    args = (qdesc, kdesc, vdesc, ksdesc, QS, KS, VS, out, TS, TP, TO, qk_scale,
            out.stride(0), out.stride(1), out.stride(2),
            Hq, Hkv, Hq // Hkv, Lq, Lk, nqs, nks, nvs, nt)
    constexprs = dict(
        HEAD_D=D, BLOCK_N=bn, INT8=integer, CAUSAL=bool(causal), Q_GROUP=qg, K_GROUP=kg,
        V_GROUP=vg, **pconst, **sas, TRACE=bool(trace), STAGES=int(stages), K_PERM=k_perm,
        DEFER_PV=opts["defer_pv"], FMA_SCORES=fma_scores, P_FMA=p_fma, V_DEFERRED=v_deferred,
        SKIP_RESCALE=opts["skip_rescale"], SAS_FAST=sas_fast, ABLATE=int(ablate),
        UNROLL=opts["unroll"], MERGED=merged, ONE_LOOP=opts["one_loop"])
    options = dict(num_warps=8 if merged else 4, maxnreg=168, enable_fp_fusion=False)
    names = ("s_int", "p_codes", "o_int") if integer else ("s", "p", "o_int")
    tr = dict(zip(names, (TS, TP, TO))) if trace else None
    if tr is not None and not integer:
        del tr["o_int"]
    return PrefillCall((cdiv(Lq, BLOCK_M), B * Hq), args, constexprs, options, out, tr,
                       kernel="gluon")
