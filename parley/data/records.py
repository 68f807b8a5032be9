"""The one record type every source is turned into, and the checks every record passes.

A `Record` is a conversation: a list of {role, content} messages, where role is `system`, `user` or
`assistant` (a persona or system prompt is a leading `system` message). Raw text that is learned
whole, without the chat template (a source file for continued pre-training), is a record with a
single message of role `text`.

Readers yield `Record`s for good input and `Bad`s for malformed records, so a whole source can be
checked and every problem reported as `file:line: what is wrong`, without stopping at the first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

CHAT_ROLES = ("system", "user", "assistant")
TEXT_ROLE = "text"


@dataclass(frozen=True)
class Record:
    """One training example before tokenization."""

    messages: list[dict]  # [{role, content}] (assistant turns may carry weight: 0 = not learned)
    source: str  # the file, or the built-in set's name, it came from
    line: int | None = None  # 1-based line of the record in `source` (row number for tables)
    meta: dict = field(default_factory=dict)  # where it came from in more detail: path, lang, ...

    @property
    def kind(self) -> str:
        """`text` for raw text learned whole, `chat` for a conversation rendered with the template."""
        return "text" if self.messages and self.messages[0]["role"] == TEXT_ROLE else "chat"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def content_hash(self) -> str:
        """SHA-256 of the messages alone: equal content hashes equal, whatever the source."""
        canonical = json.dumps(self.messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Bad:
    """A malformed record: where it is and what is wrong with it."""

    source: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason}"


def text_record(text: str, source: str, line: int | None = None, **meta) -> Record:
    """A raw-text record (a source file): learned whole, no chat template."""
    return Record([{"role": TEXT_ROLE, "content": text}], source, line, meta)


def chat_record(messages: list, source: str, line: int | None, **meta) -> Record | Bad:
    """Check `messages` and wrap them in a Record, or say what is wrong with them."""
    problem = message_problem(messages)
    if problem:
        return Bad(source, line, problem)
    return Record([_clean(m) for m in messages], source, line, meta)


def message_problem(messages) -> str | None:
    """Why `messages` is not a learnable conversation, or None when it is."""
    if not isinstance(messages, list) or not messages:
        return "no messages: expected a non-empty list of {role, content}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {i + 1} is {type(message).__name__}, not an object with role and content"
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            return f"message {i + 1} has role {role!r}; use one of {', '.join(CHAT_ROLES)}"
        if not isinstance(content, str):
            return f"message {i + 1} ({role}) has no text content"
        if role == "system" and i > 0:
            return f"message {i + 1} is a system message after the first; put the system prompt first"
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if not turns or turns[0] != "user":
        return "the conversation must open with a user message (after any system prompt)"
    if not any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in messages):
        return "no assistant reply to learn from"
    return None


def _clean(message: dict) -> dict:
    """Only the keys the tokenizer reads; `weight` only where it says "do not learn this turn"."""
    clean = {"role": message["role"], "content": message["content"]}
    if message["role"] == "assistant" and message.get("weight", 1) == 0:
        clean["weight"] = 0
    return clean
