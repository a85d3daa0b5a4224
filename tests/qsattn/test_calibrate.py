"""qsattn calibrate on the CPU: the measured-YAML writer round-trips through the cost model's
loader, the no-GPU message, and the microbenchmark kernels' results under TRITON_INTERPRET=1."""
import os

if os.environ.get("QSATTN_GPU_TESTS") != "1":
    os.environ["TRITON_INTERPRET"] = "1"   # before anything imports gpu.kernels

import math

import pytest
import yaml

from qsattn import calibrate, cli
from sim.cost import predict, Shape
from sim.cost.hardware import apply_measured, load_hardware
from sim.schema import ConfigError

FAKE = {
    "hbm_bandwidth": {"value": 3.01e12, "unit": "B/s", "how": "copy 2 GB"},
    "l2_bandwidth": {"value": 9.5e12, "unit": "B/s", "how": "l2 read"},
    "launch_overhead": {"value": 2.5e-6, "unit": "s", "how": "empty kernel"},
    "sfu": {"value": 3.6e12, "unit": "inst/s", "how": "ex2",
            "alternatives": {"tl.math.exp2": 3.5e12}},
    "tc_fp16": {"value": 7.2e14, "unit": "op/s", "how": "gemm"},
    "tc_int8": {"value": 1.3e15, "unit": "op/s", "how": "gemm int8"},
}


def test_overlay_round_trip_through_cost_model_loader(tmp_path):
    hw = load_hardware("h100_sxm")
    data = calibrate.overlay(FAKE, hw, command="qsattn calibrate", date="2025-01-01 00:00 UTC",
                             device="NVIDIA H100 80GB HBM3", versions={"torch": "2.x"})
    path = calibrate.write_overlay(tmp_path / "h100_sxm.yaml", data, header="test header")
    text = path.read_text()
    assert text.startswith("# test header\n")
    raw = yaml.safe_load(text)
    assert raw["name"] == "h100_sxm"
    cal = apply_measured(hw, path)
    # Chip-wide rates come back exactly (to the 6 significant digits written).
    assert math.isclose(cal.v("hbm_bandwidth"), 3010.0, rel_tol=0, abs_tol=0)
    assert math.isclose(cal.v("l2_bandwidth"), 9500.0, rel_tol=0, abs_tol=0)
    assert math.isclose(cal.v("launch_overhead"), 2.5, rel_tol=1e-12)
    assert math.isclose(cal.peak("sfu"), 3.6e12, rel_tol=1e-5)
    assert math.isclose(cal.peak("tc_fp16"), 7.2e14, rel_tol=1e-5)
    assert math.isclose(cal.peak("tc_int8"), 1.3e15, rel_tol=1e-5)
    for name in FAKE:
        q = getattr(cal, name)
        assert q.kind == "measured" and q.unit == hw.fields[name].unit
        assert "qsattn calibrate" in q.source and "2025-01-01" in q.source
        assert "torch 2.x" in q.source and "spec" in q.source
    assert "tl.math.exp2" in cal.sfu.source
    # Unmeasured fields keep the spec value.
    assert cal.tc_fp8 == hw.tc_fp8 and cal.fp32 == hw.fp32
    # The calibrated tier prices with the measured ceilings: a lower HBM bandwidth can only
    # make a memory-heavy decode step slower.
    shape = Shape(1, 32, 8, 1, 32768, 128)
    spec_t = predict("fp16_flash", shape, hw, phase="decode", tier="tiled").time
    slow = apply_measured(hw, calibrate.write_overlay(
        tmp_path / "slow.yaml", calibrate.overlay(
            {"hbm_bandwidth": {"value": 1.0e12, "unit": "B/s", "how": "x"}}, hw, command="c",
            date="d", device="g", versions={})))
    assert predict("fp16_flash", shape, slow, phase="decode", tier="tiled").time > spec_t


@pytest.mark.parametrize("bad, match", [
    ({"nonsense": {"value": 1.0, "unit": "B/s", "how": ""}}, "hardware fields"),
    ({"hbm_bandwidth": {"value": 1.0, "unit": "GB/s", "how": ""}}, "unit"),
    ({"hbm_bandwidth": {"value": -1.0, "unit": "B/s", "how": ""}}, "positive"),
    ({"hbm_bandwidth": {"value": float("nan"), "unit": "B/s", "how": ""}}, "positive"),
    ({"sfu": {"value": 1e12, "unit": "B/s", "how": ""}}, "field wants"),
    ({"hbm_bandwidth": {"value": 1e12, "unit": "op/s", "how": ""}}, "cannot become"),
])
def test_overlay_rejects_bad_measurements(bad, match):
    with pytest.raises(ValueError, match=match):
        calibrate.overlay(bad, load_hardware("h100_sxm"), command="c", date="d", device="g",
                          versions={})


