"""Fixtures for the data tests: a small byte-level BPE tokenizer trained here, with a ChatML template."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def chat_tokenizer():
    """A transformers fast tokenizer trained in a second on chatterbot + some stdlib files (ChatML, <|im_end|>)."""
    from parley.data.code_files import stdlib_root
    from parley.data.chatterbot import data_dir
    from parley.tokenizer_train import TokenizerTrainConfig, as_transformers, train

    texts = [p.read_text(encoding="utf-8") for p in sorted((data_dir() / "english").glob("*.yml"))]
    texts += [p.read_text(encoding="utf-8") for p in sorted(stdlib_root().glob("*.py"))[:60]]
    return as_transformers(train(texts, TokenizerTrainConfig(vocab_size=1200)))


@pytest.fixture(scope="session")
def chatml(chat_tokenizer):
    return chat_tokenizer.chat_template


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
