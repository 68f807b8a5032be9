"""manifest.json (manifest.py): a typed round trip, today's files load, other versions and broken
files are refused in one line that names the file and the fix."""

from __future__ import annotations

import json

import pytest

from parley.data.manifest import FILENAME, FORMAT, Manifest
from parley.errors import DataError

# A manifest exactly as `parley data prepare` wrote it before Manifest existed (format 1).
WRITTEN_BY_FORMAT_1 = {
    "format": 1,
    "sources": [{"spec": "chat:a.jsonl", "records": 3, "bad": 1, "skipped": {}}],
    "records": 3,
    "bad_skipped": 1,
    "bad_examples": ["a.jsonl:2: no assistant reply to learn from"],
    "splits": {"train": {"records": 2, "examples": 2, "tokens": 40, "loss_tokens": 12},
               "validation": {"records": 0, "examples": 0, "tokens": 0, "loss_tokens": 0}},
    "length_changes": {"fitted": 0, "dropped_turns": 0, "truncated": 0, "too_long": 0},
    "content_hash": "ab" * 32,
    "model": "smollm2",
    "chat_template": "{{ messages }}",
    "template_fingerprint": "0123456789abcdef",
    "tokenizer": {"name": "tok", "vocab_size": 100, "vocab_fingerprint": "fedcba9876543210", "eos_token": "</s>"},
    "settings": {"max_len": 64, "val_ratio": 0.0, "pack": False, "skip_bad": True, "overwrite": False, "batch": 256},
}


def write_raw(directory, text):
    directory.mkdir(exist_ok=True)
    (directory / FILENAME).write_text(text)
    return directory / FILENAME


def test_round_trip(tmp_path):
    manifest = Manifest(**{**WRITTEN_BY_FORMAT_1, "model": "модель ✓"})
    path = manifest.write(tmp_path)
    assert path == tmp_path / FILENAME and Manifest.read(tmp_path) == manifest


def test_a_manifest_written_before_the_dataclass_still_loads(tmp_path):
    write_raw(tmp_path, json.dumps(WRITTEN_BY_FORMAT_1, indent=1))
    manifest = Manifest.read(tmp_path)
    assert manifest.format == FORMAT == 1
    assert manifest.tokenizer["vocab_fingerprint"] == "fedcba9876543210" and manifest.splits["train"]["tokens"] == 40


@pytest.mark.parametrize("change, found", [
    ({"format": FORMAT + 1}, f"format {FORMAT + 1}"),
    ({"format": None}, "format None"),
    ({"format": "1"}, "format '1'"),
])
def test_another_format_is_refused_naming_the_file_and_the_fix(tmp_path, change, found):
    path = write_raw(tmp_path, json.dumps({**WRITTEN_BY_FORMAT_1, **change}))
    with pytest.raises(DataError) as refused:
        Manifest.read(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{path}: {found}, but this Parley reads format {FORMAT}")
    assert "parley data prepare" in message and "\n" not in message


def test_a_missing_format_is_refused(tmp_path):
    data = {k: v for k, v in WRITTEN_BY_FORMAT_1.items() if k != "format"}
    path = write_raw(tmp_path, json.dumps(data))
    with pytest.raises(DataError, match=f"^{path}: no format version, .*parley data prepare"):
        Manifest.read(tmp_path)


@pytest.mark.parametrize("text, why", [
    ('{"format": 1, "sources": [', "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({**WRITTEN_BY_FORMAT_1, "splits": []}), "splits should be a dict, not list"),
    (json.dumps({k: v for k, v in WRITTEN_BY_FORMAT_1.items() if k != "tokenizer"}), "missing tokenizer"),
])
def test_a_broken_manifest_is_one_line(tmp_path, text, why):
    path = write_raw(tmp_path, text)
    with pytest.raises(DataError) as refused:
        Manifest.read(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{path}: {why}") and "parley data prepare" in message and "\n" not in message


def test_no_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match=r"not a prepared dataset \(no manifest.json\); make one with `parley data prepare`"):
        Manifest.read(tmp_path)


def test_training_refuses_prepared_data_of_another_format(tmp_path):
    from parley.train.dataset import _agreed_template

    write_raw(tmp_path, json.dumps({**WRITTEN_BY_FORMAT_1, "format": FORMAT + 1}))
    with pytest.raises(DataError, match=f"{tmp_path / FILENAME}: format {FORMAT + 1}"):
        _agreed_template([tmp_path], "model template")
