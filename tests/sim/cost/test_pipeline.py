"""The SASS reader, the SM pipeline model and the block scheduler on listings with known answers.

Listings are written here instruction by instruction with their control codes (the encoding of
sim.cost.sass's docstring), so every expected clock count follows from the model's rules by
hand; the last test reads a real compiled kernel (tests/sim/cost/test_calibrated.py prices it).
"""
import math

import pytest

from sim.cost import grid, pipeline as P, sass as S


def hi_word(stall=1, yield_=False, wbar=None, rbar=None, wait=0, reuse=0):
    return (stall << 41) | (int(yield_) << 45) | ((7 if wbar is None else wbar) << 46) | \
        ((7 if rbar is None else rbar) << 49) | (wait << 52) | (reuse << 58)


def listing(*instrs):
    """cuobjdump-style text: (text, control kwargs) per instruction, 16 bytes apart."""
    out = ["\tcode for sm_90", "\t\tFunction : k"]
    for i, (text, ctl) in enumerate(instrs):
        out.append(f"        /*{16 * i:04x}*/                   {text} ;"
                   f"                  /* 0x{0:016x} */")
        out.append(f"                                                     /* 0x{hi_word(**ctl):016x} */")
    return "\n".join(out) + "\n"


PARAMS = P.SMParams(fp32=128, fp16x2=128, int32=64, sfu=16, cvt=16,
                    tc={"fp16": 4096, "int8": 8192}, smem_bytes=128,
                    lat=dict(mufu=20, cvt=16, lds=30, const=10, s2r=20, gmem=500, store=4,
                             wgmma=40, bar=24, other=20))


def run(text, trips=(), ctas=1, warps=1, params=PARAMS):
    ins = S.parse(text)
    regs = S.structure(ins)
    dec = P.decode(ins, params)
    return P.simulate(dec, S.flatten(regs, trips), ctas=ctas, warps=warps)


def test_control_codes_round_trip():
    text = listing(("LDG.E R2, desc[UR4][R2.64]", dict(stall=3, wbar=2, rbar=5, wait=0b1001,
                                                       reuse=0b0101, yield_=True)),
                   ("@!P0 FFMA R4, R2, R2, R4", dict(stall=4, wait=0b100)),
                   ("EXIT", {}))
    a, b, _ = S.parse(text)
    assert (a.stall, a.yield_, a.wbar, a.rbar, a.wait, a.reuse) == (3, True, 2, 5, 9, 5)
    assert (b.guard, b.opcode, b.base, b.wbar, b.rbar, b.wait) == ("@!P0", "FFMA", "FFMA",
                                                                  None, None, 4)


def test_parse_refuses_listing_without_encodings():
    with pytest.raises(ValueError, match="encoding words"):
        S.parse("        /*0000*/                   EXIT ;\n")
    with pytest.raises(ValueError, match="no SASS"):
        S.parse("nothing here")


def test_structure_nested_loops_and_subroutines():
    text = listing(("MOV R1, RZ", {}),                        # 0
                   ("IADD3 R2, R2, 0x1, RZ", {}),              # 1 outer head
                   ("FADD R3, R3, R3", {}),                    # 2 inner head
                   ("@P0 BRA 0x20", {}),                       # 3 inner back edge
                   ("FADD R4, R4, R4", {}),                    # 4
                   ("@P1 BRA 0x10", {}),                       # 5 outer back edge
                   ("@!P2 BRA 0x80", {}),                      # 6 forward branch
                   ("CALL.REL.NOINC 0x90", {}),                # 7
                   ("EXIT", {}),                               # 8
                   ("RET.REL.NODEC R20 0x0", {}),              # 9 subroutine
                   ("BRA 0xa0", {}))                           # 10 trailing self-loop
    ins = S.parse(text)
    regs = S.structure(ins)
    assert S.body_end(ins) == 9
    assert isinstance(regs[0], S.Straight) and (regs[0].start, regs[0].stop) == (0, 1)
    outer = regs[1]
    assert (outer.start, outer.stop, outer.index) == (1, 6, 0)
    inner = outer.children[1]
    assert (inner.start, inner.stop, inner.index) == (2, 4, 1)
    assert regs[2] == S.Straight(6, 9)
    # outer twice, inner three times per entry
    seq = S.flatten(regs, {0: 2, 1: 3})
    assert seq == [0] + ([1] + [2, 3] * 3 + [4, 5]) * 2 + [6, 7, 8]
    with pytest.raises(ValueError, match=r"trips\[1\]"):
        S.flatten(regs, {0: 1, 1: -1})


