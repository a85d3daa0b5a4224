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

SM pipeline and latency kernels (launchers and the PTX they run: ``gpu/microbench_sm.py``):

* ``asm_chain_kernel`` -- ``n_iter`` rounds of the inline-PTX ``BODY`` on every element
  (``x <- BODY(x, y, z)``, 32-bit registers), so each element is one dependent chain; a thread
  holding E elements runs E independent chains. ``%clock64`` and ``%globaltimer`` are read
  before and after the loop (their inputs tie them to ``x``), their deltas stored per element.
* ``asm_loop_kernel`` -- one inline-PTX block per thread that holds its own loop, clocks and
  shared memory (pointer chases, strided shared loads, barriers): inputs a 64-bit value per
  thread, a 32-bit ``b`` and ``n_iter``; outputs cycles, nanoseconds and a sink value.
* ``dot_chain_kernel`` -- one warpgroup, ``n_iter`` dependent ``tl.dot`` (64 x N x K) into one
  accumulator, with ``WAIT`` a ``wgmma.wait_group 0`` after each; cycles between two
  ``%clock64`` reads.
* ``read_kernel`` -- pure read-reduce: program p sums blocks p, p + G, ... of the buffer
  (G programs), one partial sum per program; bytes = size.
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


@triton.jit
def asm_chain_kernel(x_ptr, out_ptr, clk_ptr, y, z, n_iter, BODY: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    yv = tl.full([BLOCK], y, tl.int32)
    zv = tl.full([BLOCK], z, tl.int32)
    c0, g0 = tl.inline_asm_elementwise("mov.u64 $0, %clock64; mov.u64 $1, %globaltimer;",
                                       "=l,=l,r", [x], dtype=(tl.int64, tl.int64),
                                       is_pure=False, pack=1)
    for _ in range(n_iter):
        x = tl.inline_asm_elementwise(BODY, "=r,r,r,r", [x, yv, zv], dtype=tl.int32,
                                      is_pure=True, pack=1)
    c1, g1 = tl.inline_asm_elementwise("mov.u64 $0, %clock64; mov.u64 $1, %globaltimer;",
                                       "=l,=l,r", [x], dtype=(tl.int64, tl.int64),
                                       is_pure=False, pack=1)
    tl.store(out_ptr + offs, x)
    tl.store(clk_ptr + offs, c1 - c0)
    tl.store(clk_ptr + BLOCK * tl.num_programs(0) + offs, g1 - g0)


@triton.jit
def asm_loop_kernel(a_ptr, out_ptr, b, n_iter, ASM: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs)
    bv = tl.full([BLOCK], b, tl.int32)
    nv = tl.full([BLOCK], n_iter, tl.int32)
    clk, ns, sink = tl.inline_asm_elementwise(ASM, "=l,=l,=l,l,r,r", [a, bv, nv],
                                              dtype=(tl.int64, tl.int64, tl.int64),
                                              is_pure=False, pack=1)
    n = BLOCK * tl.num_programs(0)
    tl.store(out_ptr + offs, clk)
    tl.store(out_ptr + n + offs, ns)
    tl.store(out_ptr + 2 * n + offs, sink)


@triton.jit
def dot_chain_kernel(a_ptr, b_ptr, out_ptr, clk_ptr, n_iter, N: tl.constexpr, K: tl.constexpr,
                     INT_ACC: tl.constexpr, WAIT: tl.constexpr):
    # A [64, K] row-major, B stored [N, K] (K-major, as wgmma wants 8-bit B), C [64, N].
    rm = tl.arange(0, 64)
    rn = tl.arange(0, N)
    rk = tl.arange(0, K)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rn[None, :] * K + rk[:, None])
    if INT_ACC:
        acc = tl.zeros((64, N), dtype=tl.int32)
    else:
        acc = tl.zeros((64, N), dtype=tl.float32)
    c0 = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [n_iter], dtype=tl.int64,
                                   is_pure=False, pack=1)
    for _ in range(n_iter):
        if INT_ACC:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc)
        if WAIT:
            tl.inline_asm_elementwise("wgmma.wait_group.sync.aligned 0; mov.u32 $0, $1;", "=r,r",
                                      [n_iter], dtype=tl.int32, is_pure=False, pack=1)
    c1 = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [n_iter], dtype=tl.int64,
                                   is_pure=False, pack=1)
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc)
    tl.store(clk_ptr + tl.arange(0, 1), tl.full([1], c1 - c0, tl.int64))


@triton.jit
def read_kernel(src_ptr, out_ptr, n, per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(per_prog):
        offs = (pid + i * nprog).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(src_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))
