"""Chat records from JSON objects: the layouts people actually have, each into one `Record`.

    messages     {"messages": [{"role", "content"}, ...]}  the OpenAI fine-tuning format; content may be
                 a list of {"type": "text", "text"} parts; `developer` is read as `system`; an
                 assistant turn with "weight": 0 is kept as context but not learned; tool use as in
                 OpenAI's format (a top-level "tools" list, assistant "tool_calls", "tool" results)
                 is written out in Parley's one tool format (parley/tools.py), the one `parley serve`
                 shows the model, so the assistant's calls are learned as the text it will be asked for
    sharegpt     {"conversations": [{"from", "value"}, ...]} (human/gpt/system, plus common aliases),
                 with an optional top-level "system"
    personachat  {"personality": [...], "utterances": [{"history": [...], "candidates": [...]}]}
                 (ParlAI's JSON: the last utterance's history plus its last candidate is the dialogue)
                 or one row per turn {"personality", "history", "candidates"} (the Hub's layout);
                 persona lines become the system prompt (a `__SILENCE__` partner line, meaning the bot
                 spoke first, is kept as the user's turn: chat templates expect the user to open)
    pairs        a prompt column and a response column (+ optional system column), as in CSV, Parquet,
                 Alpaca-style JSON; see `Columns`

`detect(obj)` names the layout of one object, so files need no format prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.data.records import Bad, Record, chat_record
from parley.tools import plain_messages

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
}  # fmt: skip


def detect(obj) -> str | None:
    """The chat layout of one JSON object (`messages`, `sharegpt`, `personachat`, `pairs`), or None."""
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "personality" in obj or "utterances" in obj:
        return "personachat"
    if Columns().resolve(obj.keys()) is not None:
        return "pairs"
    return None


def from_messages(obj, source: str, line: int | None) -> Record | Bad:
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list):
        return Bad(source, line, 'expected an object with a "messages" list')
    turns = []
    for message in messages:
        if isinstance(message, dict):
            message = dict(message, content=_text(message.get("content")))
            if message.get("role") == "developer":
                message["role"] = "system"
        turns.append(message)
    tools = obj.get("tools")
    if tools or any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in turns):
        try:
            turns = plain_messages(turns, tools)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return Bad(source, line, f"malformed tool use ({type(e).__name__}: {e}): expected OpenAI's shape, "
                                     'tool_calls [{"function": {"name", "arguments"}}] and tools [{"function": {...}}]')
    return chat_record(turns, source, line)


def from_sharegpt(obj, source: str, line: int | None) -> Record | Bad:
    turns = obj.get("conversations") if isinstance(obj, dict) else None
    if not isinstance(turns, list):
        return Bad(source, line, 'expected an object with a "conversations" list')
    messages = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        messages.append({"role": "system", "content": obj["system"]})
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return Bad(source, line, f'turn {i} is not an object with "from" and "value"')
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            return Bad(source, line, f'turn {i} is from {turn["from"]!r}; expected one of {", ".join(SHAREGPT_ROLES)}')
        messages.append({"role": role, "content": turn["value"]})
    return chat_record(messages, source, line)


def from_personachat(obj, source: str, line: int | None) -> Record | Bad:
    if not isinstance(obj, dict):
        return Bad(source, line, "expected an object with personality and utterances")
    persona = obj.get("personality") or []
    if "utterances" in obj:
        utterances = obj["utterances"]
        if not isinstance(utterances, list) or not utterances:
            return Bad(source, line, '"utterances" is empty or not a list')
        last = utterances[-1]
        history, candidates = last.get("history"), last.get("candidates")
    else:
        history, candidates = obj.get("history"), obj.get("candidates")
    if not isinstance(history, list) or not isinstance(candidates, list) or not candidates:
        return Bad(source, line, 'expected "history" and a non-empty "candidates" list (the last is the reply)')
    return chat_record(persona_dialogue(persona, history, candidates[-1]), source, line)


def persona_dialogue(persona: list[str], history: list[str], reply: str) -> list[dict]:
    """System prompt from the persona; history alternates and ends with the partner (user) speaking."""
    messages = [{"role": "system", "content": persona_prompt(persona)}] if persona else []
    # Roles run backwards from the reply: the turn before it is always the partner's.
    n = len(history)
    for i, text in enumerate(history):
        role = "user" if (n - i) % 2 == 1 else "assistant"
        messages.append({"role": role, "content": text})
    messages.append({"role": "assistant", "content": reply})
    return messages


def persona_prompt(persona: list[str]) -> str:
    return "Your persona:\n" + "\n".join(f"- {line.strip()}" for line in persona)


@dataclass(frozen=True)
class Columns:
    """Which columns (or JSON keys) hold the prompt, the response and an optional system prompt.

    Each name may join several columns with `+` (`prompt=instruction+input`: non-empty parts are
    joined with a blank line). Unset names are looked for among common spellings."""

    prompt: str | None = None  # column(s) with the user's message
    response: str | None = None  # column with the assistant's reply
    system: str | None = None  # optional column with a system prompt / persona

    PROMPTS = ("prompt", "instruction", "question", "input", "query", "user", "context")
    RESPONSES = ("response", "output", "answer", "completion", "assistant", "reply", "target")

    def resolve(self, available) -> tuple[list[str], str, list[str]] | None:
        """(prompt columns, response column, system columns) present in `available`, or None."""
        available = list(available)
        prompt = _names(self.prompt) if self.prompt else _first(self.PROMPTS, available)
        response = self.response or next((c for c in self.RESPONSES if c in available), None)
        system = _names(self.system) if self.system else ([c for c in ("system",) if c in available])
        if not prompt or response is None or any(c not in available for c in [*prompt, response, *system]):
            return None
        if not self.prompt and prompt == ["instruction"] and "input" in available:
            prompt = ["instruction", "input"]  # Alpaca
        return prompt, response, system

    def missing(self, available) -> str:
        """A one-line explanation of which column is missing, for a source that lacks one."""
        available = list(available)
        wanted = [*(_names(self.prompt) if self.prompt else []), *([self.response] if self.response else [])]
        wanted += _names(self.system) if self.system else []
        absent = [c for c in wanted if c not in available]
        found = ", ".join(map(str, available)) or "none"
        if absent:
            return f"no column {absent[0]!r} (columns: {found})"
        return (
            f"no prompt/response columns found (columns: {found}); "
            f"name them, e.g. `table:FILE,prompt=question,response=answer`"
        )


def from_row(row: dict, columns: tuple[list[str], str, list[str]], source: str, line: int | None) -> Record | Bad:
    """One prompt/response row (resolved columns) as a two- or three-message conversation."""
    prompt_cols, response_col, system_cols = columns
    prompt = "\n\n".join(str(row[c]) for c in prompt_cols if row.get(c) not in (None, ""))
    response = row.get(response_col)
    system = "\n\n".join(str(row[c]) for c in system_cols if row.get(c) not in (None, ""))
    if not prompt:
        return Bad(source, line, f"empty prompt ({'+'.join(prompt_cols)})")
    if response in (None, ""):
        return Bad(source, line, f"empty response ({response_col})")
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(response)}]
    return chat_record(messages, source, line)


READERS = {"messages": from_messages, "sharegpt": from_sharegpt, "personachat": from_personachat}


def _text(content):
    """OpenAI content parts ([{"type": "text", "text": ...}]) joined; anything else as it is."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text", "") for p in content)
    return content


def _names(spec: str) -> list[str]:
    return [name for name in spec.split("+") if name]


def _first(candidates, available) -> list[str]:
    return next(([c] for c in candidates if c in available), [])
