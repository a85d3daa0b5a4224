"""The committed SASS mix tables equal a fresh sm_90 compile of today's prefill kernel.

A kernel change without ``python -m gpu.sass --write`` fails here. The compile runs in a
subprocess without ``TRITON_INTERPRET`` (tests/gpu/conftest.py sets it for this directory, and
interpreted kernels cannot be compiled): 4 variants x block_n 64, 128, about 20 s cold on one
core (the Triton cache makes reruns faster).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

from gpu import sass  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("table", ["mixes", "decode"])
@pytest.mark.parametrize("arch", ["hopper", "ampere", "ada"])
def test_counts_equal_committed_table(arch, table, sass_tools):
    """Every architecture's committed SASS tables equal a fresh compile of today's kernels
    (a decode table older than the decode kernels' names once went unnoticed on Ada)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    extra = ["--decode"] if table == "decode" else []
    r = subprocess.run([sys.executable, "-m", "gpu.sass", "--arch", arch, *extra, "--check"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("decode tables equal" if table == "decode" else "counts equal") in r.stdout


def test_diff_decode_committed_names_missing_extra_and_changed_tables(tmp_path, monkeypatch):
    import yaml
    from sim.arch import data_path
    committed = yaml.safe_load(data_path("hopper", "decode").read_text())
    committed.pop("source")
    now = {k: v for k, v in committed.items() if k != "topk_select"}
    now["flash_decode"] = dict(now["flash_decode"], regs=now["flash_decode"]["regs"] + 1)
    now["label_score_g8"] = now["label_score_g4"]
    monkeypatch.setattr(sass, "decode_data", lambda tabs: now)
    diff = sass.diff_decode_committed({}, data_path("hopper", "decode"))
    assert any(d.startswith("label_score_g8: not in") for d in diff)
    assert any(d.startswith("topk_select: in") for d in diff)
    assert any(d.startswith("flash_decode: committed") for d in diff)
    assert len(diff) == 3
    monkeypatch.setattr(sass, "decode_data", lambda tabs: committed)
    assert sass.diff_decode_committed({}, data_path("hopper", "decode")) == []
    gone = tmp_path / "none.yaml"
    assert sass.diff_decode_committed({}, gone) == [f"{gone}: missing"]


def test_diff_committed_reports_a_change():
    import yaml
    want = yaml.safe_load(sass.table().read_text())["variants"]["int8"]
    m = want["tiles"][128]
    counts = dict(m["counts"], fp32=m["counts"]["fp32"] + 1)
    fake = {"int8": {"method": want["method"], "integer": want["integer"],
                     "overrides": want["overrides"], "launch": want["launch"],
                     "tiles": {128: sass.LoopMix("int8", 128, counts, m["instructions"] + 1,
                                                 m["registers"])}}}
    diff = sass.diff_committed(fake)
    assert len(diff) == 2 and "int8 bn128 counts" in diff[0] and "instructions" in diff[1]
    same = {"int8": dict(fake["int8"], tiles={128: sass.LoopMix(
        "int8", 128, m["counts"], m["instructions"], m["registers"])})}
    assert sass.diff_committed(same) == []


def test_sim_cost_mixes_read_the_table():
    import yaml
    from sim.cost import mixes
    t = yaml.safe_load(sass.table().read_text())["variants"]
    mx = mixes.mixes("hopper")
    assert mx["int8"].at64 == {c: float(n) for c, n in t["int8"]["tiles"][128]["counts"].items()
                               if n}
    assert mx["turbo"].at32 == {c: float(n) for c, n in t["turbo"]["tiles"][64]["counts"].items()
                                if n}


def test_classify_and_loop():
    assert [sass.classify(o) for o in ("FFMA.FTZ", "HADD2.F32", "HSET2.BF.GT.AND", "MUFU.EX2",
                                        "F2I.FLOOR", "IGMMA.64x64x32", "IMAD.MOV.U32")] == \
        ["fp32", "fp16x2", "int32", "sfu", "cvt", "other", "fp32"]
    listing = ("        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
               "        /*0010*/                   FADD R2, R2, R3 ;\n"
               "        /*0020*/              @!P0 BRA 0x10 ;\n"
               "        /*0030*/                   EXIT ;\n")
    assert sass.main_loop(sass.parse(listing)) == ["FADD R2, R2, R3", "BRA 0x10"]
    with pytest.raises(ValueError, match="no backward branch"):
        sass.main_loop(sass.parse(listing.replace("0x10", "0x40")))
    with pytest.raises(ValueError, match="opcode"):
        sass.classify("")
    with pytest.raises(ValueError, match="variant"):
        sass.kernel_call("fp8", 64)
    with pytest.raises(ValueError, match="block_n"):
        sass.kernel_call("int8", 32)
