"""The calibrated tier end to end: counted records, their cache, the foreign-kernel descriptions,
and predictions priced from the SASS of the kernel that would run."""
import gzip
import json

import pytest

from sim.cost import Shape, counted as C, foreign as F, predict
from sim.cost.calibrated import Program, occupancy, program_time, sm_params
from sim.cost.hardware import apply_measured, load_hardware

from .test_pipeline import listing

LOOP = listing(("MOV R1, RZ", {}),
               ("FFMA R2, R2, R2, R2", dict(stall=4)),         # loop 0 head
               ("FFMA R2, R2, R2, R2", dict(stall=4)),
               ("@P0 BRA 0x10", {}),
               ("EXIT", {}))


class FakeCounter:
    """Counts a fixed listing for every request (no triton); records how often it compiled."""

    def __init__(self, text=LOOP, warps=4, regs=32, shared=0):
        self.text, self.warps, self.regs, self.shared, self.calls = text, warps, regs, shared, 0

    def key(self, req):
        return f"fake-{req.kernel}-{abs(hash(self.text)) % 10 ** 8}"

    def count(self, req):
        self.calls += 1
        return {"name": req.kernel, "warps": self.warps, "registers": self.regs,
                "shared": self.shared, "listing": self.text, "source": {"kernel": "fake"}}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("QSATTN_CACHE", str(tmp_path))
    saved = list(C._COUNTER)
    c = FakeCounter()
    C.register_counter(c)
    C._LOADED.clear()
    C._TIMINGS.clear()
    yield c
    C._COUNTER[:] = saved
    C._LOADED.clear()
    C._TIMINGS.clear()


def test_no_counter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(C, "_COUNTER", [])
    with pytest.raises(C.NoCounter, match="gpu.counting.install"):
        C.lookup(C.KernelRequest.make("prefill", "hopper"))
    with pytest.raises(TypeError, match="key\\(request\\)"):
        C.register_counter(object())


def test_records_are_cached_and_checked(fake, tmp_path):
    req = C.KernelRequest.make("k", "hopper")
    ck = C.lookup(req)
    assert fake.calls == 1 and ck.warps == 4 and len(ck.loops) == 1
    C._LOADED.clear()
    assert C.lookup(req).key == ck.key and fake.calls == 1          # from the disk cache
    path = C.cached_path("hopper", ck.key)
    with gzip.open(path, "rt") as f:
        rec = json.load(f)
    assert rec["version"] == C.RECORD_VERSION and rec["source"] == {"kernel": "fake"}
    path.write_bytes(b"not gzip")
    C._LOADED.clear()
    with pytest.raises(ValueError, match="delete it to recount"):
        C.lookup(req)


def test_timing_is_linear_in_the_trips(fake):
    ck = C.lookup(C.KernelRequest.make("k", "hopper"))
    hw = apply_measured(load_hardware("h100_sxm"))
    p = sm_params(hw, hw.clock_hz("boost"), 0.0)
    t = ck.timing(p, 1, {0: 2}, (0,))
    assert t.per_iter[0] == pytest.approx(8.0, abs=1.0)   # two FFMAs at stall 4 + branch
    assert t.cycles({0: 10}) == pytest.approx(t.fixed + 10 * t.per_iter[0])
    with pytest.raises(ValueError, match="has loops"):
        ck.timing(p, 1, {0: 2, 1: 2}, (0,))


def test_program_time_schedules_every_cta(fake):
    hw = apply_measured(load_hardware("h100_sxm"))
    req = C.KernelRequest.make("k", "hopper")
    one = program_time(hw, Program(req, ((10,),) * 132), clock="boost", hbm_bytes=0,
                       l2_bytes=0, launch_overhead=0, read_bandwidth=1e12)
    two = program_time(hw, Program(req, ((10,),) * 264), clock="boost", hbm_bytes=0,
                       l2_bytes=0, launch_overhead=0, read_bandwidth=1e12)
    assert two["compute"] > one["compute"] and two["slots"] == 2
    mem = program_time(hw, Program(req, ((10,),) * 132), clock="boost", hbm_bytes=1e9,
                       l2_bytes=1e9, launch_overhead=0, read_bandwidth=1e12)
    # the read stream's ceiling of the description, not the caller's copy bandwidth
    assert mem["bound"] == "hbm"
    assert mem["time"] == pytest.approx(1e9 / (hw.v("hbm_read_bandwidth") * 1e9))
    with pytest.raises(ValueError, match="1 loops in its SASS"):
        program_time(hw, Program(req, ((1, 2),)), clock="boost", hbm_bytes=0, l2_bytes=0,
                     launch_overhead=0, read_bandwidth=1e12)


