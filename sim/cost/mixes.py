"""Instruction mixes of the prefill kernels, counted in their SASS: one table per kernel variant.

A table holds, for the main (unmasked) K/V loop of ``gpu/kernels/flash_fwd.py``
``attn_fwd_kernel``, the SASS instructions one thread executes per K/V tile, by class:

* ``fp32``  FADD/FMUL/FFMA/IMAD (FMA pipe, ``fp32`` rate)
* ``fp16x2`` HFMA2/HMUL2/HADD2 incl. ``HADD2.F32`` conversions (FMA pipe, ``fp16x2`` rate)
* ``int32`` ALU pipe: FMNMX, FSEL, FSETP, I2FP, F2FP, PRMT, ISETP, IADD3, LOP3, SEL, VIMNMX,
  LEA, SHF, PLOP3, MOV, VIADD (``int32`` rate)
* ``sfu``   MUFU (XU, ``sfu`` rate); ``cvt``: F2I, I2F, F2F, FRND (XU, ``cvt`` rate)
* ``other`` everything that only takes an issue slot here: HGMMA/IGMMA, LDGSTS, LDS, SHFL,
  BAR, DEPBAR, WARPGROUP, uniform-datapath U* ops, BRA

at two tiles: ``block_n`` = 64 and 128 keys, each warpgroup (4 warps) owning 64 query rows,
head dim 128 (so 32 and 64 scores and 64 accumulator elements per thread per tile). Counts
for other tiles interpolate linearly in scores per thread (exact at both points; clamped at 0
outside), and the accumulator part (``acc``, per accumulator element per tile, from the kernel
source) scales with the head dim. Counts per score fall with ``block_n`` because the row
reductions, the accumulator rescale and the loop/copy overhead are per tile.

Source of every table: ``configs/kernels/<arch>/mixes.yaml``, written by ``python -m gpu.sass
--arch ARCH --write`` (it records the git revision, triton version, shape and launch): the kernel
compiled on the CPU by triton for the arch's target (sm_90 Hopper, sm_80 Ampere, ...) with the
argument set of the real launch (``gpu.prefill.prefill_call``, specialized by Triton's JIT
binder; ``enable_fp_fusion=False``),
disassembled by the wheel's ``cuobjdump -sass``; counts are the opcodes between the first
backward branch's target and the branch (:mod:`gpu.sass` lists the opcode classes; the fp16x2
compares HSET2/HSETP2 count as ``int32``, the ALU). Launch: fp16 ``block_m=128, num_warps=8,
num_stages=3``; integer ``block_m=64, num_warps=4, num_stages=3`` (reports/bench/h100_sxm/prefill.json
``launch_best``); both give each warpgroup 64 query rows. Current tables: git 699a641 plus the
uncommitted XU-free kernels (i2f_exact, packed fp16x2 PQUANT asm, ``P_MODE``/``USE_ASM``);
the previous tables (git a37a004, I2FP/F2I conversions) are in git history. When the kernels
change, rerun ``python -m gpu.sass --arch ARCH --write``; tests/gpu/test_sass.py fails until
then. The ``acc`` parts are read off the kernel source, not counted. A method's cost path names
the variant that prices it (``sim.cost.methods``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..arch import data_path, kernel_data

CLASSES = ("fp32", "fp16x2", "int32", "sfu", "cvt", "other")
REF_ACC = 64.0          # accumulator elements per thread at the reference tiles (64 rows x 128 / 128)


@dataclass(frozen=True)
class Mix:
    """SASS counts per thread per K/V tile at 32 and 64 scores per thread (see module doc)."""

    name: str
    at32: dict
    at64: dict
    acc: dict           # per accumulator element per tile (part of at32/at64 at REF_ACC)
    source: str

    def per_score(self, block_n: int = 128) -> float:
        """All instructions per score (thread instructions / scores per thread) at ``block_n``
        keys per tile, head dim 128: what the report quotes."""
        scores = block_n / 2.0
        return sum(self.per_thread_tile(scores, REF_ACC).values()) / scores

    def per_thread_tile(self, scores: float, acc: float) -> dict:
        """Thread instructions per K/V tile for ``scores`` score and ``acc`` accumulator
        elements per thread."""
        t = (scores - 32.0) / 32.0
        da = acc - REF_ACC
        out = {}
        for k in CLASSES:
            a, b = self.at32.get(k, 0.0), self.at64.get(k, 0.0)
            out[k] = max(0.0, a + (b - a) * t + self.acc.get(k, 0.0) * da)
        return out


# Per accumulator element per tile, from flash_fwd.py. Float path: acc * alpha (FMUL; "+ PV"
# folds into the HGMMA accumulator). Integer path: acc * alpha + i2f_exact(O) * vf = FMUL,
# IADD3 (O + 0x4B400000), FADD (- 1.5 * 2^23), FMUL (* vf), FADD.
_ACC_FLOAT = {"fp32": 1.0}
_ACC_INT = {"fp32": 4.0, "int32": 1.0}


def parse_mixes(doc: dict, where: str) -> dict:
    """``{variant: Mix}`` of a mixes data file (``configs/kernels/<arch>/mixes.yaml``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("variants"), dict):
        raise ValueError(f"{where}: no 'variants' mapping")
    src = doc.get("source", {})
    out = {}
    for v, t in doc["variants"].items():
        tiles = {int(k): x for k, x in t["tiles"].items()}
        for bn in (64, 128):
            if bn not in tiles or float(tiles[bn]["scores_per_thread"]) != bn / 2:
                raise ValueError(f"{where}: variant {v!r} needs block_n {bn} at {bn // 2} "
                                 f"scores per thread (64 query rows per warpgroup)")
        at32 = {c: float(n) for c, n in tiles[64]["counts"].items() if n}
        at64 = {c: float(n) for c, n in tiles[128]["counts"].items() if n}
        bad = (set(at32) | set(at64)) - set(CLASSES)
        if bad:
            raise ValueError(f"{where}: variant {v!r} has unknown classes {sorted(bad)}")
        if not isinstance(t.get("integer"), bool):
            raise ValueError(f"{where}: variant {v!r} needs 'integer: true|false' (integer "
                             f"operands: the accumulator update of the integer path)")
        acc = _ACC_INT if t["integer"] else _ACC_FLOAT
        out[v] = Mix(v, at32=at32, at64=at64, acc=dict(acc),
                     source=(f"SASS of attn_fwd_kernel main loop, git {src.get('git_revision')}, "
                             f"triton {src.get('triton')}, {src.get('target')}; block_n 64 / 128: "
                             f"{tiles[64]['instructions']} / {tiles[128]['instructions']} "
                             f"instructions per thread per tile ({where})"))
    return out


@functools.lru_cache(maxsize=8)
def mixes(arch: str) -> dict:
    """The counted prefill mixes of ``arch`` ``{variant: Mix}`` (``configs/kernels/<arch>/
    mixes.yaml``; a missing file names the command that writes it)."""
    return parse_mixes(kernel_data(arch, "mixes"), str(data_path(arch, "mixes")))
