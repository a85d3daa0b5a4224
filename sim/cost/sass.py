"""SASS listings as data: instructions with their control codes, opcode classes, program structure.

Input: ``cuobjdump -sass`` text of one kernel (what :mod:`gpu.sass` disassembles from a cubin
compiled on the CPU). Every instruction of sm_70 and later is 128 bits; cuobjdump prints the two
64-bit words as comments, and the compiler's scheduling decisions live in the high word's top
bits (Jia et al., "Dissecting the NVIDIA Volta GPU Architecture via Microbenchmarking",
arXiv 1804.06826, Sec. 2.1; the same layout on Turing, Ampere, Ada and Hopper)::

    bits 105-108  stall     cycles before this warp's next instruction may issue
    bit  109      yield
    bits 110-112  wbar      scoreboard set when the result is written (7: none)
    bits 113-115  rbar      scoreboard set when the sources are read (7: none)
    bits 116-121  wait      mask of scoreboards to wait on before issuing
    bits 122-125  reuse     operand reuse cache flags

Fixed-latency dependencies are resolved by the stall counts, variable-latency ones (memory,
MUFU, XU conversions, shuffles, S2R) by the scoreboards: the listing carries the compiler's own
dependency analysis, which :mod:`sim.cost.pipeline` replays. This module needs no GPU and no
triton; it is text processing.

Structure (:func:`structure`): the kernel body is the code from the entry to the last ``EXIT``
that precedes the subroutines (``CALL`` targets, e.g. the IEEE division slow path); loops are
the backward branches, nested when one body contains another; a loop is a :class:`Loop` and the
code between loops a :class:`Straight` region, in program order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Instr", "parse", "classify", "pipe", "structure", "Straight", "Loop", "CLASSES",
           "mma_shape", "flatten"]

# Mix classes (sim.cost.mixes.CLASSES): the cost model's per-pipe instruction counts.
CLASSES = ("fp32", "fp16x2", "int32", "sfu", "cvt", "other")

# Opcode (first dot-separated part) -> mix class. Pipes as ncu reports them on sm_90: FMA (heavy
# and lite: FP32, IMAD), FMA fp16x2 (HFMA2/HMUL2/HADD2), ALU (integer/logic/compare/select/
# min-max incl. the fp16x2 compares HSET2/HSETP2/HMNMX2, I2FP, F2FP), XU (MUFU: sfu; F2I/I2F/
# F2F/FRND: cvt). Everything else only takes an issue slot in the mix model.
_CLASS = {
    **dict.fromkeys(("FADD", "FMUL", "FFMA", "IMAD", "FMUL2", "FADD2", "FFMA2", "IMUL"), "fp32"),
    **dict.fromkeys(("HFMA2", "HMUL2", "HADD2"), "fp16x2"),
    **dict.fromkeys(("HSET2", "HSETP2", "HMNMX2", "FMNMX", "FSEL", "FSETP", "FSET", "I2FP",
                     "F2FP", "PRMT", "ISETP", "IADD3", "IADD", "LOP3", "SEL", "VIMNMX", "IMNMX",
                     "LEA", "SHF", "PLOP3", "MOV", "VIADD", "IABS", "P2R", "R2P", "FCHK",
                     "SGXT", "BMSK", "IMNMX", "LOP", "SHL", "SHR"), "int32"),
    "MUFU": "sfu",
    **dict.fromkeys(("F2I", "I2F", "F2F", "FRND", "POPC", "FLO", "BREV"), "cvt"),
}

# Opcode -> execution resource of the SM model (sim.cost.pipeline): "fma", "alu", "xu"
# (per sub-partition pipes with a throughput), "tensor" (per sub-partition tensor core),
# "smem" (shared-memory wavefronts, per SM), "gmem" (global memory: latency, bandwidth at the
# grid level), "issue" (an issue slot only: branches, barriers, uniform datapath, constants).
_PIPE = {**{op: "fma" for op, c in _CLASS.items() if c in ("fp32", "fp16x2")},
         **{op: "alu" for op, c in _CLASS.items() if c == "int32"},
         **{op: "xu" for op, c in _CLASS.items() if c in ("sfu", "cvt")},
         **dict.fromkeys(("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA", "BMMA", "DMMA"), "tensor"),
         **dict.fromkeys(("LDS", "STS", "LDSM", "STSM", "SHFL", "ATOMS", "LD", "ST"), "smem"),
         **dict.fromkeys(("LDG", "STG", "LDGSTS", "ATOMG", "RED", "ATOM", "UTMALDG",
                          "UTMASTG", "UBLKCP", "LDL", "STL"), "gmem")}

_INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*(?:/\*\s*0x([0-9a-f]{16})\s*\*/)?")
_HI = re.compile(r"^\s*/\*\s*0x([0-9a-f]{16})\s*\*/\s*$")
_GUARD = re.compile(r"^@!?U?P[T0-9]+\s+")
_BRA = re.compile(r"\bBRA\s+(?:`\(.*?\)\s*)?(?:!?U?P[T0-9]+,\s*)?0x([0-9a-f]+)")
_CALL = re.compile(r"\bCALL\.\S*\s+(?:`\(.*?\)\s*)?0x([0-9a-f]+)")


def classify(opcode: str) -> str:
    """Mix class of a SASS opcode (``"FFMA.FTZ"`` -> ``"fp32"``); unknown opcodes are ``other``.

    >>> classify("HFMA2.MMA"), classify("F2I.S8"), classify("HGMMA.64x128x16.F32")
    ('fp16x2', 'cvt', 'other')
    """
    if not isinstance(opcode, str) or not opcode:
        raise ValueError(f"opcode: expected a non-empty SASS opcode string, got {opcode!r}")
    return _CLASS.get(opcode.split(".")[0], "other")


def pipe(opcode: str) -> str:
    """Resource of the SM model that executes ``opcode`` (see ``_PIPE``); ``issue`` otherwise.

    >>> pipe("IMAD.WIDE"), pipe("LDSM.16.M88.4"), pipe("UIADD3")
    ('fma', 'smem', 'issue')
    """
    return _PIPE.get(opcode.split(".")[0], "issue")


_MMA = re.compile(r"^[HIQ]GMMA\.(\d+)x(\d+)x(\d+)")
_MMA_SYNC = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32), "8816": (8, 8, 16),
             "8832": (8, 8, 32), "16864": (16, 8, 64), "884": (8, 8, 4)}


def mma_shape(opcode: str) -> tuple[int, int, int, int]:
    """(m, n, k, threads issuing it) of a tensor-core instruction: ``HGMMA.64x128x16`` is one
    warpgroup instruction (128 threads), ``HMMA.16816`` one warp instruction (32).

    >>> mma_shape("IGMMA.64x128x32.S8.S8"), mma_shape("HMMA.16816.F32")
    ((64, 128, 32, 128), (16, 8, 16, 32))
    """
    m = _MMA.match(opcode)
    if m:
        return int(m[1]), int(m[2]), int(m[3]), 128
    parts = opcode.split(".")
    if parts[0] in ("HMMA", "IMMA", "BMMA", "DMMA") and len(parts) > 1 and parts[1] in _MMA_SYNC:
        return (*_MMA_SYNC[parts[1]], 32)
    raise ValueError(f"opcode: {opcode!r} is not a tensor-core MMA with a known shape")


@dataclass(frozen=True, slots=True)
class Instr:
    """One SASS instruction: address, text (operands included, guard stripped), guard, and the
    control code of the module docstring (``wbar``/``rbar`` None when unset)."""

    addr: int
    text: str
    guard: str
    stall: int
    yield_: bool
    wbar: int | None
    rbar: int | None
    wait: int
    reuse: int

    @property
    def opcode(self) -> str:
        """Mnemonic with modifiers, e.g. ``HGMMA.64x128x16.F32``."""
        return self.text.split(None, 1)[0]

    @property
    def base(self) -> str:
        """Mnemonic without modifiers, e.g. ``HGMMA``."""
        return self.text.split(None, 1)[0].split(".")[0]

    @property
    def operands(self) -> str:
        parts = self.text.split(None, 1)
        return parts[1] if len(parts) > 1 else ""


def _control(hi: int) -> tuple:
    wb, rb = (hi >> 46) & 7, (hi >> 49) & 7
    return ((hi >> 41) & 0xF, bool((hi >> 45) & 1), None if wb == 7 else wb,
            None if rb == 7 else rb, (hi >> 52) & 0x3F, (hi >> 58) & 0xF)


def parse(listing: str) -> list[Instr]:
    """Instructions of a ``cuobjdump -sass`` listing with encodings (one kernel).

    Raises ValueError naming the line when an instruction has no high encoding word (a listing
    printed without encodings has no control codes)."""
    if not isinstance(listing, str):
        raise TypeError(f"listing: expected cuobjdump -sass text, got {type(listing).__name__}")
    lines = listing.splitlines()
    out: list[Instr] = []
    i = 0
    while i < len(lines):
        m = _INSN.match(lines[i])
        if not m:
            i += 1
            continue
        h = _HI.match(lines[i + 1]) if i + 1 < len(lines) else None
        if m.group(3) is None or h is None:
            raise ValueError(f"listing line {i + 1}: instruction {m.group(2)!r} without its two "
                             f"encoding words (use cuobjdump -sass, which prints them)")
        text = m.group(2).strip()
        g = _GUARD.match(text)
        guard = g.group(0).strip() if g else ""
        out.append(Instr(int(m.group(1), 16), text[g.end():] if g else text, guard,
                         *_control(int(h.group(1), 16))))
        i += 2
    if not out:
        raise ValueError("listing: no SASS instructions found")
    return out


@dataclass(frozen=True)
class Straight:
    """Code run once per entry: instructions ``[start, stop)`` of the body."""

    start: int
    stop: int


@dataclass(frozen=True)
class Loop:
    """A loop: instructions ``[start, stop)`` (the last is the backward branch), its nested
    regions in program order, and its index in program order among the counted loops
    (``index``; -1 for a spin loop: a retry of at most 4 instructions around a register-pool
    allocation or an mbarrier try-wait, run once on the path the model prices)."""

    start: int
    stop: int
    index: int
    children: tuple

    @property
    def spin(self) -> bool:
        return self.index < 0


def _target(ins: Instr, pat) -> int | None:
    m = pat.search(ins.text)
    return int(m.group(1), 16) if m else None


def body_end(instrs: list[Instr]) -> int:
    """Index one past the kernel body: the last ``EXIT`` before the first subroutine entry
    (``CALL`` target) or the trailing self-branch. ``CALL.REL.NOINC`` pushes no return address:
    it is a jump (ptxas uses it, guarded, as a loop exit), not a subroutine call."""
    at = {x.addr: i for i, x in enumerate(instrs)}
    entries = [at[t] for x in instrs if x.base == "CALL" and "NOINC" not in x.opcode
               for t in [_target(x, _CALL)] if t in at]
    limit = min(entries) if entries else len(instrs)
    exits = [i for i in range(limit) if instrs[i].base == "EXIT"]
    if not exits:
        raise ValueError("listing: no EXIT in the kernel body")
    return exits[-1] + 1


_SPIN = ("USETMAXREG", "SYNCS")


def partition_split(instrs: list[Instr]) -> tuple[int, int] | None:
    """For a warp-specialized kernel (Triton/Gluon ``warp_specialize``: the worker warps give
    registers back with ``USETMAXREG.DEALLOC`` and run their partitions from a dispatch loop),
    ``(b, t)``: the entry block ends with the conditional branch at index ``b`` that sends the
    default partition's warps to index ``t``, past the worker code. None for other kernels."""
    if not any(x.opcode.startswith("USETMAXREG.DEALLOC") for x in instrs):
        return None
    at = {x.addr: i for i, x in enumerate(instrs)}
    for i, x in enumerate(instrs[:32]):
        if x.base == "BRA" and x.guard:
            t = _target(x, _BRA)
            if t is not None and t in at and at[t] > i and any(
                    y.opcode.startswith("USETMAXREG.DEALLOC") for y in instrs[i + 1:at[t]]):
                return i, at[t]
    raise ValueError("listing: warp-specialized kernel without the default partition's branch "
                     "in its entry block")


