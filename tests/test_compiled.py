"""The compiled decode step (compiled.py) on a tiny random Llama: it is really used, it changes no token,
and what it does not cover runs eagerly. One test: each engine compiles once (~30 s on 2 cores)."""

from __future__ import annotations

from parley.engine import LocalEngine, SamplingParams

CHAT = [{"role": "user", "content": "Write a haiku about tensors."}]


def test_compiled_steps_give_the_eager_tokens(llama_loaded):
    compiled = LocalEngine(llama_loaded, prefix_cache_mb=0, compile=True)
    eager = LocalEngine(llama_loaded, prefix_cache_mb=0)
    assert compiled.compiled.wait(timeout=600), compiled.compiled.error
    params = SamplingParams(temperature=0, max_new_tokens=24, top_logprobs=2)
    ours, theirs = list(compiled.stream(CHAT, params)), list(eager.stream(CHAT, params))
    assert [t.id for t in ours] == [t.id for t in theirs]
    assert [round(t.logprob, 4) for t in ours] == [round(t.logprob, 4) for t in theirs]
    assert compiled.compiled.steps == len(ours) - 1  # every step after the prefill ran compiled
    assert eager.compiled is None

    # What it does not cover (here: two rows) runs eagerly, with the same tokens.
    engine, params = compiled, SamplingParams(temperature=0, max_new_tokens=6)
    batch = engine.new_batch()
    seqs = [engine.start(p, params) for p in ("Hi", "Tell me more")]
    batch.add_many(seqs)
    before = engine.compiled.steps
    while batch.seqs:
        batch.step()
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
    assert engine.compiled.steps == before  # two rows: eager
    expected = [LocalEngine(llama_loaded, prefix_cache_mb=0).generate(p, params) for p in ("Hi", "Tell me more")]
    assert [s.text for s in seqs] == expected
