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

Source of every table: the kernel at git a37a004 compiled on the CPU by triton 3.6.0 for
sm_90 (``triton.compile`` with a GPUTarget("cuda", 90, 128), the launch's specialization:
unit strides constexpr, others divisible by 16, ``enable_fp_fusion=False``), disassembled by
the wheel's ``cuobjdump -sass``; counts are the opcodes between the first backward branch's
target and the branch. Launch: fp16 ``block_m=128, num_warps=8, num_stages=3``; integer
``block_m=64, num_warps=4, num_stages=3`` (reports/bench/prefill.json ``launch_best``).
Registers: 255 (181 for fp16 at block_n=64) per thread. When the kernels change, recompile
and replace the table (the brief's SASS section in reports/bench/ is the same count).
"""
from __future__ import annotations

from dataclasses import dataclass

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


_SRC = ("SASS of attn_fwd_kernel main loop (sim/cost/mixes.py module doc), "
        "block_n 64 / 128: {} / {} instructions per thread per tile")

# flash_fwd.py float path: s = S * qk_scale (FMUL), row max (FMNMX + 2 SHFL/row), x = s - m
# (FADD), exp2 (MUFU.EX2, ex2.approx.ftz), row sum (FADD), p -> f16 (F2FP pack), alpha (MUFU
# per row), acc * alpha (FMUL per acc element; "+ PV" folds into the HGMMA accumulator).
FP16 = Mix("fp16_flash",
           at32={"fp32": 181, "int32": 76, "sfu": 34, "other": 89},
           at64={"fp32": 283, "int32": 144, "sfu": 66, "other": 105},
           acc={"fp32": 1.0}, source=_SRC.format(380, 598))

# Integer path, exp2: I2FP S, (S * qf) * ks (2 FMUL), FMNMX, FADD x - m, MUFU.EX2, FADD row sum,
# P code: F2FP p -> f16, HMUL2 * 127, HADD2 + 0.5, F2I.F16.TRUNC (XU), PRMT pack to int8;
# acc = acc * alpha + f32(O) * vf: I2FP + 2 FMUL + FADD per acc element.
INT8 = Mix("int8_flash",
           at32={"fp32": 341, "fp16x2": 32, "int32": 271, "sfu": 34, "cvt": 32, "other": 123},
           at64={"fp32": 489, "fp16x2": 64, "int32": 427, "sfu": 66, "cvt": 64, "other": 120},
           acc={"fp32": 3.0, "int32": 1.0}, source=_SRC.format(833, 1230))

# turbo with the exp2 override (per-block Q/K/V scales, else as INT8).
TURBO_EXP2 = Mix("turbo_exp2",
                 at32={"fp32": 348, "fp16x2": 32, "int32": 289, "sfu": 34, "cvt": 32, "other": 174},
                 at64={"fp32": 490, "fp16x2": 64, "int32": 429, "sfu": 66, "cvt": 64, "other": 127},
                 acc={"fp32": 3.0, "int32": 1.0}, source=_SRC.format(909, 1240))

# turbo SAS (sas.py): threshold FSETP/FSEL, floor twice (FRND.FLOOR + F2I.FLOOR, XU), frac
# FADD, F2FP to f16, 3 Horner HFMA2 (packed pairs), HADD2.F32 back to f32, 2^-n from exponent
# bits (VIMNMX, IMAD.SHL), FMUL poly * 2^-n, F2FP/HADD2.F32 round to f16, LUT-limit ISETP/FSEL;
# alpha by SAS per row; no MUFU. P codes and accumulator as INT8.
TURBO_SAS = Mix("turbo",
                at32={"fp32": 494, "fp16x2": 149, "int32": 569, "cvt": 100, "other": 174},
                at64={"fp32": 754, "fp16x2": 293, "int32": 890, "cvt": 196, "other": 126},
                acc={"fp32": 3.0, "int32": 1.0}, source=_SRC.format(1486, 2259))


def mix_for(kernel: str, exp: str) -> "Mix | None":
    """The counted mix of a prefill kernel (None: no SASS-counted kernel; the per-element
    tables of ``kernels`` apply)."""
    if kernel == "fp16_flash":
        return FP16
    if kernel in ("int8_flash", "turbo"):
        if exp == "sas":
            return TURBO_SAS
        return INT8 if kernel == "int8_flash" else TURBO_EXP2
    return None
