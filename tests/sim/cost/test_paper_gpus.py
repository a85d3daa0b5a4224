"""Issue 16 item 7: the consumer GPU descriptions, FP32-accumulate tensor rates, the Ada data,
and INT-FlashAttention's kernels priced from their shipped counted records (no source needed).
"""
import pytest

from sim.arch import arch, kernel_data
from sim.cost import Shape, counted as C, foreign as F, load_hardware, pipeline as P, predict, \
    predict_foreign, sass as S
from sim.schema import ConfigError
from sim.spec import config_dir

NEW = ("rtx3090", "a6000", "rtx4090", "l40s")
# datasheet/whitepaper peaks (dense TFLOPS/TOPS at the boost clock): FP16 with FP16 accumulate,
# FP16 with FP32 accumulate, INT8, FP32 (GA102 / Ada whitepapers, A6000 / L40S datasheets)
PEAKS = {"rtx3090": (142, 71, 284, 35.6), "a6000": (154.8, 154.8, 309.7, 38.7),
         "rtx4090": (330.3, 165.2, 660.6, 82.6), "l40s": (362.05, 362.05, 733, 91.6)}


@pytest.mark.parametrize("name", NEW)
def test_new_gpus_load_with_sources_and_match_their_datasheets(name):
    hw = load_hardware(name)
    assert hw.arch == ("ampere" if name in ("rtx3090", "a6000") else "ada")
    for field, q in hw.fields.items():
        assert q.source.strip() and q.kind == "spec", field
    n = hw.v("sm_count") * hw.clock_hz() / 1e12
    fp16, f32acc, int8, fp32 = PEAKS[name]
    assert hw.v("tc_fp16") * n == pytest.approx(fp16, rel=0.015)
    assert hw.tc_f32acc("fp16") * n == pytest.approx(f32acc, rel=0.015)
    assert hw.v("tc_int8") * n == pytest.approx(int8, rel=0.015)
    assert 2 * hw.v("fp32") * n == pytest.approx(fp32, rel=0.015)
    assert hw.v("smem_per_block") == 99 and hw.v("max_threads_per_sm") == 1536
    # GeForce: FP32-accumulate MMAs at half rate, a quarter of INT8; A6000 / L40S: full rate
    geforce = name.startswith("rtx")
    assert hw.v("tc_int8") / hw.tc_f32acc("fp16") == (4 if geforce else 2)
    assert (hw.tc_fp8 is not None) == (hw.arch == "ada")


def test_f32acc_rate_is_checked_against_its_dtype(tmp_path):
    text = (config_dir() / "hardware" / "rtx3090.yaml").read_text()
    p = tmp_path / "x.yaml"
    p.write_text(text.replace("tc_fp16_f32acc: {value: 512", "tc_fp16_f32acc: {value: 2048"))
    with pytest.raises(ConfigError, match="tc_fp16_f32acc"):
        load_hardware(p)
    p.write_text(text + 'tc_fp8_f32acc: {value: 1, unit: flop/clk/SM, source: "x", kind: spec}\n')
    with pytest.raises(ConfigError, match="tc_fp8_f32acc"):          # Ampere has no FP8
        load_hardware(p)


def test_mma_accumulator_selects_the_rate():
    assert P._tc_dtype("HMMA.16816.F32") == "fp16_f32acc"
    assert P._tc_dtype("HMMA.16816.F16") == "fp16"
    assert P._tc_dtype("HMMA.16816.F32.BF16") == "bf16"
    assert P._tc_dtype("HMMA.16832.F32.E4M3.E4M3") == "fp8_f32acc"
    assert P._tc_dtype("IMMA.16832.S8.S8") == "int8"
    assert P.tc_rate({"fp16": 1024}, "fp16_f32acc") == 1024          # no own rate: fp16's
    assert P.tc_rate({"fp16": 1024, "fp16_f32acc": 512}, "fp16_f32acc") == 512
    assert P.tc_rate({"fp16": 1024}, "fp8_f32acc") is None
    # the tiled tier prices the cost paths' FP32-accumulate FP16 MMAs at the halved rate
    s = Shape(4, 32, 32, 4096, 4096, 64)
    g, a = predict("fp16_flash", s, "rtx3090"), predict("fp16_flash", s, "a6000")
    assert g.bound == a.bound == "tensor"
    assert g.breakdown["tensor"] > 2 * a.breakdown["tensor"]      # half the rate per SM


def test_loop_exit_by_call_noinc_is_a_jump():
    """ptxas exits some loops with a guarded CALL.REL.NOINC past the back edge (no return
    address pushed): the body still ends at the EXIT after it."""
    from tests.sim.cost.test_pipeline import listing
    text = listing(("MOV R0, RZ", {}), ("IADD3 R0, R0, 0x1, RZ", {}),
                   ("@P0 CALL.REL.NOINC 0x40", {}), ("BRA 0x10", {}), ("EXIT", {}),
                   ("BRA 0x50", {}))
    regions = S.structure(S.parse(text))
    loops = S.loops_of(regions)
    assert len(loops) == 1 and (loops[0].start, loops[0].stop) == (1, 4)
    assert regions[-1] == S.Straight(4, 5)


