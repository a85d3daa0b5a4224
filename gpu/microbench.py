"""Launchers for the microbenchmark kernels and the measurements built on them.

Each ``measure_*`` function returns :class:`Measurement` objects: a chip-wide rate (``value`` in
``unit``: B/s, op/s, inst/s or s) for one :class:`sim.cost.hardware.Hardware` field, how it was
obtained, and the work/time it came from. ``qsattn calibrate`` converts them to the per-SM,
per-clock units of the hardware description and writes the measured overlay.

Timing is ``gpu.bench`` (CUDA events, median); microbenchmarks that must stay in cache (L2 read)
are timed warm, the rest with a cold L2. Every kernel's result is checked against torch before
its time is used: a wrong answer is a failed measurement, never a fast one.

>>> import os
>>> os.environ.get("TRITON_INTERPRET") in (None, "0", "1")
True
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import triton

from gpu.kernels import microbench as K

__all__ = ["Measurement", "ex2", "fma", "matmul", "copy", "l2_read", "empty", "measure_all", "bench_timer",
           "MATMUL_CONFIGS"]


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_tensor(name: str, t, dtypes=None, ndim=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")
    if not t.is_cuda and not _interpret():
        raise ValueError(f"{name}: expected a CUDA tensor (or TRITON_INTERPRET=1), got {t.device}")


# -- launchers -------------------------------------------------------------------------------
def ex2(x: torch.Tensor, iters: int, *, block: int = 1024, num_warps: int = 4,
        use_asm: bool = False) -> torch.Tensor:
    """``iters`` rounds of ``x <- 2**x - 1`` on fp32 ``x`` (numel a multiple of ``block``).

    >>> import numpy as np  # doctest: +SKIP
    """
    _check_tensor("x", x, (torch.float32,), 1)
    if x.numel() % block:
        raise ValueError(f"x: expected numel a multiple of block={block}, got {x.numel()}")
    out = torch.empty_like(x)
    K.ex2_kernel[(x.numel() // block,)](x, out, ITERS=iters, BLOCK=block, USE_ASM=use_asm,
                                        num_warps=num_warps)
    return out


def fma(x: torch.Tensor, a: float, b: float, iters: int, *, block: int = 1024,
        num_warps: int = 4, use_asm: bool = False) -> torch.Tensor:
    """``iters`` rounds of ``x <- x * a + b`` (fp32 FFMA, or fp16 HFMA2 with ``use_asm``)."""
    _check_tensor("x", x, (torch.float32, torch.float16), 1)
    if use_asm and x.dtype != torch.float16:
        raise ValueError(f"use_asm: the packed fma.rn.f16x2 path needs fp16 x, got {x.dtype}")
    if x.numel() % block:
        raise ValueError(f"x: expected numel a multiple of block={block}, got {x.numel()}")
    out = torch.empty_like(x)
    K.fma_kernel[(x.numel() // block,)](x, out, a, b, ITERS=iters, BLOCK=block, USE_ASM=use_asm,
                                        num_warps=num_warps)
    return out


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) tried per operand dtype; the best
# time wins. Tiles are the usual Hopper choices for Triton's GEMM (128x256 for 16-bit operands,
# K=128 for 8-bit ones so each load is 128 bytes wide).
MATMUL_CONFIGS = {
    "fp16": [(128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4)],
    "int8": [(128, 256, 128, 8, 8, 3), (128, 128, 128, 8, 4, 4)],
    "fp8": [(128, 256, 128, 8, 8, 3), (128, 128, 128, 8, 4, 4)],
}


def matmul(a: torch.Tensor, b: torch.Tensor, config: tuple = (64, 64, 32, 4, 4, 2), *,
           b_transposed: bool = False) -> torch.Tensor:
    """C = A @ B on the tensor cores: fp16/fp8 -> fp32 accumulate (fp16 out), int8 -> int32.

    ``b`` is ``[K, N]``, or ``[N, K]`` (B K-major, as Hopper's wgmma needs 8-bit operands) with
    ``b_transposed=True``. M, N, K must be multiples of the config's tiles (no masks)."""
    dts = (torch.float16, torch.int8, torch.float8_e4m3fn)
    _check_tensor("a", a, dts, 2)
    _check_tensor("b", b, dts, 2)
    if a.dtype != b.dtype:
        raise TypeError(f"b: expected the dtype of a ({a.dtype}), got {b.dtype}")
    bm, bn, bk, gm, warps, stages = config
    (M, Ka), (Kb, N) = a.shape, (b.shape[::-1] if b_transposed else b.shape)
    sbk, sbn = (b.stride(1), b.stride(0)) if b_transposed else (b.stride(0), b.stride(1))
    if Ka != Kb:
        raise ValueError(f"b: expected {Ka} rows (a's columns), got {Kb}")
    if M % bm or N % bn or Ka % bk:
        raise ValueError(f"a, b: expected M, N, K multiples of ({bm}, {bn}, {bk}), "
                         f"got ({M}, {N}, {Ka})")
    int_acc = a.dtype == torch.int8
    c = torch.empty((M, N), device=a.device, dtype=torch.int32 if int_acc else torch.float16)
    grid = ((M // bm) * (N // bn),)
    K.matmul_kernel[grid](a, b, c, M, N, Ka, a.stride(0), a.stride(1), sbk, sbn,
                          c.stride(0), c.stride(1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                          GROUP_M=gm, INT_ACC=int_acc, num_warps=warps, num_stages=stages)
    return c


def copy(src: torch.Tensor, dst: torch.Tensor, *, block: int = 4096, num_warps: int = 8) -> None:
    """dst <- src (same dtype and size, contiguous)."""
    _check_tensor("src", src)
    _check_tensor("dst", dst, (src.dtype,))
    if dst.numel() != src.numel():
        raise ValueError(f"dst: expected {src.numel()} elements, got {dst.numel()}")
    n = src.numel()
    K.copy_kernel[(triton.cdiv(n, block),)](src, dst, n, BLOCK=block, num_warps=num_warps)


def l2_read(src: torch.Tensor, reps: int, programs: int, *, block: int = 2048,
            num_warps: int = 8) -> torch.Tensor:
    """Per-program sums of ``reps`` passes over fp32 ``src`` (``.cg`` loads): total = reps*sum."""
    _check_tensor("src", src, (torch.float32,), 1)
    if programs < 1 or reps < 1:
        raise ValueError(f"reps, programs: expected >= 1, got {reps}, {programs}")
    out = torch.empty(programs, device=src.device, dtype=torch.float32)
    per_prog = triton.cdiv(triton.cdiv(src.numel(), block), programs)
    K.l2_read_kernel[(programs,)](src, out, src.numel(), REPS=reps, BLOCK=block,
                                  PER_PROG=per_prog, num_warps=num_warps)
    return out


def empty(x: torch.Tensor) -> None:
    """Launch the empty kernel once (one program)."""
    _check_tensor("x", x)
    K.empty_kernel[(1,)](x)


# -- measurements ----------------------------------------------------------------------------
@dataclass
class Measurement:
    """A chip-wide rate for hardware field ``field``: ``value`` ``unit`` (op/s, B/s, s, ...), or
    a latency / clock of the SM microbenchmarks (clk, ns, Hz; :mod:`gpu.microbench_sm`)."""
    field: str
    value: float
    unit: str
    how: str                      # the kernel / library call and its sizes
    seconds: float                # median time of one timed call
    work: float                   # ops, instructions or bytes of one call
    alternatives: dict = field(default_factory=dict)   # other ways measured: how -> value
    telemetry: dict = field(default_factory=dict)      # gpu.telemetry summary during it


Timer = Callable[..., float]   # timer(fn, cold_l2=bool) -> median seconds of fn()


def bench_timer() -> Timer:
    """``timer(fn, cold_l2=bool) -> median seconds`` through the project harness
    :mod:`gpu.bench`: with ``cold_l2`` L2 is flushed before every call
    (:func:`gpu.bench.time_flushed`), else back-to-back calls in a CUDA graph
    (:func:`gpu.bench.time_gpu`)."""
    from gpu import bench

    def timer(fn, cold_l2: bool = True) -> float:
        if cold_l2:
            return bench.time_flushed(fn).ms * 1e-3
        return bench.time_gpu(lambda: fn(), lambda: (), cold_l2=False).ms * 1e-3
    return timer


_SASS_OPS = ("MUFU.EX2", "FFMA", "HFMA2", "PRMT", "HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA")


def _sass(kernel) -> str:
    """'; SASS: OP xN, ...' for the opcodes of interest in the kernel's latest compilation
    (empty when no disassembler is available): shows which instructions a rate came from."""
    try:
        dev = torch.cuda.current_device()
        compiled = list(kernel.device_caches[dev][0].values())[-1]
        sass = compiled.asm["sass"]
    except Exception:
        return ""
    counts = {op: sum(1 for ln in sass.splitlines() if f" {op}" in ln or f"\t{op}" in ln)
              for op in _SASS_OPS}
    shown = ", ".join(f"{op} x{n}" for op, n in counts.items() if n)
    return f"; SASS: {shown}" if shown else ""


def _best(field_: str, unit: str, cands: list[tuple[str, float, float]]) -> Measurement:
    """The fastest of (how, seconds, work) candidates; the rest kept as alternatives."""
    rates = [(work / sec, how, sec, work) for how, sec, work in cands if sec > 0]
    if not rates:
        raise RuntimeError(f"{field_}: every candidate failed")
    rate, how, sec, work = max(rates)
    return Measurement(field_, rate, unit, how, sec, work,
                       {h: r for r, h, _, _ in rates if h != how})


def measure_hbm(timer: Timer, nbytes: int = 2 << 30) -> Measurement:
    """Device-to-device copy of ``nbytes`` (bytes read + written), torch and Triton."""
    n = nbytes // 4
    src = torch.randn(n, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    copy(src, dst)
    torch.cuda.synchronize()
    if not torch.equal(src, dst):
        raise RuntimeError("copy_kernel: output differs from its input")
    t_triton = timer(lambda: copy(src, dst), cold_l2=True)
    t_torch = timer(lambda: dst.copy_(src), cold_l2=True)
    gb = nbytes / 1e9
    return _best("hbm_bandwidth", "B/s", [
        (f"triton copy_kernel, {gb:.2f} GB fp32, 2x bytes", t_triton, 2.0 * nbytes),
        (f"torch Tensor.copy_, {gb:.2f} GB fp32, 2x bytes", t_torch, 2.0 * nbytes)])


def measure_l2(timer: Timer, nbytes: int, sm_count: int, reps: int = 64) -> Measurement:
    """Repeated ``.cg`` reads of an fp32 buffer of ``nbytes`` (< L2), timed warm."""
    src = torch.rand(nbytes // 4, device="cuda", dtype=torch.float32)
    programs = sm_count * 4
    got = l2_read(src, reps, programs).double().sum().item()
    want = reps * src.double().sum().item()
    if not math.isclose(got, want, rel_tol=1e-3):
        raise RuntimeError(f"l2_read_kernel: sum {got} differs from {want}")
    t = timer(lambda: l2_read(src, reps, programs), cold_l2=False)
    return _best("l2_bandwidth", "B/s", [
        (f"triton l2_read_kernel, {nbytes / 1e6:.0f} MB fp32 x {reps} passes, .cg loads, "
         f"{programs} programs", t, float(reps * nbytes))])


def _threads_grid(sm_count: int, block: int) -> int:
    # 16 CTAs of 128 threads = 2048 resident threads per SM, every SM full.
    return sm_count * 16 * block


def measure_mufu(timer: Timer, sm_count: int, iters: int = 512) -> Measurement:
    """MUFU.EX2 thread instructions per second (``ex2.approx.ftz.f32`` via inline PTX)."""
    block = 1024
    x = -torch.rand(_threads_grid(sm_count, block), device="cuda", dtype=torch.float32)
    cands = []
    for use_asm in (True, False):
        try:
            y = ex2(x, iters, block=block, use_asm=use_asm)
            ref = x.double()
            for _ in range(iters):
                ref = torch.exp2(ref) - 1.0
            if not torch.allclose(y.double(), ref, atol=1e-4):
                raise RuntimeError("ex2_kernel: result differs from torch.exp2")
            t = timer(lambda: ex2(x, iters, block=block, use_asm=use_asm), cold_l2=False)
            how = "ex2.approx.ftz.f32 inline PTX" if use_asm else "tl.math.exp2"
            cands.append((f"triton ex2_kernel ({how}), {x.numel()} elems x {iters}"
                          f"{_sass(K.ex2_kernel)}", t,
                          float(x.numel() * iters)))
        except Exception as e:  # the inline-PTX path is optional; the plain one must work
            if not use_asm:
                raise
            print(f"  mufu: inline-PTX variant failed ({type(e).__name__}: {e}); using exp2")
    return _best("sfu", "inst/s", cands)


def measure_fma(timer: Timer, sm_count: int, dtype: str, iters: int = 4096) -> Measurement:
    """FP32 FFMA or packed FP16 HFMA2 thread instructions per second."""
    block = 1024 if dtype == "fp32" else 2048
    tdt = torch.float32 if dtype == "fp32" else torch.float16
    x = torch.rand(_threads_grid(sm_count, block), device="cuda", dtype=tdt)
    a, b = 0.5, 0.25   # x -> 0.5 (fixed point), exact in fp16 and fp32
    use_asm = dtype == "fp16x2"
    y = fma(x, a, b, iters, block=block, use_asm=use_asm)
    if not torch.allclose(y.float(), torch.full_like(y.float(), 0.5), atol=1e-3):
        raise RuntimeError(f"fma_kernel ({dtype}): did not converge to the fixed point 0.5")
    t = timer(lambda: fma(x, a, b, iters, block=block, use_asm=use_asm), cold_l2=False)
    per_instr = 1 if dtype == "fp32" else 2
    how = "FFMA (tl.fma)" if dtype == "fp32" else "HFMA2 (fma.rn.f16x2 inline PTX)"
    return _best(dtype, "inst/s", [
        (f"triton fma_kernel {how}, {x.numel()} elems x {iters}{_sass(K.fma_kernel)}", t,
         float(x.numel() * iters / per_instr))])


def _rand_operands(dtype: str, m: int, n: int, k: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-128, 128, (m, k), device="cuda", dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (k, n), device="cuda", dtype=torch.int8, generator=g)
    else:
        a = torch.randn((m, k), device="cuda", dtype=torch.float16, generator=g)
        b = torch.randn((k, n), device="cuda", dtype=torch.float16, generator=g)
        if dtype == "fp8":
            a, b = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        elif dtype == "bf16":
            a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    return a, b


def _torch_mm(dtype: str, a, b):
    if dtype == "int8":
        return lambda: torch._int_mm(a, b)
    if dtype == "fp8":
        bt = b.t().contiguous().t()     # _scaled_mm wants B column-major
        one = torch.ones((), device="cuda", dtype=torch.float32)
        return lambda: torch._scaled_mm(a, bt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    return lambda: torch.matmul(a, b)


_TC_FIELD = {"fp16": "tc_fp16", "bf16": "tc_bf16", "int8": "tc_int8", "fp8": "tc_fp8"}


def measure_tensor_core(timer: Timer, dtype: str, size: int = 8192) -> Measurement:
    """Dense GEMM rate (2*M*N*K per call) from the Triton kernel's configs and from torch."""
    a, b = _rand_operands(dtype, size, size, size)
    ops = 2.0 * size ** 3
    cands = []
    # Correctness on a corner of the product: exact for int8, loose for fp (accumulation order).
    wide = torch.int64 if dtype == "int8" else torch.float64
    ref = a[:128].cpu().to(wide) @ b[:, :128].cpu().to(wide)   # CUDA has no int64 matmul
    kmajor = dtype in ("int8", "fp8")
    bt = b.t().contiguous() if kmajor else b      # [N, K] for the 8-bit wgmma path
    for cfg in MATMUL_CONFIGS.get(dtype, []):
        try:
            c = matmul(a, bt, cfg, b_transposed=kmajor)
            got = c[:128, :128].cpu()
            ok = (torch.equal(got.long(), ref) if dtype == "int8" else
                  torch.allclose(got.double(), ref, rtol=2e-2, atol=2e-1 * math.sqrt(size)))
            if not ok:
                raise RuntimeError(f"matmul_kernel {cfg}: result differs from the reference")
            t = timer(lambda: matmul(a, bt, cfg, b_transposed=kmajor), cold_l2=False)
            cands.append((f"triton matmul_kernel {dtype} {size}^3 tiles {cfg}"
                          f"{', B K-major' if kmajor else ''}{_sass(K.matmul_kernel)}", t, ops))
        except Exception as e:
            print(f"  {dtype} triton config {cfg} failed: {type(e).__name__}: {e}")
    try:
        fn = _torch_mm(dtype, a, b)
        fn()
        t = timer(fn, cold_l2=False)
        name = {"int8": "torch._int_mm", "fp8": "torch._scaled_mm"}.get(dtype, "torch.matmul")
        cands.append((f"{name} {dtype} {size}^3", t, ops))
    except Exception as e:
        print(f"  {dtype} torch GEMM failed: {type(e).__name__}: {e}")
    return _best(_TC_FIELD[dtype], "op/s", cands)


def measure_launch(timer: Timer) -> Measurement:
    """Event-timed duration of one empty Triton kernel launch (seconds)."""
    x = torch.empty(1, device="cuda")
    empty(x)
    t = timer(lambda: empty(x), cold_l2=False)
    return Measurement("launch_overhead", t, "s", "triton empty_kernel, 1 program", t, 1.0)


def measure_all(*, sm_count: int, l2_bytes: int, quick: bool = False,
                timer: Timer | None = None, progress=print) -> dict[str, Measurement]:
    """Every ceiling ``qsattn calibrate`` writes, keyed by hardware field.

    ``quick`` shrinks sizes (for a smoke run; its numbers are not ceilings). A measurement that
    fails is reported through ``progress`` and left out (its field keeps the spec value)."""
    if not torch.cuda.is_available():
        raise RuntimeError("measure_all needs a CUDA GPU")
    timer = timer or bench_timer()
    gemm = 4096 if quick else 8192
    jobs: list[tuple[str, Callable[[], Measurement]]] = [
        ("launch_overhead", lambda: measure_launch(timer)),
        ("hbm_bandwidth", lambda: measure_hbm(timer, (256 << 20) if quick else (2 << 30))),
        ("l2_bandwidth", lambda: measure_l2(timer, min(l2_bytes // 4, 16 << 20), sm_count)),
        ("sfu", lambda: measure_mufu(timer, sm_count)),
        ("fp32", lambda: measure_fma(timer, sm_count, "fp32")),
        ("fp16x2", lambda: measure_fma(timer, sm_count, "fp16x2")),
    ] + [(_TC_FIELD[d], (lambda d=d: measure_tensor_core(timer, d, gemm)))
         for d in ("fp16", "bf16", "int8", "fp8")]
    out: dict[str, Measurement] = {}
    for name, job in jobs:
        try:
            m = job()
        except Exception as e:
            progress(f"  {name}: FAILED ({type(e).__name__}: {e}); keeping the spec value")
            continue
        out[name] = m
        progress(f"  {name}: {m.value:.4g} {m.unit} ({m.how}; {m.seconds * 1e3:.3f} ms)")
        torch.cuda.empty_cache()
    return out
