"""Byte-level BPE that round-trips code exactly; the saved tokenizer loads in transformers."""

import json
import subprocess
import sys

import pytest

from parley.data.code_files import stdlib_root
from parley.tokenizer_train import (CHATML, TokenizerTrainConfig, round_trip_failures, save, train,
                                    train_and_report)
from parley.errors import ConfigError

TRICKY = [
    "def f():\r\n\treturn 1\r\n",  # CRLF and a tab
    "if x:\n    \tmixed = 1   \n        deep = 2\t\n",  # mixed indentation, trailing spaces and tabs
    "   leading spaces\n\n\n\ntrailing newlines\n\n",
    "lone\rcarriage\r returns\r",
    "naïve café — 東京 🐍 e\u0301 \u00a0nbsp \u200bzero-width \ufeffbom",
    "<|im_end|> literal special-token text <|endoftext|>",
    "",
    " ",
    "\t\t\t",
    "x" * 5000,
]


def stdlib_texts(every=1):
    files = sorted(p for p in stdlib_root().rglob("*.py") if "site-packages" not in p.parts)[::every]
    texts = []
    for path in files:
        try:
            texts.append(path.read_bytes().decode("utf-8"))  # bytes decoded as they are: CRLF kept
        except UnicodeDecodeError:
            pass  # a few test files are deliberately not UTF-8: not text, nothing to round-trip
    return texts


@pytest.fixture(scope="module")
def trained():
    return train(stdlib_texts(every=25) + TRICKY, TokenizerTrainConfig(vocab_size=1500))


def test_round_trip_is_exact_on_tricky_text_and_a_stdlib_sample(trained):
    assert round_trip_failures(trained, TRICKY) == []
    sample = stdlib_texts(every=9)
    assert len(sample) > 150
    assert round_trip_failures(trained, sample) == []
    # The check itself can fail: a tokenizer that normalises whitespace is caught.
    from tokenizers import normalizers

    lossy = train(TRICKY, TokenizerTrainConfig(vocab_size=400))
    lossy.normalizer = normalizers.Strip()
    assert round_trip_failures(lossy, TRICKY) != []


def test_indentation_runs_become_few_tokens(trained):
    ids = trained.encode("        return value\n", add_special_tokens=False).ids
    assert len(ids) <= 5


def test_saved_directory_loads_in_transformers_with_chatml(tmp_path, trained):
    from transformers import AutoTokenizer

    save(trained, tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = TRICKY[1]
    assert loaded(text, add_special_tokens=False)["input_ids"] == trained.encode(text, add_special_tokens=False).ids
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.eos_token == "<|im_end|>" and loaded.chat_template == CHATML
    rendered = loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert loaded.convert_tokens_to_ids("<|im_start|>") != loaded.unk_token_id


def test_train_and_report_measures_held_out_code_and_text(tmp_path, trained):
    from parley.tokenizer_train import as_transformers

    code = tmp_path / "code"
    code.mkdir()
    for i, text in enumerate(stdlib_texts(every=40)):
        (code / f"m{i}.py").write_text(text, encoding="utf-8", newline="")
    report = train_and_report([f"code:{code}", "chatterbot"], tmp_path / "tok",
                              TokenizerTrainConfig(vocab_size=800, held_out=0.1), as_transformers(trained), "other")
    assert report["round_trip"]["failed"] == 0 and report["round_trip"]["checked"] == report["held_out_records"] > 0
    for kind in ("code", "text"):
        row = report["bytes_per_token"][kind]
        assert 1.0 < row["trained"] < 8 and 1.0 < row["other"] < 8 and row["records"] > 0
    assert report["train_records"] > 5 * report["held_out_records"]
    with pytest.raises(ConfigError, match="--vocab-size must exceed"):
        TokenizerTrainConfig(vocab_size=100).check()


def test_cli_tokenizer_train(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    for i, text in enumerate(stdlib_texts(every=60)):
        (code / f"m{i}.py").write_text(text, encoding="utf-8", newline="")
    done = subprocess.run(
        [sys.executable, "-c", "from parley.cli import main; main()", "tokenizer", "train", "--source", f"code:{code}",
         "--out", str(tmp_path / "tok"), "--vocab-size", "600", "--held-out", "0.2", "--compare", ""],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["vocab_size"] == 600 and report["round_trip"]["failed"] == 0
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_round_trip_on_every_stdlib_file(trained):
    texts = stdlib_texts()
    assert len(texts) > 1000
    assert round_trip_failures(trained, texts) == []
