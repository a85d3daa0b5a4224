"""SASS instruction mixes of the kernels, counted from their compile on the CPU, per architecture.

``python -m gpu.sass [--arch ARCH] [--variant NAME ...] [--write]`` compiles
``gpu.kernels.flash_fwd.attn_fwd_kernel`` for the architecture's target (``sim.arch``: sm_90
Hopper, sm_80 Ampere, ...) without a GPU, disassembles it with the ``cuobjdump`` of the triton
wheel, finds the main (unmasked) K/V loop and counts its opcodes by the classes of
:mod:`sim.cost.mixes`, at ``block_n`` 64 and 128. ``--write`` stores the tables in
``configs/kernels/<arch>/mixes.yaml``, which :mod:`sim.cost.mixes` reads; ``--check`` exits 1
when a fresh count differs from that file (tests/gpu/test_sass.py). Needs triton with its
bundled ptxas/cuobjdump, torch (``meta`` tensors) and ``TRITON_INTERPRET`` unset.

Specialization: the argument set is :func:`gpu.prefill.prefill_call`'s (the one the real launch
passes), built on ``meta`` tensors of the benchmark shape; Triton's own binder turns it into the
signature, constexprs and divisibility attributes, as ``attn_fwd_kernel[grid](...)`` would on a
device (every pointer is taken 16-byte aligned, as the CUDA caching allocator gives).

``python -m gpu.sass --decode [--write]`` counts the decode kernels (flash-decode, grouped
flash-decode, turbo passes, label scores, radix select; :func:`decode_tables`), with the load
round trips per loop iteration (:func:`load_rounds`) and its cp.async waits (``DEPBAR``,
``waits``); ``--write`` stores ``configs/kernels/<arch>/decode.yaml`` (sim.cost.kernels.decode_sass).

Main loop: the first backward branch in program order and its target (the unmasked loop of
``_attn_fwd_inner`` comes before the masked one); one iteration is one K/V tile per thread.

On sm_90 the tables also count the Gluon forward (``GLUON_VARIANTS``: gpu/kernels/
flash_fwd_sm90.py at the launch table's options, :func:`gluon_launch`): per tile, the
steady-state path through its consumers' main loop (:func:`hot_path`: the loop that keeps an
MMA in flight, past the masking branch), per thread of a 64-row warpgroup. Each variant of
``mixes.yaml`` names its ``kernel`` (``triton`` | ``gluon``; ``source.structure`` says what
each is), which tells the cost model the kernel structure.

>>> from gpu import sass
>>> mix = sass.count("int8", 128)                    # doctest: +SKIP
>>> mix.counts["fp32"], mix.instructions             # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sim.arch import arch as arch_info
from sim.arch import data_path
from sim.spec import load_method

CLASSES = ("fp32", "fp16x2", "int32", "sfu", "cvt", "other")   # sim.cost.mixes.CLASSES
BLOCK_NS = (64, 128)
DEFAULT_ARCH = "hopper"


def table(arch: str = DEFAULT_ARCH) -> Path:
    """The mixes data file of ``arch``."""
    return data_path(arch, "mixes")


def target(arch: str = DEFAULT_ARCH):
    """``GPUTarget`` of ``arch`` (backend, sm, warp size)."""
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", arch_info(arch).sm, 32)
# The benchmark's target point (reports/bench/prefill.json config; prefill_probe.json).
SHAPE = {"batch": 4, "q_heads": 32, "kv_heads": 32, "length": 8192, "head_dim": 128}

# Variants of the tables: method, spec overrides, launch (reports/bench/prefill.json
# launch_best: fp16 128/8/3, integer 64/4/3; both give 64 query rows per warpgroup).
VARIANTS = {
    "fp16": ("fp16_flash", {}, {"block_m": 128, "num_warps": 8, "num_stages": 3}),
    "int8": ("int8_flash", {}, {"block_m": 64, "num_warps": 4, "num_stages": 3}),
    "turbo_exp2": ("turbo", {"softmax__exp": "exp2"},
                   {"block_m": 64, "num_warps": 4, "num_stages": 3}),
    "turbo": ("turbo", {}, {"block_m": 64, "num_warps": 4, "num_stages": 3}),
}
# The Gluon sm_90 forward (gpu/kernels/flash_fwd_sm90.py), counted on architectures whose
# target is sm_90 (warp-specialized: a TMA producer warp, consumer warpgroups of 64 rows, QK of
# the next tile in flight under the softmax): spec name, overrides; the launch is the
# architecture's table entry for the method (its Gluon options, or the defaults).
GLUON_VARIANTS = {
    "fp16_sm90": ("fp16_flash", {}),
    "int8_sm90": ("int8_flash", {}),
    "int8_fast_sm90": ("int8_flash_fast", {}),
    "turbo_exp2_sm90": ("turbo", {"softmax__exp": "exp2"}),
    "turbo_sm90": ("turbo", {}),
}
STRUCTURE = {"triton": "portable: one program of block_m rows, num_warps, software-pipelined "
                       "loads (gpu/kernels/flash_fwd.py)",
             "gluon": "sm_90 warp-specialized: TMA producer warp, K/V ring of num_stages, 128 "
                      "rows per program in two consumer warpgroups of 64, QK(j+1) in flight "
                      "under softmax(j) (gpu/kernels/flash_fwd_sm90.py)"}

# Opcode (first dot-separated part) -> class. Pipes as ncu reports them on sm_90: FMA (heavy
# and lite: FP32, IMAD), FMA fp16x2 (HFMA2/HMUL2/HADD2), ALU (integer/logic/compare/select/
# min-max incl. the fp16x2 compares HSET2/HSETP2/HMNMX2, I2FP, F2FP), XU (MUFU: sfu;
# F2I/I2F/F2F/FRND: cvt). HSET2 on ALU: with it on FMA the int8 loop would have 3.0 fp16 FMA
# instructions per score, ncu measures 2.50 (reports/bench/prefill_probe.md). Everything else
# only takes an issue slot in the model.
_CLASS = {
    **dict.fromkeys(("FADD", "FMUL", "FFMA", "IMAD", "FMUL2", "FADD2", "FFMA2"), "fp32"),
    **dict.fromkeys(("HFMA2", "HMUL2", "HADD2"), "fp16x2"),
    **dict.fromkeys(("HSET2", "HSETP2", "HMNMX2", "FMNMX", "FSEL", "FSETP", "FSET", "I2FP", "F2FP", "PRMT", "ISETP", "IADD3",
                     "IADD", "LOP3", "SEL", "VIMNMX", "IMNMX", "LEA", "SHF", "PLOP3", "MOV",
                     "VIADD", "IABS", "P2R", "R2P", "FCHK"), "int32"),
    "MUFU": "sfu",
    **dict.fromkeys(("F2I", "I2F", "F2F", "FRND"), "cvt"),
}
_INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRA = re.compile(r"\bBRA\s+(?:`\(.*?\)\s*)?0x([0-9a-f]+)")


def classify(opcode: str) -> str:
    """Class of a SASS opcode (``"FFMA.FTZ"`` -> ``"fp32"``); unknown opcodes are ``other``."""
    if not isinstance(opcode, str) or not opcode:
        raise ValueError(f"opcode: expected a non-empty SASS opcode string, got {opcode!r}")
    return _CLASS.get(opcode.split(".")[0], "other")


def parse(sass: str) -> list[tuple[int, str]]:
    """``(address, opcode)`` of every instruction of a ``cuobjdump -sass`` listing (predicate
    guards stripped; opcode with its modifiers, e.g. ``"HMMA.16816.F32"``)."""
    out = []
    for line in sass.splitlines():
        m = _INSN.match(line)
        if m:
            txt = re.sub(r"^@!?U?P[T0-9]+\s+", "", m.group(2).strip())
            out.append((int(m.group(1), 16), txt))
    return out


def main_loop(ins: list[tuple[int, str]]) -> list[str]:
    """Instructions (text) of the first backward branch's loop: target..branch inclusive."""
    for addr, txt in ins:
        if txt.split()[0].split(".")[0] == "BRA":
            m = _BRA.search(txt)
            if m and int(m.group(1), 16) < addr:
                lo = int(m.group(1), 16)
                return [t for a, t in ins if lo <= a <= addr]
    raise ValueError("sass: no backward branch (loop) found in the listing")


