"""Which rows make each optimizer step, on which process, and how they become tensors.

The order is a pure function of (seed, epoch, source sizes, weights): each epoch lists every row
of a source `floor(weight)` times plus a seeded random `frac(weight)` share of them, shuffled. A step
takes the next `global_batch` rows of that list (a partial batch at an epoch's end is dropped). So
the data position is just the step number: resuming at step s reads exactly the rows the
uninterrupted run would have read, on any number of processes.

A global batch is cut into micro-batches of `batch_size` rows; micro-batch k of the step goes to
process `k % world` as its `k // world`-th micro-batch. One process with grad_accum = A x W sees the
same rows, in the same micro-batches, as W processes with grad_accum = A.

Rows are {input_ids, labels} (labels -100 where no loss), optionally position_ids (packed rows).
For encoder-decoder models `seq2seq_rows` turns each learned span into (history → reply) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

IGNORE = -100  # label of a token the loss skips (cross-entropy's ignore_index)


@dataclass(frozen=True)
class Plan:
    """How training rows are grouped into optimizer steps."""

    sizes: tuple[int, ...]  # training rows per source, in the order the sources are concatenated
    weights: tuple[float, ...]  # per source: times its rows are seen per epoch
    seed: int
    global_batch: int  # rows per optimizer step, over all processes
    batch_size: int  # rows per micro-batch

    @property
    def epoch_rows(self) -> int:
        return sum(int(w) * n + round((w - int(w)) * n) for n, w in zip(self.sizes, self.weights))

    @property
    def steps_per_epoch(self) -> int:
        return self.epoch_rows // self.global_batch

    def step_rows(self, step: int) -> list[int]:
        """Row indices (into the concatenated sources) of optimizer step `step` (0-based)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = _epoch_order(self, epoch)
        return order[position * self.global_batch : (position + 1) * self.global_batch]

    def micro_batches(self, step: int, rank: int, world: int) -> list[list[int]]:
        """This process's micro-batches (row indices) for `step`."""
        rows = self.step_rows(step)
        chunks = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        return chunks[rank::world]


@lru_cache(maxsize=2)
def _epoch_order(plan: Plan, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(plan.seed * 1_000_003 + epoch)
    order: list[int] = []
    offset = 0
    for n, weight in zip(plan.sizes, plan.weights):
        whole = int(weight)
        order += list(range(offset, offset + n)) * whole
        share = round((weight - whole) * n)
        if share:
            order += (offset + torch.randperm(n, generator=generator)[:share]).tolist()
        offset += n
    return [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]


def learned_tokens(row: dict, seq2seq: bool, max_len: int) -> int:
    """Tokens of `row` that carry loss once cut to `max_len` (causal models predict labels[1:])."""
    labels = row["labels"][:max_len]
    if not seq2seq:
        labels = labels[1:]
    return sum(1 for t in labels if t != IGNORE)


def collate(rows: list[dict], pad_id: int, seq2seq: bool, max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a micro-batch: input_ids, attention_mask, labels (+ position_ids)."""
    # An encoder keeps the newest history; a causal row keeps its start (data prep already fitted it).
    ids = [r["input_ids"][-max_len:] if seq2seq else r["input_ids"][:max_len] for r in rows]
    batch = {
        "input_ids": _pad(ids, pad_id),  # (B, T)
        "attention_mask": _pad([[1] * len(x) for x in ids], 0),  # (B, T)
        "labels": _pad([r["labels"][:max_len] for r in rows], IGNORE),  # (B, T), or (B, T_reply) for seq2seq
    }
    if not seq2seq and rows and rows[0].get("position_ids") is not None:
        batch["position_ids"] = _pad([r["position_ids"][:max_len] for r in rows], 0)
    return batch


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def seq2seq_rows(batch: dict[str, list]) -> dict[str, list]:
    """`datasets.map(batched=True)` function: each learned span of a causal row becomes one
    encoder-decoder pair, the tokens before it as the encoder input and the span as the target."""
    out: dict[str, list] = {"input_ids": [], "labels": []}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        for start, end in _spans(labels):
            if start == 0:
                continue  # raw text learned whole has no history to condition on
            out["input_ids"].append(ids[:start])
            out["labels"].append(ids[start:end])
    return out


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            spans.append((start, i))
            start = None
    return spans
