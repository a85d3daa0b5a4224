"""Hostile results stores: every malformed row is reported as corruption with its line number
(or set aside and recomputed), never a crash of the command that reads it; writes are strict
JSON and a refused write changes nothing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsattn.accuracy import ROW_SCHEMA as ACCURACY_ROWS
from qsattn.model import ROW_SCHEMA as MODEL_ROWS
from qsattn.store import NUMBER, CorruptStoreError, ResultStore, by_kind, point_id
from qsattn.validate import ROW_SCHEMA as VALIDATE_ROWS

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
GOOD = {"method": "m", "input": "normal", "causal": False, "L": 64, "seed": 0,
        **{k: 0.5 for k in ACCURACY_ROWS if ACCURACY_ROWS[k] is NUMBER}}

BAD_LINES = [
    ("not json", "not json"), ("truncated", '{"id": "x", "v": 1'), ("array", "[1, 2]"),
    ("string", '"row"'), ("null", "null"), ("no id", '{"v": 1}'), ("empty id", '{"id": ""}'),
    ("int id", '{"id": 3}'), ("long int", '{"id": "x", "v": ' + "7" * 5000 + "}"),
    ("deep", '{"id": "x", "v": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("bad utf8", b'{"id": "x\xff"}'), ("blank", "   "),
    ("lacks fields", '{"id": "x", "method": "m"}'),
    ("wrong type", json.dumps({"id": "x", **GOOD, "L": "64"})),
    ("bool as int", json.dumps({"id": "x", **GOOD, "L": True})),
    ("string metric", json.dumps({"id": "x", **GOOD, "rel_l2": "small"})),
]


@pytest.mark.parametrize("case,line", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_lines_are_corruption(hostile, tmp_path, case, line):
    path = tmp_path / "r.jsonl"
    good = json.dumps({"id": "a", **GOOD}).encode()
    path.write_bytes(good + b"\n" + (line if isinstance(line, bytes) else line.encode()) +
                     b"\n" + json.dumps({"id": "b", **GOOD}).encode() + b"\n")
    e = hostile.error(lambda: ResultStore(path, required=ACCURACY_ROWS), "path",
                      exc=CorruptStoreError, start=True, case=case)
    assert e.problems[0][0] == 2, e.problems
    st_ = hostile.correct(lambda: ResultStore(path, on_corrupt="quarantine",
                                              required=ACCURACY_ROWS),
                          lambda s: sorted(r["id"] for r in s) == ["a", "b"], case=case)
    assert st_.problems[0][0] == 2
    assert (tmp_path / "r.corrupt.jsonl").is_file()


@settings(max_examples=40, **SETTINGS)
@given(row=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                           c, max_size=4),
                        max_leaves=12))
def test_any_json_row(hostile, tmp_path_factory, row):
    """Any JSON value as a line: a row with every required field of the right type loads, any
    other is corruption naming the line."""
    path = tmp_path_factory.mktemp("s") / "r.jsonl"
    path.write_text(json.dumps(row) + "\n")
    ok = isinstance(row, dict) and isinstance(row.get("id"), str) and row["id"] and all(
        k in row and isinstance(row[k], (int, float, type(None))) and not isinstance(row[k], bool)
        for k in ("x",))
    if ok:
        hostile.correct(lambda: ResultStore(path, required={"x": NUMBER}),
                        lambda s: len(s) == 1)
    else:
        hostile.error(lambda: ResultStore(path, required={"x": NUMBER}), "path",
                      exc=CorruptStoreError, start=True)


@pytest.mark.parametrize("schema,row", [
    (by_kind(MODEL_ROWS), {"kind": "ppl", "variant": "v", "start": 0, "length": 8}),
    (by_kind(MODEL_ROWS), {"kind": "mystery"}), (by_kind(MODEL_ROWS), {"variant": "v"}),
    (VALIDATE_ROWS, {"method": "m", "shape": [1, 2], "dtype": "float16", "hardware": "h",
                     "measured_us": 1.0, "pred_us": {}}),
    (VALIDATE_ROWS, {"method": "m"}),
])
def test_command_schemas(hostile, tmp_path, schema, row):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "x", **row}) + "\n")
    hostile.error(lambda: ResultStore(path, required=schema), "path", exc=CorruptStoreError,
                  start=True)


@pytest.mark.parametrize("pid,fields,name", [
    ("", {}, "pid"), (None, {}, "pid"), (3, {}, "pid"), ("a", [], "fields"),
    ("a", {"id": "b"}, "fields"), ("a", {"x": object()}, "fields"), ("a", {"x": {1j}}, "fields"),
    ("a", {"method": "m"}, "fields"),
])
def test_refused_writes_change_nothing(hostile, tmp_path, pid, fields, name):
    path = tmp_path / "r.jsonl"
    st_ = ResultStore(path, required=ACCURACY_ROWS)
    st_.add("first", dict(GOOD))
    before = path.read_bytes()
    hostile.error(lambda: st_.add(pid, fields), name, start=True)
    hostile.correct(lambda: (path.read_bytes(), len(st_), pid in st_ if isinstance(pid, str)
                             else False),
                    lambda r: r == (before, 1, False))


def test_duplicate_write_refused(hostile, tmp_path):
    st_ = ResultStore(tmp_path / "r.jsonl")
    st_.add("a", {"x": 1})
    hostile.error(lambda: st_.add("a", {"x": 2}), "pid", start=True)


def test_strict_json_on_disk(hostile, tmp_path):
    """NaN/Inf are written null (strict parsers accept the file); numpy scalars as numbers."""
    path = tmp_path / "r.jsonl"
    st_ = ResultStore(path)
    row = {"nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "arr": np.arange(3),
           "nested": [{"x": math.nan}], "int": np.int64(7)}
    hostile.correct(lambda: st_.add("a", row),
                    lambda r: r["nan"] is None and r["inf"] is None and r["np"] == 0.5 and
                    r["arr"] == [0, 1, 2] and r["nested"][0]["x"] is None and r["int"] == 7)

    def strict(text):
        def refuse(c):
            raise ValueError(c)
        return json.loads(text, parse_constant=refuse)

    hostile.correct(lambda: [strict(x) for x in path.read_text().splitlines()],
                    lambda rows: rows[0]["nan"] is None)


@pytest.mark.parametrize("path,name", [(3, "path"), (None, "path")])
def test_bad_paths(hostile, tmp_path, path, name):
    hostile.error(lambda: ResultStore(path), name, start=True)
    hostile.error(lambda: ResultStore(tmp_path), "path", start=True, case="directory")
    hostile.error(lambda: ResultStore(tmp_path / "r.jsonl", on_corrupt="ignore"), "on_corrupt",
                  start=True)
    hostile.error(lambda: ResultStore(tmp_path / "r.jsonl", required=3), "required", start=True)


def test_point_id(hostile):
    hostile.error(lambda: point_id(), "parts", start=True)
    hostile.error(lambda: point_id(a=object()), "parts", start=True)
    hostile.correct(lambda: point_id(b=1, a=[1, "x"]), lambda p: p == point_id(a=[1, "x"], b=1))


@pytest.mark.parametrize("which,text", [
    ("bench", "not json"), ("bench", '{"rows": []}'), ("bench", '{"config": {"prefill": {}}}'),
    ("bench", '{"config": {"prefill": {"batch": 1, "heads": 2, "kv_heads": 1, "head_dim": 64}},'
              ' "rows": [{"name": "tune x", "tune": true, "L": 64, "causal": false}]}'),
    ("validation", '{"id": "a", "method": "fp16_flash"}'), ("validation", "[]"),
    ("probe", '{"rows": [{"name": "int8_flash attn-only bm", "kind": "ours"}]}'),
])
def test_stored_measurements_read_by_the_roofline(hostile, tmp_path, which, text):
    """The measured files qsattn roofline compares against: a damaged one is a ValueError
    naming it, not a KeyError from inside the reader."""
    from qsattn import costcheck
    path = tmp_path / f"{which}.json"
    path.write_text(text + "\n")
    kw = {"bench": None, "validation": None, which: path}
    hostile.error(lambda: costcheck.points(**kw), str(path), exc=ValueError)
