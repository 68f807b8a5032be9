"""The compiled decode step (compiled.py) on a tiny random Llama: it is really used, it changes no token,
and what it does not cover runs eagerly. One test: each engine compiles once (~20 s on 2 cores)."""

from __future__ import annotations

import dataclasses

from parley.engine import LocalEngine, SamplingParams

CHAT = [{"role": "user", "content": "Write a haiku about tensors."}]


def test_compiled_steps_give_the_eager_tokens(llama_loaded, monkeypatch):
    loaded = dataclasses.replace(llama_loaded, stop_ids=[], stop_strings=[])  # replies of exactly max_new_tokens
    eager = LocalEngine(loaded, prefix_cache_mb=0)
    prompt = len(eager.prompt_ids(CHAT))
    monkeypatch.setattr("parley.compiled.CAPACITY", prompt + 30)  # a 60-token reply runs past it
    compiled = LocalEngine(loaded, prefix_cache_mb=0, compile=True)
    assert compiled.compiled.wait(timeout=600), compiled.compiled.error
    assert eager.compiled is None

    params = SamplingParams(temperature=0, max_new_tokens=24, top_logprobs=2)
    ours, theirs = list(compiled.stream(CHAT, params)), list(eager.stream(CHAT, params))
    assert [t.id for t in ours] == [t.id for t in theirs]
    assert [round(t.logprob, 4) for t in ours] == [round(t.logprob, 4) for t in theirs]
    assert compiled.compiled.steps == len(ours) - 1  # every step after the prefill ran compiled

    # A reply that runs past the compiled cache's columns goes on eagerly, with the same tokens.
    longer = SamplingParams(temperature=0, max_new_tokens=60)
    before = compiled.compiled.steps
    ours, theirs = list(compiled.stream(CHAT, longer)), list(eager.stream(CHAT, longer))
    assert [t.id for t in ours] == [t.id for t in theirs]
    assert compiled.compiled.steps - before == 30  # positions prompt .. prompt + 29; then eager

    # Several rows at once are not covered either: eager, the same text as one at a time.
    params = SamplingParams(temperature=0, max_new_tokens=6)
    batch = compiled.new_batch()
    seqs = [compiled.start(p, params) for p in ("Hi", "Tell me more")]
    batch.add_many(seqs)
    before = compiled.compiled.steps
    while batch.seqs:
        batch.step()
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
    assert compiled.compiled.steps == before
    assert [s.text for s in seqs] == [eager.generate(p, params) for p in ("Hi", "Tell me more")]
