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
    for r in rows:
        print(r.paper, r.gpu, r.claimed, r.predicted, r.verdict)
        assert r.verdict in roofline.VERDICTS and r.note
    fa = {r.gpu: r for r in rows if r.paper == "INT-FlashAttention"}
    assert list(fa) == list(roofline.PAPER_GPUS)
    # their kernels, counted: the claim fails on the paper's A100 and holds on a GeForce part
    # (FP16 with FP32 accumulate at half rate)
    assert fa["a100_80gb_sxm"].verdict == "inconsistent"
    assert fa["rtx4090"].verdict == "consistent"
    assert "shipped records" in fa["a100_80gb_sxm"].note and "Measured on an H200" in \
        fa["h200"].note
    for r in fa.values():
        lo, hi = (float(x) for x in r.predicted.rstrip("x").split("-"))
        assert 0 < lo <= hi
    ds = [r for r in rows if r.paper.startswith("Double")]
    assert [r.predicted for r in ds[:2]] == ["10.67x", "14.22x"]
    assert "exceeds it by 1.32x" in ds[0].note and ds[1].verdict == "consistent"
    turbo = [r for r in rows if r.paper.startswith("TurboAttention prefill")]
    assert [r.verdict for r in turbo] == ["consistent", "consistent", "estimate"]
    assert "ANALYTICAL" in turbo[-1].note
    table = roofline.papers_table(roofline.load_config(roofline.DEFAULT_CONFIG))
    assert table.count("\n") == len(rows) + 1


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
