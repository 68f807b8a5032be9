"""Records → token ids and labels: the model learns exactly what the assistant says.

A chat record is rendered with the model's chat template (`parley.templates.render`) and cut into
segments at the assistant replies: for the i-th reply, the prompt is the rendering of the messages
before it with the generation prompt, and the reply is what the rendering with it adds after that —
its content and the template's end-of-turn marker (layout whitespace after the marker is context).
Segments are tokenized separately, exactly as at inference time, where the prompt is tokenized and
the reply generated after it; labels are -100 everywhere except reply segments, so decoding only the
learned tokens gives back exactly the assistant turns. Assistant turns with weight 0 stay context.

A record longer than `max_len` is fitted by the chat buffer's rule (`conversation.fit_messages`:
system prompt kept, oldest turns dropped, a lone over-long turn cut from its start); one that still
cannot fit is dropped and counted. A raw-text record (a source file) is tokenized whole, followed by
the end-of-sequence token, learned everywhere, and cut into `max_len` chunks.

Limits: the template must render a conversation as a prefix of its continuation (true of ChatML,
Llama, Mistral, Gemma, the default template; not of templates that rewrite earlier turns, such as
ones that strip "thinking" from history) — otherwise a record fails with a one-line DataError.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from parley.conversation import fit_messages
from parley.data.records import Record
from parley.errors import ContextError, DataError
from parley.templates import render

IGNORE = -100  # label of a token the loss skips (PyTorch's cross-entropy ignore_index)


@dataclass
class Example:
    """One training sequence."""

    input_ids: list[int]
    labels: list[int]  # == input_ids where learned, IGNORE elsewhere
    source: str  # file:line of the record (records, when packed)
    position_ids: list[int] | None = None  # only when packed: restart at 0 for each record


@dataclass
class Encoder:
    """Tokenizes records for one tokenizer, template and length limit; counts what it had to change."""

    tokenizer: object  # a transformers fast tokenizer
    template: str  # the jinja chat template
    max_len: int  # longest sequence in tokens
    counts: Counter = field(default_factory=Counter)  # fitted, dropped_turns, truncated, too_long

    def __post_init__(self):
        self._fast = getattr(self.tokenizer, "backend_tokenizer", None)
        if self._fast is None:
            raise DataError("the tokenizer has no fast (Rust) backend; Parley needs a fast tokenizer")
        self._eos = self.tokenizer.eos_token_id

    def encode(self, record: Record) -> list[Example]:
        return self.encode_batch([record])[0]

    def encode_batch(self, records: list[Record]) -> list[list[Example]]:
        """Examples per record (none when it cannot fit). All segments of the batch are tokenized in
        one call, which the Rust tokenizer spreads over the CPU cores."""
        plans = [self._segments(r.messages, r.where) if r.kind == "chat" else [(r.messages[0]["content"], True)] for r in records]
        flat = [text for plan in plans for text, _ in plan]
        ids = iter(e.ids for e in self._fast.encode_batch(flat, add_special_tokens=False)) if flat else iter(())
        out = []
        for record, plan in zip(records, plans):
            pieces = [(next(ids), learned) for _, learned in plan]
            if record.kind == "text":
                out.append(self._text_examples(pieces[0][0], record))
            else:
                out.append(self._chat_example(pieces, record))
        return out

    def _text_examples(self, ids: list[int], record: Record) -> list[Example]:
        if self._eos is not None:
            ids = ids + [self._eos]
        return [Example(ids[i : i + self.max_len], ids[i : i + self.max_len], record.where) for i in range(0, len(ids), self.max_len)]

    def _chat_example(self, pieces, record: Record) -> list[Example]:
        input_ids, labels = _join(pieces)
        if len(input_ids) <= self.max_len:
            return [Example(input_ids, labels, record.where)]
        return self._fitted(record, len(input_ids))

    def _fitted(self, record: Record, length: int) -> list[Example]:
        """The buffer's rule, re-applied with a smaller budget if separate segment tokenization
        came out a few tokens longer than the whole rendering it counts."""
        budget = self.max_len
        for _ in range(4):
            try:
                fitted = fit_messages(record.messages, self.tokenizer, self.template, budget, add_generation_prompt=False)
            except ContextError:
                break
            if not any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in fitted.messages):
                break
            plan = self._segments(fitted.messages, record.where)
            pieces = [(e.ids, learned) for e, (_, learned) in zip(
                self._fast.encode_batch([t for t, _ in plan], add_special_tokens=False), plan)]
            input_ids, labels = _join(pieces)
            if len(input_ids) <= self.max_len:
                self.counts["fitted"] += 1
                self.counts["dropped_turns"] += sum(1 for m in fitted.dropped if m["role"] == "user")
                self.counts["truncated"] += bool(fitted.truncated_tokens)
                return [Example(input_ids, labels, record.where)]
            budget -= len(input_ids) - self.max_len
        self.counts["too_long"] += 1
        return []

    def _segments(self, messages: list[dict], where: str) -> list[tuple[str, bool]]:
        """(text, learned) pieces whose concatenation is the full rendering of the conversation."""
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight", 1) == 0:
                continue
            prompt = self._render(messages[:i], True, where)
            whole = self._render(messages[: i + 1], False, where)
            if not prompt.startswith(done) or not whole.startswith(prompt):
                raise DataError(
                    f"{where}: the chat template does not render this conversation as a prefix of its "
                    f"continuation (it rewrites earlier turns), so the assistant's turns cannot be masked"
                )
            reply = said(whole[len(prompt) :], message["content"])
            pieces += [(prompt[len(done) :], False), (reply, True)]
            done = prompt + reply
        full = self._render(messages, False, where)
        if not full.startswith(done):
            raise DataError(f"{where}: the chat template renders the whole conversation differently from its turns")
        pieces.append((full[len(done) :], False))
        return [(text, learned) for text, learned in pieces if text]

    def _render(self, messages: list[dict], add_generation_prompt: bool, where: str) -> str:
        try:
            return render(self.tokenizer, self.template, messages, add_generation_prompt)
        except Exception as e:  # jinja's TemplateError and the template's own raise_exception()
            raise DataError(f"{where}: the chat template refuses this conversation: {e}") from e


def said(continuation: str, content: str) -> str:
    """What the model says of a reply's rendering: its content and end-of-turn marker, without the
    layout whitespace the template puts after the marker (context, not said by the model)."""
    if continuation.startswith(content):
        return content + continuation[len(content) :].rstrip()
    return continuation


def _join(pieces) -> tuple[list[int], list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, learned in pieces:
        input_ids += ids
        labels += ids if learned else [IGNORE] * len(ids)
    return input_ids, labels


class Packer:
    """Greedy packing in arrival order: whole examples are concatenated while they fit in `max_len`
    (none is split), with position ids restarting at each one. Training passes these position ids
    without an attention mask, from which transformers builds a block-diagonal causal mask (sdpa,
    eager, flash-attention varlen alike), so no token attends to another record. Raw text ends with the
    end-of-sequence token; a chat record with the template's end-of-turn marker. The first label of
    every record after the first is -100: its first token is not predicted from another record."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self._reset()

    def _reset(self) -> None:
        self.ids: list[int] = []
        self.labels: list[int] = []
        self.positions: list[int] = []
        self.sources: list[str] = []

    def add(self, example: Example) -> list[Example]:
        """The packed sequences this example completes (zero or one)."""
        done = []
        if self.ids and len(self.ids) + len(example.input_ids) > self.max_len:
            done = self.flush()
        labels = example.labels
        if self.sources:  # no loss on predicting a record's first token from the end of the record before it
            labels = [IGNORE, *labels[1:]]
        self.ids += example.input_ids
        self.labels += labels
        self.positions += range(len(example.input_ids))
        self.sources.append(example.source)
        return done

    def flush(self) -> list[Example]:
        if not self.ids:
            return []
        n = len(self.sources)
        source = self.sources[0] if n == 1 else f"{self.sources[0]} (+{n - 1} more)"
        packed = Example(self.ids, self.labels, source, self.positions)
        self._reset()
        return [packed]
