"""Where a conversation to explain comes from, for `parley explain`: a stored conversation, a line of a
JSONL file, or a prompt typed on the command line (its reply is generated greedily first).

    messages, reply = from_store(store, "3f2a")           # its last assistant reply and what came before
    messages, reply = from_jsonl("dialogs.jsonl", 3)      # line 3: {"messages": [...]} (reply: the last assistant turn)
    messages = [{"role": "user", "content": text}]; reply = generate(loaded, messages, 256)

A JSONL record without a final assistant turn, and a `--prompt`, get their reply from the same weights
(greedy), so what is explained is what the model says.
"""

from __future__ import annotations

import json
from pathlib import Path

from parley.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant", "tool", "developer")


def split_last_reply(messages: list[dict], where: str) -> tuple[list[dict], str | None]:
    """(the messages before the last assistant turn, that turn) or (messages, None) when the last turn
    is not the assistant's."""
    if messages and messages[-1]["role"] == "assistant":
        if not messages[:-1]:
            raise DataError(f"{where}: the conversation is only an assistant reply: there is no prompt to explain it by")
        return messages[:-1], messages[-1]["content"]
    return messages, None


def from_store(store, ref: str) -> tuple[list[dict], str | None]:
    cid = store.resolve(ref)
    conversation = store.get(cid)
    messages, _ = store.thread(cid)
    system = [{"role": "system", "content": conversation.system}] if conversation.system else []
    messages = system + [{"role": m["role"], "content": m["content"]} for m in messages]
    if not messages:
        raise ConfigError(f"conversation {cid} has no messages yet")
    return split_last_reply(messages, f"conversation {cid}")


def from_jsonl(path: str | Path, line: int = 1) -> tuple[list[dict], str | None]:
    """Record `line` (1-based) of a JSONL file of {"messages": [{role, content}, ...]}."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            text = next((row for n, row in enumerate(f, 1) if n == line), None)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if text is None:
        raise DataError(f"{path}: has no line {line}")
    where = f"{path}:{line}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    messages = record.get("messages") if isinstance(record, dict) else record
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: messages[{i}] needs a role ({', '.join(ROLES)}) and string content")
    return split_last_reply([{"role": m["role"], "content": m["content"]} for m in messages], where)


def generate(loaded, messages: list[dict], max_new_tokens: int) -> str:
    """The model's own greedy reply to `messages`."""
    from parley.engine import LocalEngine, SamplingParams

    reply = LocalEngine(loaded, prefix_cache_mb=0).generate(messages, SamplingParams(temperature=0,
                                                                                      max_new_tokens=max_new_tokens))
    if not reply.strip():
        raise ConfigError("the model's reply is empty: there is nothing to explain (try another prompt)")
    return reply


def run(loaded, messages: list[dict], reply: str | None, config, contrast_with: str | None = None,
        span_text: str | None = None, max_new_tokens: int = 256) -> dict:
    """The export document (export.to_document) for `reply` (generated when None) to `messages`."""
    from dataclasses import replace

    from parley.explain.attribution import contrast, explain
    from parley.explain.export import to_document
    from parley.explain.layout import lay_out

    if reply is None:
        reply = generate(loaded, messages, max_new_tokens)
    layout = lay_out(loaded, messages, reply)
    if span_text:
        config = replace(config, span=layout.span_of(span_text))
    explanation = explain(loaded, layout, config)
    extra = None
    if contrast_with is not None:
        scores, logp_x, logp_y = contrast(loaded, layout, explanation.span, contrast_with)
        extra = {"alternative": contrast_with, "logprob_span": logp_x, "logprob_alternative": logp_y,
                 "scores": scores}
    return to_document(explanation, model=loaded.spec, template=loaded.template, contrast=extra)
