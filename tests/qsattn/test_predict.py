"""qsattn predict: shape flags, phase inference, formats, hardware paths, clear errors."""
import csv
import io
import json

import pytest

from qsattn import cli
from sim.cost import Shape, speedup


def _run(capsys, *argv):
    rc = cli.main(["predict", "--no-progress", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_rows_match_the_python_api(capsys):
    rc, out, _ = _run(capsys, "--heads", "32", "--kv-heads", "8", "--q-len", "1", "--kv-len",
                      "8192", "--batch", "16", "--methods", "int8_flash,turbo:ideal",
                      "--hardware", "h100_sxm", "--format", "json")
    assert rc == 0
    rows = json.loads(out)
    assert [(r["method"], r["kernel"], r["phase"]) for r in rows] == [
        ("int8_flash", "flash_decode", "decode"), ("turbo", "ideal", "decode")]
    want = speedup("turbo", Shape(16, 32, 8, 1, 8192, 128), "h100_sxm", kernel="ideal")
    assert rows[1]["speedup"] == want.value and rows[1]["baseline_kernel"] == "ideal"
    assert rows[1]["time_us"] == want.method.time * 1e6


def test_csv_and_markdown_and_unsupported_dtype(capsys):
    rc, out, _ = _run(capsys, "--q-len", "1024", "--causal", "--methods", "fp8_flash,fp16_flash",
                      "--hardware", "a100_80gb_sxm", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and rows[0]["note"].startswith("n/a: hardware 'a100_80gb_sxm' has no FP8")
    assert rows[1]["causal"] == "true" and float(rows[1]["speedup"]) == 1.0
    rc, out, _ = _run(capsys, "--q-len", "1024", "--methods", "fp16_flash", "--hardware",
                      "h100_sxm")
    assert "| h100_sxm | fp16_flash:fp16_flash |" in out and "time (µs)" in out


def test_kernel_flag_and_default_methods(capsys):
    rc, out, _ = _run(capsys, "--phase", "decode", "--kv-len", "4096", "--kernel", "ideal",
                      "--hardware", "h100_sxm", "--format", "json")
    rows = json.loads(out)
    assert rc == 0 and {r["kernel"] for r in rows} == {"ideal"} and len(rows) >= 3


@pytest.mark.parametrize("argv, match", [
    (["--phase", "decode", "--q-len", "4", "--kv-len", "64"], "--phase: decode prices one query"),
    ([], "--q-len/--kv-len"),
    (["--q-len", "8", "--heads", "6", "--kv-heads", "4"], "--kv-heads"),
    (["--q-len", "8", "--head-dim", "60"], "--head-dim"),
    (["--q-len", "8", "--methods", "nope"], "--methods"),
    (["--q-len", "8", "--methods", "fp16_flash:ideal"], "--kernel"),
    (["--q-len", "8", "--hardware", "nope_gpu"], "--hardware"),
    (["--kv-len", "0"], "--kv-len: expected a positive integer, got 0"),
    (["--q-len", "8", "--baseline", "nope"], "--baseline"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, match):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and match in err and "Traceback" not in err and err.count("\n") == 1


def test_a_gpu_without_kernel_data_names_the_missing_file(capsys, tmp_path):
    """An Ada description (a filled copy of the A100's, FP8 added) is accepted; pricing it
    needs configs/kernels/ada/, and the error names the file and the command that writes it."""
    from qsattn.hardware import new_yaml
    from sim.cost import load_hardware

    text = new_yaml("l40s_test", load_hardware("a100_80gb_sxm"), "ada", "test")
    text = text.replace("description: \"FILL", "description: \"test copy")
    text = text.replace("value: FILL", "value: 100").replace("source: FILL", "source: test")
    p = tmp_path / "l40s_test.yaml"
    p.write_text(text)
    hw = load_hardware(p)
    assert hw.arch == "ada" and hw.tc_fp8 is not None and hw.tc_int4 is not None
    from sim.arch import missing_kernel_data
    rc, _, err = _run(capsys, "--q-len", "128", "--hardware", str(p))
    if not missing_kernel_data("ada"):      # the data has been generated since (issue 16)
        # no missing-file error; the copy's placeholder values (100 registers per SM, ...) may
        # still not fit a CTA, which is its own one-line error
        assert "configs/kernels/ada/" not in err and (rc == 0 or err.count("\n") == 1)
        return
    assert rc == 2 and "configs/kernels/ada/" in err and "python -m gpu.sass" in err


@pytest.mark.slow
def test_counted_tiers_from_the_shell(capsys):
    """--tier pipeline/calibrated install the kernel counter (compiles on the CPU) like the
    other commands; the calibrated tier reads the shipped measured overlay."""
    pytest.importorskip("triton")
    for tier in ("pipeline", "calibrated"):
        rc, out, err = _run(capsys, "--q-len", "1024", "--methods", "int8_flash", "--hardware",
                            "h100_sxm", "--tier", tier, "--format", "json")
        assert rc == 0, err
        row, = json.loads(out)
        assert row["tier"] == tier and row["bound"] and row["time_us"] > 0
