"""Perplexity and bits per byte of a model on text or code, with sliding windows and a stride.

    parley eval perplexity --model smollm2 --source notes.txt --source code:~/src/proj
    parley eval perplexity --model runs/tuned/final --source chatterbot --split validation
    parley eval perplexity --model runs/prose/final --source text:~/notes-heldout     (a folder of prose)

How it is counted (as lm-evaluation-harness's rolling log-likelihood): each document is tokenized
whole, a BOS token (EOS when the tokenizer has none) is put in front so the first token is scored
too, and windows of `window` tokens start every `stride` tokens; each window scores only the tokens
no earlier window scored, so every token is scored exactly once, with at least `window - stride`
tokens of context once the document is longer than a window. Reported:
    perplexity     exp(total negative log-likelihood / tokens): depends on the tokenizer
    bits_per_byte  total NLL in bits / UTF-8 bytes of the text: comparable across tokenizers

Sources: a plain file (.txt, .py, .md, ... anything that is not one of the data formats) is one
document; anything else is a `parley data` source spec (see parley/data/sources.py): raw-text
records are documents as they are, chat records are their messages' contents joined by blank
lines (no chat template, so models with different templates stay comparable).
`split="validation"` keeps only the records `parley data prepare` holds out (by content hash).

Limits: local models only (a remote API does not return the log-probabilities of given text);
one window at a time (no batching), so a long corpus takes a while on CPU; `max_tokens` stops early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from parley.errors import ConfigError

DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".yml", ".yaml")


@dataclass(frozen=True)
class PerplexityConfig:
    window: int = 1024  # tokens per forward pass (capped at the model's context window)
    stride: int = 512  # tokens between window starts; each window scores at most this many new tokens
    split: str = "all"  # all, or validation: only records `parley data prepare` holds out
    val_ratio: float = 0.05  # the held-out share, as in `parley data prepare`
    max_tokens: int = 0  # stop after the document that brings the count to this (0 = all)

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"--window must be at least 2 tokens, got {self.window}")
        if not 1 <= self.stride < self.window:
            raise ConfigError(f"--stride must be between 1 and window - 1 ({self.window - 1}), got {self.stride}")
        if self.split not in ("all", "validation"):
            raise ConfigError(f"--split must be all or validation, got {self.split!r}")


@dataclass
class Tally:
    nll: float = 0.0  # nats, summed over scored tokens
    tokens: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents scored
    documents: int = 0
    windows: int = 0


def documents(spec: str, split: str = "all", val_ratio: float = 0.05) -> Iterator[str]:
    """The texts of a source: a plain file whole, or the records of a `parley data` source."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() not in DATA_SUFFIXES:
        yield path.read_text(encoding="utf-8")
        return
    from parley.data.prepare import in_validation
    from parley.data.records import Bad
    from parley.data.sources import parse

    for record in parse(spec).read():
        if isinstance(record, Bad) or (split == "validation" and not in_validation(record, val_ratio)):
            continue
        yield "\n\n".join(m["content"] for m in record.messages)


def document_nll(model, ids: list[int], prefix_id: int, window: int, stride: int) -> tuple[float, int, int]:
    """(NLL in nats, tokens scored, windows) of `ids` after `prefix_id`, by sliding windows."""
    import torch

    tokens = [prefix_id, *ids]
    device = next(model.parameters()).device
    nll, scored, windows, done = 0.0, 0, 0, 1  # tokens[:done] are scored (tokens[0] is context only)
    for begin in range(0, len(tokens) - 1, stride):
        end = min(begin + window, len(tokens))
        chunk = torch.tensor([tokens[begin:end]], device=device)
        with torch.inference_mode():
            logits = model(input_ids=chunk).logits[0, :-1]  # (T-1, V): row i predicts chunk[i + 1]
        new = done - (begin + 1)  # rows before this were scored by an earlier window
        logprobs = torch.log_softmax(logits[new:].float(), dim=-1)
        targets = chunk[0, done - begin : end - begin]
        nll -= float(logprobs.gather(1, targets[:, None]).sum())
        scored += end - done
        windows += 1
        done = end
        if end == len(tokens):
            break
    return nll, scored, windows


def encode(loaded, texts: list[str]) -> list[tuple[str, list[int]]]:
    """(text, token ids) for each non-empty document, tokenized without special tokens."""
    encoded = loaded.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [(text, ids) for text, ids in zip(texts, encoded) if ids]


def score_documents(
    loaded, encoded: list[tuple[str, list[int]]], config: PerplexityConfig,
    on_tokens: Callable[[int], None] | None = None,
) -> Tally:
    """Sum the NLL of every document; `on_tokens(n)` after each one, for a progress bar."""
    tokenizer = loaded.tokenizer
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    window = min(config.window, loaded.context_window)
    stride = min(config.stride, window - 1)
    tally = Tally()
    for text, ids in encoded:
        nll, scored, windows = document_nll(loaded.model, ids, prefix, window, stride)
        tally.nll += nll
        tally.tokens += scored
        tally.bytes += len(text.encode("utf-8"))
        tally.documents += 1
        tally.windows += windows
        if on_tokens is not None:
            on_tokens(scored)
        if config.max_tokens and tally.tokens >= config.max_tokens:
            break
    return tally


def evaluate(loaded, model: str, sources: list[str], config: PerplexityConfig, out: str | Path) -> tuple[dict, Path, Path]:
    """Read the sources, score them with a progress bar, and write the results (JSON + Markdown)."""
    from parley.eval.report import progress, write_results

    texts = [text for spec in sources for text in documents(spec, config.split, config.val_ratio)]
    encoded = encode(loaded, texts)
    if not encoded:
        raise ConfigError(f"no text to score in {', '.join(sources)} (split={config.split})")
    total = sum(len(ids) for _, ids in encoded)
    started = time.monotonic()
    with progress("perplexity", min(total, config.max_tokens) if config.max_tokens else total) as advance:
        tally = score_documents(loaded, encoded, config, on_tokens=advance)
    results = perplexity_results(tally, config, model=model, sources=sources)
    results["details"]["seconds"] = round(time.monotonic() - started, 1)
    return (results, *write_results(results, out))


def perplexity_results(tally: Tally, config: PerplexityConfig, **about: object) -> dict:
    return {
        "kind": "perplexity",
        **about,
        "settings": {k: getattr(config, k) for k in ("window", "stride", "split", "val_ratio", "max_tokens")},
        "metrics": {
            "perplexity": math.exp(tally.nll / tally.tokens),
            "bits_per_byte": tally.nll / math.log(2) / tally.bytes,
        },
        "details": {
            "documents": tally.documents, "tokens": tally.tokens, "bytes": tally.bytes,
            "windows": tally.windows, "nll_nats": tally.nll,
        },
    }
