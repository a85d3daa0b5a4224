"""Microbenchmark kernels that measure one ceiling each (``@triton.jit`` code only).

Launchers, timing and unit conversion live in ``gpu/microbench.py``. Every kernel does a known
amount of one kind of work, so ``work / time`` is that unit's rate:

* ``ex2_kernel``    -- ``ITERS`` MUFU.EX2 per element (``x <- ex2(x) - 1``, fixed point 0,
  stable since d/dx 2^x = ln 2 < 1), one FADD each on the FMA pipe (8x MUFU's rate on sm_80+,
  so MUFU bounds it). ``USE_ASM`` emits ``ex2.approx.ftz.f32`` directly; without it (the
  interpreter) ``tl.math.exp2`` computes the same function.
* ``fma_kernel``    -- ``ITERS`` dependent FMAs per element (``x <- x * a + b``), fp32 FFMA or,
  for fp16 inputs with ``USE_ASM``, ``fma.rn.f16x2`` on packed pairs (HFMA2: two results per
  thread instruction). Each thread holds ``BLOCK / (32 * num_warps)`` independent chains, so
  the pipe, not the FMA latency, bounds the rate.
* ``matmul_kernel`` -- C = A @ B on the tensor cores (fp16 / fp8 -> fp32 accumulate, int8 ->
  int32 accumulate), grouped tile order for L2 reuse; 2*M*N*K ops.
* ``copy_kernel``   -- dst <- src, contiguous, so bytes = 2 x size (read + write).
* ``l2_read_kernel`` -- ``REPS`` passes over a buffer smaller than L2 with ``.cg`` loads (L2,
  bypassing L1), each pass a rotated block-to-program map; one partial sum per program;
  bytes = REPS x size.
* ``empty_kernel``  -- does nothing: its event-timed duration is the per-launch overhead.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ex2_kernel(x_ptr, out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr, USE_ASM: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    for _ in range(ITERS):
        if USE_ASM:
            e = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                          dtype=tl.float32, is_pure=True, pack=1)
        else:
            e = tl.math.exp2(x)
        x = e - 1.0
    tl.store(out_ptr + offs, x)


@triton.jit
def fma_kernel(x_ptr, out_ptr, a, b, ITERS: tl.constexpr, BLOCK: tl.constexpr,
               USE_ASM: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    av = tl.full([BLOCK], a, x.dtype)
    bv = tl.full([BLOCK], b, x.dtype)
    for _ in range(ITERS):
        if USE_ASM:
            # fp16 only: two halves per 32-bit register, one HFMA2 per pair.
            x = tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r",
                                          [x, av, bv], dtype=tl.float16, is_pure=True, pack=2)
        else:
            x = tl.fma(x, av, bv)
    tl.store(out_ptr + offs, x)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K: tl.constexpr,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, INT_ACC: tl.constexpr):
    # Grouped order: GROUP_M row-tiles share each column tile while it is in L2.
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # B may be K-major (stride_bk == 1): Hopper's wgmma needs 8-bit operands K-major.
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    if INT_ACC:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The launcher requires M, N, K to be multiples of the tiles: no masks in the timed loop.
    # K is constexpr so the trip count is static (the interpreter cannot loop to a runtime bound).
    for _ in range(K // BLOCK_K):
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
        if INT_ACC:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty))


@triton.jit
def copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)


@triton.jit
def l2_read_kernel(src_ptr, out_ptr, n, REPS: tl.constexpr, BLOCK: tl.constexpr,
                   PER_PROG: tl.constexpr):
    # Program p reads blocks p, p + G, ..., p + (PER_PROG - 1) G of the buffer (G programs),
    # REPS times over; PER_PROG = ceil(blocks / G), blocks past the end are masked off.
    # Pass r shifts every program's blocks by 97 r (mod the block count): the addresses depend
    # on r, so the compiler cannot hoist the loads out of the pass loop, and a block is read by a
    # different program (SM) in each pass, so L1 cannot serve it.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_blocks = tl.cdiv(n, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(REPS):
        for i in range(PER_PROG):
            blk = (pid + i * nprog + r * 97) % n_blocks
            offs = blk * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(src_ptr + offs, mask=(offs < n) & (pid + i * nprog < n_blocks),
                           other=0.0,
                           cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def empty_kernel(x_ptr):
    pass