def test_written_overlay_with_wrong_name_is_refused_by_loader(tmp_path):
    hw = load_hardware("h100_sxm")
    data = calibrate.overlay(FAKE, hw, command="c", date="d", device="g", versions={})
    path = calibrate.write_overlay(tmp_path / "x.yaml", data)
    with pytest.raises(ConfigError, match="name"):
        apply_measured(load_hardware("h200"), path)


@pytest.mark.parametrize("name, hw", [("NVIDIA H100 80GB HBM3", "h100_sxm"),
                                      ("NVIDIA H200", "h200"),
                                      ("NVIDIA A100-SXM4-80GB", "a100_80gb_sxm")])
def test_hardware_for_device(name, hw):
    assert calibrate.hardware_for_device(name) == hw


def test_hardware_for_unknown_device_names_the_flag():
    with pytest.raises(ValueError, match="--hardware"):
        calibrate.hardware_for_device("NVIDIA GeForce RTX 4090")


def test_no_gpu_message(monkeypatch, capsys):
    monkeypatch.setattr(calibrate, "cuda_available", lambda: False)
    rc = cli.main(["calibrate"])
    err = capsys.readouterr().err
    print(err)
    assert rc == calibrate.NO_GPU_EXIT != 0
    assert "needs a CUDA GPU" in err and calibrate.DEVICE_COMMAND in err


# -- microbenchmark kernels (interpreter on the CPU, the GPU with QSATTN_GPU_TESTS=1) ----------
def _dev():
    return "cuda" if os.environ.get("QSATTN_GPU_TESTS") == "1" else "cpu"


def test_microbench_kernels_compute_what_they_claim():
    import torch
    from gpu import microbench as mb
    dev = _dev()
    g = torch.Generator().manual_seed(0)
    x = -torch.rand(2048, generator=g).to(dev)
    ref = x.double()
    for _ in range(6):
        ref = torch.exp2(ref) - 1.0
    err = (mb.ex2(x, 6).double() - ref).abs().max().item()
    print(f"ex2 max abs err {err:.3g}")
    assert err < 1e-6
    for dt in (torch.float32, torch.float16):
        y = mb.fma(torch.rand(2048, generator=g).to(dt).to(dev), 0.5, 0.25, 30)
        assert torch.equal(y.float().cpu(), torch.full((2048,), 0.5))
    a = torch.randint(-128, 128, (64, 128), generator=g, dtype=torch.int8).to(dev)
    b = torch.randint(-128, 128, (128, 64), generator=g, dtype=torch.int8).to(dev)
    assert torch.equal(mb.matmul(a, b, (64, 64, 32, 4, 4, 2)).long().cpu(),
                       a.long().cpu() @ b.long().cpu())
    ah = torch.randn(64, 64, generator=g).half().to(dev)
    bh = torch.randn(64, 64, generator=g).half().to(dev)
    ch = mb.matmul(ah, bh, (64, 64, 32, 4, 4, 2)).double().cpu()
    want = ah.double().cpu() @ bh.double().cpu()
    assert (ch - want).abs().max().item() <= 2 ** -10 * want.abs().max().item() * 2
    src = torch.randn(10_000, generator=g).to(dev)
    dst = torch.empty_like(src)
    mb.copy(src, dst, block=1024)
    assert torch.equal(src, dst)
    buf = torch.rand(5000, generator=g).to(dev)
    got = mb.l2_read(buf, 3, 4, block=256).double().sum().item()
    assert math.isclose(got, 3 * buf.double().sum().item(), rel_tol=1e-6)


