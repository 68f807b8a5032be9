"""Encoder-decoder models (T5, BART) in the engine: the encoder reads the prompt once, the decoder writes the reply.

    engine = backend.open("runs/t5/final")        # LocalEngine.new_batch() picks Seq2SeqBatch by itself
    engine.generate([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0))   # -> str

`Seq2SeqBatch` has `batch.Batch`'s interface (`add`, `add_many`, `step`, `remove`, `seqs`, `len`), so
`LocalEngine.stream`, the batching driver and evaluation drive it unchanged. Each token is chosen by
`Sequence.pick`, so sampling, seeds, stop strings and logprobs mean exactly what they mean for
decoder-only models.

The encoder input is `LocalEngine.prompt_ids(prompt)`: chat messages rendered with the model's template and
the generation prompt, tokenized without added special tokens — what `parley train` fed the encoder for
the first reply of a dialogue (`parley.train.batches.seq2seq_rows`: the tokens before a learned reply) —
and a raw string with the tokenizer's own special tokens, as `model.generate(**tokenizer(text))` has it.
The decoder starts from the model's `decoder_start_token_id`, as in training (labels shifted right).

Lengths: `Loaded.context_window` is the encoder's limit, so `LocalEngine.start` refuses a prompt that the
encoder cannot read; the reply has the decoder's own limit (`reply_limit`), whatever the prompt's length.

Limits: each sequence runs its own decoder forward per step (rows are not stacked: their encoder lengths
and decoder positions differ), so N concurrent requests cost N small forwards per token; the prefix
store is not used (the encoder reruns for every prompt); as in the decoder-only engine, the repetition
penalty also counts the prompt's tokens (transformers' `generate` counts only the decoder's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from parley.errors import ModelLoadError

if TYPE_CHECKING:  # engine imports this module; these names are for annotations only
    from parley.engine import LocalEngine, Sequence, Token


@dataclass
class _Row:
    """What one sequence keeps between steps."""

    encoded: object  # the encoder's output for the prompt: last_hidden_state (1, S, d)
    mask: torch.Tensor  # (1, S) ones: the prompt has no padding
    cache: EncoderDecoderCache  # decoder self-attention keys/values, plus the cross-attention ones


class Seq2SeqBatch:
    """Encoder-decoder sequences decoded together, one decoder forward per sequence per step."""

    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self.seqs: list[Sequence] = []
        self._rows: list[_Row] = []  # parallel to self.seqs
        self.start_id = decoder_start_id(engine.loaded.model)
        self.reply_limit = reply_limit(engine.loaded)

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: Sequence) -> Token:
        """Encode `seq`'s prompt, pick its first token, and keep it in the batch."""
        return self.add_many([seq])[0]

    @torch.inference_mode()
    def add_many(self, seqs: list[Sequence]) -> list[Token]:
        """Encode each prompt and pick each sequence's first token (after the decoder start token)."""
        model = self.engine.loaded.model
        device = self.engine.loaded.device
        tokens = []
        for seq in seqs:
            # Sequence sized the reply as (window - prompt), the decoder-only rule; here the decoder has its own room.
            seq.max_new_tokens = min(seq.params.max_new_tokens, self.reply_limit)
            ids = torch.tensor([seq.prompt_ids], device=device)  # (1, S)
            mask = torch.ones_like(ids)
            encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
            row = _Row(encoded, mask, EncoderDecoderCache(DynamicCache(), DynamicCache()))
            logits = self._decode(row, self.start_id)
            self.seqs.append(seq)
            self._rows.append(row)
            tokens.append(seq.pick(logits))
        return tokens

    @torch.inference_mode()
    def step(self) -> list[Token]:
        """Advance every sequence by one token; tokens come back in `self.seqs` order."""
        return [seq.pick(self._decode(row, seq.ids[-1])) for seq, row in zip(self.seqs, self._rows)]

    def remove(self, seq: Sequence) -> None:
        """Take `seq` out; its caches are freed."""
        index = next(i for i, s in enumerate(self.seqs) if s is seq)
        del self.seqs[index], self._rows[index]

    def _decode(self, row: _Row, token_id: int) -> torch.Tensor:
        """Feed one decoder token; return the logits (V,) for the next one. The cache grows by one position."""
        ids = torch.tensor([[token_id]], device=self.engine.loaded.device)  # (1, 1)
        out = self.engine.loaded.model(
            encoder_outputs=row.encoded, attention_mask=row.mask, decoder_input_ids=ids,
            cache=row.cache, use_cache=True,
        )
        return out.logits[0, -1]


def decoder_start_id(model) -> int:
    """The token the decoder starts from: the one training prepended to the labels (shift right)."""
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "decoder_start_token_id", None)
        if isinstance(value, int):
            return value
    raise ModelLoadError("the encoder-decoder model names no decoder_start_token_id in its config: set it there")


def reply_limit(loaded) -> int:
    """The longest reply the decoder can write: its position table, less the start token."""
    config = loaded.model.config
    for key in ("max_decoder_position_embeddings", "max_position_embeddings"):  # LED / BART, Marian, ...
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value - 1
    return loaded.context_window - 1  # relative positions (T5): no table; as long as a prompt may be