def overlapped(path: list[str]) -> bool:
    """Some MMA is still in flight when the next one is issued (a run of MMAs followed by
    another warpgroup arrive before any wait). False when ptxas serialized the warpgroup MMAs
    (its C7512 warning: every MMA waited right after its issue)."""
    state = None
    for op in path:
        if "GMMA" in op:
            state = "mma"
        elif op.startswith("WARPGROUP.DEPBAR"):
            state = None
        elif op.startswith("WARPGROUP.ARRIVE") and state == "mma":
            return True
    return False


def hot_path(listing: str, per_tile: int) -> tuple[list[str], int, int]:
    """The Gluon forward's main loop (:mod:`gpu.kernels.flash_fwd_sm90`): among the innermost
    loops (backward branches) holding the MMAs of at least one tile (``per_tile`` of them), the
    one with the most MMAs (the pipelined loop, unrolled or not, over the two-loop consumer's
    one-tile masked loop), and along it
    the path its steady state executes: through forward branches, the way with the most MMAs
    (an unrolled second step), else the shorter way (past the masking selects, which only the
    masked tiles run). Returns ``(opcodes on the path, tiles on the path, loop length)``;
    :func:`overlapped` tells whether an MMA is in flight while the next is issued."""
    rows = []
    for line in listing.splitlines():
        m = _INSN.match(line)
        if m:
            t = m.group(2).strip()
            rows.append((int(m.group(1), 16), t.startswith("@"),
                         re.sub(r"^@!?U?P[T0-9]+\s+", "", t)))
    loops_ = []
    for addr, _, txt in rows:
        if txt.split()[0] != "BRA":
            continue
        m = _BRA.search(txt)
        if m and int(m.group(1), 16) < addr:
            body = [r for r in rows if int(m.group(1), 16) <= r[0] <= addr]
            n = sum(1 for r in body if "GMMA" in r[2].split()[0])
            if n >= per_tile:
                loops_.append((int(m.group(1), 16), addr, n, body))
    # innermost: no other MMA loop inside (the warp-specialize dispatch loops hold them all)
    inner = [lp for lp in loops_ if not any(o is not lp and lp[0] <= o[0] and o[1] <= lp[1]
                                            for o in loops_)]
    if not inner:
        raise ValueError(f"sass: no loop with {per_tile} MMAs (one tile) in the listing")
    # the main loop: the most MMAs on its steady-state path (the unrolled pipelined loop; the
    # two-loop consumer's synchronous loop holds as many, but on two alternative branches)
    best = max((_steady_path(lp[3]) + (len(lp[3]),) for lp in inner),
               key=lambda r: (r[0], -len(r[1])))
    g, path, n = best
    return list(path), max(1, g // per_tile), n


def _steady_path(body) -> tuple[int, tuple]:
    """(MMAs, opcodes) of the path through a loop body that takes, at each forward branch, the
    way with the most MMAs, else the shorter one (a DAG walk from the end)."""
    index = {r[0]: k for k, r in enumerate(body)}
    memo = {len(body): (0, 0, ())}
    for k in range(len(body) - 1, -1, -1):
        addr, guarded, txt = body[k]
        op = txt.split()[0]
        nxt = [k + 1]
        if op == "BRA":
            m = _BRA.search(txt)
            tgt = int(m.group(1), 16) if m else None
            if tgt is not None and tgt > addr and tgt in index:
                nxt = [k + 1, index[tgt]] if guarded else [index[tgt]]
            elif tgt is not None and (tgt <= addr or tgt not in index) and not guarded:
                nxt = [len(body)]
        c = max((memo[j] for j in nxt), key=lambda r: (r[0], r[1]))
        memo[k] = (c[0] + (1 if "GMMA" in op else 0), c[1] - 1, (op,) + c[2])
    return memo[0][0], memo[0][2]


@dataclass(frozen=True)
class LoopMix:
    """Per-thread SASS of one main-loop iteration (one K/V tile)."""

    variant: str
    block_n: int
    counts: dict                    # class -> instructions
    instructions: int
    registers: int
    opcodes: dict = field(default_factory=dict)   # opcode (no modifiers) -> count
    overlapped: bool | None = None  # Gluon: an MMA in flight while the next is issued


def kernel_call(variant: str, block_n: int, shape: dict | None = None,
                launch: dict | None = None):
    """The :class:`gpu.prefill.PrefillCall` of ``variant`` on ``meta`` tensors (no GPU, no data)."""
    import torch
    from sim.checks import check_sm_scale
    from . import common, prefill
    from .methods import KERNEL_PATHS
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    if block_n not in BLOCK_NS:
        raise ValueError(f"block_n: expected one of {BLOCK_NS}, got {block_n!r}")
    if common.interpreting():
        raise RuntimeError("gpu.sass compiles for a GPU target: unset TRITON_INTERPRET")
    method, over, lc = VARIANTS[variant]
    s = dict(SHAPE, **(shape or {}))
    spec = load_method(method, tiling__block_n=block_n, **over)
    KERNEL_PATHS.get(spec.method).check_spec(spec)
    B, H, Hk, L, D = s["batch"], s["q_heads"], s["kv_heads"], s["length"], s["head_dim"]
    q = torch.empty((B, H, L, D), dtype=torch.float16, device="meta")
    k = torch.empty((B, Hk, L, D), dtype=torch.float16, device="meta")
    v = torch.empty((B, Hk, L, D), dtype=torch.float16, device="meta")
    kw = dict(causal=False, sm_scale=check_sm_scale(None, D), out_dtype=torch.float16,
              launch=dict(lc, **(launch or {})))
    if spec.integer:
        # quantize_qkv's tiles: Q block_m, K/V block_n, V transposed
        tm = spec.tiling.block_m
        qq = common.empty_quantized(q, spec.q, tm)
        kq = common.empty_quantized(k, spec.k, block_n)
        vq = common.empty_quantized(v, spec.v, block_n, transpose=True)
        return prefill.prefill_call(qq, kq, vq, spec, **kw)
    return prefill.prefill_call(None, None, None, spec, q=q, k=k, v=v, **kw)


def compile_call(call, arch: str = DEFAULT_ARCH):
    """Compile a :class:`gpu.prefill.PrefillCall` for ``arch`` on the CPU, specialized by
    Triton's JIT binder exactly as a launch with these arguments is; returns the CompiledKernel."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    fn = call.fn()
    if call.kernel == "gluon":
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource  # noqa: F811
    tgt = target(arch)
    backend = make_backend(tgt)
    kwargs = dict(call.constexprs, **call.options)
    kwargs["debug"] = False
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*call.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=tgt,
                          options=options.__dict__)


def cuobjdump() -> str:
    """Path of the triton wheel's cuobjdump (``$TRITON_CUOBJDUMP_PATH`` overrides)."""
    from triton import knobs
    tool = knobs.nvidia.cuobjdump
    if tool is None:
        raise FileNotFoundError("cuobjdump: not found in the triton wheel "
                                "(triton/backends/nvidia/bin) nor $TRITON_CUOBJDUMP_PATH")
    return tool.path


def disassemble(cubin: bytes) -> tuple[str, int]:
    """``cuobjdump -sass`` of a cubin and its registers per thread (``-res-usage``)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.cubin"
        p.write_bytes(cubin)
        r = subprocess.run([cuobjdump(), "-sass", "-res-usage", str(p)], capture_output=True,
                           text=True, check=True)
    m = re.search(r"\bREG:(\d+)", r.stdout)
    if m is None:
        raise ValueError("cuobjdump: no REG: field in the -res-usage output")
    return r.stdout, int(m.group(1))


def gluon_launch(variant: str, block_n: int, arch: str = "hopper") -> dict:
    """The launch a Gluon variant is counted at: the arch's table entry for its method when it
    names the Gluon kernel, else the Gluon defaults (``{kernel, num_stages, gluon}``)."""
    from sim.arch import prefill_kernel_launch
    from .prefill_sm90 import DEFAULT_OPTIONS
    spec = load_method(GLUON_VARIANTS[variant][0], **GLUON_VARIANTS[variant][1])
    e = prefill_kernel_launch(arch, spec.method, SHAPE["head_dim"], block_n)
    if e["kernel"] == "gluon":
        return {"kernel": "gluon", "num_stages": e["num_stages"],
                "gluon": dict(DEFAULT_OPTIONS, **e["gluon"])}
    return {"kernel": "gluon", "num_stages": 4, "gluon": dict(DEFAULT_OPTIONS)}


def gluon_call(variant: str, block_n: int, shape: dict | None = None,
               launch: dict | None = None, causal: bool = False):
    """The :class:`gpu.common.PrefillCall` of a Gluon variant on ``meta`` tensors."""
    import torch
    from sim.checks import check_sm_scale
    from . import common
    from .methods import KERNEL_PATHS
    from .prefill_sm90 import sm90_call
    if variant not in GLUON_VARIANTS:
        raise ValueError(f"variant: expected one of {list(GLUON_VARIANTS)}, got {variant!r}")
    name, over = GLUON_VARIANTS[variant]
    spec = load_method(name, tiling__block_n=block_n, **over)
    KERNEL_PATHS.get(spec.method).check_spec(spec)
    lc = launch or gluon_launch(variant, block_n)
    s = dict(SHAPE, **(shape or {}))
    B, H, Hk, L, D = s["batch"], s["q_heads"], s["kv_heads"], s["length"], s["head_dim"]
    q = torch.empty((B, H, L, D), dtype=torch.float16, device="meta")
    k = torch.empty((B, Hk, L, D), dtype=torch.float16, device="meta")
    kw = dict(causal=causal, sm_scale=check_sm_scale(None, D), out_dtype=torch.float16,
              stages=lc["num_stages"], options=lc["gluon"])
    if spec.integer:
        qq = common.empty_quantized(q, spec.q, spec.tiling.block_m)
        kq = common.empty_quantized(k, spec.k, block_n)
        vq = common.empty_quantized(k, spec.v, block_n, transpose=True)
        return sm90_call(qq, kq, vq, spec, **kw)
    return sm90_call(None, None, None, spec, q=q, k=k, v=k, **kw)


def count(variant: str, block_n: int, shape: dict | None = None,
          launch: dict | None = None, arch: str = DEFAULT_ARCH) -> LoopMix:
    """Compile ``variant`` at ``block_n`` for ``arch`` and count its main loop by class (a
    Gluon variant: the hot path of its main loop per tile, :func:`hot_path`)."""
    if variant in GLUON_VARIANTS:
        call = gluon_call(variant, block_n, shape, launch)
        listing, regs = disassemble(compile_call(call, arch).asm["cubin"])
        integer = call.constexprs["INT8"]
        per_tile = (SHAPE["head_dim"] + block_n) // (32 if integer else 16)
        path, tiles, _ = hot_path(listing, per_tile)
        ops_ = collections.Counter(t.split(".")[0] for t in path)
        cls = collections.Counter()
        for op, n in ops_.items():
            cls[classify(op)] += n
        per = lambda n: n // tiles if n % tiles == 0 else n / tiles  # noqa: E731
        return LoopMix(variant, block_n, {c: per(int(cls.get(c, 0))) for c in CLASSES},
                       per(len(path)), regs,
                       {k: per(v) for k, v in sorted(ops_.items(), key=lambda x: (-x[1], x[0]))},
                       overlapped(path))
    call = kernel_call(variant, block_n, shape, launch)
    ck = compile_call(call, arch)
    listing, regs = disassemble(ck.asm["cubin"])
    body = main_loop(parse(listing))
    if not any(t.startswith(("HGMMA", "IGMMA", "HMMA", "IMMA")) for t in body):
        raise ValueError(f"sass: the first loop of {variant} bn{block_n} has no MMA: not the "
                         f"K/V loop")
    ops_ = collections.Counter(t.split()[0].split(".")[0] for t in body)
    cls = collections.Counter()
    for op, n in ops_.items():
        cls[classify(op)] += n
    return LoopMix(variant, block_n, {c: int(cls.get(c, 0)) for c in CLASSES}, len(body),
                   regs, dict(sorted(ops_.items(), key=lambda x: (-x[1], x[0]))))


def scores_per_thread(block_n: int, launch: dict) -> float:
    """Scores a thread holds per tile: block_m x block_n over the program's threads (the Gluon
    forward: 64 rows per warpgroup of 128 threads)."""
    if launch.get("kernel") == "gluon":
        return 64 * block_n / 128.0
    return launch["block_m"] * block_n / (32.0 * launch["num_warps"])


def variants_of(arch: str) -> list[str]:
    """The variants counted for ``arch``: the portable kernel's, and the Gluon kernel's where
    the arch compiles for sm_90."""
    return list(VARIANTS) + (list(GLUON_VARIANTS) if arch_info(arch).sm == 90 else [])


def git_revision(root: Path | None = None) -> str:
    """Short HEAD, with ``+dirty`` when gpu/ has uncommitted changes ($QSATTN_GIT_REVISION
    outside a checkout)."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gpu"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("QSATTN_GIT_REVISION", "unknown")


