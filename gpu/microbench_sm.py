"""SM pipeline, latency and memory microbenchmarks for ``qsattn calibrate`` (the parameters of
the pipeline model of issue 16, measured, never fitted to attention timings).

Every benchmark is one of the kernels of :mod:`gpu.kernels.microbench` running a known
instruction stream, and each is **verified from its SASS**: the compiled kernel (on the GPU the
one that ran, on a CPU a compile for sm_90 or sm_80 on ``meta`` tensors, ``python -m
gpu.microbench_sm --verify``) is disassembled and its timed loop must hold exactly the intended
opcodes (:data:`BENCHES` ``expect``: SASS opcode family -> count per loop iteration). A rate is
the work the SASS says the loop does, over the time; a loop that compiled to something else is
a failed measurement, never a number.

* Throughput (``int32``, ``cvt``, ``issue``): ``asm_chain_kernel`` on every SM, 4 independent
  chains per thread, 8 warps per CTA, event-timed (``gpu.bench``). ``int32`` counts the loop's
  ALU-class instructions (IADD3, LOP3, and the loop's ISETP; :func:`gpu.sass.classify`), ``cvt``
  its XU conversions (F2I.S32 from ``cvt.rni.s32.f32``; I2F is kept as an alternative: sm_90
  compiles it to I2FP.F32.S32 on the ALU), ``issue`` every warp instruction of the loop (FFMA and
  LOP3 alternating, each pipe at most half the issue slots).
* Latencies: the same kernel, one warp, one chain per thread, ``%clock64`` around the loop:
  cycles / dependent instructions (FFMA, IADD3+LOP3, IMAD, MUFU.EX2, F2I, HFMA2). LDS: a
  shared-memory pointer chase (each address loaded is the next address); L2 hit and HBM: a
  global pointer chase (``ld.global.cg``) over random 128-byte lines, 1 MB warm (L2) or 256 MB
  with L2 flushed (each line touched once; ``%globaltimer`` gives ns); barrier: a loop of
  ``bar.sync 0`` with 4 and 8 warps.
* Shared-memory bank conflicts: one CTA of 32 warps, 4 independent LDS chains per thread at
  word ``lane * d``: each warp-wide LDS touches d rows of one bank (conflict degree d = 1, 2, 4,
  8, 32); cycles per warp-wide LDS.32 on the SM.
* wgmma (sm_90): one warpgroup, dependent ``tl.dot`` 64x128x16 (fp16) / 64x128x32 (int8) into
  one accumulator; cycles per dot as Triton 3.6 compiles the loop (one BAR.SYNC per dot; fp16
  keeps one wgmma in flight, int8 waits for each); ``WAIT`` adds ``wgmma.wait_group 0``.
* ``clock_under_load``: the issue kernel on every SM for ~0.5 s, clock64 / globaltimer deltas
  per thread of the last launch (median), next to ``nvidia-smi``'s clocks (:mod:`gpu.telemetry`).
* ``hbm_read_bandwidth``: ``read_kernel`` over 2 GB, L2 flushed before each call.

    python -m gpu.microbench_sm --verify --arch hopper --arch ampere   # CPU: SASS checks
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from gpu import sass

__all__ = ["CHAINS", "BENCHES", "Bench", "Verified", "verify_listing", "verify_compile",
           "measure_sm", "SMEM_DEGREES", "chain_ptx", "main"]

UNROLL = 32                         # timed instructions per loop iteration (chains, LDS, BAR):
#                                     the loop's branch (~8 clk on sm_90, measured) is spread over them
LDG_UNROLL = 8                      # global pointer chase: ~300+ clk per step, 8 is plenty
NOUNROLL = '.pragma "nounroll"; '   # statement pragma: the loop whose header holds it stays rolled
SMEM_DEGREES = (1, 2, 4, 8, 32)
F32_HALF, F32_QUARTER = 0x3F000000, 0x3E800000          # 0.5f, 0.25f
H2_HALF, H2_QUARTER = 0x38003800, 0x34003400            # (0.5, 0.5), (0.25, 0.25) as f16x2


@dataclass(frozen=True)
class Chain:
    """A dependent chain for ``asm_chain_kernel``: ``first`` reads the input ($1), ``rest``
    continues from $0; ``y``/``z`` ($2/$3) are 32-bit bit patterns; ``expect`` maps SASS opcode
    families ("A|B": either) to their count per 8 PTX instructions (scaled to the body)."""
    first: str
    rest: str
    y: int
    z: int
    expect: dict
    doc: str


def chain_ptx(ch: Chain, steps: int = UNROLL) -> str:
    """The loop body of ``ch``: ``steps`` dependent PTX groups behind the nounroll pragma."""
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps!r}")
    return NOUNROLL + " ".join([ch.first] + [ch.rest] * (steps - 1))


_FMA, _FMA0 = "fma.rn.f32 $0, $1, $2, $3;", "fma.rn.f32 $0, $0, $2, $3;"
_LOP = "lop3.b32 $0, $0, $2, $3, 0x96;"
CHAINS: dict[str, Chain] = {
    "ffma": Chain(_FMA, _FMA0, F32_HALF, F32_QUARTER, {"FFMA": 8}, "x <- 0.5 x + 0.25 (fp32)"),
    # sub then xor: ptxas cannot fuse them or move the subtraction to the FMA pipe (IMAD.IADD)
    "alu": Chain("sub.s32 $0, $2, $1; xor.b32 $0, $0, $3;", "sub.s32 $0, $2, $0; xor.b32 $0, $0, $3;",
                 0x12345, 0x0F0F0F0F, {"IADD3": 4, "LOP3": 4}, "x <- (y - x) ^ z (int32)"),
    "imad": Chain("mad.lo.s32 $0, $1, $2, $3;", "mad.lo.s32 $0, $0, $2, $3;", 0x01000193,
                  0x011C9DC5, {"IMAD": 8}, "x <- x * y + z (int32, wrapping)"),
    "mufu": Chain("ex2.approx.ftz.f32 $0, $1;", "ex2.approx.ftz.f32 $0, $0;", 0, 0,
                  {"MUFU": 8}, "x <- 2^x (MUFU.EX2; reaches +inf and stays)"),
    # the int result read back as float bits: F2I alone on the chain (values reach 0)
    "f2i": Chain("cvt.rni.s32.f32 $0, $1;", "cvt.rni.s32.f32 $0, $0;", 0, 0, {"F2I": 8},
                 "x <- rni(float bits of x) (F2I.S32)"),
    "i2f": Chain("cvt.rn.f32.s32 $0, $1;", "cvt.rn.f32.s32 $0, $0;", 0, 0, {"I2F|I2FP": 8},
                 "x <- float(x) bits (I2F on sm_80, I2FP.F32.S32 on the ALU on sm_90)"),
    "hfma2": Chain("fma.rn.f16x2 $0, $1, $2, $3;", "fma.rn.f16x2 $0, $0, $2, $3;", H2_HALF,
                   H2_QUARTER, {"HFMA2": 8}, "x <- 0.5 x + 0.25 (packed fp16 pairs)"),
    "issue": Chain(_FMA + " " + _LOP, _FMA0 + " " + _LOP, F32_HALF, F32_QUARTER,
                   {"FFMA": 4, "LOP3": 4}, "FFMA and LOP3 alternating"),
}

def _chain_steps(name: str) -> int:
    return UNROLL // 2 if name in ("alu", "issue") else UNROLL


def _chain_expect(name: str, chains: int = 1) -> dict:
    return {k: v * (UNROLL // 8) * chains for k, v in CHAINS[name].expect.items()}


# -- inline-PTX loops for asm_loop_kernel: outputs $0 cycles, $1 ns, $2 sink; inputs $3 (u64),
# $4 (b, u32), $5 (n_iter, u32). Registers and labels are local to the block.
def _loop_asm(setup: str, body: str, sink: str, regs: str) -> str:
    return ("{\n" + regs + "\n.reg .u64 %qc0, %qc1, %qg0, %qg1;\n.reg .u32 %qn;\n.reg .pred %qp;\n"
            + setup + "\nmov.u32 %qn, $5;\n"
            "mov.u64 %qc0, %clock64;\nmov.u64 %qg0, %globaltimer;\n"
            "QS_LOOP_${:uid}:\n" + NOUNROLL + "\n" + body + "\n"
            "sub.s32 %qn, %qn, 1;\nsetp.gt.s32 %qp, %qn, 0;\n@%qp bra QS_LOOP_${:uid};\n"
            "mov.u64 %qc1, %clock64;\nmov.u64 %qg1, %globaltimer;\n"
            "sub.u64 $0, %qc1, %qc0;\nsub.u64 $1, %qg1, %qg0;\n" + sink + "\n}")


def lds_asm(chains: int) -> str:
    """Shared-memory pointer chase: ``chains`` (1 or 4) chains per thread at word lane*b + c of
    a static 8 KB buffer whose words hold their own addresses; UNROLL LDS per iteration."""
    if chains not in (1, 4):
        raise ValueError(f"chains: expected 1 or 4, got {chains!r}")
    ps = [f"%qs{c}" for c in range(chains)]
    regs = (".shared .align 16 .b32 qs_smem[2048];\n.reg .u32 %qbase, %qw, "
            + ", ".join(ps) + ";")
    setup = ("mov.u32 %qbase, qs_smem;\nmov.u32 %qw, %laneid;\nmul.lo.u32 %qw, %qw, $4;\n"
             "shl.b32 %qw, %qw, 2;\nadd.u32 %qs0, %qbase, %qw;\n"
             + "".join(f"add.u32 {p}, %qs0, {4 * c};\n" for c, p in enumerate(ps) if c)
             + "".join(f"st.shared.u32 [{p}], {p};\n" for p in ps))
    body = " ".join(f"ld.shared.u32 {p}, [{p}];" for _ in range(UNROLL // chains) for p in ps)
    sink = "".join(f"xor.b32 %qs0, %qs0, {p};\n" for p in ps[1:]) + "cvt.u64.u32 $2, %qs0;"
    return _loop_asm(setup, body, sink, regs)


def bar_asm() -> str:
    """UNROLL ``bar.sync 0`` per iteration (every warp of the CTA runs the same trip count)."""
    return _loop_asm("", " ".join(["bar.sync 0;"] * UNROLL), "mov.u64 $2, $3;", "")


def ldg_asm() -> str:
    """Global pointer chase: 8 dependent ``ld.global.cg.u64`` per iteration from pointer $3."""
    return _loop_asm("mov.u64 %qa, $3;", " ".join(["ld.global.cg.u64 %qa, [%qa];"] * LDG_UNROLL),
                     "mov.u64 $2, %qa;", ".reg .u64 %qa;")


# -- the benchmark table: what is compiled and what its loop must hold -----------------------
@dataclass(frozen=True)
class Bench:
    """One compiled configuration: ``kernel`` (name in gpu.kernels.microbench), ``build(device)``
    -> (args, kwargs, grid), ``expect`` {arch: {family: count per iteration}} (``"*"`` for
    every arch), ``texts`` {substring: count per iteration}, ``archs`` it compiles for."""
    name: str
    kernel: str
    build: Callable
    expect: dict
    texts: dict = field(default_factory=dict)
    archs: tuple = ("hopper", "ampere")

    def expected(self, arch: str) -> dict:
        return self.expect.get(arch, self.expect.get("*"))


def _t(shape, dtype, device):
    import torch
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    return torch.zeros(shape, dtype=dtype, device=device)


LAT_ITERS, THR_ITERS, THR_CHAINS, THR_WARPS = 256, 64, 4, 8


def _chain_build(name: str, threads_block: int, warps: int, grid: int = 1):
    def build(device, x=None, n_iter=LAT_ITERS, grid=grid):
        import torch
        ch = CHAINS[name]
        block = threads_block
        n = block * grid
        x = x if x is not None else _t((n,), torch.int32, device)
        out = _t((n,), torch.int32, device)
        clk = _t((2 * n,), torch.int64, device)
        y = ch.y - (1 << 32) if ch.y >= 1 << 31 else ch.y
        z = ch.z - (1 << 32) if ch.z >= 1 << 31 else ch.z
        return ((x, out, clk, y, z, n_iter),
                dict(BODY=chain_ptx(ch, _chain_steps(name)), BLOCK=block, num_warps=warps),
                (grid,))
    return build


def _loop_build(asm: Callable[[], str], warps: int, b: int = 1):
    def build(device, a=None, n_iter=64, b=b, grid=1):
        import torch
        block = 32 * warps
        n = block * grid
        a = a if a is not None else _t((n,), torch.int64, device)
        out = _t((3 * n,), torch.int64, device)
        return (a, out, b, n_iter), dict(ASM=asm(), BLOCK=block, num_warps=warps), (grid,)
    return build


def _dot_build(dtype: str, wait: bool):
    def build(device, a=None, b=None, n_iter=256):
        import torch
        k = 32 if dtype == "int8" else 16
        dt = torch.int8 if dtype == "int8" else torch.float16
        a = a if a is not None else _t((64 * k,), dt, device)
        b = b if b is not None else _t((128 * k,), dt, device)
        out = _t((64 * 128,), torch.int32 if dtype == "int8" else torch.float32, device)
        clk = _t((1,), torch.int64, device)
        return ((a, b, out, clk, n_iter),
                dict(N=128, K=k, INT_ACC=dtype == "int8", WAIT=wait, num_warps=4, num_stages=1),
                (1,))
    return build


READ_BLOCK, READ_WARPS = 4096, 8


def _read_build(device, src=None, programs=132 * 8, n=None):
    import torch
    src = src if src is not None else _t((1 << 24,), torch.float32, device)
    n = src.numel()
    blocks = -(-n // READ_BLOCK)
    per = -(-blocks // programs)
    out = _t((programs,), torch.float32, device)
    return ((src, out, n, per), dict(BLOCK=READ_BLOCK, num_warps=READ_WARPS, num_stages=1),
            (programs,))


def _benches() -> dict[str, Bench]:
    out = {}
    for name, ch in CHAINS.items():
        out[f"lat_{name}"] = Bench(f"lat_{name}", "asm_chain_kernel", _chain_build(name, 32, 1),
                                   {"*": _chain_expect(name)})
    for name in ("alu", "f2i", "i2f", "issue"):
        ch = CHAINS[name]
        out[f"thr_{name}"] = Bench(
            f"thr_{name}", "asm_chain_kernel",
            _chain_build(name, 32 * THR_WARPS * THR_CHAINS, THR_WARPS),
            {"*": _chain_expect(name, THR_CHAINS)})
    out["lds"] = Bench("lds", "asm_loop_kernel", _loop_build(lambda: lds_asm(1), 1),
                       {"*": {"LDS": UNROLL}})
    out["smem_conflict"] = Bench("smem_conflict", "asm_loop_kernel",
                                 _loop_build(lambda: lds_asm(4), 32), {"*": {"LDS": UNROLL}})
    out["bar4"] = Bench("bar4", "asm_loop_kernel", _loop_build(bar_asm, 4),
                        {"*": {"BAR": UNROLL}})
    out["bar8"] = Bench("bar8", "asm_loop_kernel", _loop_build(bar_asm, 8),
                        {"*": {"BAR": UNROLL}})
    out["ldg"] = Bench("ldg", "asm_loop_kernel", _loop_build(ldg_asm, 1),
                       {"*": {"LDG": LDG_UNROLL}})
    out["wgmma_fp16"] = Bench("wgmma_fp16", "dot_chain_kernel", _dot_build("fp16", False),
                              {"hopper": {"HGMMA": 1, "BAR": 1}, "ampere": {"HMMA": 16}},
                              {"hopper": {"DEPBAR.LE gsb0, 0x1": 1}})
    out["wgmma_fp16_wait"] = Bench("wgmma_fp16_wait", "dot_chain_kernel",
                                   _dot_build("fp16", True), {"hopper": {"HGMMA": 1, "BAR": 1}},
                                   {"hopper": {"DEPBAR.LE gsb0, 0x0": 1}}, archs=("hopper",))
    out["wgmma_int8"] = Bench("wgmma_int8", "dot_chain_kernel", _dot_build("int8", False),
                              {"hopper": {"IGMMA": 1, "BAR": 1}, "ampere": {"IMMA": 16}},
                              {"hopper": {"DEPBAR.LE gsb0, 0x0": 1}})
    out["read"] = Bench("read", "read_kernel", _read_build, {"*": {"LDG": 4}})
    return out


BENCHES = _benches()


# -- SASS verification ------------------------------------------------------------------------
@dataclass(frozen=True)
class Verified:
    """The timed loop of a compiled benchmark: ``unroll`` source iterations per SASS loop
    iteration, ``families`` (opcode family -> count per source iteration), ``opcodes`` (full
    opcode -> count in the SASS loop), ``per_iter`` instructions per source iteration, and the
    loop's class mix (gpu.sass classes) per source iteration."""
    bench: str
    arch: str
    unroll: int
    families: dict
    opcodes: dict
    per_iter: float
    classes: dict

    def text(self) -> str:
        ops = ", ".join(f"{k} x{v}" for k, v in self.opcodes.items())
        return f"SASS {self.arch} loop (x{self.unroll} unrolled): {ops}"