def structure(instrs: list[Instr], partition: str | None = None) -> tuple:
    """Regions of the kernel body in program order (see the module docstring): a tuple of
    :class:`Straight` and :class:`Loop`, loops numbered in program order of their heads
    (spin loops: -1). ``partition="default"``: of a warp-specialized kernel
    (:func:`partition_split`), the path of the default partition's warps: the entry block,
    then the default partition's code."""
    end = body_end(instrs)
    at = {x.addr: i for i, x in enumerate(instrs)}
    lo = 0
    head = None
    if partition is not None:
        if partition != "default":
            raise ValueError(f"partition: expected None or 'default', got {partition!r}")
        split = partition_split(instrs)
        if split is None:
            raise ValueError("partition='default': the kernel is not warp-specialized")
        head = Straight(0, split[0] + 1)
        lo = split[1]
    spans = []
    for i in range(lo, end):
        x = instrs[i]
        if x.base == "BRA":
            t = _target(x, _BRA)
            if t is not None and t <= x.addr and t in at and at[t] < i:
                spans.append((at[t], i + 1))
    # a loop is a maximal span for its head (the outermost back edge to one head)
    by_head: dict[int, int] = {}
    for s, e in spans:
        by_head[s] = max(by_head.get(s, e), e)
    spans = sorted(by_head.items())
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        if s2 < e1 < e2:
            raise ValueError(f"listing: loops at {instrs[s1].addr:#x} and {instrs[s2].addr:#x} "
                             f"overlap without nesting (irreducible control flow)")
    def is_spin(s, e):
        return e - s <= 4 and any(instrs[j].base in _SPIN for j in range(s, e))

    counter = iter(range(len(spans)))
    index = {s: (-1 if is_spin(s, e) else next(counter)) for s, e in spans}

    def build(lo: int, hi: int) -> tuple:
        out, i = [], lo
        inner = [(s, e) for s, e in spans if lo <= s and e <= hi and (s, e) != (lo, hi)]
        top = [(s, e) for s, e in inner
               if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2 in inner)]
        for s, e in top:
            if s > i:
                out.append(Straight(i, s))
            out.append(Loop(s, e, index[s], build_loop(s, e)))
            i = e
        if i < hi:
            out.append(Straight(i, hi))
        return tuple(out)

    def build_loop(s: int, e: int) -> tuple:
        return build(s, e) if any(s <= s2 and e2 <= e and (s2, e2) != (s, e)
                                  for s2, e2 in spans) else (Straight(s, e),)

    regions = build(lo, end)
    return regions if head is None else (head,) + regions


def loops_of(regions: tuple) -> list[Loop]:
    """Every counted loop (spin loops left out) of a structure, in program order (nested loops
    after their parent)."""
    out = []
    for r in regions:
        if isinstance(r, Loop):
            if not r.spin:
                out.append(r)
            out.extend(loops_of(r.children))
    return out


def flatten(regions: tuple, trips) -> list[int]:
    """The instruction indices one warp executes: straight regions once, loop ``i`` (program
    order index) ``trips[i]`` times per entry. ``trips``: sequence or mapping index -> count."""
    seq: list[int] = []

    def walk(rs):
        for r in rs:
            if isinstance(r, Straight):
                seq.extend(range(r.start, r.stop))
            elif r.spin:
                walk(r.children)
            else:
                n = trips[r.index]
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise ValueError(f"trips[{r.index}]: expected a count >= 0, got {n!r}")
                for _ in range(n):
                    walk(r.children)
    walk(regions)
    return seq
