import os
from pathlib import Path

import pytest

from qsattn import roofline
from sim.schema import ConfigError

GOLDEN = Path(__file__).parent / "golden" / "roofline_prefill_a100.md"


def small_cfg():
    cfg = roofline.load_config(roofline.DEFAULT_CONFIG)
    import dataclasses
    return dataclasses.replace(
        cfg, hardware=("h100_sxm",),
        prefill=dataclasses.replace(cfg.prefill, lengths=(1024, 4096)),
        decode=dataclasses.replace(cfg.decode, lengths=(2048, 8192)), breakdown_length=4096)


def test_golden_prefill_table():
    """Regression of one report table; regenerate with QSATTN_UPDATE_GOLDEN=1 after an
    intended model change (and say why in the commit)."""
    cfg = roofline.load_config(roofline.DEFAULT_CONFIG)
    got = roofline.sweep_table(cfg, "a100_80gb_sxm", "prefill") + "\n"
    if os.environ.get("QSATTN_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    print(got)
    assert got == GOLDEN.read_text()


def test_papers_rows():
    rows = roofline.papers(roofline.load_config(roofline.DEFAULT_CONFIG))
    papers = [r.paper for r in rows]
    assert papers.count("INT-FlashAttention") == 5
    assert any("TurboAttention" in p for p in papers)
    ds = [r for r in rows if r.paper.startswith("Double")]
    assert "exceeds what the bytes allow by 1.32x" in ds[-1].note
    for r in rows:
        float(r.predicted.rstrip("x"))


def test_generate_writes_report(tmp_path):
    text = roofline.generate(small_cfg(), ["h100_sxm"], tmp_path, "qsattn roofline --x")
    assert text.startswith("# Analytical roofline")
    assert "Regenerate with: `qsattn roofline --x`" in text
    for f in ("README.md", "roofline_h100_sxm.png", "sweep_h100_sxm.png", "breakdown.png"):
        assert (tmp_path / f).stat().st_size > 1000, f


def test_unknown_hardware_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="hardware"):
        roofline.generate(small_cfg(), ["a200"], tmp_path / "out", "x")
    assert not (tmp_path / "out").exists()


def test_config_errors(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(roofline.DEFAULT_CONFIG.read_text() + "colour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        roofline.load_config(p)
    p.write_text(roofline.DEFAULT_CONFIG.read_text().replace("breakdown_length: 8192", ""))
    with pytest.raises(ConfigError, match="breakdown_length"):
        roofline.load_config(p)


def test_cli_routes_roofline():
    from qsattn.cli import build_parser
    args = build_parser("roofline").parse_args(["roofline", "--hardware", "h200"])
    assert args.hardware == "h200" and args._module == "qsattn.roofline"