def test_occupancy_from_the_record(fake):
    hw = load_hardware("h100_sxm")
    big = C.CountedKernel("k", "hopper", "k", 8, 255, 200 * 1024, LOOP)
    assert occupancy(hw, big) == 1
    small = C.CountedKernel("k", "hopper", "k", 4, 64, 16 * 1024, LOOP)
    assert occupancy(hw, small) == min(65536 // (64 * 128), 228 // 17, 16)
    huge = C.CountedKernel("k", "hopper", "k", 4, 64, 300 * 1024, LOOP)
    with pytest.raises(ValueError, match="KB of shared memory"):
        occupancy(hw, huge)


# -- foreign descriptions ---------------------------------------------------------------------
def test_expressions_are_arithmetic_only():
    assert F.evaluate("cdiv(kv_len, 64) * 2 if causal else 0", {"kv_len": 100, "causal": 1}) == 4
    for bad in ("__import__('os')", "kv_len.real", "[1][0]", "open('x')", "q_len + nope"):
        with pytest.raises(ValueError, match="expression"):
            F.evaluate(bad, {"q_len": 1, "kv_len": 1})


def test_sage_description_and_keys():
    k = F.load_foreign("sage_v1")
    s = Shape(4, 32, 8, 1024, 1024, 128, True)
    names = [la.name for la in k.active(s)]
    assert names == ["k_mean", "k_smooth", "quant_q", "quant_k", "attn_causal"]
    env = k.env(s)
    attn = k.launches[-1]
    trips = F.grid_trips(attn, env)
    assert len(trips) == 8 * 32 * 4 and trips[:3] == ((0, 2), (2, 2), (4, 2))
    key = F.launch_key(k, attn, env, "sm_90")
    # same specialization classes, same binary; a length off the multiples of 16 is another
    assert F.launch_key(k, attn, k.env(Shape(4, 32, 8, 2048, 2048, 128, True)), "sm_90") == key
    assert F.launch_key(k, attn, k.env(Shape(4, 32, 8, 1000, 1000, 128, True)), "sm_90") != key
    assert F.launch_key(k, attn, env, "sm_80") != key
    with pytest.raises(ValueError, match="requires"):
        k.env(Shape(1, 8, 8, 100, 200, 128, True))


def test_bad_description_names_the_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\ndescription: x\nsource: y\nlaunches:\n"
                 "  - {name: a, function: f, module: m, sha256: s, grid: [1, 1], trips: [],"
                 " options: {}, hbm_bytes: 0}\n")
    with pytest.raises(ValueError, match="grid"):
        F.load_foreign(str(p))
    p.write_text("name: bad\ndescription: x\nsource: y\nlaunches:\n  - {name: a}\n")
    with pytest.raises(ValueError, match="hbm_bytes"):
        F.load_foreign(str(p))
    with pytest.raises(ValueError, match="expected one of"):
        F.load_foreign("no_such_kernel")


# -- the real counter (compiles on the CPU) ---------------------------------------------------
@pytest.mark.slow
def test_prediction_from_our_kernel_and_a_foreign_one():
    pytest.importorskip("triton")
    import gpu.counting
    gpu.counting.install()
    s = Shape(2, 16, 16, 1024, 1024, 128, True)
    p = predict("int8_flash", s, "h100_sxm", tier="calibrated")
    assert p.counted and p.counted[0][1].startswith("attn_fwd_sm90_kernel-sm_90-")   # Gluon
    assert not p.analytical and p.bound in ("pipeline", "hbm")
    # a causal grid takes longer than half the non-causal one (diagonal tiles, imbalance,
    # the per-CTA prologue and epilogue: at two waves the two are close)
    full = predict("int8_flash", Shape(2, 16, 16, 1024, 1024, 128, False), "h100_sxm",
                   tier="calibrated")
    assert full.time * 0.5 < p.time < full.time * 1.5
    # the same binary for a sweep's other lengths: no new compile, same per-tile cost
    longer = predict("int8_flash", Shape(2, 16, 16, 2048, 2048, 128, True), "h100_sxm",
                     tier="calibrated")
    assert longer.counted[0][1] == p.counted[0][1] and longer.time > 2 * p.time
    pytest.importorskip("sageattention")
    sage = predict("fp16_flash", s, "h100_sxm", kernel="sage_v1", tier="calibrated")
    names = [n for n, *_ in sage.launches]
    assert names[-1] == "sage_v1.attn_causal"
    assert [n for n, _ in sage.analytical] == ["sage_v1.k_mean", "sage_v1.k_smooth"]


def test_gluon_trips_follow_the_consumer_loops():
    from sim.cost.kernels import gluon_prefill_trips as trips
    # merged one loop: every tile in one loop, no release loop
    assert trips(1, 256, 256, 64, True, merged=True, one_loop=True, unroll=False) == ((4,), (2,))
    # merged two loops unrolled: (n_full - 2) // 2 double steps, then the rest one at a time
    assert trips(2, 512, 512, 64, False, merged=True, one_loop=False,
                 unroll=True) == ((3, 0),) * 8
    # two consumers, causal, longest rows first: the consumer with more tiles sets the trips
    assert trips(1, 512, 512, 64, True, merged=False, one_loop=False,
                 unroll=True) == ((2, 1, 0), (1, 1, 0), (0, 1, 0), (0, 2, 0))


@pytest.mark.slow
def test_gluon_record_loops_match_the_trips():
    """The Hopper launch table's Gluon kernels: the counted consumer partition has exactly the
    loops the cost path gives trips for (a structure change fails here, not silently)."""
    pytest.importorskip("triton")
    import gpu.counting
    gpu.counting.install()
    for method in ("int8_flash", "fp16_flash", "turbo"):
        p = predict(method, Shape(1, 8, 8, 1024, 1024, 128, True), "h100_sxm",
                    tier="calibrated")
        assert p.counted[0][1].startswith("attn_fwd_sm90_kernel-sm_90-"), method
        assert not p.analytical