def tables(variants=None, arch: str = DEFAULT_ARCH) -> dict:
    """``{variant: {"method", "integer", "overrides", "launch", "tiles": {block_n: LoopMix}}}``."""
    out = {}
    for v in variants or variants_of(arch):
        if v in GLUON_VARIANTS:
            if arch_info(arch).sm != 90:
                raise ValueError(f"variants: {v!r} is the sm_90 Gluon kernel; arch {arch!r} "
                                 f"compiles for {arch_info(arch).target}")
            name, over = GLUON_VARIANTS[v]
            spec = load_method(name, **over)
            lc = gluon_launch(v, spec.tiling.block_n, arch)
            out[v] = {"method": spec.method, "spec": name, "integer": spec.integer,
                      "overrides": dict(over), "launch": lc, "kernel": "gluon",
                      "tiles": {bn: count(v, bn, launch=gluon_launch(v, bn, arch), arch=arch)
                                for bn in BLOCK_NS}}
            continue
        method, over, lc = VARIANTS[v] if v in VARIANTS else (None, None, None)
        if method is None:
            raise ValueError(f"variants: expected names from {variants_of(arch)}, got {v!r}")
        integer = load_method(method, **over).integer
        out[v] = {"method": method, "integer": integer, "overrides": dict(over),
                  "launch": dict(lc), "kernel": "triton",
                  "tiles": {bn: count(v, bn, arch=arch) for bn in BLOCK_NS}}
    return out


