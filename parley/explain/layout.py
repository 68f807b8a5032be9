"""What an explanation is about, laid out as the model reads it: the conversation rendered with the
model's own chat template into prompt tokens, the reply's tokens after them, and for each prompt token
the message and the line it belongs to (the units scores are summed into).

    layout = lay_out(loaded, messages, reply)        # messages: the prompt; reply: the text to explain
    layout.prompt_ids, layout.reply_ids              # exactly what the forward pass sees
    layout.span_of('"return a + b"')                 # the reply tokens that cover that text

The prompt is `templates.encode_chat(..., add_generation_prompt=True)`, the same ids the engine
prefilled when it wrote the reply. The reply is tokenized on its own (no special tokens), which is
what the engine produced unless the sampler chose a non-canonical split; a stored reply has no ids.

Messages are found by rendering each prefix of the conversation: where the template renders a prefix
as a prefix of the whole (every template we ship), a token belongs to the first message whose rendered
end lies beyond the token's first character; the template's trailing generation prompt is its own
group ("(assistant prompt)"). Templates that insert text depending on later messages (e.g. a default
system prompt) fall back to locating each message's content in the text.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from parley.errors import ConfigError, ContextError
from parley.templates import render

GENERATION_PROMPT = "(assistant prompt)"  # the group of template tokens after the last message


@dataclass
class Layout:
    """Prompt and reply as token ids, with the groups each prompt token belongs to."""

    messages: list[dict]  # the conversation that is the prompt
    reply: str  # the reply being explained
    prompt_text: str  # the rendered prompt, as the model reads it
    prompt_ids: list[int]
    prompt_offsets: list[tuple[int, int]]  # each prompt token's (start, end) characters in prompt_text
    reply_ids: list[int]
    reply_offsets: list[tuple[int, int]]  # each reply token's characters in `reply`
    token_message: list[int] = field(default_factory=list)  # per prompt token: index into message_labels
    message_labels: list[str] = field(default_factory=list)  # "0 system", "1 user", ..., GENERATION_PROMPT
    token_line: list[int] = field(default_factory=list)  # per prompt token: its line in prompt_text (0-based)
    lines: list[str] = field(default_factory=list)  # prompt_text's lines
    in_content: list[bool] = field(default_factory=list)  # per prompt token: inside a message's own text

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.reply_ids

    def span_of(self, text: str) -> tuple[int, int]:
        """(first, end) reply-token indices covering the first occurrence of `text` in the reply."""
        text = text.strip()
        at = self.reply.find(text) if text else -1
        if at < 0:
            raise ConfigError(f"{text[:60]!r} is not in the reply: quote a piece of it exactly")
        end = at + len(text)
        tokens = [i for i, (s, e) in enumerate(self.reply_offsets) if s < end and e > at]
        return tokens[0], tokens[-1] + 1


def lay_out(loaded, messages: list[dict], reply: str) -> Layout:
    """The Layout of `reply` answering `messages` under `loaded`'s tokenizer and template."""
    if not messages:
        raise ConfigError("there is nothing to explain: the prompt has no messages")
    if not reply.strip():
        raise ConfigError("there is nothing to explain: the reply is empty")
    tokenizer, template = loaded.tokenizer, loaded.template
    prompt_text = render(tokenizer, template, messages, add_generation_prompt=True)
    prompt = tokenizer(prompt_text, add_special_tokens=False, return_offsets_mapping=True)
    answer = tokenizer(reply, add_special_tokens=False, return_offsets_mapping=True)
    layout = Layout(messages, reply, prompt_text, prompt["input_ids"], [tuple(o) for o in prompt["offset_mapping"]],
                    answer["input_ids"], [tuple(o) for o in answer["offset_mapping"]])
    total = len(layout.ids)
    if total > loaded.context_window:
        raise ContextError(f"the prompt and reply are {total} tokens but the model's context window is "
                           f"{loaded.context_window}: shorten them")
    ends = _message_ends(tokenizer, template, messages, prompt_text)
    layout.message_labels = [f"{i} {m['role']}" for i, m in enumerate(messages)] + [GENERATION_PROMPT]
    layout.token_message = [bisect.bisect_right(ends, start) for start, _ in layout.prompt_offsets]
    contents = _content_spans(messages, prompt_text)
    layout.in_content = [any(a <= start and end <= b for a, b in contents) and end > start
                         for start, end in layout.prompt_offsets]
    line_starts = [0] + [i + 1 for i, c in enumerate(prompt_text) if c == "\n"]
    layout.lines = prompt_text.split("\n")
    layout.token_line = [bisect.bisect_right(line_starts, start) - 1 for start, _ in layout.prompt_offsets]
    return layout


def _message_ends(tokenizer, template: str, messages: list[dict], text: str) -> list[int]:
    """The character where each message's rendering ends in `text` (sorted)."""
    ends = []
    for i in range(1, len(messages) + 1):
        prefix = render(tokenizer, template, messages[:i], add_generation_prompt=False)
        if text.startswith(prefix):
            ends.append(len(prefix))
            continue
        content = messages[i - 1]["content"]  # the template changed the prefix: find the content itself
        at = text.find(content, ends[-1] if ends else 0) if content else -1
        ends.append(at + len(content) if at >= 0 else (ends[-1] if ends else 0))
    return sorted(ends)


def _content_spans(messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Where each message's own text lies in the rendered prompt (not the template's markers)."""
    spans, at = [], 0
    for m in messages:
        found = text.find(m["content"], at) if m["content"] else -1
        if found >= 0:
            spans.append((found, found + len(m["content"])))
            at = found + len(m["content"])
    return spans
