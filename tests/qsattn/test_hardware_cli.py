"""qsattn hardware list | show | new, and a --hardware path in roofline."""
import json

import pytest

from qsattn import cli
from sim.cost import load_hardware
from sim.schema import ConfigError


def test_list_and_show(capsys):
    assert cli.main(["hardware", "list", "--format", "json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["h100_sxm"]["arch"] == "hopper" and rows["h100_sxm"]["measured"] is True
    assert rows["a100_80gb_sxm"]["fp8_TFLOPs"] is None and rows["h200"]["kernel_data"] == "complete"
    assert cli.main(["hardware", "show", "h100_sxm"]) == 0
    out = capsys.readouterr().out
    assert "| tc_int4 | null |" in out and "Measured overlay" in out and "measured.tc_fp8" in out


def test_new_marks_every_field_and_is_refused_until_filled(tmp_path, capsys):
    assert cli.main(["hardware", "new", "l40s", "--from", "h100_sxm", "--arch", "ada",
                     "--out", str(tmp_path)]) == 0
    path = tmp_path / "l40s.yaml"
    text = path.read_text()
    assert "arch: ada" in text and "tc_int4: {value: FILL" in text   # Ada has INT4 and FP8
    with pytest.raises(ConfigError, match="still marked FILL"):
        load_hardware(path)
    capsys.readouterr()
    assert cli.main(["hardware", "show", str(path)]) == 2
    assert "sm_count" in capsys.readouterr().err
    # filled (a source for every value), it loads; a rate for a dtype the arch lacks does not
    filled = text.replace("value: FILL", "value: 64").replace("source: FILL", "source: test")
    path.write_text(filled.replace('description: "FILL', 'description: "test'))
    assert load_hardware(path).arch == "ada"
    hopper = filled.replace("arch: ada", "arch: hopper").replace('description: "FILL', 'description: "t')
    path.write_text(hopper)
    with pytest.raises(ConfigError, match="tc_int4.*hopper tensor cores have no INT4"):
        load_hardware(path)
    # an existing file is never overwritten
    assert cli.main(["hardware", "new", "l40s", "--from", "h100_sxm", "--out", str(path)]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["hardware", "new", "Bad Name", "--from", "h100_sxm"], "name"),
    (["hardware", "new", "x1"], "--from"),
    (["hardware", "new", "x1", "--from", "h100_sxm", "--arch", "volta"], "--arch"),
    (["hardware", "show"], "name"),
    (["hardware", "show", "nope"], "hardware"),
])
def test_bad_input(capsys, argv, match, tmp_path):
    if argv[1] == "new":
        argv = argv + ["--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err


def test_roofline_takes_a_hardware_path(tmp_path):
    """A description outside configs/ (a copy of the H100's under another name) is priced and
    its files are named after its `name`, not built from the path."""
    import dataclasses

    from qsattn import roofline
    from sim.spec import config_dir

    path = tmp_path / "descriptions" / "h.yaml"
    path.parent.mkdir()
    path.write_text((config_dir() / "hardware" / "h100_sxm.yaml").read_text().replace(
        "name: h100_sxm", "name: my_h100"))
    cfg = roofline.load_config(roofline.DEFAULT_CONFIG)
    cfg = dataclasses.replace(cfg, prefill=dataclasses.replace(cfg.prefill, lengths=(1024,)),
                              decode=dataclasses.replace(cfg.decode, lengths=(2048,)))
    roofline.generate(cfg, [str(path)], tmp_path / "out", "test")
    for f in ("roofline_my_h100.png", "roofline_my_h100.csv", "sweep_my_h100.png",
              "sweep_my_h100.csv", "breakdown.csv", "papers.csv"):
        assert (tmp_path / "out" / f).is_file(), f
