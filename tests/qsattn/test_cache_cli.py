"""qsattn cache list | clear, and the model cache keyed by content (never by mtime)."""
import json
import os

import pytest

from qsattn import cli
from qsattn import model_assets as ma


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "qc"
    monkeypatch.setenv("QSATTN_CACHE", str(root))
    (root / "models" / "Some-fp32-0123456789abcdef").mkdir(parents=True)
    (root / "models" / "Some-fp32-0123456789abcdef" / "model.safetensors").write_bytes(b"x" * 2048)
    (root / "tokens").mkdir()
    (root / "tokens" / "aa.npy").write_bytes(b"t" * 100)
    (root / "calibration" / "tag").mkdir(parents=True)
    (root / "calibration" / "tag" / "c.json").write_text("{}")
    (root / "someone_else").mkdir()
    (root / "someone_else" / "f").write_text("keep")
    return root


def _list(capsys):
    assert cli.main(["cache", "list", "--format", "json"]) == 0
    return {r["entry"]: r for r in json.loads(capsys.readouterr().out)}


def test_list_marks_stale_copies_and_clear_keeps_other_files(cache, capsys):
    rows = _list(capsys)
    assert rows["Some-fp32-0123456789abcdef"]["stale"] is True
    assert rows["Some-fp32-0123456789abcdef"]["bytes"] == 2048
    assert rows["someone_else"]["kind"] == "other"
    assert cli.main(["cache", "clear", "--stale"]) == 0
    capsys.readouterr()
    rows = _list(capsys)
    assert "Some-fp32-0123456789abcdef" not in rows and "aa.npy" in rows
    assert cli.main(["cache", "clear", "--only", "tokens"]) == 0
    capsys.readouterr()
    assert "aa.npy" not in _list(capsys)
    assert cli.main(["cache", "clear"]) == 0
    capsys.readouterr()
    assert set(_list(capsys)) == {"someone_else"}
    assert (cache / "someone_else" / "f").read_text() == "keep"
    assert cli.main(["cache", "clear", "--stale", "--only", "tokens"]) == 2


def test_model_copy_is_keyed_by_content(cache, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert ma.fp32_dir(a).name.replace("a-", "") == ma.fp32_dir(b).name.replace("b-", "")
    before = ma.fp32_dir(a)
    os.utime(a, (1, 1))                          # a new mtime (a reinstall) keeps the key
    assert ma.fp32_dir(a) == before
    a.write_bytes(b"other bytes")                # new content, new key
    assert ma.fp32_dir(a) != before
    memo = json.loads((cache / "models" / "digests.json").read_text())
    assert len([k for k in memo if k.startswith(str(a.resolve()))]) == 1