def test_ada_data():
    assert arch("ada").target == "sm_89"
    for name in ("launch", "mixes", "decode", "pipeline"):
        assert kernel_data("ada", name)
    assert kernel_data("ada", "mixes")["source"]["target"] == "sm_89"
    # the D=128 fp16 tiles fit the 99 KB per block of sm_89
    p = predict("fp16_flash", Shape(4, 32, 32, 4096, 4096, 128), "l40s")
    assert p.time > 0


# -- INT-FlashAttention's kernels ---------------------------------------------------------------
INT_FA = ("int_fa_full_int8", "int_fa_fp16")
# the specializations the paper table prices (tests/qsattn/test_roofline.py)
SHIPPED = [("ampere", 64), ("ada", 64), ("hopper", 64), ("hopper", 128)]


@pytest.mark.parametrize("name", INT_FA)
def test_int_fa_descriptions(name):
    k = F.load_foreign(name)
    assert k.source.split("@")[1][:40].isalnum() and len(k.source.split("@")[1][:40]) == 40
    assert dict(k.support)["configs.py"] and len(k.launches) == 1
    la = k.launches[0]
    assert la.path and len(la.sha256) == 64 and not la.module
    s = Shape(4, 32, 32, 4096, 4096, 64)
    env = k.env(s)
    assert F.grid_trips(la, env) == ((64,),) * (32 * 4 * 32)
    for bad in (Shape(4, 32, 32, 4096, 4096, 64, True), Shape(4, 32, 8, 4096, 4096, 64),
                Shape(4, 32, 32, 1000, 1000, 64), Shape(4, 32, 32, 4096, 4096, 96)):
        with pytest.raises(ValueError, match="requires"):
            k.env(bad)


def _shipped(arch_name):
    d = config_dir() / "kernels" / arch_name / "counted"
    return sorted(d.glob("foreign-int_fa_*.json.gz")) if d.is_dir() else []


def test_shipped_records_match_fresh_keys():
    """Every shipped INT-FA record is the key of a point the table prices (computed here with
    neither triton nor the source), and every such point has its record."""
    want = {}
    for name in INT_FA:
        k = F.load_foreign(name)
        for a, D in SHIPPED:
            key = F.launch_key(k, k.launches[0], k.env(Shape(4, 32, 32, 1024, 1024, D)),
                               arch(a).target)
            # one key for every length the table prices (same specialization classes)
            assert key == F.launch_key(k, k.launches[0],
                                       k.env(Shape(4, 32, 32, 16384, 16384, D)), arch(a).target)
            want[(a, key)] = name
    got = {(a, p.name[:-len(".json.gz")]) for a in ("ampere", "ada", "hopper")
           for p in _shipped(a)}
    assert got == set(want)
    for (a, key), name in want.items():
        rec = C.read_record(C.shipped_path(a, key))
        assert rec["key"] == key and rec["arch"] == a
        assert rec["source"]["target"] == arch(a).target
        assert rec["source"]["foreign_source"] == F.load_foreign(name).source
        assert rec["source"]["sha256"] == F.load_foreign(name).launches[0].sha256
        assert "_attn_fwd" in rec["listing"] and len(C.CountedKernel.from_record(rec).loops) == 1


class _NoCompile:
    def key(self, request):
        raise AssertionError("a shipped record must price this")

    def count(self, request):
        raise AssertionError(f"compiled {request.kernel}: its record should be shipped")


@pytest.fixture
def no_source(monkeypatch):
    monkeypatch.delenv("QSATTN_FOREIGN_SRC", raising=False)
    saved = list(C._COUNTER)
    C.register_counter(_NoCompile())
    yield
    C._COUNTER[:] = saved


def test_predictions_from_shipped_records_without_source(no_source):
    s = Shape(4, 32, 32, 4096, 4096, 64)
    got = {}
    for hw in ("a100_80gb_sxm", "rtx3090", "rtx4090", "h200"):
        a = predict_foreign("int_fa_full_int8", s, hw)
        b = predict_foreign("int_fa_fp16", s, hw)
        assert a.method == "foreign" and a.kernel == "int_fa_full_int8" and a.tier == "pipeline"
        assert [n for n, _ in a.counted] == ["int_fa_full_int8.attn"] and not a.analytical
        assert a.hbm_bytes == 4 * 32 * 4096 * (64 * 3 + 4 + 64 * 2) + 4 * 32 * 2
        got[hw] = b.time / a.time
    print(got)
    # FP16 with FP32 accumulate at half rate makes GeForce the parts where INT8 wins
    assert got["rtx3090"] > 1.3 and got["rtx4090"] > 1.3
    assert got["a100_80gb_sxm"] < 1.0 and got["h200"] < 1.0


def test_predict_foreign_errors():
    s = Shape(4, 32, 32, 4096, 4096, 64)
    with pytest.raises(ValueError, match="tier"):
        predict_foreign("int_fa_fp16", s, "h200", tier="tiled")
    with pytest.raises(ValueError, match="expected one of"):
        predict_foreign("no_such", s, "h200")
    with pytest.raises(TypeError, match="shape"):
        predict_foreign("int_fa_fp16", (4, 32), "h200")
    with pytest.raises(ValueError, match="requires"):
        predict_foreign("int_fa_fp16", Shape(4, 32, 32, 4096, 4096, 64, True), "h200")
