"""Every chat format, read through `--source` specs from small files written here."""

import csv
import json

import pytest

from parley.data.records import Bad, Record
from parley.data.sources import parse
from parley.errors import ConfigError, DataError

from .conftest import write_jsonl


def read(spec):
    items = list(parse(spec).read())
    return [i for i in items if isinstance(i, Record)], [str(i) for i in items if isinstance(i, Bad)]


def test_openai_messages_jsonl_with_parts_developer_and_weight(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "developer", "content": "Be terse."},
                      {"role": "user", "content": [{"type": "text", "text": "2+"}, {"type": "text", "text": "2?"}]},
                      {"role": "assistant", "content": "5", "weight": 0},
                      {"role": "user", "content": "Really?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "not this layout"},
    ])
    records, bad = read(f"messages:{path}")
    assert records[0].messages == [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "5", "weight": 0}, {"role": "user", "content": "Really?"},
        {"role": "assistant", "content": "4"},
    ]
    assert records[0].where == f"{path}:1"
    assert bad == [f"{path}:2: no assistant reply to learn from", f'{path}:3: expected an object with a "messages" list']


def test_sharegpt_json_array_detected_without_a_prefix(tmp_path):
    path = tmp_path / "s.json"
    rows = [
        {"system": "You are Bob.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "?"}]},
    ]
    path.write_text("[\n" + ",\n\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    records, bad = read(str(path))
    assert records[0].messages == [{"role": "system", "content": "You are Bob."},
                                   {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
    assert len(bad) == 1 and bad[0].startswith(f"{path}:4: turn 2 is from 'robot'")


PERSONA_TXT = """\
1 your persona: i like to remodel homes.
2 your persona: i like to go hunting.
3 partner's persona: i am a cat.
4 hi , how are you doing ?\tyou must be very fast . hunting is fun .\t\tno|you must be very fast . hunting is fun .
5 i am ! for my hobby i like canning .\ti also remodel homes .\t\ta|b
1 your persona: i love tea.
2 __SILENCE__\thello ! want some tea ?
3 sure .\there you go .
1 your persona: broken dialogue.
2 this line has no reply
"""


def test_personachat_parlai_text(tmp_path):
    path = tmp_path / "train_self_original.txt"
    path.write_text(PERSONA_TXT, encoding="utf-8")
    records, bad = read(f"chat:{path}")
    assert len(records) == 2
    first = records[0]
    assert first.line == 1
    assert first.messages[0] == {"role": "system", "content": "Your persona:\n- i like to remodel homes.\n- i like to go hunting."}
    assert first.messages[1:] == [
        {"role": "user", "content": "hi , how are you doing ?"},
        {"role": "assistant", "content": "you must be very fast . hunting is fun ."},
        {"role": "user", "content": "i am ! for my hobby i like canning ."},
        {"role": "assistant", "content": "i also remodel homes ."},
    ]
    assert records[1].messages[1] == {"role": "user", "content": "__SILENCE__"}  # the bot spoke first
    assert bad == [f"{path}:10: expected the partner's line, a TAB, and the reply"]


def test_personachat_json_both_layouts(tmp_path):
    parlai = tmp_path / "personachat_self_original.json"
    parlai.write_text(json.dumps({"train": [{
        "personality": ["i like tea ."],
        "utterances": [
            {"candidates": ["x", "hello ."], "history": ["hi ."]},
            {"candidates": ["y", "fine ."], "history": ["hi .", "hello .", "how are you ?"]},
        ]}], "valid": []}, indent=1), encoding="utf-8")
    records, bad = read(f"personachat:{parlai}")
    assert not bad and records[0].messages == [
        {"role": "system", "content": "Your persona:\n- i like tea ."},
        {"role": "user", "content": "hi ."}, {"role": "assistant", "content": "hello ."},
        {"role": "user", "content": "how are you ?"}, {"role": "assistant", "content": "fine ."},
    ]
    hub = write_jsonl(tmp_path / "hub.jsonl", [{"personality": ["p ."], "history": ["a", "b", "c"], "candidates": ["z", "d"]}])
    records, _ = read(str(hub))
    assert [m["role"] for m in records[0].messages] == ["system", "user", "assistant", "user", "assistant"]


def test_csv_with_named_and_joined_columns(tmp_path):
    path = tmp_path / "qa.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "context", "answer"])
        w.writerow(["What is 2+2?", "", "4"])
        w.writerow(["Multi\nline?", "ctx", "yes"])
        w.writerow(["No answer", "", ""])
    records, bad = read(f"table:{path},prompt=question+context,response=answer")
    assert records[0].messages == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert records[1].messages[0]["content"] == "Multi\nline?\n\nctx" and records[1].line == 3
    assert bad == [f"{path}:5: empty response (answer)"]


def test_missing_column_is_one_line(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("q,a\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read(f"table:{path},prompt=question,response=a")
    assert str(e.value) == f"{path}: no column 'question' (columns: q, a)"
    with pytest.raises(DataError, match="no prompt/response columns found"):
        read(str(path))


def test_parquet_with_default_columns_and_a_system_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["Add", "Sub"], "input": ["1 2", ""], "output": ["3", "?"],
                             "system": ["math", ""]}), path)
    records, bad = read(str(path))
    assert records[0].messages == [{"role": "system", "content": "math"}, {"role": "user", "content": "Add\n\n1 2"},
                                   {"role": "assistant", "content": "3"}]
    assert records[1].line == 2 and records[1].messages[0] == {"role": "user", "content": "Sub"}


def test_hf_dataset_from_a_local_directory_offline(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "my_dataset" / "data"
    folder.mkdir(parents=True)
    msgs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    pq.write_table(pa.table({"messages": msgs}), folder / "train-00000-of-00001.parquet")
    records, bad = read(f"hf:{tmp_path / 'my_dataset'}")
    assert records[0].messages == msgs[0] and records[0].where == f"hf:{tmp_path / 'my_dataset'}:1"
    with pytest.raises(DataError, match=r"^hf:no-such/dataset-xyz: cannot load the dataset"):
        read("hf:no-such/dataset-xyz")


def test_chatterbot_builtin_is_offline_and_sizeable():
    src = parse("chatterbot")
    records = list(src.read())
    assert len(records) > 1000 and all(isinstance(r, Record) for r in records)
    assert src.skipped == {"malformed": 1}  # the package's own trivia.yml entry
    assert records[0].messages[0]["role"] == "user" and records[0].source.endswith("ai.yml")
    with pytest.raises(DataError, match="no language 'klingon'; choose one of"):
        list(parse("chatterbot,lang=klingon").read())


def test_one_line_errors_for_unusable_sources(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    odd = tmp_path / "notes.docx"
    odd.write_text("x", encoding="utf-8")
    text = tmp_path / "story.txt"
    text.write_text("once upon a time\n", encoding="utf-8")
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"foo": 1}])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": []}])
    cases = {
        str(empty): "no records found",
        str(odd): "unknown format '.docx'",
        f"chat:{text}": "not the Persona-Chat text format",  # without chat: it is prose (tests/data/test_data_text_sources.py)
        str(unknown): "unknown record layout (keys: foo)",
        str(tmp_path / "missing.jsonl"): "no such file or directory",
        f"code:{chat}": "its records look like messages, not code",
    }
    for spec, expected in cases.items():
        with pytest.raises(DataError) as e:
            read(spec)
        assert expected in str(e.value) and "\n" not in str(e.value), (spec, str(e.value))
    with pytest.raises(ConfigError, match="unknown format 'jsnl'"):
        parse("jsnl:x.jsonl")
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse("chatterbot,colour=red")
