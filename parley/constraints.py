"""Grammar-constrained decoding: replies that are JSON matching a schema, whatever the model's weights.

    grammar = json_grammar({"type": "object", "properties": {"name": {"type": "string"}}})  # GrammarError if not
    constraint = Constraint(grammar_tokenizer(loaded), grammar)  # one per sequence (engine.Sequence makes it)
    scores = constraint.mask(scores)     # (V,) logits: tokens the grammar forbids next become -inf
    constraint.advance(token_id)         # after the token is chosen; `constraint.done` once the JSON is complete

The library is llguidance (Microsoft's, the one behind Guidance and vLLM's `guidance` backend): it has no
dependencies of its own, reads a Hugging Face fast tokenizer as it is (byte-level BPE included, so a
token that spans a quote and a letter is allowed exactly when its bytes fit), and computes a mask in
tens of microseconds on this CPU for SmolLM2's 49k vocabulary (bench/constrained.py measures the cost
per decoded token). xgrammar was faster per mask but needs triton and apache-tvm-ffi; outlines-core
took ~300 µs per mask and builds a whole index per schema.

JSON is generated compactly (", " and ": " separators, no free whitespace): a small or untrained
model offered free whitespace can spend its whole budget on newlines. A schema may override this
with llguidance's own "x-guidance" key.

The constraint is a JSON Schema because everything that constrains a reply can be said as one: OpenAI's
`response_format` json_object (`{"type": "object"}`), json_schema, and a forced tool call (a schema of
the call's name and arguments).

Limits: JSON Schema keywords llguidance does not implement (`not`, `unevaluatedProperties`, remote
`$ref`s, look-around in `pattern`) are refused with its message, never silently dropped. A reply cut
by `max_new_tokens` before the JSON closes is incomplete, as OpenAI's is (finish_reason "length").
"""

from __future__ import annotations

import numpy as np
import torch
from llguidance import LLMatcher, LLTokenizer
from llguidance.hf import from_tokenizer

from parley.errors import ParleyError

JSON_OBJECT = {"type": "object"}  # OpenAI's json_object mode: any JSON object
# Compact JSON, as llguidance's "x-guidance" options (a schema's own x-guidance wins over these).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ParleyError):
    """A schema the grammar library cannot compile; the message is its own, naming the part."""


def json_grammar(schema: dict) -> str:
    """The llguidance grammar for JSON matching `schema`; GrammarError names what cannot be handled."""
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON Schema must be a JSON object, not {type(schema).__name__}")
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)
    except ValueError as e:  # not serialisable as JSON
        raise GrammarError(f"the schema is not valid JSON: {e}") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(f"the schema cannot be used for constrained decoding: {' '.join(error.split())}")
    return grammar


def grammar_tokenizer(loaded) -> LLTokenizer:
    """llguidance's view of `loaded`'s tokenizer (a models.Loaded): ~0.3 s for a 49k vocabulary, so the
    engine builds it once. The model's stop ids are what may end a reply once the JSON is complete."""
    return from_tokenizer(loaded.tokenizer, eos_token=list(loaded.stop_ids))


class Constraint:
    """One sequence's place in its grammar: which tokens may come next, and whether the reply is complete."""

    def __init__(self, tokenizer: LLTokenizer, grammar: str):
        self.matcher = LLMatcher(tokenizer, grammar)
        self._raise_if_error()
        words = (tokenizer.vocab_size + 31) // 32
        self.bitmask = np.zeros(words, dtype=np.int32)  # bit i of word w allows token 32*w + i

    @property
    def done(self) -> bool:
        """The JSON is complete and nothing may follow it."""
        return self.matcher.is_stopped()

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` (V,) with every token the grammar forbids next set to -inf (a new tensor)."""
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        self._raise_if_error()
        # numpy unpacks the bits ~100x faster than torch shifts (40 us against ms for 49k tokens).
        allowed = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")  # (words * 32,) of 0/1
        size = scores.shape[-1]
        if allowed.size < size:  # the model's vocabulary is padded past the tokenizer's: never those
            allowed = np.concatenate([allowed, np.zeros(size - allowed.size, dtype=np.uint8)])
        forbidden = torch.from_numpy(allowed[:size] == 0).to(scores.device)
        return scores.masked_fill(forbidden, float("-inf"))

    def advance(self, token_id: int) -> None:
        """Record the chosen token (it was allowed by `mask`)."""
        self.matcher.consume_token(token_id)
        self._raise_if_error()

    def _raise_if_error(self) -> None:
        if self.matcher.is_error():
            raise GrammarError(f"constrained decoding failed: {self.matcher.get_error()}")
