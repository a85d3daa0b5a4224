"""qsattn.store: resume, corruption detection with line numbers, quarantine, rerun."""
import json

import pytest

from qsattn.store import CorruptStoreError, ResultStore, point_id


def test_point_id_is_order_independent_and_distinguishes_values():
    assert point_id(a=1, b="x") == point_id(b="x", a=1)
    assert point_id(a=1, b="x") != point_id(a=2, b="x")
    with pytest.raises(ValueError, match="parts"):
        point_id()
    with pytest.raises(TypeError, match="parts"):
        point_id(a=object())


def test_resume_skips_finished_points(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    st = ResultStore(path)
    ids = [point_id(i=i) for i in range(3)]
    for i, pid in enumerate(ids[:2]):
        st.add(pid, {"err": i / 10, "nan": float("nan")})
    again = ResultStore(path)
    assert len(again) == 2 and ids[0] in again and ids[2] not in again
    assert again.get(ids[1])["err"] == 0.1
    assert again.get(ids[1])["nan"] is None and "NaN" not in path.read_text()   # strict JSON
    with pytest.raises(ValueError, match="already"):
        again.add(ids[0], {"err": 0})
    with pytest.raises(ValueError, match="'id'"):
        again.add(ids[2], {"id": "x"})


def test_truncated_last_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "r.jsonl"
    st = ResultStore(path)
    st.add("a", {"x": 1})
    st.add("b", {"x": 2})
    with open(path, "a") as f:
        f.write('{"id": "c", "x": 3')          # interrupted write
    with pytest.raises(CorruptStoreError, match="line 3") as e:
        ResultStore(path)
    assert e.value.problems[0][0] == 3


@pytest.mark.parametrize("bad, why", [("[1, 2]", "JSON object"), ('{"x": 1}', "no non-empty string 'id'"),
                                      ('{"id": "a"}', "duplicate"), ("", "empty")])
def test_bad_middle_lines_are_detected(tmp_path, bad, why):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n' + bad + '\n{"id": "z"}\n')
    with pytest.raises(CorruptStoreError, match=f"line 2: .*{why}"):
        ResultStore(path)


def test_quarantine_sets_bad_lines_aside_and_keeps_good_rows(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "v": 1}\nnot json\n{"id": "b", "v": 2}\n{"id": "c"')
    st = ResultStore(path, on_corrupt="quarantine")
    assert [n for n, _ in st.problems] == [2, 4]
    assert sorted(r["id"] for r in st) == ["a", "b"]
    side = [json.loads(x) for x in (tmp_path / "r.corrupt.jsonl").read_text().splitlines()]
    assert [s["line"] for s in side] == [2, 4] and side[1]["text"] == '{"id": "c"'
    st.add("c", {"v": 3})                       # the cut point is recomputed and appended cleanly
    assert sorted(r["id"] for r in ResultStore(path)) == ["a", "b", "c"]


def test_rerun_starts_empty_and_keeps_previous(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add("a", {})
    st = ResultStore(path, rerun=True)
    assert len(st) == 0 and (tmp_path / "r.prev.jsonl").exists()


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="on_corrupt"):
        ResultStore(tmp_path / "r.jsonl", on_corrupt="ignore")
    with pytest.raises(TypeError, match="path"):
        ResultStore(3)
    with pytest.raises(TypeError, match="fields"):
        ResultStore(tmp_path / "r.jsonl").add("a", {"x": object()})
