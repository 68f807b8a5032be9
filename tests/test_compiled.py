"""The compiled decode step (compiled.py) on a tiny random Llama: it is really used for one row as the
cache grows; its logits match the eager ones (fp32: to rounding; bf16 and int8 weights: within a
stated tolerance); what it does not cover (batches, wide contexts) runs eagerly, and the last row of
a batch moves to a one-row cache, which it covers. Each model and dtype compiles once (in a child
process); later engines load the saved graph."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import parley.compiled
from parley.compiled import CompiledStep, _skeleton
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


@pytest.mark.parametrize("kind", ["int8", torch.float32], ids=["int8-default", "fp32"])
def test_compiled_steps_match_the_eager_ones(llama_loaded, monkeypatch, kind):
    model = quantize_int8(llama_loaded.model.to(torch.bfloat16)) if kind == "int8" else llama_loaded.model
    loaded = dataclasses.replace(llama_loaded, model=model, stop_ids=[], stop_strings=[])
    monkeypatch.setattr("parley.kvcache.FIRST_CAPACITY", 16)  # the cache grows twice within 40 steps
    monkeypatch.setattr("parley.compiled.NICE", 0)  # at the lowest priority the suite's busy workers starve it
    eager = LocalEngine(loaded, prefix_cache_mb=0)
    compiled = LocalEngine(loaded, prefix_cache_mb=0, compile=True)
    assert compiled.compiled.wait(timeout=600), compiled.compiled.error
    assert eager.compiled is None
    assert (parley.compiled.cache_dir() / compiled.compiled.key() / parley.compiled.GRAPH_FILE).is_file()
    assert not list(parley.compiled.cache_dir().glob("*.skeleton.pt"))  # the model's skeleton is not left behind

    ours, theirs = teacher_forced(compiled, PROMPTS[:1], 40), teacher_forced(eager, PROMPTS[:1], 40)
    assert (ours - theirs).abs().max() < TOLERANCE[kind]
    # Every step ran compiled except, twice, the step that fills the columns and the one that grows them.
    assert compiled.compiled.steps == 36

    # A batch of several rows (several clients) decodes eagerly: there the compiled graph does not pay.
    ours, theirs = teacher_forced(compiled, PROMPTS, 3), teacher_forced(eager, PROMPTS, 3)
    assert compiled.compiled.steps == 36 and torch.equal(ours, theirs)

    # Streaming through the public API runs the compiled graph after the prefill.
    before = compiled.compiled.steps
    tokens = list(compiled.stream(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=8)))
    assert len(tokens) == 8 and compiled.compiled.steps - before == 7
    # So do contexts wider than MAX_WIDTH.
    monkeypatch.setattr("parley.compiled.MAX_WIDTH", 4)  # narrower than the prompt
    before = compiled.compiled.steps
    assert len(list(compiled.stream(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=4)))) == 4
    assert compiled.compiled.steps == before

    monkeypatch.setattr("parley.compiled.MAX_WIDTH", 1024)
    # When the others finish, the row left (the longest answer of an evaluation, the last client still
    # streaming) moves to a cache of its own, which the compiled step covers.
    params = [SamplingParams(temperature=0, max_new_tokens=n) for n in (2, 6)]
    batch = compiled.new_batch()
    seqs = [compiled.start(p, q) for p, q in zip(PROMPTS[:2], params)]
    batch.add_many(seqs)
    alone = []  # (compiled steps before, rows in the cache) at each step the last row took alone
    while batch.seqs:
        if len(batch.seqs) == 1:
            alone.append((compiled.compiled.steps, batch.cache.layers[0].keys.shape[0]))
        batch.step()
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
    assert len(seqs[1].ids) == 6 and len(alone) == 4 and {rows for _, rows in alone} == {1}
    assert compiled.compiled.steps - alone[0][0] == 4
    if kind == torch.float32:  # and it says what it would have said alone (int8 batches round as bf16)
        assert seqs[1].ids == [t.id for t in eager.stream(PROMPTS[1], params[1])]


def test_a_second_engine_loads_the_saved_graphs_and_a_wrong_graph_is_refused(llama_loaded, monkeypatch):
    model = quantize_int8(llama_loaded.model.to(torch.bfloat16))
    loaded = dataclasses.replace(llama_loaded, model=model, stop_ids=[], stop_strings=[])
    monkeypatch.setattr("parley.compiled.NICE", 0)
    first = LocalEngine(loaded, prefix_cache_mb=0, compile=True)
    assert first.compiled.wait(timeout=600), first.compiled.error

    def no_child(*args):
        raise AssertionError("compiled again although the graphs were saved")

    monkeypatch.setattr("parley.compiled._compile_in_child", no_child)
    second = CompiledStep(model, torch.bfloat16, loaded.context_window, first.keeps_logits)
    assert second.wait(timeout=60), second.error and second.key() == first.compiled.key()

    # The skeleton the child compiles holds no data, and keeps the model's shared tensors shared.
    skeleton = _skeleton(model)
    assert all(p.is_meta for p in skeleton.parameters()) and all(b.is_meta for b in skeleton.buffers())
    assert skeleton.lm_head.weight is skeleton.model.embed_tokens.weight
    assert model.lm_head.weight is model.model.embed_tokens.weight and not model.lm_head.weight.is_meta

    # A graph that does not compute the model's step (here: sure of token 0) is refused before use.
    def wrong(model, ids, *rest):
        logits = torch.zeros(ids.shape[0], 1, model.config.vocab_size)
        logits[..., 0] = 50.0
        return logits

    with torch.inference_mode(), pytest.raises(RuntimeError, match="compiled graph disagrees with the eager step"):
        second._check(wrong)


def test_compiling_is_the_default_and_a_failed_compile_leaves_decoding_eager(llama_loaded, monkeypatch):
    monkeypatch.delenv("PARLEY_COMPILE", raising=False)
    assert parley.compiled.wanted()
    monkeypatch.setenv("PARLEY_COMPILE", "0")
    assert not parley.compiled.wanted()

    def failing_child(*args):
        raise RuntimeError("the compile (compiled/KEY.log) failed: out of memory")

    monkeypatch.setattr("parley.compiled._compile_in_child", failing_child)
    monkeypatch.setattr("parley.compiled.cache_dir", lambda: parley.compiled.parley_home() / "compiled-empty")
    engine = LocalEngine(dataclasses.replace(llama_loaded, stop_ids=[], stop_strings=[]), compile=True)
    assert not engine.compiled.wait(timeout=60) and not engine.compiling  # done, though failed: /health says so
    assert "out of memory" in str(engine.compiled.error)
    tokens = list(engine.stream(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=4)))
    assert len(tokens) == 4 and engine.compiled.steps == 0
