"""The engine on tiny random T5 and BART models: the same tokens as transformers' generate, streaming,
stops, lengths, continuous batching, and prompts rendered the way training rendered the encoder side."""

from __future__ import annotations

import pytest
import torch
from train.train_task import build_tokenizer

from parley.data.records import Record
from parley.data.tokenize import Encoder
from parley.batch import Batch
from parley.engine import LocalEngine, SamplingParams
from parley.errors import ContextError
from parley.models import assemble
from parley.seq2seq import Seq2SeqBatch
from parley.train.batches import seq2seq_rows
from tiny_models import tiny_bart, tiny_llama, tiny_t5

CHAT = [{"role": "user", "content": "I am Ada from Oslo."}]
RAW = "Hi Eve! How is Pune?"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()  # byte-level BPE, ~350 tokens: tiny models build in milliseconds


@pytest.fixture(params=["t5", "bart"])
def engine(request, tokenizer):
    model = (tiny_t5 if request.param == "t5" else tiny_bart)(tokenizer)
    return LocalEngine(assemble(model, tokenizer, spec=f"tiny-{request.param}"))


def reference(engine, prompt, max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding of the same encoder input (the decoder start token dropped)."""
    ids = engine.prompt_ids(prompt)
    out = engine.loaded.model.generate(
        input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=engine.loaded.stop_ids,
        pad_token_id=engine.loaded.tokenizer.pad_token_id,
    )
    return out[0, 1:].tolist()


def test_the_engine_picks_the_encoder_decoder_batch(engine, tokenizer):
    assert isinstance(engine.new_batch(), Seq2SeqBatch)
    assert type(LocalEngine(assemble(tiny_llama(tokenizer), tokenizer, spec="llama")).new_batch()) is Batch


@pytest.mark.parametrize("prompt", [CHAT, RAW], ids=["chat", "raw"])
def test_greedy_tokens_equal_transformers_generate(engine, prompt):
    ours = [t.id for t in engine.stream(prompt, SamplingParams(temperature=0, max_new_tokens=24))]
    expected = reference(engine, prompt, 24)
    assert len(set(expected)) > 2  # the tiny model says varied things, so agreement means something
    assert ours == expected


def test_streaming_equals_generate_and_seeds_reproduce(engine):
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=30, seed=7)
    streamed = "".join(t.text for t in engine.stream(CHAT, params))
    assert streamed and streamed == engine.generate(CHAT, params)
    assert engine.generate(CHAT, params.updated(seed=8)) != streamed


def test_logprobs_are_the_models(engine):
    tokens = list(engine.stream(CHAT, SamplingParams(temperature=0, max_new_tokens=6, top_logprobs=2)))
    model = engine.loaded.model
    decoder = [model.config.decoder_start_token_id] + [t.id for t in tokens[:-1]]
    with torch.no_grad():
        prompt = torch.tensor([engine.prompt_ids(CHAT)])
        logits = model(input_ids=prompt, decoder_input_ids=torch.tensor([decoder])).logits
    expected = torch.log_softmax(logits[0].float(), dim=-1)
    for i, token in enumerate(tokens):
        assert token.logprob == pytest.approx(float(expected[i, token.id]), abs=1e-4)
        assert token.top[0][1] == pytest.approx(token.logprob, abs=1e-4)


def test_stop_strings_and_max_new_tokens(engine):
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    full = engine.generate(CHAT, greedy)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert full.find(stop) > 0
    assert engine.generate(CHAT, greedy.updated(stop=[stop])) == full[: full.find(stop)]

    seq = engine.start(CHAT, greedy.updated(max_new_tokens=5))
    batch = engine.new_batch()
    batch.add(seq)
    while not seq.done:
        batch.step()
    assert len(seq.ids) == 5 and seq.finish_reason == "length"
    assert seq.ids == reference(engine, CHAT, 24)[:5]


def test_prompts_are_held_to_the_encoders_window_and_replies_to_the_decoders(tokenizer):
    loaded = assemble(tiny_bart(tokenizer), tokenizer, spec="tiny-bart")  # 64 positions for each side
    loaded.stop_ids = []  # nothing ends the reply but its length
    engine = LocalEngine(loaded)
    assert loaded.context_window == 64
    with pytest.raises(ContextError, match="context window is 64"):
        engine.start(tokenizer.decode(list(range(5, 75))), SamplingParams())
    long_prompt = tokenizer.decode(list(range(5, 65)))
    assert len(engine.prompt_ids(long_prompt)) == 60
    # A decoder-only model would have 64 - 60 positions left; the decoder has its own 63.
    assert len(list(engine.stream(long_prompt, SamplingParams(temperature=0, max_new_tokens=40)))) == 40
    assert len(list(engine.stream("Hi", SamplingParams(temperature=0, max_new_tokens=200)))) == 63


def test_sequences_joining_and_leaving_a_batch_keep_their_own_tokens(engine):
    prompts = [CHAT, RAW, [{"role": "user", "content": "Greet Eve of Lima."}]]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    alone = [[t.id for t in engine.stream(p, params)] for p in prompts]
    batch = engine.new_batch()
    first = engine.start(prompts[0], params)
    batch.add(first)
    batch.step()
    batch.step()
    later = [engine.start(p, params) for p in prompts[1:]]
    batch.add_many(later)  # join mid-way, as the server's scheduler admits requests
    seqs = [first, *later]
    while len(batch):
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
        if len(batch):
            batch.step()
    assert [s.ids for s in seqs] == [ids[: len(s.ids)] for s, ids in zip(seqs, alone)]
    assert all(s.done for s in seqs)


def test_chat_prompts_are_what_training_fed_the_encoder(engine, tokenizer):
    """The encoder input of a (history -> reply) training pair is the engine's prompt for that history."""
    reply = {"role": "assistant", "content": "Hi Ada! How is Oslo?"}
    example = Encoder(tokenizer, engine.loaded.template, max_len=256).encode(Record(CHAT + [reply], "test"))[0]
    pairs = seq2seq_rows({"input_ids": [example.input_ids], "labels": [example.labels]})
    assert pairs["input_ids"] == [engine.prompt_ids(CHAT)]
    assert tokenizer.decode(pairs["labels"][0], skip_special_tokens=True) == reply["content"]


def test_a_lora_adapter_over_t5_decodes_like_generate(tokenizer):
    """`parley train lora.r=...` on a T5 leaves a peft model: the engine drives it through the wrapper."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, target_modules=["q", "v"], init_lora_weights=False)
    engine = LocalEngine(assemble(get_peft_model(tiny_t5(tokenizer), config).eval(), tokenizer, spec="tiny-t5-lora"))
    ours = [t.id for t in engine.stream(CHAT, SamplingParams(temperature=0, max_new_tokens=16))]
    assert ours == reference(engine, CHAT, 16)
    plain = LocalEngine(assemble(tiny_t5(tokenizer), tokenizer, spec="tiny-t5"))
    assert ours != [t.id for t in plain.stream(CHAT, SamplingParams(temperature=0, max_new_tokens=16))]
