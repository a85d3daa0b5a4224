"""Hostile command lines and configs for every ``qsattn`` command, in process: a user error
exits non-zero with one line on stderr naming the argument or field, never a traceback."""
from __future__ import annotations

import shutil

import pytest
import yaml

from qsattn import cli
from sim.spec import config_dir

EXP = config_dir() / "experiments"


class CliError(ValueError):
    """What a command printed for a refused command line (the message checked by the suite)."""


def _run(argv, capsys):
    """``qsattn argv`` in process: its exit code and stderr; raises CliError with the stderr
    when it exits non-zero cleanly (one line, no traceback), so the hostile contract applies."""
    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:          # argparse: usage line + "error: ..." line
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if rc:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines, f"exit {rc} with nothing on stderr"
        # one line; argparse's own refusals print their usage first, the error line last
        assert len(lines) == 1 or lines[0].startswith("usage:"), err
        raise CliError(lines[-1])
    return rc


def _cfg(tmp_path, name, base, **changes):
    data = yaml.safe_load((EXP / base).read_text())
    for dotted, value in changes.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    lines = ["x0: &x0 [" + ", ".join(["1"] * 10) + "]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nlengths: *x8\n")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "afile").write_text("x")
    return tmp_path


CONFIG_COMMANDS = ("accuracy", "model", "roofline", "bench", "validate")


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
@pytest.mark.parametrize("cfg", ("bad.yaml", "list.yaml", "bomb.yaml", "dir.yaml", "none.yaml"))
def test_bad_config_files(hostile, capsys, files, command, cfg):
    path = files / cfg
    hostile.error(lambda: _run([command, "--config", path, "--out", files / "o"], capsys),
                  (str(path), "--config"), exc=CliError, case=f"{command} {cfg}")


@pytest.mark.parametrize("argv,name", [
    (["specs", "nope"], "method"), (["specs", "int8_flash", "--set", "p.levels=abc"], "p.levels"),
    (["specs", "int8_flash", "--set", "p.levelz=3"], "p.levelz"),
    (["specs", "int8_flash", "--set", "p.levels"], "--set"),
    (["specs", "int8_flash", "--set", "p.levels=[1"], "--set"),
    (["specs", "int8_flash", "--set", "=3"], "--set"),
    (["specs", "int8_flash", "--set", "tiling.block_m=nan"], "tiling.block_m"),
    (["specs", "int8_flash", "--set", "p.saturate=no"], "p.saturate"),
    (["specs", "fp16_flash", "--set", "p.levels=3"], "p"),
    (["specs", "int8_flash", "--set", "tiling.block_m.x=1"], "tiling.block_m.x"),
    (["specs", "/no/such.yaml"], "/no/such.yaml"),
    (["roofline", "--hardware", "nope"], "hardware"),
    (["roofline", "--hardware", "/no/such.yaml"], "/no/such.yaml"),
    (["report", "--only", "nope"], "--only"), (["calibrate", "--hardware", "nope"], "hardware"),
    (["validate", "--hardware", "nope"], "hardware"), (["validate", "--budget-s", "x"], "--budget-s"),
    (["accuracy", "--bogus"], "--bogus"), (["nosuchcommand"], "COMMAND"),
    (["model", "--executor", "tpu"], "--executor"),
])
def test_bad_arguments(hostile, capsys, files, argv, name):
    argv = [a if a != "/no/such.yaml" else str(files / "none.yaml") for a in argv]
    name = name if name != "/no/such.yaml" else str(files / "none.yaml")
    if argv[0] in ("roofline", "report"):
        argv += ["--out", str(files / "o")]
    hostile.error(lambda: _run(argv, capsys), name, exc=CliError)


@pytest.mark.parametrize("command", ("accuracy", "roofline", "report"))
def test_unwritable_out(hostile, capsys, files, command):
    """--out that is a file: one line naming the path, nothing half-written."""
    argv = [command, "--out", files / "afile" / "sub"]
    if command == "accuracy":
        argv += ["--quick"]
    if command == "report":
        argv += ["--only", "roofline"]
    hostile.error(lambda: _run(argv, capsys), str(files / "afile"), exc=CliError)


