"""The SM microbenchmarks compile for sm_90 and sm_80 on the CPU and their timed loops hold the
intended opcodes (gpu.microbench_sm.BENCHES ``expect``); the SASS checker rejects a loop that
compiled to something else; the launchers refuse without a GPU.

The compiles run in two subprocesses (one per architecture, side by side) without
``TRITON_INTERPRET`` (tests/gpu/conftest.py sets it for this directory): 21 + 20 small kernels,
about 20 s of CPU on one core each (less with a warm Triton cache).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

from gpu import microbench_sm as sm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_every_microbenchmark_loop_holds_its_opcodes_on_sm90_and_sm80(sass_tools):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {arch: subprocess.Popen([sys.executable, "-m", "gpu.microbench_sm", "--verify",
                                     "--json", "--arch", arch], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for arch in ("hopper", "ampere")}
    recs = []
    for arch, p in procs.items():
        out, err = p.communicate(timeout=300)
        print(out, err[-2000:])
        recs += [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    got = {(r["arch"], r["bench"]): r for r in recs}
    for name, b in sm.BENCHES.items():
        for arch in b.archs:
            r = got.get((arch, name))
            assert r is not None, f"{name} on {arch} was not compiled"
            assert r["ok"], r
            assert r["families"] == b.expected(arch), r
    # the opcodes the fields are named after
    op = {k: got[k]["opcodes"] for k in got}
    assert op["hopper", "lat_f2i"].get("F2I.NTZ") == sm.UNROLL
    assert op["hopper", "lat_i2f"].get("I2FP.F32.S32") == sm.UNROLL    # ALU on sm_90
    assert op["ampere", "lat_i2f"].get("I2F") == sm.UNROLL             # XU on sm_80
    assert op["hopper", "lat_mufu"].get("MUFU.EX2") == sm.UNROLL
    assert op["hopper", "ldg"].get("LDG.E.64.STRONG.GPU") == sm.LDG_UNROLL
    assert op["hopper", "wgmma_fp16"].get("HGMMA.64x128x16.F32", 0) >= 1
    assert op["hopper", "wgmma_int8"].get("IGMMA.64x128x32.S8.S8", 0) >= 1
    assert op["ampere", "wgmma_fp16"].get("HMMA.16816.F32", 0) >= 16


def _listing(body: list[str]) -> str:
    lines = [f"        /*{16 * i:04x}*/                   {t} ;" for i, t in enumerate(body)]
    lines.append(f"        /*{16 * len(body):04x}*/                   BRA 0x0 ;")
    return "\n".join(lines) + "\n"


def test_verify_listing_accepts_the_intended_loop_and_rejects_others():
    n = sm.UNROLL
    ok = _listing(["FFMA R1, R1, R2, R3"] * n + ["ISETP.NE.U32.AND P0, PT, R4, RZ, PT"])
    v = sm.verify_listing(ok, "lat_ffma", "hopper")
    assert v.unroll == 1 and v.families == {"FFMA": n} and v.classes["fp32"] == n
    twice = _listing(["FFMA R1, R1, R2, R3"] * (2 * n))
    assert sm.verify_listing(twice, "lat_ffma", "hopper").unroll == 2
    with pytest.raises(ValueError, match="lat_ffma.*FFMA"):
        sm.verify_listing(_listing(["FFMA R1, R1, R2, R3"] * (n - 1)), "lat_ffma", "hopper")
    # ptxas moving half the subtractions to the FMA pipe is a failed benchmark
    alu = ["IADD3 R1, R2, -R1, RZ", "LOP3.LUT R1, R1, R3, RZ, 0x3c, !PT"] * (n // 2)
    assert sm.verify_listing(_listing(alu), "lat_alu", "ampere").families == \
        {"IADD3": n // 2, "LOP3": n // 2}
    bad = ["IMAD.IADD R1, R2, 0x1, -R1", "LOP3.LUT R1, R1, R3, RZ, 0x3c, !PT"] * (n // 2)
    with pytest.raises(ValueError, match="lat_alu.*IADD3"):
        sm.verify_listing(_listing(bad), "lat_alu", "ampere")
    i2f = _listing(["I2FP.F32.S32 R1, R1"] * n)
    assert sm.verify_listing(i2f, "lat_i2f", "hopper").families == {"I2F|I2FP": n}
    with pytest.raises(ValueError, match="no loop"):
        sm.verify_listing("        /*0000*/                   EXIT ;\n", "lds", "hopper")
    with pytest.raises(ValueError, match="no expectation"):
        sm.verify_listing(ok, "wgmma_fp16_wait", "ampere")


def test_builders_and_launchers_refuse_bad_input_and_missing_gpu():
    with pytest.raises(ValueError, match="chains"):
        sm.lds_asm(3)
    with pytest.raises(ValueError, match="steps"):
        sm.chain_ptx(sm.CHAINS["ffma"], 0)
    with pytest.raises(ValueError, match="bench"):
        sm.verify_compile("nonsense", "hopper")
    with pytest.raises(ValueError, match="arch"):
        sm.verify_compile("wgmma_fp16_wait", "ampere")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            sm.measure_sm(sm_count=132, l2_bytes=50 << 20)
    body = sm.chain_ptx(sm.CHAINS["ffma"])
    assert body.startswith('.pragma "nounroll";') and body.count("fma.rn.f32") == sm.UNROLL
    assert sm.lds_asm(4).count("ld.shared.u32") == sm.UNROLL
    assert sm.bar_asm().count("bar.sync 0;") == sm.UNROLL