def _family(txt: str) -> str:
    return txt.split()[0].split(".")[0]


def _count(fams: collections.Counter, key: str) -> int:
    return sum(fams.get(k, 0) for k in key.split("|"))


def verify_listing(listing: str, bench: "Bench | str", arch: str) -> Verified:
    """Find ``bench``'s timed loop in a ``cuobjdump -sass`` listing (the backward-branch loop
    with the most instructions of its first expected family) and check every expected family
    (and text) occurs ``unroll`` x its count; ValueError naming the bench otherwise."""
    b = BENCHES[bench] if isinstance(bench, str) else bench
    expect = b.expected(arch)
    if expect is None:
        raise ValueError(f"bench: {b.name} has no expectation for arch {arch!r}")
    loops = sass.loops(sass.parse(listing))
    if not loops:
        raise ValueError(f"sass: {b.name} ({arch}) has no loop")
    marker = next(iter(expect))
    body = max(loops, key=lambda lp: _count(collections.Counter(map(_family, lp)), marker))
    fams = collections.Counter(map(_family, body))
    got = _count(fams, marker)
    if got == 0 or got % expect[marker]:
        raise ValueError(f"sass: {b.name} ({arch}) loop has {got} {marker}, expected a multiple "
                         f"of {expect[marker]}: {dict(fams)}")
    u = got // expect[marker]
    for key, n in expect.items():
        if _count(fams, key) != u * n:
            raise ValueError(f"sass: {b.name} ({arch}) loop has {_count(fams, key)} {key}, "
                             f"expected {u} x {n}: {dict(fams)}")
    texts = b.texts.get(arch, {}) if b.texts else {}
    for sub, n in texts.items():
        c = sum(1 for t in body if sub in t)
        if c != u * n:
            raise ValueError(f"sass: {b.name} ({arch}) loop has {c} '{sub}', expected {u} x {n}")
    ops = collections.Counter(t.split()[0] for t in body)
    cls = collections.Counter(sass.classify(t.split()[0]) for t in body)
    return Verified(b.name, arch, u, {k: _count(fams, k) // u for k in expect},
                    dict(sorted(ops.items(), key=lambda x: (-x[1], x[0]))), len(body) / u,
                    {c: n / u for c, n in sorted(cls.items())})


def _kernel(name: str):
    from gpu.kernels import microbench as K
    return getattr(K, name)


def verify_compile(bench: str, arch: str) -> Verified:
    """Compile ``bench`` for ``arch`` on the CPU (meta tensors) and verify its loop."""
    if bench not in BENCHES:
        raise ValueError(f"bench: expected one of {sorted(BENCHES)}, got {bench!r}")
    b = BENCHES[bench]
    if arch not in b.archs:
        raise ValueError(f"arch: {bench} compiles for {b.archs}, got {arch!r}")
    args, kwargs, _ = b.build("meta")
    ck = sass.compile_jit(_kernel(b.kernel), args, kwargs, arch)
    listing, _ = sass.disassemble(ck.asm["cubin"])
    return verify_listing(listing, b, arch)


# -- GPU side ---------------------------------------------------------------------------------
def _arch_of_device() -> str:
    import torch

    from sim.arch import arch_of_capability
    return arch_of_capability(tuple(torch.cuda.get_device_capability())).name


def _launch(bench: str, arch: str, **kw):
    """Build on CUDA, launch, verify the SASS of what ran; returns (tensors, Verified)."""
    b = BENCHES[bench]
    args, kwargs, grid = b.build("cuda", **kw)
    ck = _kernel(b.kernel)[grid](*args, **kwargs)
    listing, _ = sass.disassemble(ck.asm["cubin"])
    return args, verify_listing(listing, b, arch) if b.expected(arch) else None


def _med(t) -> float:
    return float(t.double().median().item())


def _check(name: str, ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"{name}: result check failed ({what})")


def _chain_reference(name: str, x, steps: int):
    """numpy result of ``steps`` chain steps on int32 bit patterns ``x`` (None: no cheap one)."""
    import numpy as np
    ch = CHAINS[name]
    v = x.astype(np.int64)
    m = (1 << 32) - 1
    for _ in range(steps):
        if name == "alu":
            v = ((ch.y - v) & m) ^ ch.z
        elif name == "imad":
            v = (v * ch.y + ch.z) & m
        elif name == "i2f":
            s = np.where(v >= 1 << 31, v - (1 << 32), v).astype(np.int32)
            v = s.astype(np.float32).view(np.int32).astype(np.int64) & m
        else:
            return None
    return np.where(v >= 1 << 31, v - (1 << 32), v).astype(np.int32)


CHECKED = 4096
_FIXED = {"ffma": F32_HALF, "hfma2": H2_HALF, "f2i": 0, "mufu": 0x7F800000}


def _chain_inputs(name: str, n: int):
    import torch
    g = torch.Generator().manual_seed(1)
    if name in ("ffma", "issue"):
        x = torch.rand(n, generator=g).view(torch.int32)
    elif name == "mufu":
        x = (-torch.rand(n, generator=g)).view(torch.int32)
    elif name == "hfma2":
        x = torch.rand(2 * n, generator=g).half().view(torch.int32)
    elif name == "f2i":
        x = torch.randint(1, 1000, (n,), generator=g, dtype=torch.int32)
    else:
        x = torch.randint(-(1 << 20), 1 << 20, (n,), generator=g, dtype=torch.int32)
    return x.cuda()


def _run_chain(bench: str, name: str, arch: str, n_iter: int, grid: int):
    import numpy as np
    b = BENCHES[bench]
    args0, _, _ = b.build("meta", n_iter=n_iter, grid=grid)
    x = _chain_inputs(name, args0[0].numel())
    (xin, out, clk, *_), ver = _launch(bench, arch, x=x, n_iter=n_iter, grid=grid)
    import torch
    torch.cuda.synchronize()
    steps = n_iter * _chain_steps(name)
    got = out.cpu().numpy()
    if name in _FIXED:
        want = np.array([_FIXED[name]], dtype=np.uint32).view(np.int32)[0]
        _check(bench, bool((got == want).all()), f"expected every element {_FIXED[name]:#x}")
    else:                       # the numpy chain on the first CHECKED elements (it is slow)
        got = got[:CHECKED]
        ref = _chain_reference(name, xin[:CHECKED].cpu().numpy(), steps)
        if ref is not None:
            _check(bench, bool(np.array_equal(got, ref)), "differs from the numpy chain")
    n = out.numel()
    return out, clk[:n], clk[n:], ver


def _m(field_, value, unit, how, seconds=0.0, work=0.0, alternatives=None, telemetry=None):
    from gpu.microbench import Measurement
    return Measurement(field_, value, unit, how, seconds, work, dict(alternatives or {}),
                       dict(telemetry or {}))


def measure_chain_latency(name: str, arch: str, n_iter: int = LAT_ITERS):
    """Dependent-chain latency (clk per instruction) of chain ``name``: one warp, one chain per
    thread, %clock64 around the loop."""
    bench = f"lat_{name}"
    _run_chain(bench, name, arch, n_iter, 1)                     # warm (compile, I-cache)
    _, clk, ns, ver = _run_chain(bench, name, arch, n_iter, 1)
    ops = n_iter * sum(ver.families.values())
    cyc = _med(clk)
    return cyc / ops, ver, cyc, _med(ns)


_LAT_FIELDS = {"ffma": "lat_fma", "alu": "lat_alu", "imad": "lat_imad", "mufu": "lat_mufu",
               "f2i": "lat_cvt", "hfma2": "lat_hfma2"}


def measure_latencies(arch: str) -> dict:
    out = {}
    i2f = None
    for name in list(_LAT_FIELDS) + ["i2f"]:
        lat, ver, cyc, ns = measure_chain_latency(name, arch)
        if name == "i2f":
            i2f = (lat, ver)
            continue
        how = (f"asm_chain_kernel {CHAINS[name].doc}: 1 warp, {LAT_ITERS} iterations x "
               f"{sum(ver.families.values())} dependent instructions, %clock64 "
               f"({cyc:.0f} clk, {ns / 1e3:.1f} us); {ver.text()}")
        out[_LAT_FIELDS[name]] = _m(_LAT_FIELDS[name], lat, "clk", how)
    if i2f and "lat_cvt" in out:
        out["lat_cvt"].alternatives[f"I2F chain ({i2f[1].text()})"] = i2f[0]
    return out


def measure_throughput(timer, arch: str, sm_count: int) -> dict:
    """int32 (ALU class), cvt (XU class; I2F as an alternative) and issue (warp instructions)
    rates, chip-wide per second, from event-timed launches of every SM."""
    out = {}
    grid = sm_count * 32
    res = {}
    for name in ("alu", "f2i", "i2f", "issue"):
        bench = f"thr_{name}"
        _, clk, ns, ver = _run_chain(bench, name, arch, THR_ITERS, grid)
        b = BENCHES[bench]
        args, kwargs, g = b.build("cuda", x=_chain_inputs(name, grid * 32 * THR_WARPS * THR_CHAINS),
                                  n_iter=THR_ITERS, grid=grid)
        kern = _kernel(b.kernel)
        sec = timer(lambda: kern[g](*args, **kwargs), cold_l2=False)
        threads = grid * 32 * THR_WARPS
        mhz = _med(clk) / max(_med(ns), 1.0) * 1e3
        res[name] = (ver, sec, threads, mhz)
    for fld, name, cls in (("int32", "alu", "int32"), ("cvt", "f2i", "cvt")):
        ver, sec, threads, mhz = res[name]
        work = threads * THR_ITERS * ver.classes.get(cls, 0.0)
        how = (f"asm_chain_kernel {CHAINS[name].doc}, {grid} CTAs x {32 * THR_WARPS} threads x "
               f"{THR_CHAINS} chains x {THR_ITERS} iterations, {ver.classes.get(cls, 0):g} "
               f"{cls}-class instructions per thread-iteration; {ver.text()}; ran at ~{mhz:.0f} MHz")
        alts = {}
        if fld == "cvt":
            v2, s2, t2, _ = res["i2f"]
            c2 = v2.classes.get("cvt", 0.0)
            if c2:
                alts[f"I2F chain ({v2.text()})"] = t2 * THR_ITERS * c2 / s2
            else:
                alts[f"I2F chain is not XU work on {arch} ({v2.text()}); int32-class rate"] = \
                    t2 * THR_ITERS * v2.classes.get("int32", 0.0) / s2
        out[fld] = _m(fld, work / sec, "inst/s", how, sec, work, alts)
    ver, sec, threads, mhz = res["issue"]
    warps = threads // 32
    work = warps * THR_ITERS * ver.per_iter
    how = (f"asm_chain_kernel FFMA/LOP3 alternating, {grid} CTAs x {32 * THR_WARPS} threads x "
           f"{THR_CHAINS} chains, {ver.per_iter:g} warp instructions per loop iteration (all of "
           f"the loop's SASS); {ver.text()}; ran at ~{mhz:.0f} MHz")
    out["issue"] = _m("issue", work / sec, "warp_inst/s", how, sec, work)
    return out


def measure_lds_and_conflicts(arch: str) -> dict:
    import torch
    out = {}
    for _ in range(2):
        (a, o, *_), ver = _launch("lds", arch, n_iter=128)
    torch.cuda.synchronize()
    n = a.numel()
    clk = o[:n]
    lat = _med(clk) / (128 * UNROLL)
    out["lat_lds"] = _m("lat_lds", lat, "clk",
                        f"asm_loop_kernel shared-memory pointer chase, 1 warp, 128 x {UNROLL} "
                        f"dependent ld.shared.u32; %clock64; {ver.text()}")
    iters, warps = 8, 32
    for d in SMEM_DEGREES:
        for _ in range(2):
            (a, o, *_), ver = _launch("smem_conflict", arch, n_iter=iters, b=d)
        torch.cuda.synchronize()
        n = a.numel()
        cyc = float(o[:n].double().max().item())
        per = cyc / (warps * iters * UNROLL)
        out[f"smem_conflict_{d}"] = _m(
            f"smem_conflict_{d}", per, "clk",
            f"asm_loop_kernel 1 CTA x {warps} warps, 4 independent LDS chains per thread at word "
            f"lane*{d} (conflict degree {d}), {iters} x {UNROLL} LDS per thread; slowest "
            f"warp {cyc:.0f} clk / {warps * iters * UNROLL} warp-LDS; {ver.text()}")
    return out


def measure_barrier(arch: str) -> dict:
    import torch
    out = {}
    for warps, fld in ((4, "bar_sync"), (8, "bar_sync_8w")):
        for _ in range(2):
            (a, o, *_), ver = _launch(f"bar{warps}", arch, n_iter=64)
        torch.cuda.synchronize()
        n = a.numel()
        per = _med(o[:n]) / (64 * UNROLL)
        out[fld] = _m(fld, per, "clk", f"asm_loop_kernel 1 CTA of {warps} warps, 64 x {UNROLL} "
                      f"back-to-back bar.sync 0; %clock64 median over threads; {ver.text()}")
    return out


def _chase(nbytes: int, line: int = 128):
    """An int64 buffer of ``nbytes``: a random cycle through its ``line``-byte lines, each line's
    first word the address of the next; returns (buffer, start pointer tensor, lines)."""
    import torch
    lines = nbytes // line
    words = line // 8
    buf = torch.zeros(lines * words, dtype=torch.int64, device="cuda")
    perm = torch.randperm(lines, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    base = buf.data_ptr()
    nxt = torch.roll(perm, -1)
    buf[perm * words] = base + nxt * line
    start = torch.full((32,), base + int(perm[0].item()) * line, dtype=torch.int64, device="cuda")
    return buf, start, lines, perm


def measure_memory_latency(arch: str, l2_bytes: int) -> dict:
    import torch
    out = {}
    buf, start, lines, perm = _chase(1 << 20)
    steps_iter = max(lines // LDG_UNROLL, 1)
    for _ in range(2):                        # first pass warms L2; the second is timed
        (a, o, *_), ver = _launch("ldg", arch, a=start, n_iter=steps_iter)
    torch.cuda.synchronize()
    n = a.numel()
    # sink: every lane ends where the chase ends (lines*... steps from the start)
    want = buf.data_ptr() + int(perm[(steps_iter * LDG_UNROLL) % lines].item()) * 128
    _check("ldg (L2)", int(o[2 * n].item()) == want, "chase did not end at the expected line")
    cyc = _med(o[:n]) / (steps_iter * LDG_UNROLL)
    out["l2_latency"] = _m("l2_latency", cyc, "clk",
                           f"asm_loop_kernel pointer chase ld.global.cg.u64 over {lines} random "
                           f"128-byte lines (1 MB, warm in L2), 1 warp, {steps_iter * LDG_UNROLL} steps; "
                           f"%clock64; {ver.text()}")
    del buf
    size = 256 << 20
    buf, start, lines, perm = _chase(size)
    flush = torch.empty(2 * l2_bytes, dtype=torch.uint8, device="cuda")
    iters = 512
    for _ in range(2):                        # each run walks a different, untouched stretch
        flush.zero_()
        torch.cuda.synchronize()
        (a, o, *_), ver = _launch("ldg", arch, a=start, n_iter=iters)
        torch.cuda.synchronize()
        start = torch.full_like(start, int(o[2 * a.numel()].item()))
    n = a.numel()
    ns = _med(o[n:2 * n]) / (iters * LDG_UNROLL)
    cyc = _med(o[:n]) / (iters * LDG_UNROLL)
    out["hbm_latency"] = _m("hbm_latency", ns, "ns",
                            f"asm_loop_kernel pointer chase ld.global.cg.u64, {iters * LDG_UNROLL} steps "
                            f"over random lines of a {size >> 20} MB buffer, L2 flushed, each line "
                            f"once; %globaltimer ({cyc:.0f} clk per step by %clock64); {ver.text()}")
    return out


def measure_wgmma(arch: str) -> dict:
    """Cycles per dependent tl.dot (one warpgroup) on sm_90: fp16 as compiled (one wgmma in
    flight), fp16 with wait_group 0, int8 (Triton waits for each)."""
    import torch
    out = {}
    if arch != "hopper":
        return out
    g = torch.Generator(device="cuda").manual_seed(5)
    iters = 256
    for bench, fld, dt in (("wgmma_fp16_wait", "lat_wgmma_fp16", "fp16"),
                           ("wgmma_fp16", "wgmma_interval_fp16", "fp16"),
                           ("wgmma_int8", "lat_wgmma_int8", "int8")):
        k = 32 if dt == "int8" else 16
        if dt == "int8":
            a = torch.randint(-8, 8, (64 * k,), device="cuda", dtype=torch.int8, generator=g)
            b = torch.randint(-8, 8, (128 * k,), device="cuda", dtype=torch.int8, generator=g)
        else:
            a = (torch.randint(-4, 5, (64 * k,), device="cuda", generator=g) / 4).half()
            b = (torch.randint(-4, 5, (128 * k,), device="cuda", generator=g) / 4).half()
        for _ in range(2):
            (_, _, c, clk, _), ver = _launch(bench, arch, a=a, b=b, n_iter=iters)
        torch.cuda.synchronize()
        want = iters * (a.view(64, k).double() @ b.view(128, k).double().t())
        _check(bench, torch.equal(c.view(64, 128).double().cpu(), want.cpu()),
               "accumulator differs from n_iter x A B^T")
        per = float(clk.item()) / iters
        how = (f"dot_chain_kernel 1 warpgroup, {iters} dependent tl.dot 64x128x{k} {dt}, one "
               f"BAR.SYNC per dot as Triton compiles the loop; %clock64; {ver.text()}")
        out[fld] = _m(fld, per, "clk", how)
    return out


def measure_read_bandwidth(timer, sm_count: int, nbytes: int = 2 << 30) -> object:
    import torch
    src = torch.rand(nbytes // 4, device="cuda", dtype=torch.float32)
    programs = sm_count * 8
    args, kwargs, grid = BENCHES["read"].build("cuda", src=src, programs=programs)
    kern = _kernel("read_kernel")
    ck = kern[grid](*args, **kwargs)
    listing, _ = sass.disassemble(ck.asm["cubin"])
    ver = verify_listing(listing, "read", _arch_of_device())
    got = args[1].double().sum().item()
    want = src.double().sum().item()
    _check("read_kernel", math.isclose(got, want, rel_tol=1e-4), f"sum {got} vs {want}")
    sec = timer(lambda: kern[grid](*args, **kwargs), cold_l2=True)
    how = (f"triton read_kernel, {nbytes / 1e9:.2f} GB fp32 read once and summed, {programs} "
           f"programs x {READ_BLOCK} elements, L2 flushed; {ver.text()}")
    return _m("hbm_read_bandwidth", nbytes / sec, "B/s", how, sec, float(nbytes))


def measure_clock(arch: str, sm_count: int, seconds: float = 0.5) -> object:
    """SM clock under load: the issue chain on every SM, repeated for ``seconds``; clock64 /
    globaltimer deltas of the last launch's threads (median), nvidia-smi alongside."""
    import torch
    from gpu.telemetry import Telemetry
    grid = sm_count * 32
    b = BENCHES["thr_issue"]
    args, kwargs, g = b.build("cuda", x=_chain_inputs("issue", grid * 32 * THR_WARPS * THR_CHAINS),
                              n_iter=4 * THR_ITERS, grid=grid)
    kern = _kernel(b.kernel)
    kern[g](*args, **kwargs)
    torch.cuda.synchronize()
    with Telemetry(required=False) as tel:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            kern[g](*args, **kwargs)
            torch.cuda.synchronize()
    clk = args[2]
    n = clk.numel() // 2
    ratio = clk[:n].double() / clk[n:].double().clamp(min=1.0)
    mhz = float(ratio.median().item()) * 1e3
    summ = tel.summary()
    alts = {}
    if "clocks.sm" in summ:
        alts["nvidia-smi clocks.sm median during the loop"] = summ["clocks.sm"]["median"] * 1e6
    how = (f"asm_chain_kernel FFMA/LOP3 on {grid} CTAs, repeated for {seconds:g} s; median over "
           f"threads of %clock64 / %globaltimer deltas of the last launch")
    return _m("clock_under_load", mhz * 1e6, "Hz", how, seconds, 0.0, alts, summ)


def measure_sm(*, sm_count: int, l2_bytes: int, timer=None, progress=print,
               quick: bool = False) -> dict:
    """Every SM-level field ``qsattn calibrate`` writes (see the module docstring), keyed by
    hardware field; a group that fails is reported through ``progress`` and left out."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("measure_sm needs a CUDA GPU (the kernels are compiled for sm_80/sm_90 "
                           "and timed on the device); run `qsattn calibrate` on the GPU machine")
    from gpu.microbench import bench_timer
    timer = timer or bench_timer()
    arch = _arch_of_device()
    if arch not in ("hopper", "ampere"):
        raise RuntimeError(f"measure_sm: the SASS expectations cover sm_90 and sm_80, this GPU is "
                           f"{arch}")
    jobs = [
        ("latencies", lambda: measure_latencies(arch)),
        ("throughput", lambda: measure_throughput(timer, arch, sm_count)),
        ("shared memory", lambda: measure_lds_and_conflicts(arch)),
        ("barrier", lambda: measure_barrier(arch)),
        ("memory latency", lambda: measure_memory_latency(arch, l2_bytes)),
        ("wgmma", lambda: measure_wgmma(arch)),
        ("read bandwidth", lambda: {"hbm_read_bandwidth": measure_read_bandwidth(
            timer, sm_count, (256 << 20) if quick else (2 << 30))}),
        ("clock", lambda: {"clock_under_load": measure_clock(arch, sm_count,
                                                             0.1 if quick else 0.5)}),
    ]
    out = {}
    for group, job in jobs:
        t0 = time.perf_counter()
        try:
            got = job()
        except Exception as e:  # noqa: BLE001 - reported, the field keeps its spec value
            progress(f"  {group}: FAILED ({type(e).__name__}: {e}); keeping the spec values")
            continue
        for name, m in got.items():
            out[name] = m
            progress(f"  {name}: {m.value:.4g} {m.unit} ({m.how})")
        progress(f"  [{group}: {time.perf_counter() - t0:.1f} s]")
        torch.cuda.empty_cache()
    return out


# -- CLI: SASS verification on the CPU --------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu.microbench_sm",
                                description="Compile the SM microbenchmarks for an architecture "
                                            "on the CPU and check their loops' SASS.")
    p.add_argument("--verify", action="store_true", required=True)
    p.add_argument("--arch", action="append", choices=["hopper", "ampere"])
    p.add_argument("--bench", action="append", choices=sorted(BENCHES))
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    a = p.parse_args(argv)
    bad = 0
    for arch in a.arch or ["hopper", "ampere"]:
        for name in a.bench or list(BENCHES):
            if arch not in BENCHES[name].archs:
                continue
            t0 = time.perf_counter()
            try:
                v = verify_compile(name, arch)
                rec = {"bench": name, "arch": arch, "ok": True, "unroll": v.unroll,
                       "families": v.families, "opcodes": v.opcodes}
            except Exception as e:  # noqa: BLE001 - reported per bench
                bad += 1
                rec = {"bench": name, "arch": arch, "ok": False, "error": f"{type(e).__name__}: {e}"}
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(rec) if a.json else
                  f"{arch:7} {name:16} {'ok ' if rec['ok'] else 'BAD'} "
                  f"{rec.get('opcodes', rec.get('error'))}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