def test_issue_and_pipe_throughput():
    n = 64
    ffma = listing(*[("FFMA R1, R2, R3, R4", {})] * n, ("EXIT", {}))
    # one warp: one FFMA per clock (FMA pipe: 32 lanes per sub-partition at 128/SM)
    assert run(ffma)["cycles"] == pytest.approx(n + 1, abs=2)
    # two warps on one sub-partition (warps 0 and 4 of an 8-warp CTA): issue-bound, 2n
    assert run(ffma, warps=8)["cycles"] == pytest.approx(2 * n + 1, abs=2)
    # ALU at 64/SM: a warp instruction holds the pipe 2 clocks
    alu = listing(*[("IADD3 R1, R2, R3, RZ", {})] * n, ("EXIT", {}))
    assert run(alu)["cycles"] == pytest.approx(2 * n, abs=2)
    # XU conversions at 16/SM: 8 clocks each
    cvt = listing(*[("F2I.S32 R1, R2", {})] * n, ("EXIT", {}))
    assert run(cvt)["cycles"] == pytest.approx(8 * n, abs=20)
    # FFMA and IADD3 interleaved: different pipes, one issue per clock
    mix = listing(*[("FFMA R1, R2, R3, R4", {}), ("IADD3 R5, R6, R7, RZ", {})] * n,
                  ("EXIT", {}))
    assert run(mix)["cycles"] == pytest.approx(2 * n, abs=2)


def test_stall_counts_and_scoreboards():
    # a dependent chain the compiler spaced with stall 4: 4 clocks per instruction
    chain = listing(*[("FFMA R1, R1, R1, R1", dict(stall=4))] * 10, ("EXIT", {}))
    assert run(chain)["cycles"] == pytest.approx(40, abs=2)
    # MUFU results consumed through scoreboard 0: one latency per link
    mufu = listing(*[("MUFU.EX2 R1, R1", dict(wbar=0, wait=0b1))] * 10, ("EXIT", {}))
    assert run(mufu)["cycles"] == pytest.approx(10 * 20, abs=10)
    # without the waits they pipeline at the XU rate (8 clocks per warp instruction)
    free = listing(*[("MUFU.EX2 R1, R2", dict(wbar=0))] * 10, ("EXIT", {}))
    assert run(free)["cycles"] == pytest.approx(9 * 8 + 20, abs=4)


def test_shared_memory_wavefronts_are_per_sm():
    n = 16
    lds = listing(*[("LDS.128 R4, [R2]", {})] * n, ("EXIT", {}))
    one = run(lds)["cycles"]
    four = run(lds, warps=4)["cycles"]          # 4 sub-partitions, one SM-wide smem pipe
    assert one == pytest.approx(4 * n + 30, abs=3)
    assert four == pytest.approx(4 * 4 * n + 30, abs=6)


def test_wgmma_occupies_the_tensor_core_and_depbar_waits():
    # 4 warps of one warpgroup, each issuing two fp16 HGMMA 64x128x16 then waiting:
    # each sub-partition's tensor core: 2 x 2*64*128*16/4096 = 128 clocks, + 40 latency
    text = listing(("WARPGROUP.ARRIVE", {}),
                   ("HGMMA.64x128x16.F32 R24, gdesc[UR4], R24", {}),
                   ("HGMMA.64x128x16.F32 R24, gdesc[UR8], R24, gsb0", {}),
                   ("WARPGROUP.DEPBAR.LE gsb0, 0x0", {}),
                   ("FADD R24, R24, R24", {}),
                   ("EXIT", {}))
    assert run(text, warps=4)["cycles"] == pytest.approx(128 + 40 + 4, abs=4)
    # int8 IGMMA 64x128x32: same clocks at twice the ops
    text8 = text.replace("HGMMA.64x128x16.F32", "IGMMA.64x128x32.S8.S8")
    assert run(text8, warps=4)["cycles"] == pytest.approx(128 + 40 + 4, abs=4)
    with pytest.raises(ValueError, match="no fp8 tensor-core rate"):
        P.decode(S.parse(text.replace("HGMMA.64x128x16.F32", "QGMMA.64x128x32.F32.E4M3")),
                 PARAMS)


