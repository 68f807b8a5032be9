import json

import pytest

from parley.data import textfiles
from parley.data.records import Bad
from parley.data.textfiles import json_items, lines
from parley.errors import DataError


def test_jsonl_gives_line_numbers_and_reports_a_broken_line_without_stopping(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n', encoding="utf-8")
    items = list(json_items(path))
    assert [line for line, _ in items] == [1, 3, 4]
    assert items[0][1] == {"a": 1} and items[2][1] == {"a": 3}
    assert isinstance(items[1][1], Bad) and str(items[1][1]).startswith(f"{path}:3: not valid JSON")


def test_json_array_streams_with_start_lines_even_across_buffer_refills(tmp_path, monkeypatch):
    monkeypatch.setattr(textfiles, "CHUNK", 7)  # every record straddles several reads
    rows = [{"n": i, "text": "x" * (i * 5), "num": 12345} for i in range(6)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    items = list(json_items(path))
    assert [v for _, v in items] == rows
    text = path.read_text().splitlines()
    for line, value in items:
        assert text[line - 1].strip() == "{", (line, value)


def test_object_of_named_arrays_and_single_pretty_record(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"train": [{"a": 1},\n {"a": 2}],\n "valid": [\n{"a": 3}]}', encoding="utf-8")
    assert list(json_items(path)) == [(1, {"a": 1}), (2, {"a": 2}), (4, {"a": 3})]
    one = tmp_path / "one.json"
    one.write_text('{\n  "messages": [\n    {"role": "user", "content": "hi"}\n  ]\n}\n', encoding="utf-8")
    assert list(json_items(one)) == [(1, {"messages": [{"role": "user", "content": "hi"}]})]


def test_broken_array_raises_with_its_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"a": 1},\n{"a": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"a.json:3: not valid JSON"):
        list(json_items(path))


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"a": "ok"}\n{"a": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        list(json_items(path))
    with pytest.raises(DataError, match=r":2: not UTF-8"):
        list(lines(path))


def test_lines_keep_their_endings(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\r\n\tb  \nc")
    assert list(lines(path)) == [(1, "a\r\n"), (2, "\tb  \n"), (3, "c")]
