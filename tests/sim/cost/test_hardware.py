import shutil

import pytest
import yaml

from sim.cost import UnsupportedOnHardware, apply_measured, load_hardware, predict, Shape
from sim.schema import ConfigError

ALL = ["a100_80gb_sxm", "a100_40gb", "h100_sxm", "h200"]


@pytest.mark.parametrize("name", ALL)
def test_every_field_has_provenance(name):
    hw = load_hardware(name)
    for fname, q in hw.fields.items():
        assert q.kind == "spec" and q.source and q.unit, fname


@pytest.mark.parametrize("name,field,tera", [
    ("a100_80gb_sxm", "tc_fp16", 312), ("a100_80gb_sxm", "tc_int8", 624),
    ("a100_80gb_sxm", "tc_int4", 1248), ("h100_sxm", "tc_fp16", 989.4),
    ("h100_sxm", "tc_int8", 1979), ("h200", "tc_fp8", 1979), ("h100_sxm", "sfu", 3.9)])
def test_derived_peaks_match_datasheets(name, field, tera):
    got = load_hardware(name).peak(field) / 1e12
    print(name, field, got, tera)
    assert abs(got - tera) / tera < 0.01


def test_a100_fp32_peak():
    assert abs(2 * load_hardware("a100_80gb_sxm").peak("fp32") / 1e12 - 19.5) < 0.1


def test_missing_dtypes():
    assert load_hardware("h100_sxm").tc_int4 is None
    assert load_hardware("a100_40gb").tc_fp8 is None
    with pytest.raises(UnsupportedOnHardware, match="tc_int4"):
        load_hardware("h200").v("tc_int4")


def _write(tmp_path, name, mutate):
    data = yaml.safe_load(open(f"configs/hardware/{name}.yaml"))
    mutate(data)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_missing_field(tmp_path):
    p = _write(tmp_path, "h100_sxm", lambda d: d.pop("sfu"))
    with pytest.raises(ConfigError, match="sfu.*missing"):
        load_hardware(p)


def test_missing_provenance(tmp_path):
    p = _write(tmp_path, "h100_sxm", lambda d: d["sfu"].pop("source"))
    with pytest.raises(ConfigError, match="sfu.source"):
        load_hardware(p)


def test_unit_mismatch(tmp_path):
    p = _write(tmp_path, "a100_80gb_sxm", lambda d: d["hbm_bandwidth"].update(unit="TB/s"))
    with pytest.raises(ConfigError, match="hbm_bandwidth.unit.*TB/s"):
        load_hardware(p)


def test_bad_kind_and_unknown_field(tmp_path):
    p = _write(tmp_path, "a100_80gb_sxm", lambda d: d["sfu"].update(kind="guess"))
    with pytest.raises(ConfigError, match="sfu.kind"):
        load_hardware(p)
    p = _write(tmp_path, "a100_80gb_sxm", lambda d: d.update(warp_size=32))
    with pytest.raises(ConfigError, match="warp_size"):
        load_hardware(p)


def test_unknown_hardware():
    with pytest.raises(ValueError, match="hardware: expected one of"):
        load_hardware("b200")
    with pytest.raises(TypeError):
        load_hardware(3)


# -- calibrated tier / measured overlay -------------------------------------------------------
@pytest.fixture
def cfgdir(tmp_path, monkeypatch):
    root = tmp_path / "configs"
    shutil.copytree("configs", root)
    monkeypatch.setenv("QSATTN_CONFIG_DIR", str(root))
    return root


def test_calibrated_without_file_names_it(cfgdir):
    (cfgdir / "hardware" / "measured" / "h100_sxm.yaml").unlink(missing_ok=True)
    s = Shape(1, 8, 8, 1024, 1024, 64)
    with pytest.raises(FileNotFoundError, match=r"measured/h100_sxm\.yaml"):
        predict("fp16_flash", s, "h100_sxm", tier="calibrated")


def test_calibrated_uses_measured_values(cfgdir):
    (cfgdir / "hardware" / "measured" / "h100_sxm.yaml").write_text(
        "name: h100_sxm\n"
        "sfu: {value: 8, unit: inst/clk/SM, source: 'test probe', kind: measured}\n"
        "hbm_bandwidth: {value: 3000, unit: GB/s, source: 'test probe', kind: measured}\n")
    s = Shape(4, 32, 32, 4096, 4096, 64)
    tiled = predict("fp16_flash", s, "h100_sxm")
    cal = predict("fp16_flash", s, "h100_sxm", tier="calibrated")
    print(tiled.time, cal.time)
    assert cal.time > tiled.time  # half the MUFU rate on an exp-heavy kernel


@pytest.mark.parametrize("body,match", [
    ("sfu: {value: 8, unit: inst/clk/SM, source: x, kind: spec}\n", "sfu.kind"),
    ("sfu: {value: 8, unit: op/s, source: x, kind: measured}\n", "sfu.unit"),
    ("warp: {value: 8, unit: x, source: x, kind: measured}\n", "warp"),
    ("name: a100_40gb\n", "name"),
])
def test_measured_overlay_errors(tmp_path, body, match):
    p = tmp_path / "m.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=match):
        apply_measured(load_hardware("h100_sxm"), p)