def test_async_copies_and_their_groups():
    text = listing(("LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64]", {}),
                   ("LDGDEPBAR", {}),
                   ("LDGSTS.E.BYPASS.128 [R1+0x800], desc[UR4][R2.64+0x100]", {}),
                   ("LDGDEPBAR", {}),
                   ("DEPBAR.LE SB0, 0x1", {}),        # the first group only
                   ("FADD R3, R3, R3", {}),
                   ("DEPBAR.LE SB0, 0x0", {}),
                   ("EXIT", {}))
    r = run(text)
    assert r["cycles"] == pytest.approx(2 + 500 + 3, abs=3)


def test_barrier_waits_for_the_slowest_warp():
    # warp 0 runs 40 dependent FFMAs (stall 4) before the barrier, the others none
    body = []
    for w in range(1):
        body += [("FFMA R1, R1, R1, R1", dict(stall=4))] * 40
    text = listing(("ISETP.NE.AND P0, PT, R0, RZ, PT", {}),
                   ("@P0 BRA 0x290", {}), *body,
                   ("BAR.SYNC.DEFER_BLOCKING 0x0", {}),
                   ("FADD R2, R2, R2", {}),
                   ("EXIT", {}))
    # the model issues every instruction for every warp (no divergence): all warps do the
    # FFMAs; the barrier releases 24 clocks after the last arrival
    r = run(text, warps=4)
    assert r["cycles"] == pytest.approx(2 + 160 + 24 + 2, abs=4)
    # a named barrier expecting more warps than exist never releases: a clear error
    bad = listing(("BAR.SYNC 0x1, 0x100", {}), ("EXIT", {}))
    with pytest.raises(RuntimeError, match="never finished"):
        run(bad, warps=4)


def test_schedule_uniform_tail_and_imbalance():
    cyc = lambda k, item: 100.0 * k * item          # noqa: E731 - k CTAs share: k times slower
    # 10 equal CTAs, 4 SMs, 1 slot: 3 rounds
    r = grid.schedule([1] * 10, 4, 1, cyc)
    assert (r["cycles"], r["waves"]) == (300.0, 3)
    # 2 slots, perfect sharing: the same as one slot at half the SMs' rounds
    r2 = grid.schedule([1] * 16, 4, 2, cyc)
    assert r2["cycles"] == pytest.approx(400.0)
    # longest first packs better than shortest first (list scheduling)
    lf = grid.schedule([4, 3, 2, 1, 1, 1, 1, 1], 2, 1, cyc)["cycles"]
    sf = grid.schedule([1, 1, 1, 1, 1, 2, 3, 4], 2, 1, cyc)["cycles"]
    assert lf == 700.0 and sf == 800.0
    # processor sharing: a CTA left alone speeds up (cycles(1) = 100 vs cycles(2) = 200)
    ps = grid.schedule([1, 3], 1, 2, lambda k, it: (100.0 if k == 1 else 200.0) * it)
    # both run at the shared rate until the short one ends at 200; the long one has 2/3 left
    assert ps["cycles"] == pytest.approx(200.0 + (1 - 200.0 / 600.0) * 300.0)
    with pytest.raises(ValueError, match="sms and slots"):
        grid.schedule([1], 0, 1, cyc)


def test_params_refuse_bad_values():
    with pytest.raises(ValueError, match="SMParams.int32"):
        P.SMParams(fp32=128, fp16x2=128, int32=0, sfu=16, cvt=16, tc={}, smem_bytes=128,
                   lat=PARAMS.lat)
    with pytest.raises(ValueError, match="missing"):
        P.SMParams(fp32=128, fp16x2=128, int32=64, sfu=16, cvt=16, tc={}, smem_bytes=128,
                   lat={"mufu": 1})
    assert math.isfinite(PARAMS.lat["gmem"])
