"""`prepare` end to end: files on disk in, a datasets dir + manifest out; stats, show and the CLI."""

import json
import os
import subprocess
import sys

import datasets
import pytest

from parley.data.manifest import Manifest
from parley.data.prepare import PrepareConfig, prepare
from parley.data.tokenize import IGNORE
from parley.data.view import render_example, stats
from parley.errors import DataError

from .conftest import write_jsonl


def chats(n, start=0):
    return [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(start, start + n)]


@pytest.fixture
def corpus(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "m.py").write_text("def f():\n\treturn 1  \n")
    return [str(write_jsonl(tmp_path / "a.jsonl", chats(60))), f"code:{code}"]


def run(specs, out, tok, config=None):
    return prepare(specs, out, tok, tok.chat_template, config or PrepareConfig(val_ratio=0.2), model="test-model")


def test_writes_dataset_and_manifest(tmp_path, corpus, chat_tokenizer):
    out = tmp_path / "out"
    manifest = run(corpus, out, chat_tokenizer)
    data = datasets.load_from_disk(str(out))
    assert set(data) == {"train", "validation"} and set(data["train"].column_names) == {"input_ids", "labels", "source"}
    assert len(data["train"]) + len(data["validation"]) == 61
    assert 0 < len(data["validation"]) < 61 * 0.5
    assert Manifest.read(out) == manifest
    on_disk = json.loads((out / "manifest.json").read_text())
    assert [s["spec"] for s in on_disk["sources"]] == corpus and on_disk["sources"][0]["records"] == 60
    assert on_disk["records"] == 61 and on_disk["model"] == "test-model"
    assert on_disk["chat_template"] == chat_tokenizer.chat_template
    assert on_disk["tokenizer"]["vocab_size"] == len(chat_tokenizer) and len(on_disk["tokenizer"]["vocab_fingerprint"]) == 16
    train = on_disk["splits"]["train"]
    assert train["tokens"] == sum(len(x) for x in data["train"]["input_ids"])
    assert train["loss_tokens"] == sum(1 for x in data["train"]["labels"] for t in x if t != IGNORE)
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "code", "out"]  # no temp dirs left behind
    code_row = next(r for s in data.values() for r in s if r["source"].endswith("m.py"))
    assert code_row["labels"] == code_row["input_ids"]


def test_split_is_stable_across_runs_and_by_content(tmp_path, corpus, chat_tokenizer):
    a = run(corpus, tmp_path / "a", chat_tokenizer)
    b = run(corpus, tmp_path / "b", chat_tokenizer)
    assert a.content_hash == b.content_hash and a.splits == b.splits
    # The same records in another order and among others keep their split.
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", chats(40, start=60)[::2] + chats(60)[::-1])
    run([str(shuffled)], tmp_path / "c", chat_tokenizer)

    def validation_texts(path):
        d = datasets.load_from_disk(str(path))["validation"]
        return {chat_tokenizer.decode(r["input_ids"]) for r in d}

    old = {t for t in validation_texts(tmp_path / "a") if "What is" in t}
    new = validation_texts(tmp_path / "c")
    assert old and old <= new
    assert a.content_hash != run(corpus, tmp_path / "d", chat_tokenizer, PrepareConfig(val_ratio=0.5)).content_hash


def test_bad_records_stop_with_count_and_first_ten_and_nothing_written(tmp_path, chat_tokenizer):
    rows = chats(30)
    for i in range(3, 30, 2):  # 14 bad records at lines 4, 6, ..., 30
        rows[i] = {"messages": [{"role": "user", "content": "no reply"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        run([str(path)], out, chat_tokenizer)
    lines = str(e.value).splitlines()
    assert lines[0] == "14 bad records; fix them or pass --skip-bad to leave them out:"
    assert lines[1:11] == [f"  {path}:{n}: no assistant reply to learn from" for n in range(4, 24, 2)]
    assert lines[11] == "  ... and 4 more"
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]

    manifest = run([str(path)], out, chat_tokenizer, PrepareConfig(skip_bad=True))
    assert manifest.bad_skipped == 14 and manifest.records == 16
    assert manifest.bad_examples[0] == f"{path}:4: no assistant reply to learn from"


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path, corpus, chat_tokenizer):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="already exists and is not empty; choose another --out or pass --overwrite"):
        run(corpus, out, chat_tokenizer)
    assert os.listdir(out) == ["keep.txt"]
    run(corpus, out, chat_tokenizer, PrepareConfig(overwrite=True))
    assert "keep.txt" not in os.listdir(out) and (out / "manifest.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "code", "out"]


def test_failure_midway_leaves_no_partial_output(tmp_path, corpus, chat_tokenizer):
    late_error = tmp_path / "z.json"
    late_error.write_text("[" + ",".join(json.dumps(c) for c in chats(5)) + ", {broken", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"z.json:1: not valid JSON"):
        run(corpus + [str(late_error)], out, chat_tokenizer)
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "code", "z.json"]