def to_yaml(tabs: dict, command: str, arch: str = DEFAULT_ARCH) -> str:
    """The data file :mod:`sim.cost.mixes` reads (``configs/kernels/<arch>/mixes.yaml``)."""
    import triton
    import yaml
    doc = {
        "source": {
            "command": command,
            "git_revision": git_revision(),
            "triton": triton.__version__,
            "target": arch_info(arch).target,
            "kernel": "per variant: triton = gpu/kernels/flash_fwd.py::attn_fwd_kernel, main "
                      "(unmasked) K/V loop, per iteration; gluon = gpu/kernels/flash_fwd_sm90.py"
                      "::attn_fwd_sm90_kernel, the steady-state path of the consumers' main loop "
                      "per tile (gpu.sass.hot_path)",
            "shape": dict(SHAPE),
            "options": "enable_fp_fusion=False, specialization of gpu.prefill.prefill_call / "
                       "gpu.prefill_sm90.sm90_call",
            "structure": dict(STRUCTURE),
        },
        "variants": {
            v: {"method": t["method"], **({"spec": t["spec"]} if "spec" in t else {}),
                "integer": t["integer"], "overrides": t["overrides"], "kernel": t["kernel"],
                "launch": t["launch"],
                "tiles": {bn: {"scores_per_thread": scores_per_thread(bn, t["launch"]),
                               "instructions": m.instructions, "registers": m.registers,
                               "counts": m.counts,
                               **({} if m.overlapped is None else
                                  {"overlapped": m.overlapped})}
                          for bn, m in t["tiles"].items()}}
            for v, t in tabs.items()},
    }
    head = (f"# SASS instruction mixes of the prefill kernel per thread per K/V tile "
            f"({arch_info(arch).target}).\n# Generated by `{command}`; read by sim/cost/mixes.py. "
            f"Do not edit.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def format_tables(tabs: dict) -> str:
    """Markdown: one row per (variant, block_n) with the class counts."""
    rows = ["| variant | block_n | scores/thread | regs | " + " | ".join(CLASSES)
            + " | total |", "|---" * (5 + len(CLASSES)) + "|"]
    for v, t in tabs.items():
        for bn, m in t["tiles"].items():
            rows.append(f"| {v} | {bn} | {scores_per_thread(bn, t['launch']):g} | "
                        f"{m.registers} | " + " | ".join(str(m.counts[c]) for c in CLASSES)
                        + f" | {m.instructions} |")
    return "\n".join(rows)


def diff_committed(tabs: dict, path: Path | None = None) -> list[str]:
    """Differences between fresh ``tables()`` and the committed data file (empty: equal)."""
    import yaml
    path = table() if path is None else path
    if not Path(path).is_file():
        return [f"{path}: missing"]
    want = yaml.safe_load(Path(path).read_text()).get("variants", {})
    out = []
    for v, t in tabs.items():
        w = want.get(v)
        if w is None:
            out.append(f"{v}: not in {path}")
            continue
        if "kernel" not in w:
            w = dict(w, kernel="triton")
        for key in ("method", "integer", "overrides", "launch", "kernel"):
            now = t.get(key, "triton" if key == "kernel" else None)
            if w.get(key) != now:
                out.append(f"{v} {key}: committed {w.get(key)!r}, now {now!r}")
        for bn, m in t["tiles"].items():
            wt = w.get("tiles", {}).get(bn, {})
            now = {"counts": m.counts, "instructions": m.instructions, "registers": m.registers}
            if m.overlapped is not None:
                now["overlapped"] = m.overlapped
            for key, val in now.items():
                if wt.get(key) != val:
                    out.append(f"{v} bn{bn} {key}: committed {wt.get(key)!r}, now {val!r}")
    return out


# ---- decode kernels (optional; ``python -m gpu.sass --decode``) ----------------------------
# The decode point of reports/validation (B=8, Hq=32, D=128, L=32768); Hkv 32 (G=1: one row per
# program) and 8 (G=4: rows padded to 16). Printed for sim/cost/kernels.py's *_SASS tables.
DECODE_SHAPE = {"batch": 8, "q_heads": 32, "length": 32768, "head_dim": 128}
LDG_CLUSTER_GAP = 16     # LDGs closer than this (instructions) are in flight together


def compile_jit(fn, args, kwargs, arch: str = DEFAULT_ARCH):
    """Compile any @triton.jit ``fn`` for ``arch`` on the CPU with Triton's binder, specialized
    as ``fn[grid](*args, **kwargs)`` would be (tensors may live on ``meta``); returns the
    CompiledKernel (``asm["cubin"]``, ``metadata``)."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    if not hasattr(fn, "signature") or not hasattr(fn, "params"):
        raise TypeError(f"fn: expected a @triton.jit function, got {type(fn).__name__}")
    tgt = target(arch)
    backend = make_backend(tgt)
    kwargs = dict(kwargs, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=tgt,
                          options=options.__dict__)


def _compile_fn(fn, args, kwargs, arch: str = DEFAULT_ARCH):
    """:func:`compile_jit`, disassembled: (listing, registers, shared)."""
    ck = compile_jit(fn, args, kwargs, arch)
    listing, regs = disassemble(ck.asm["cubin"])
    return listing, regs, int(ck.metadata.shared)


def loops(ins: list[tuple[int, str]]) -> list[list[str]]:
    """Bodies (target..branch) of every backward branch, in program order."""
    out = []
    for addr, txt in ins:
        if txt.split()[0].split(".")[0] == "BRA":
            m = _BRA.search(txt)
            if m and int(m.group(1), 16) < addr:
                lo = int(m.group(1), 16)
                out.append([t for a, t in ins if lo <= a <= addr])
    return out


def load_rounds(body: list[str], gap: int = LDG_CLUSTER_GAP) -> int:
    """Clusters of global loads (LDG) in a loop body: consecutive LDGs at most ``gap``
    instructions apart are one cluster, i.e. one load round trip of the loop's chain."""
    at = [i for i, t in enumerate(body) if t.startswith("LDG")]
    return sum(1 for j, i in enumerate(at) if j == 0 or i - at[j - 1] > gap)


def _mix(body: list[str]) -> dict:
    cls = collections.Counter(classify(t.split()[0]) for t in body)
    return {c: int(cls[c]) for c in CLASSES if cls.get(c)}


def decode_tables(kv_heads=(32, 8), arch: str = DEFAULT_ARCH) -> dict:
    """Per-thread SASS of our decode kernels (one K/V tile / key chunk per loop iteration):
    ``{name: {"instr": {class: n}, "regs", "smem", "rounds", "loop"}}``. Whole-kernel counts for
    the loop-free label_score_kernel; loop and straight-line counts of the top-k select."""
    import torch
    from sim.spec import load_method as _lm
    from .kernels import decode as kd
    from .kernels import labels as kl
    from .kernels import turbo_decode as td
    from .common import interpreting, p_constants, sas_constants
    if interpreting():
        raise RuntimeError("gpu.sass compiles for a GPU target: unset TRITON_INTERPRET")
    cf = functools.partial(_compile_fn, arch=arch)
    m = lambda *shape, dt=torch.float32: torch.empty(shape, dtype=dt, device="meta")
    B, Hq, L, D = (DECODE_SHAPE[k] for k in ("batch", "q_heads", "length", "head_dim"))
    out = {}

    def put(name, listing, regs, smem, pick):
        ins = parse(listing)
        body = pick(ins)
        out[name] = {"instr": _mix(body), "regs": regs, "smem": smem,
                     "rounds": load_rounds(body), "loop": len(body),
                     "waits": sum(1 for t in body if t.startswith("DEPBAR"))}

    biggest = lambda ins: max(loops(ins), key=len)
    whole = lambda ins: [t for _, t in ins]
    # flash_decode_kernel (CUDA-core; GATHER: double_sparse's launch={"gather_dot": False})
    for gather in (False, True):
        Hkv, bn, S = 8, 64, 3
        q, k = m(B, Hq, 1, D, dt=torch.float16), m(B, Hkv, L, D, dt=torch.float16)
        ix = m(B * Hq, L // 16, dt=torch.int32) if gather else m(B * Hq, dt=torch.int32)
        args = (q, k, k, ix, m(B * Hq, dt=torch.int32), m(B * Hq, S), m(B * Hq, S),
                m(B * Hq, S, D), 0.1, Hq, Hq // Hkv, S, bn * 171, q.stride(0), q.stride(1),
                k.stride(0), k.stride(1), k.stride(2), k.stride(0), k.stride(1), k.stride(2),
                ix.stride(0) if gather else 0)
        put(f"flash_decode gather={gather}", *cf(
            kd.flash_decode_kernel, args, dict(D=D, BN=bn, GATHER=gather, P_BF16=False,
                                               num_warps=4, num_stages=3,
                                               enable_fp_fusion=False)), biggest)
    # flash_decode_gather_kernel (double_sparse default): tl.dot, pipelined gathers
    Hkv, bn, S = 8, 64, 3
    q, k = m(B, Hq, 1, D, dt=torch.float16), m(B, Hkv, L, D, dt=torch.float16)
    ix = m(B * Hq, L // 16, dt=torch.int32)
    put("flash_decode_gather_dot", *cf(
        kd.flash_decode_gather_kernel,
        (q, k, k, ix, m(B * Hq, S), m(B * Hq, S), m(B * Hq, S, D), 0.1, Hq, Hq // Hkv, L // 16,
         S, bn * 11, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
         k.stride(0), k.stride(1), k.stride(2), ix.stride(0)),
        dict(D=D, BN=bn, P_BF16=False, DOT_F32=False, num_warps=4, num_stages=3,
             enable_fp_fusion=False)), biggest)
    # flash_decode_group_kernel (fp16_flash default): one program per KV head and split, the G
    # query heads padded to BG >= 16 rows, tl.dot on tensor cores; K/V tiles by cp.async
    # (LDGSTS, counted as LDG clusters by load_rounds) num_stages - 1 tiles ahead
    for Hkv in kv_heads:
        G, bn, S = Hq // Hkv, 64, 3
        BG = max(16, 1 << (G - 1).bit_length())
        q, k = m(B, Hq, 1, D, dt=torch.float16), m(B, Hkv, L, D, dt=torch.float16)
        args = (q, k, k, m(B * Hq, S), m(B * Hq, S), m(B * Hq, S, D), 0.1, Hq, Hkv, G, L, S,
                bn * 171, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                k.stride(0), k.stride(1), k.stride(2))
        put(f"flash_decode_group G={G} BG={BG}", *cf(
            kd.flash_decode_group_kernel, args, dict(D=D, BN=bn, BG=BG, P_BF16=False,
                                                     DOT_F32=False, num_warps=4, num_stages=3,
                                                     enable_fp_fusion=False)), biggest)
    # turbo passes (gpu.kernels.turbo_decode), default clamp, per G and stored width: the
    # flushed-tile loop (one block of buffer_tokens keys per iteration)
    spec = _lm("turbo")
    kvc, p = spec.kvcache, spec.p
    nb = kvc.buffer_tokens
    sas = dict(sas_constants(spec.softmax))
    sas.pop("SAS")
    pconst = p_constants(p)
    kpc, vpc = kvc.k_groups == "per_channel", kvc.v_groups == "per_channel"
    NT = L // nb

    def grid(pc, size, bits):
        if pc:
            return m(B, Hkv, L // size, D, dt=torch.float16)
        return m(B, Hkv, L, D // size, dt=torch.uint8)

    for Hkv in kv_heads:
        G = Hq // Hkv
        BG = 1 << (G - 1).bit_length()
        splits = max(1, min(NT, -(-4 * 132 // (B * Hkv))))
        tps = -(-NT // splits)
        for bits in (kvc.high_bits, kvc.low_bits):
            ng = Hkv // 2
            kc = m(B, ng, L, D * bits // 8, dt=torch.uint8)
            ks, vs = grid(kpc, kvc.k_group_size, bits), grid(vpc, kvc.v_group_size, bits)
            fl = m(B, Hkv, NT, dt=torch.uint8)
            kb, ks8 = m(B, Hkv, nb, D, dt=torch.int8), m(B, Hkv, NT + 1)
            sout, tmax, tsi = m(B, Hq, NT * nb), m(B, Hq, NT), m(1, dt=torch.int32)
            heads = m(ng, dt=torch.int32)
            put(f"turbo scores BG={BG} bits={bits}", *cf(
                td.turbo_scores_kernel,
                (m(B, Hq, D, dt=torch.int8), m(B, Hq), kc, ks, ks, fl, kb, ks8, sout, tmax, tsi,
                 heads, 0.1, Hq, Hkv, G, ng, L, NT, NT - 1, L, ks[0, 0].numel(), NT, NT + 1,
                 NT * nb, tps),
                dict(D=D, BN=nb, BG=BG, BITS=bits, K_PC=kpc, KG=kvc.k_group_size, TRACE=False,
                     INTERP=False, num_warps=4, num_stages=3, enable_fp_fusion=False)), biggest)
            put(f"turbo pv BG={BG} bits={bits}", *cf(
                td.turbo_pv_kernel,
                (sout, tmax, kc, vs, vs, fl, kb, ks8, m(B, Hq, splits, D), m(B, Hq, splits),
                 m(B, Hq, splits), tsi, tsi, heads, Hq, Hkv, G, ng, L, NT, NT - 1, L,
                 vs[0, 0].numel(), NT, NT + 1, NT * nb, tps, splits),
                dict(D=D, BN=nb, BG=BG, BITS=bits, V_PC=vpc, VG=kvc.v_group_size, **pconst,
                     **sas, EXACT_FMA_F64=False, TMCHUNK=64, TRACE=False, INTERP=False,
                     num_warps=4, num_stages=3, enable_fp_fusion=False)), biggest)
    # double_sparse: label scores (no loop: whole kernel, 512 tokens per program), per G
    r = 32
    for Hkv in kv_heads:
        G = Hq // Hkv
        q = m(B, Hq, 1, D, dt=torch.float16)
        put(f"label_score G={G}", *cf(
            kl.label_score_kernel,
            (q, m(Hkv, r, dt=torch.int32), m(B, Hkv, L, r // 8, dt=torch.int32),
             m(B, Hkv, L, dt=torch.float16), m(B, Hkv, L, dt=torch.int32), m(1),
             m(B, Hq, L, dt=torch.int32), L, L, Hq, Hkv, G, 0, 0, q.stride(0), q.stride(1),
             q.stride(3)),
            dict(R=r, BLOCK=512, BITS=4, BG=1 << (G - 1).bit_length(), WRITE_APPROX=False,
                 num_warps=4, enable_fp_fusion=False)), whole)
    # top-k select, one program (8 warps) per row: the collect pass and the compaction pass
    # per 2048-key chunk, and the straight-line rest (sample and candidate order statistics)
    kk = L // 16
    lst, regs, smem = cf(
        kl.topk_select_kernel, (m(B * Hq, L, dt=torch.int32), m(B * Hq, kk, dt=torch.int32),
                                m(B * Hq, 4096, dt=torch.int64), L, kk, kk),
        dict(NSAMPLE=4096, CAP=4096, CH=2048, num_warps=8))
    ins = parse(lst)
    lps = loops(ins)
    big = [b_ for b_ in lps if len(b_) > 150]
    straight = len(ins) - sum(len(b_) for b_ in lps)
    out["topk_select"] = {"collect": _mix(big[0]), "compact": _mix(big[-1]),
                          "fixed": straight, "regs": regs, "smem": smem,
                          "rounds": max(load_rounds(big[0]), load_rounds(big[-1])),
                          "loop": len(big[0]) + len(big[-1])}
    return out


def decode_data(tabs: dict) -> dict:
    """The ``decode.yaml`` structure (sim.cost.kernels.decode_sass) of :func:`decode_tables`:
    flash-decode (plain / CUDA-core gather / tensor-core gather), the grouped kernel at G = 4
    (BG = 16, 3 cp.async stages), the turbo passes by BG and bits, label scores by G, and the
    top-k select's two passes and straight-line part."""
    keep = ("instr", "regs", "smem", "rounds")
    pick = lambda t, *extra: {k: t[k] for k in keep + extra}  # noqa: E731
    out = {"flash_decode": pick(tabs["flash_decode gather=False"]),
           "flash_decode_gather": pick(tabs["flash_decode gather=True"]),
           "flash_decode_gather_dot": dict(pick(tabs["flash_decode_gather_dot"], "waits"),
                                           stages=3),
           "flash_decode_group_bg16": dict(pick(tabs["flash_decode_group G=4 BG=16"], "waits"),
                                           stages=3)}
    for name, t in tabs.items():
        mm = re.fullmatch(r"turbo (scores|pv) BG=(\d+) bits=(\d+)", name)
        if mm:
            out[f"turbo_{mm[1]}_bg{mm[2]}_bits{mm[3]}"] = pick(t)
        mm = re.fullmatch(r"label_score G=(\d+)", name)
        if mm:
            out[f"label_score_g{mm[1]}"] = pick(t)
    out["topk_select"] = dict(tabs["topk_select"])
    return out


def diff_decode_committed(tabs: dict, path: Path) -> list[str]:
    """Differences between fresh ``decode_data(decode_tables())`` and the committed
    ``decode.yaml`` (empty: equal): missing, extra or changed tables."""
    import yaml
    if not Path(path).is_file():
        return [f"{path}: missing"]
    want = yaml.safe_load(Path(path).read_text())
    want.pop("source", None)
    now = decode_data(tabs)
    out = [f"{k}: not in {path}" for k in now if k not in want]
    out += [f"{k}: in {path}, no longer counted" for k in want if k not in now]
    out += [f"{k}: committed {want[k]!r}, now {now[k]!r}" for k in now
            if k in want and want[k] != now[k]]
    return out


def decode_yaml(tabs: dict, command: str, arch: str) -> str:
    import triton
    import yaml
    doc = {"source": {"command": command, "git_revision": git_revision(),
                      "triton": triton.__version__, "target": arch_info(arch).target,
                      "shape": dict(DECODE_SHAPE)},
           **decode_data(tabs)}
    head = (f"# SASS tables of the decode kernels ({arch_info(arch).target}), read by sim/cost "
            f"(sim.cost.kernels.decode_sass).\n# Generated by `{command}`. Do not edit.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.sass", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default=DEFAULT_ARCH,
                    help=f"architecture of configs/kernels/archs.yaml (default {DEFAULT_ARCH})")
    ap.add_argument("--variant", action="append", choices=list(VARIANTS) + list(GLUON_VARIANTS),
                    help="variant to count (repeatable; default all)")
    ap.add_argument("--write", action="store_true",
                    help="rewrite configs/kernels/<arch>/mixes.yaml (decode.yaml with --decode)")
    ap.add_argument("--opcodes", action="store_true", help="also print per-opcode counts")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when the counts differ from the arch's mixes.yaml "
                         "(decode.yaml with --decode)")
    ap.add_argument("--decode", action="store_true",
                    help="count the decode kernels' loops (decode.yaml) instead")
    a = ap.parse_args(argv)
    arch_info(a.arch)  # a clear error for an unknown arch
    cmd = "python -m gpu.sass --arch " + a.arch
    if a.decode:
        tabs = decode_tables(arch=a.arch)
        for name, t in tabs.items():
            print(f"{name}: {t}")
        if a.write:
            path = data_path(a.arch, "decode")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(decode_yaml(tabs, cmd + " --decode --write", a.arch))
            print(f"wrote {path}")
        if a.check:
            path = data_path(a.arch, "decode")
            diff = diff_decode_committed(tabs, path)
            for d in diff:
                print("DIFF", d)
            if diff:
                print(f"decode SASS tables differ from the committed ones: run "
                      f"`{cmd} --decode --write`")
                return 1
            print(f"decode tables equal {path}")
        return 0
    if a.write and a.variant and set(a.variant) != set(variants_of(a.arch)):
        ap.error("--write rewrites every variant's table: drop --variant")
    tabs = tables(a.variant, a.arch)
    print(format_tables(tabs))
    if a.opcodes:
        for v, t in tabs.items():
            for bn, m in t["tiles"].items():
                print(f"{v} bn{bn}: {m.opcodes}")
    path = table(a.arch)
    if a.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_yaml(tabs, cmd + " --write", a.arch))
        print(f"wrote {path}")
    if a.check:
        diff = diff_committed(tabs, path)
        for d in diff:
            print("DIFF", d)
        if diff:
            print(f"SASS counts differ from the committed table: run `{cmd} --write`")
            return 1
        print(f"counts equal {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
