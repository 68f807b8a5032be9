"""The compiled decode steps (compiled.py) on a tiny random Llama: they are really used, for one row and
for a batch, as the cache grows; their logits match the eager ones (fp32: to rounding; bf16 and int8
weights: within a stated tolerance); what they do not cover runs eagerly. Each engine compiles once."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from parley.engine import LocalEngine, SamplingParams
from parley.quant import quantize_int8

PROMPTS = ["Write a haiku about tensors.", "Hi", "Tell me more about the cache"]
TOLERANCE = {torch.float32: 1e-4, "int8": 0.05}  # max |log p(compiled) - log p(eager)|, over steps and vocabulary


@torch.inference_mode()  # as Batch.step decodes: the graphs are built for it
def teacher_forced(engine: LocalEngine, prompts: list[str], steps: int) -> torch.Tensor:
    """Log-probabilities of `steps` decode steps, every row fed the same fixed tokens: (steps, rows, V)."""
    batch = engine.new_batch()
    batch.add_many([engine.start(p, SamplingParams(temperature=0)) for p in prompts])
    out = []
    for step in range(steps):
        ids = torch.full((len(prompts), 1), 100 + step)
        positions = torch.tensor(batch.lengths)[:, None]
        out.append(torch.log_softmax(batch._forward(0, ids, positions)[:, -1].float(), -1))
        batch.lengths = [n + 1 for n in batch.lengths]
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["int8", torch.float32], ids=["int8-default", "fp32-frozen"])
def test_compiled_steps_match_the_eager_ones(llama_loaded, monkeypatch, kind):
    model = quantize_int8(llama_loaded.model.to(torch.bfloat16)) if kind == "int8" else llama_loaded.model
    loaded = dataclasses.replace(llama_loaded, model=model, stop_ids=[], stop_strings=[])
    monkeypatch.setattr("parley.kvcache.FIRST_CAPACITY", 16)  # the cache grows twice within 40 steps
    eager = LocalEngine(loaded, prefix_cache_mb=0)
    compiled = LocalEngine(loaded, prefix_cache_mb=0, compile=True)
    assert compiled.compiled.wait(timeout=600), compiled.compiled.error
    assert eager.compiled is None

    for prompts in (PROMPTS[:1], PROMPTS):  # one row (chat), then a batch of three (several clients)
        before = compiled.compiled.steps
        ours, theirs = teacher_forced(compiled, prompts, 40), teacher_forced(eager, prompts, 40)
        assert (ours - theirs).abs().max() < TOLERANCE[kind]
        # Every step ran compiled except, twice, the step that fills the columns and the one that grows them.
        assert compiled.compiled.steps - before == 36

    # Streaming through the public API runs the compiled graph after the prefill.
    before = compiled.compiled.steps
    tokens = list(compiled.stream(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=8)))
    assert len(tokens) == 8 and compiled.compiled.steps - before == 7

    # A lone row left in a wider cache is not a shape the graphs were built for: it decodes eagerly.
    batch = compiled.new_batch()
    seqs = [compiled.start(p, SamplingParams(temperature=0, max_new_tokens=n)) for p, n in zip(PROMPTS[:2], (2, 6))]
    batch.add_many(seqs)
    while batch.seqs:
        if len(batch.seqs) == 1:
            before = compiled.compiled.steps
        batch.step()
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
    assert compiled.compiled.steps == before and len(seqs[1].ids) == 6