@pytest.mark.parametrize("changes,field", [
    ({"lengths": [200_000]}, "lengths"), ({"lengths": [-5]}, "lengths[0]"),
    ({"seeds": ["abc"]}, "seeds[0]"), ({"shape.batch": 0}, "shape.batch"),
    ({"methods.fp16_flash": {"spec": "fp16_flash", "overrides": {"p.levels": 3}}},
     "methods.fp16_flash"), ({"methods.fp16_flash": {"spec": "nope"}}, "methods.fp16_flash"),
    ({"lengths": [4096], "shape.q_heads": 8, "shape.kv_heads": 2}, "lengths"),
])
def test_accuracy_configs(hostile, capsys, tmp_path, changes, field):
    """Schema errors, and studies too large (an O(L^2) study at L = 200,000; a selecting
    method whose trace would not fit) refused before any point runs."""
    path = _cfg(tmp_path, "acc.yaml", "accuracy_synthetic.yaml", **changes)
    hostile.error(lambda: _run(["accuracy", "--config", path, "--out", tmp_path / "o"], capsys),
                  field, exc=CliError)
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.parametrize("changes,field", [
    ({"layer_error.window": 100_000}, "layer_error.window"),       # one point too large
    ({"needle.lengths": [200_000]}, "needle.lengths"),             # too much in all
])
def test_model_config_too_large(hostile, capsys, tmp_path, changes, field):
    """Refused before the model loads, naming the field that sizes the work."""
    path = _cfg(tmp_path, "model.yaml", "model_smollm2.yaml", **changes)
    hostile.error(lambda: _run(["model", "--config", path, "--out", tmp_path / "o"], capsys),
                  field, exc=CliError)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("changes,field", [
    ({"prefill_methods": ["fp16_flash:nokernel"]}, "prefill_methods[0]"),
    ({"decode_methods": ["fp16_flash", "fp8_flash:sage_v1"]}, "decode_methods[1]"),
    ({"tier": "fast"}, "tier"), ({"hardware": ["h100_sxm", "nope"]}, "hardware"),
    ({"prefill.lengths": [0]}, "prefill.lengths[0]"),
])
def test_roofline_configs(hostile, capsys, tmp_path, changes, field):
    path = _cfg(tmp_path, "roofline.yaml", "roofline.yaml", **changes)
    hostile.error(lambda: _run(["roofline", "--config", path, "--out", tmp_path / "o"], capsys),
                  field, exc=CliError)


@pytest.mark.parametrize("command,base,changes,field", [
    ("bench", "bench_h100.yaml", {"prefill.tune_launch": [[128, 8]]}, "prefill.tune_launch[0]"),
    ("bench", "bench_h100.yaml", {"decode.warmup": -1}, "decode.warmup"),
    ("validate", "validate_h100.yaml", {"prefill_methods": ["fp16_flsh"]}, "prefill_methods[0]"),
    ("validate", "validate_h100.yaml", {"seed": "x"}, "seed"),
])
def test_gpu_command_configs_checked_on_any_machine(hostile, capsys, tmp_path, command, base,
                                                     changes, field):
    path = _cfg(tmp_path, "c.yaml", base, **changes)
    hostile.error(lambda: _run([command, "--config", path, "--out", tmp_path / "o"], capsys),
                  field, exc=CliError)


def test_damaged_stores_are_reported_not_crashed(hostile, capsys, tmp_path):
    """A validation store whose rows lack fields: one line naming the file (the command opens
    it strictly); an accuracy store's bad rows are set aside and recomputed."""
    d = tmp_path / "v"
    d.mkdir()
    (d / "results.jsonl").write_text('{"id": "a", "method": "fp16_flash"}\n')
    hostile.error(lambda: _run(["validate", "--repredict", "--dir", d], capsys),
                  str(d / "results.jsonl"), exc=CliError)
    (d / "results.jsonl").write_text('{"id": "a", "x": ' + "1" * 5000 + '}\n')
    hostile.error(lambda: _run(["validate", "--repredict", "--dir", d], capsys),
                  str(d / "results.jsonl"), exc=CliError)


def test_roofline_runs(hostile, capsys, tmp_path):
    """A valid (small) sweep runs; "n/a" cells remain for what the GPU lacks."""
    path = _cfg(tmp_path, "roofline.yaml", "roofline.yaml", hardware=["a100_80gb_sxm"],
                **{"prefill.lengths": [1024], "decode.lengths": [2048]})
    hostile.correct(lambda: _run(["roofline", "--config", path, "--out", tmp_path / "o"],
                                 capsys),
                    lambda rc: rc == 0 and (tmp_path / "o" / "README.md").is_file() and
                    "n/a" in (tmp_path / "o" / "README.md").read_text())   # FP8 on Ampere


@pytest.mark.skipif(shutil.which("nproc") is None, reason="posix")
def test_specs_show(hostile, capsys):
    hostile.correct(lambda: _run(["specs", "int8_flash", "--set", "p.rounding=half_even"], capsys),
                    lambda rc: rc == 0)