def test_packing(tmp_path, corpus, chat_tokenizer):
    manifest = run(corpus, tmp_path / "p", chat_tokenizer, PrepareConfig(pack=True, max_len=64, val_ratio=0))
    train = datasets.load_from_disk(str(tmp_path / "p"))["train"]
    assert manifest.splits["train"]["records"] == 61 and len(train) < 61
    for row in train:
        assert len(row["input_ids"]) <= 64 and row["position_ids"][0] == 0
        assert len(row["position_ids"]) == len(row["input_ids"])


def test_stats_and_show(tmp_path, corpus, chat_tokenizer):
    from rich.console import Console

    from parley.data.view import show

    out = tmp_path / "out"
    manifest = run(corpus, out, chat_tokenizer)
    report = stats(out)
    train = report["splits"]["train"]
    assert train["examples"] == manifest.splits["train"]["examples"]
    assert train["loss_share"] == round(manifest.splits["train"]["loss_tokens"] / manifest.splits["train"]["tokens"], 4)
    assert sum(n for _, _, n in train["histogram"]) == train["examples"]
    # The rows span the data's own lengths (not the context window), so the first and last are used.
    histogram, lengths = train["histogram"], train["tokens_per_example"]
    assert (histogram[0][0], histogram[-1][1]) == (lengths["min"], lengths["max"])
    assert histogram[0][2] and histogram[-1][2] and len(histogram) <= 10
    assert all(high + 1 == low for (_, high, _), (low, _, _) in zip(histogram, histogram[1:]))

    row = datasets.load_from_disk(str(out))["train"][0]
    text = render_example(row["input_ids"], row["labels"], chat_tokenizer)
    learned = "".join(text.plain[s.start : s.end] for s in text.spans if s.style == "bold green")
    dimmed = "".join(text.plain[s.start : s.end] for s in text.spans if s.style == "dim")
    assert learned.startswith("It is ") and learned.endswith(".<|im_end|>")
    assert "<|im_start|>user\nWhat is" in dimmed and learned not in dimmed

    console = Console(record=True, width=100, force_terminal=True)
    show(out, 0, console=console)
    output = console.export_text()
    assert "train[0] from" in output and "What is" in output
    with pytest.raises(DataError, match="example 999 is out of range"):
        show(out, 999, console=console)
    with pytest.raises(DataError, match="not a prepared dataset"):
        stats(tmp_path)


def test_stats_totals_count_bad_and_skipped_records_as_left_out():
    from parley.data.view import source_lines

    assert source_lines([{"spec": "chatterbot", "records": 1200, "bad": 0, "skipped": {"malformed": 1}},
                         {"spec": "a.jsonl", "records": 5, "bad": 2, "skipped": {}},
                         {"spec": "b.jsonl", "records": 3, "bad": 0, "skipped": {}}]) == [
        "chatterbot: 1,200 records kept, 1 left out (malformed 1)",
        "a.jsonl: 5 records kept, 2 left out (bad 2)",
        "b.jsonl: 3 records kept",
        "total: 1,208 records kept, 3 left out",
    ]


def test_stats_and_show_print_file_names_as_written(tmp_path, chat_tokenizer):
    # A file name is the user's text, not Rich markup: "[bold]" in it was eaten, "[/]" (in a spec) crashed.
    from rich.console import Console

    from parley.data.view import print_stats, show

    odd = write_jsonl(tmp_path / "chats [bold]x [red]y.jsonl", chats(20))
    out = tmp_path / "out"
    run([str(odd)], out, chat_tokenizer)
    console = Console(record=True, width=300, force_terminal=True)
    print_stats(out, console=console)
    show(out, 0, console=console)
    output = console.export_text()
    assert output.count("chats [bold]x [red]y.jsonl") == 2


@pytest.fixture
def tiny_model_dir(tmp_path, chat_tokenizer):
    from tiny_models import tiny_llama

    path = tmp_path / "tiny-model"
    tiny_llama(chat_tokenizer).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return path


def parley(*args, cwd):
    return subprocess.run([sys.executable, "-c", "from parley.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_prepare_stats_show_and_one_line_errors(tmp_path, corpus, tiny_model_dir):
    out = tmp_path / "ds"
    done = parley("data", "prepare", "--source", corpus[0], "--source", corpus[1], "--model", str(tiny_model_dir),
                  "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{out}: train " in done.stdout and (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["settings"]["max_len"] == 256  # the tiny model's window

    shown = parley("data", "show", str(out), "1", cwd=tmp_path)
    assert shown.returncode == 0 and "train[1] from" in shown.stdout

    failed = parley("data", "prepare", "--source", "nope.jsonl", "--model", str(tiny_model_dir), "--out", "x", cwd=tmp_path)
    assert failed.returncode == 2 and failed.stderr == "parley: error: nope.jsonl: no such file or directory\n"
    assert not (tmp_path / "x").exists()