def test_microbench_launchers_validate_inputs():
    import torch
    from gpu import microbench as mb
    with pytest.raises(ValueError, match="multiple of block"):
        mb.ex2(torch.zeros(1000), 1)
    with pytest.raises(TypeError, match="dtype"):
        mb.ex2(torch.zeros(1024, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="fp16"):
        mb.fma(torch.zeros(1024), 1.0, 0.0, 1, use_asm=True)
    with pytest.raises(ValueError, match="multiples"):
        mb.matmul(torch.zeros(60, 64, dtype=torch.float16), torch.zeros(64, 64,
                  dtype=torch.float16), (64, 64, 32, 4, 4, 2))
    with pytest.raises(TypeError, match="dtype of a"):
        mb.matmul(torch.zeros(64, 64, dtype=torch.float16), torch.zeros(64, 64,
                  dtype=torch.int8))


# -- the SM microbenchmarks' fields (gpu.microbench_sm): units convert, fields round-trip -----
SM_FAKE = {
    "int32": {"value": 64 * 132 * 1.83e9, "unit": "inst/s", "how": "alu chains"},
    "cvt": {"value": 16 * 132 * 1.83e9, "unit": "inst/s", "how": "f2i chains",
            "alternatives": {"I2F chain": 6.0e12}},
    "issue": {"value": 3.9 * 132 * 1.83e9, "unit": "warp_inst/s", "how": "ffma/lop3"},
    "lat_fma": {"value": 4.06, "unit": "clk", "how": "ffma chain"},
    "lat_cvt": {"value": 16.1, "unit": "clk", "how": "f2i chain"},
    "lat_lds": {"value": 29.5, "unit": "clk", "how": "lds chase"},
    "l2_latency": {"value": 262.0, "unit": "clk", "how": "ldg chase"},
    "hbm_latency": {"value": 655.0, "unit": "ns", "how": "ldg chase"},
    "bar_sync": {"value": 21.0, "unit": "clk", "how": "bar loop"},
    "smem_conflict_1": {"value": 1.02, "unit": "clk", "how": "lds d1"},
    "smem_conflict_32": {"value": 32.1, "unit": "clk", "how": "lds d32"},
    "lat_wgmma_fp16": {"value": 120.0, "unit": "clk", "how": "dot chain"},
    "clock_under_load": {"value": 1.755e9, "unit": "Hz", "how": "clock64/globaltimer"},
    "hbm_read_bandwidth": {"value": 4.4e12, "unit": "B/s", "how": "read_kernel"},
}


def test_sm_fields_overlay_round_trip(tmp_path):
    hw = load_hardware("h200")
    data = calibrate.overlay(SM_FAKE, hw, command="qsattn calibrate", date="2026-01-01",
                             device="NVIDIA H200", versions={})
    assert data["clock_under_load"]["unit"] == "MHz" and data["clock_under_load"]["value"] == 1755
    assert data["issue"]["unit"] == "warp_inst/clk/SM"
    assert data["hbm_latency"] == dict(data["hbm_latency"], value=655.0, unit="ns")
    cal = apply_measured(hw, calibrate.write_overlay(tmp_path / "h200.yaml", data))
    assert math.isclose(cal.peak("int32"), SM_FAKE["int32"]["value"], rel_tol=1e-5)
    assert math.isclose(cal.v("issue"), 3.9, rel_tol=1e-5)
    assert math.isclose(cal.v("cvt"), 16.0, rel_tol=1e-5) and "I2F chain" in cal.cvt.source
    for name in ("lat_fma", "lat_cvt", "lat_lds", "l2_latency", "bar_sync", "smem_conflict_1",
                 "smem_conflict_32", "lat_wgmma_fp16"):
        assert cal.v(name) == SM_FAKE[name]["value"] and getattr(cal, name).unit == "clk", name
    assert cal.v("hbm_read_bandwidth") == 4400.0 and cal.v("hbm_latency") == 655.0
    assert cal.lat_alu == hw.lat_alu            # not measured: spec value kept


@pytest.mark.parametrize("bad, hwname, match", [
    ({"lat_fma": {"value": 4.0, "unit": "ns", "how": ""}}, "h200", "field wants"),
    ({"lat_fma": {"value": 0.0, "unit": "clk", "how": ""}}, "h200", "positive"),
    ({"clock_under_load": {"value": 1.7e9, "unit": "clk", "how": ""}}, "h200", "field wants"),
    ({"issue": {"value": 1e12, "unit": "clk", "how": ""}}, "h200", "field wants"),
    ({"lat_wgmma_fp16": {"value": 100.0, "unit": "clk", "how": ""}}, "a100_80gb_sxm",
     "declares no lat_wgmma_fp16"),
])
def test_sm_overlay_rejects_bad_measurements(bad, hwname, match):
    with pytest.raises(ValueError, match=match):
        calibrate.overlay(bad, load_hardware(hwname), command="c", date="d", device="g",
                          versions={})
