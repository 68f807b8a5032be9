"""The row cache and the prefix store, on tiny random Llama and GPT-2 models: reuse is exact, batching
and chunked prefill change nothing, and the store keeps to its budget."""

from __future__ import annotations

import pytest
import torch

from parley import batch as batch_module
from parley.batch import Batch
from parley.engine import LocalEngine, SamplingParams
from parley.kvcache import PrefixStore

TURN1 = [{"role": "user", "content": "Name three prime numbers."}]
GREEDY = SamplingParams(temperature=0, max_new_tokens=12, top_logprobs=2)


def decoded(batch: Batch, seqs: list) -> list[list[int]]:
    """Add `seqs` to `batch` together and decode them all to the end: each one's token ids, in order."""
    ids = {id(s): [t.id] for s, t in zip(seqs, batch.add_many(seqs))}
    while batch.seqs:
        for seq, token in zip(list(batch.seqs), batch.step()):
            ids[id(seq)].append(token.id)
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
    return [ids[id(s)] for s in seqs]


@pytest.fixture(params=["llama", "gpt2"])
def loaded(request, llama_loaded, gpt2_loaded):
    return llama_loaded if request.param == "llama" else gpt2_loaded


def _run(engine: LocalEngine, prompt) -> list:
    return list(engine.stream(prompt, GREEDY))


def test_next_turn_reuses_the_last_and_gives_the_same_tokens_and_logprobs(loaded):
    cached, fresh = LocalEngine(loaded), LocalEngine(loaded, prefix_cache_mb=0)
    first = _run(cached, TURN1)
    reply = "".join(t.text for t in first)
    turn2 = TURN1 + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And two more?"}]
    before = cached.prefixes.reused_tokens
    ours, theirs = _run(cached, turn2), _run(fresh, turn2)
    # Everything the first request fed that the second prompt starts with is reused (re-rendering
    # the reply can tokenize its seam differently, which ends the shared part there).
    fed = cached.prompt_ids(TURN1) + [t.id for t in first][:-1]
    shared = next((i for i, (a, b) in enumerate(zip(fed, cached.prompt_ids(turn2))) if a != b), len(fed))
    assert cached.prefixes.reused_tokens - before == shared
    assert shared > len(cached.prompt_ids(TURN1)) // 2
    assert [t.id for t in ours] == [t.id for t in theirs]
    for a, b in zip(ours, theirs):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-4)
    assert fresh.prefixes.reused_tokens == 0 and len(fresh.prefixes) == 0


def test_the_same_prompt_again_feeds_only_its_last_token(loaded):
    engine = LocalEngine(loaded)
    first = _run(engine, TURN1)
    before = engine.prefixes.reused_tokens
    again = _run(engine, TURN1)
    assert engine.prefixes.reused_tokens - before == len(engine.prompt_ids(TURN1)) - 1
    assert [t.id for t in again] == [t.id for t in first]


def test_newcomers_prefilled_together_in_small_chunks_match_one_at_a_time(loaded, monkeypatch):
    prompts = ["Hi", [{"role": "user", "content": "A much longer question about many different things?"}],
               "Tell me a story about", "x"]
    engine = LocalEngine(loaded, prefix_cache_mb=0)
    singles = [[t.id for t in engine.stream(p, GREEDY)] for p in prompts]
    monkeypatch.setattr(batch_module, "PREFILL_CHUNK", 5)  # several chunks, rows ending in different ones
    batch = Batch(engine)
    seqs = [engine.start(p, GREEDY) for p in prompts]
    assert decoded(batch, seqs) == singles


def test_rows_grow_past_the_first_capacity(loaded, monkeypatch):
    monkeypatch.setattr("parley.kvcache.FIRST_CAPACITY", 4)
    engine = LocalEngine(loaded, prefix_cache_mb=0)
    params = SamplingParams(temperature=0, max_new_tokens=20)
    reference = LocalEngine(loaded, prefix_cache_mb=0)
    monkeypatch.undo()
    expected = [t.id for t in reference.stream(TURN1, params)]
    monkeypatch.setattr("parley.kvcache.FIRST_CAPACITY", 4)
    assert [t.id for t in engine.stream(TURN1, params)] == expected


def test_streamed_text_is_the_decoded_reply(loaded):
    """Incremental detokenizing releases exactly what decoding the whole reply at once gives."""
    engine = LocalEngine(loaded, prefix_cache_mb=0)
    params = SamplingParams(temperature=1.5, max_new_tokens=60, seed=3)  # random bytes, split characters
    tokens = list(engine.stream("Ünïcödé ✓ 漢字 🙂", params))
    ids = [t.id for t in tokens if t.id not in loaded.stop_ids]
    whole = loaded.tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(t.text for t in tokens) == whole.rstrip("\ufffd")


def _saved(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(2, tokens, 4), torch.zeros(2, tokens, 4))]  # 64 bytes a token


def test_store_keeps_to_its_budget_and_drops_what_a_longer_entry_covers():
    store = PrefixStore(budget_bytes=64 * 10)
    store.add([1, 2, 3], _saved(3))
    store.add([1, 2, 3, 4, 5], _saved(5))  # covers [1, 2, 3]
    assert len(store) == 1
    store.add([7, 8, 9, 10], _saved(4))
    assert len(store) == 2  # 9 tokens of 10
    store.add([5, 5], _saved(2))  # over budget: the least recently used ([1..5]) goes
    assert store.longest([1, 2, 3, 4, 5, 6]) == (0, None)
    length, saved = store.longest([7, 8, 9, 10])
    assert length == 3 and saved is not None  # one token is always left to feed
    store.add(list(range(11)), _saved(11))  # larger than the whole budget: not kept
    assert store.longest(list(range(12)))[0] == 0


def test_joining_sequences_are_prefilled_in_groups_of_similar_length(loaded, monkeypatch):
    """Padding each newcomer to the longest one would mostly compute padding: similar lengths go
    together, and every sequence still gets the tokens it gets alone, in the order it was given."""
    assert batch_module._groups([10, 200, 190, 5, 400, 180, 1]) == [[4], [1, 2, 5], [0, 3, 6]]
    assert batch_module._groups([]) == [] and batch_module._groups([7, 7]) == [[0, 1]]
    prompts = ["x " * 100, "Hi", "Tell me a story about", "y " * 90]
    engine = LocalEngine(loaded, prefix_cache_mb=0)
    singles = [[t.id for t in engine.stream(p, GREEDY)] for p in prompts]
    forwards = []
    real = Batch._forward
    monkeypatch.setattr(Batch, "_forward", lambda self, first, ids, positions: forwards.append(ids.shape)
                        or real(self, first, ids, positions))
    batch = Batch(engine)
    seqs = [engine.start(p, GREEDY) for p in prompts]
    assert decoded(batch, seqs) == singles
    # The prefill: the two long prompts together, then the two short ones.
    assert [tuple(shape) for shape in forwards[:2]] == [(2, len(seqs[0].prompt_ids)), (2, len(seqs[2].prompt_ids))]
