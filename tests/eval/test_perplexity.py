"""Sliding-window perplexity on tiny random models: every token once, with the right context."""

from __future__ import annotations

import json
import math

import pytest
import torch

from parley.errors import ConfigError
from parley.eval.perplexity import (
    PerplexityConfig, Tally, document_nll, documents, encode, perplexity_results, score_documents,
)

TEXT = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # five, in plain words\n"


def logprob_of(model, context: list[int], target: int) -> float:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([context])).logits[0, -1]
    return float(torch.log_softmax(logits.float(), dim=-1)[target])


def test_one_window_equals_the_models_own_loss(llama_loaded):
    model, tok = llama_loaded.model, llama_loaded.tokenizer
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    full = torch.tensor([[tok.bos_token_id, *ids]])
    with torch.inference_mode():
        loss = float(model(input_ids=full, labels=full).loss)  # mean over the len(ids) shifted targets
    nll, scored, windows = document_nll(model, ids, tok.bos_token_id, window=256, stride=128)
    assert (scored, windows) == (len(ids), 1)
    assert nll == pytest.approx(loss * len(ids), rel=1e-5)


@pytest.mark.parametrize("window, stride", [(8, 3), (8, 7), (5, 1), (12, 6)])
def test_sliding_windows_score_each_token_once_with_the_context_of_its_window(llama_loaded, window, stride):
    model, tok = llama_loaded.model, llama_loaded.tokenizer
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:20]
    tokens = [tok.bos_token_id, *ids]
    expected = 0.0
    for p in range(1, len(tokens)):
        # Token p is scored by the first window that reaches past it, with that window's context.
        begin = next(b for b in range(0, len(tokens), stride) if min(b + window, len(tokens)) > p)
        expected -= logprob_of(model, tokens[begin:p], tokens[p])
    nll, scored, windows = document_nll(model, ids, tok.bos_token_id, window, stride)
    assert scored == len(ids)
    assert windows == math.ceil((len(tokens) - window) / stride) + 1
    assert nll == pytest.approx(expected, rel=1e-5)


def test_results_report_perplexity_and_bits_per_byte():
    tally = Tally(nll=200.0, tokens=100, bytes=400, documents=2, windows=3)
    results = perplexity_results(tally, PerplexityConfig(), model="m")
    assert results["metrics"]["perplexity"] == pytest.approx(math.exp(2.0))
    assert results["metrics"]["bits_per_byte"] == pytest.approx(200.0 / math.log(2) / 400)


def test_score_documents_counts_tokens_and_bytes_and_stops_at_max_tokens(llama_loaded):
    texts = ["héllo wörld, how are you?", "", TEXT, TEXT]
    encoded = encode(llama_loaded, texts)
    assert len(encoded) == 3  # the empty text is not a document
    seen = []
    tally = score_documents(llama_loaded, encoded, PerplexityConfig(window=16, stride=8), on_tokens=seen.append)
    assert tally.tokens == sum(len(ids) for _, ids in encoded) == sum(seen)
    assert tally.bytes == sum(len(t.encode()) for t, _ in encoded) and tally.documents == 3
    capped = score_documents(llama_loaded, encoded, PerplexityConfig(max_tokens=1))
    assert capped.documents == 1


def test_documents_from_plain_files_and_data_sources(tmp_path):
    code = tmp_path / "held_out.py"
    code.write_text(TEXT)
    assert list(documents(str(code))) == [TEXT]
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}) + "\n")
    assert list(documents(f"chat:{chats}")) == ["Hi\n\nHello!"]
    everything = list(documents("chatterbot"))
    held_out = list(documents("chatterbot", split="validation"))
    assert 0 < len(held_out) < len(everything) / 10


def test_bad_settings_name_the_flag():
    with pytest.raises(ConfigError, match="--stride"):
        PerplexityConfig(window=16, stride=16)
    with pytest.raises(ConfigError, match="--split"):
        PerplexityConfig(split="test")
