"""Many sequences of a decoder-only model decoded together: one forward pass per token for all of them.

    batch = engine.new_batch()                   # a Batch, or a seq2seq.Seq2SeqBatch for T5/BART
    tokens = batch.add_many([engine.start(prompt, params), ...])   # prefill; each one's first token
    tokens = batch.step()                        # one more token for every sequence, in batch.seqs order
    batch.remove(seq)                            # between steps: finished, failed or cancelled

Each sequence has its own row of a preallocated KV cache (`parley.kvcache.RowCache`) at its own length,
so sequences join and leave between steps, which is what the continuous-batching driver (batching.py)
needs. Joining sequences are prefilled together, in groups of similar length (`_groups`), from the
longest prefix of their prompt that the engine's `PrefixStore` holds; a leaving sequence's keys and
values go to that store. When one row is left, it moves to a cache of its own, which the compiled
one-row step (compiled.py) covers.

Limits: decoder-only models (encoder-decoder ones decode in seq2seq.py); a batch is driven by one
thread, as its engine is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from parley.kvcache import RowCache

if TYPE_CHECKING:  # engine imports this module; these names are for annotations only
    from parley.engine import LocalEngine, Sequence, Token

PREFILL_CHUNK = 512  # prompt tokens fed per forward: bounds the (tokens x context) mask and activations
# Joining sequences are prefilled together only while padding each to the group's longest costs at most
# PREFILL_SLACK x their own tokens, plus PREFILL_PAD_FREE tokens (less than a forward's fixed cost): 64
# HumanEval prompts padded to the longest of them took ~1.5x their own prefill time (README, Speed).
PREFILL_SLACK, PREFILL_PAD_FREE = 1.25, 32


class Batch:
    """Sequences decoded together, one forward pass per step, each in its own row of a RowCache."""

    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self.seqs: list[Sequence] = []
        self.lengths: list[int] = []  # tokens in the cache, per row (the next token's position)
        self.cache = RowCache(engine.loaded.context_window)

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: Sequence) -> Token | None:
        """Prefill `seq`, pick its first token, and keep it in the batch (None: it failed, see Sequence.pick)."""
        return self.add_many([seq])[0]

    @torch.inference_mode()
    def add_many(self, seqs: list[Sequence]) -> list[Token | None]:
        """Prefill `seqs` (from a stored prefix where one matches) and pick each one's first token; tokens
        come back in `seqs` order. Sequences of similar length are prefilled together (`_groups`)."""
        reused = [self.engine.prefixes.longest(seq.prompt_ids) for seq in seqs]
        pending = [len(seq.prompt_ids) - length for seq, (length, _) in zip(seqs, reused)]
        tokens: list[Token | None] = [None] * len(seqs)
        for group in _groups(pending):
            first = len(self.seqs)
            for row, i in enumerate(group, start=first):
                length, saved = reused[i]
                if length:
                    self.cache.restore(row, saved, length)
            done = [reused[i][0] for i in group]
            logits = self._prefill(first, [seqs[i].prompt_ids[n:] for i, n in zip(group, done)], done)
            self.seqs += [seqs[i] for i in group]
            self.lengths += [len(seqs[i].prompt_ids) for i in group]
            for i, row in zip(group, logits):
                tokens[i] = seqs[i].pick(row)
        return tokens

    @torch.inference_mode()
    def step(self) -> list[Token | None]:
        """Advance every sequence by one token; tokens come back in `self.seqs` order (None where one failed)."""
        device = self.engine.loaded.device
        last = torch.tensor([[s.ids[-1]] for s in self.seqs], device=device)  # (B, 1)
        positions = torch.tensor(self.lengths, device=device)[:, None]  # (B, 1): each row's own next position
        logits = self._forward(0, last, positions)[:, -1]
        self.lengths = [n + 1 for n in self.lengths]
        return [seq.pick(logits[i]) for i, seq in enumerate(self.seqs)]

    @torch.inference_mode()
    def remove(self, seq: Sequence) -> None:
        """Take `seq` out (its keys and values are offered to the prefix store); the last row fills its place."""
        row = next(i for i, s in enumerate(self.seqs) if s is seq)
        prefixes = self.engine.prefixes
        if prefixes.budget:
            length = self.lengths[row]
            prefixes.add((seq.prompt_ids + seq.ids)[:length], self.cache.snapshot(row, length))
        last = len(self.seqs) - 1
        if row != last:
            self.cache.move_row(last, row)
            self.seqs[row], self.lengths[row] = self.seqs[last], self.lengths[last]
        self.seqs.pop()
        self.lengths.pop()
        if not self.seqs:  # give the memory back: the next sequences size the cache anew
            self.cache = RowCache(self.engine.loaded.context_window)
        elif len(self.seqs) == 1 and self.engine.compiled is not None:
            # The last row left (the longest answer of an evaluation, the one client still streaming)
            # moves to a cache of its own, which the compiled one-row step covers: ~1.5x the eager step.
            self.cache = self.cache.alone(0, self.lengths[0])

    def _prefill(self, first: int, pending: list[list[int]], done: list[int]) -> list[torch.Tensor]:
        """Feed each new row its `pending` ids (after `done` reused ones), PREFILL_CHUNK at a time;
        return each row's logits for the token after its prompt.

        Rows are right-aligned within a chunk: a shorter row's padding comes first, so every row's
        last real token is the chunk's last column. Padding is written past the row's end (clamped
        into the window), where the mask hides it and the row's later tokens overwrite it."""
        device = self.engine.loaded.device
        limit = self.engine.loaded.context_window
        pad = self.engine.loaded.tokenizer.pad_token_id or 0
        logits: list[torch.Tensor | None] = [None] * len(pending)
        offset = 0
        while offset < max(len(p) for p in pending):
            pieces = [p[offset : offset + PREFILL_CHUNK] for p in pending]
            width = max(len(piece) for piece in pieces)
            ids, positions = [], []
            for piece, base, p in zip(pieces, done, pending):
                start = base + min(offset, len(p))
                real = list(range(start, start + len(piece)))
                padding = [min(start + len(piece) + k, limit - 1) for k in range(width - len(piece))]
                ids.append([pad] * len(padding) + piece)
                positions.append(padding + real)
            out = self._forward(first, torch.tensor(ids, device=device), torch.tensor(positions, device=device))
            for b, (piece, p) in enumerate(zip(pieces, pending)):
                if piece and offset + len(piece) == len(p):
                    logits[b] = out[b, -1]
            offset += PREFILL_CHUNK
        return logits

    def _forward(self, first: int, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the model on rows first.. of the cache; (B, q) ids at (B, q) positions -> (B, 1, V) last logits."""
        engine = self.engine
        if engine.compiled is not None and engine.compiled.covers(self.cache, first, ids, positions):
            return engine.compiled(ids, positions, self.cache, engine.sliding_window)
        self.cache.plan(first, positions)
        mask = self.cache.mask(engine.dtype, engine.sliding_window)
        extra = {"logits_to_keep": 1} if engine.keeps_logits else {}
        out = engine.loaded.model(
            input_ids=ids, position_ids=positions, attention_mask=mask, cache=self.cache, use_cache=True, **extra,
        )
        return out.logits[:, -1:]


def _groups(pending: list[int]) -> list[list[int]]:
    """Indices of `pending` (tokens to prefill per sequence) in groups prefilled together, longest first;
    a group grows while padding its members to its longest stays within PREFILL_SLACK and PREFILL_PAD_FREE."""
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(pending)), key=lambda i: -pending[i]):
        group = groups[-1] if groups else None
        padded = (len(group) + 1) * pending[group[0]] if group else 0
        if group and padded <= PREFILL_SLACK * (total + pending[i]) + PREFILL_PAD_FREE:
            group.append(i)
            total += pending[i]
        else:
            groups.append([i])
            total = pending[i]
    return groups
