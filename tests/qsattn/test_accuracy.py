"""qsattn accuracy --quick end to end into a tmp dir, resume, and the claim line."""
import json

import pytest

from qsattn import cli
from qsattn.accuracy import DEFAULT_CONFIG, load_study


def test_quick_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "acc"
    assert cli.main(["accuracy", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = (out / "README.md").read_text()
    assert text.startswith("# Accuracy") and "Regenerate with: `qsattn accuracy --out" in text
    assert "ratio **" in text                                   # the INT-FlashAttention claim line
    assert list(out.glob("*.png"))
    rows = [json.loads(x) for x in (out / "results_quick.jsonl").read_text().splitlines()]
    study = load_study(DEFAULT_CONFIG, quick=True)
    assert len(rows) == len(list(study.points()))
    by = {(r["method"], r["input"], r["causal"]): r for r in rows}
    fp16 = by[("fp16_flash", "normal", False)]
    print({m: by[(m, "normal", False)]["rel_l2"] for m in ("fp16_flash", "int8_flash", "turbo_int4")})
    assert fp16["rel_l2"] < by[("int8_flash", "normal", False)]["rel_l2"]
    assert 0 < by[("double_sparse_1_4", "normal", True)]["recall"] <= 1
    assert by[("turbo_mixed", "normal", False)]["cache_ratio"] > 1
    assert fp16["kl"] is None and by[("double_sparse_1_4", "normal", False)]["kl"] >= 0   # NaN: null
    # resume: a second run computes nothing new (the file is unchanged)
    before = (out / "results_quick.jsonl").read_bytes()
    assert cli.main(["accuracy", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert (out / "results_quick.jsonl").read_bytes() == before
    # a truncated last line is reported and that one point recomputed
    lines = before.decode().splitlines()
    (out / "results_quick.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    capsys.readouterr()
    assert cli.main(["accuracy", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert f"line {len(lines)} set aside" in capsys.readouterr().out
    assert len((out / "results_quick.jsonl").read_text().splitlines()) == len(lines)


def test_bad_config_is_named(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("shape: {}\n")
    with pytest.raises(ValueError, match=r"x\.yaml: field .shape\.batch.: expected an integer"):
        load_study(bad)
    with pytest.raises(FileNotFoundError, match="--config"):
        load_study(tmp_path / "missing.yaml")
    assert cli.main(["accuracy", "--config", str(bad), "--out", str(tmp_path)]) == 2
