"""The generation engine on tiny random Llama and GPT-2 models: streaming, seeds, stops, logprobs, batching."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from parley.batch import Batch
from parley.engine import LocalEngine, SamplingParams
from parley.errors import ConfigError, ContextError

CHAT = [{"role": "user", "content": "Write a haiku about tensors."}]


@pytest.fixture(params=["llama", "gpt2"])
def engine(request, llama_loaded, gpt2_loaded):
    return LocalEngine(llama_loaded if request.param == "llama" else gpt2_loaded)


def test_streaming_equals_generate(engine):
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=40, seed=7)
    streamed = "".join(t.text for t in engine.stream(CHAT, params))
    assert streamed == engine.generate(CHAT, params)
    assert streamed  # a random model over a 49k vocabulary says something


def test_same_seed_same_text_other_seed_other_text(engine):
    def run(seed):
        return engine.generate(CHAT, SamplingParams(temperature=1.0, max_new_tokens=30, seed=seed))

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_matches_transformers_generate(engine, penalty):
    ids = engine.prompt_ids(CHAT)
    params = SamplingParams(temperature=0, max_new_tokens=20, repetition_penalty=penalty)
    ours = [t.id for t in engine.stream(CHAT, params)]
    model = engine.loaded.model
    reference = model.generate(
        torch.tensor([ids]), max_new_tokens=20, do_sample=False, repetition_penalty=penalty,
        eos_token_id=engine.loaded.stop_ids, pad_token_id=engine.loaded.tokenizer.pad_token_id,
    )[0, len(ids):].tolist()
    assert ours[: len(reference)] == reference[: len(ours)]


def _greedy_reference(engine, max_new_tokens: int, **generate_args) -> list[int]:
    ids = engine.prompt_ids(CHAT)
    out = engine.loaded.model.generate(
        torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=engine.loaded.stop_ids,
        pad_token_id=engine.loaded.tokenizer.pad_token_id, **generate_args)
    return out[0, len(ids):].tolist()


def test_logit_bias_matches_transformers_sequence_bias(engine):
    plain = [t.id for t in engine.stream(CHAT, SamplingParams(temperature=0, max_new_tokens=12))]
    bias = {plain[0]: -100.0, plain[1]: -3.5}  # ban the first token, discourage the second
    ours = [t.id for t in engine.stream(CHAT, SamplingParams(temperature=0, max_new_tokens=12, logit_bias=bias))]
    reference = _greedy_reference(engine, 12, sequence_bias={(i,): v for i, v in bias.items()})
    assert ours[: len(reference)] == reference[: len(ours)]
    assert ours != plain and plain[0] not in ours
    forced = engine.loaded.tokenizer.convert_tokens_to_ids("hello")  # +100 all but forces it, even sampled
    sampled = engine.stream(CHAT, SamplingParams(temperature=1.0, seed=3, max_new_tokens=6, logit_bias={forced: 100}))
    assert [t.id for t in sampled] == [forced] * 6


class _OpenAIPenalties:
    """OpenAI's documented formula, over the generated tokens only: the reference for the engine's."""

    def __init__(self, prompt_length: int, presence: float, frequency: float):
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids, scores):
        counts = torch.bincount(input_ids[0, self.prompt_length:], minlength=scores.shape[-1])[None]
        return scores - self.frequency * counts - self.presence * (counts > 0)


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 0.7), (0.5, 2.0), (2.0, -0.5)])
def test_presence_and_frequency_penalties_follow_openais_formula(engine, presence, frequency):
    from transformers import LogitsProcessorList

    params = SamplingParams(temperature=0, max_new_tokens=24, presence_penalty=presence, frequency_penalty=frequency)
    ours = [t.id for t in engine.stream(CHAT, params)]
    penalties = _OpenAIPenalties(len(engine.prompt_ids(CHAT)), presence, frequency)
    reference = _greedy_reference(engine, 24, logits_processor=LogitsProcessorList([penalties]))
    assert ours[: len(reference)] == reference[: len(ours)]
    assert ours != [t.id for t in engine.stream(CHAT, SamplingParams(temperature=0, max_new_tokens=24))]


def test_logit_bias_and_penalties_are_checked(engine):
    for bad, words in [(dict(logit_bias={5: 101}), "between -100 and 100"),
                       (dict(logit_bias={i: 1 for i in range(301)}), "at most 300"),
                       (dict(logit_bias={"a": 1}), "token ids"),
                       (dict(presence_penalty=2.5), "presence_penalty=2.5 is out of range"),
                       (dict(frequency_penalty=-3), "frequency_penalty=-3 is out of range")]:
        with pytest.raises(ConfigError, match=words):
            SamplingParams(**bad).check()
    vocab = len(engine.loaded.tokenizer)
    with pytest.raises(ConfigError, match=f"token id {vocab}, which is not in this model's vocabulary"):
        engine.generate(CHAT, SamplingParams(logit_bias={vocab: 1}))


def test_logprobs_are_the_models(engine):
    params = SamplingParams(temperature=0, max_new_tokens=8, top_logprobs=3)
    tokens = list(engine.stream(CHAT, params))
    ids = engine.prompt_ids(CHAT) + [t.id for t in tokens]
    with torch.no_grad():
        logits = engine.loaded.model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)
    start = len(ids) - len(tokens) - 1
    for offset, token in enumerate(tokens):
        assert token.logprob == pytest.approx(float(expected[start + offset, token.id]), abs=1e-4)
        assert len(token.top) == 3
        assert token.top[0][1] == pytest.approx(token.logprob, abs=1e-4)  # greedy picks the best
        assert token.top[0][1] >= token.top[1][1] >= token.top[2][1]


def test_stop_string_ends_the_reply_and_is_never_shown(engine):
    full = engine.generate(CHAT, SamplingParams(temperature=0, max_new_tokens=40))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3
    params = SamplingParams(temperature=0, max_new_tokens=40, stop=[stop])
    tokens = list(engine.stream(CHAT, params))
    text = "".join(t.text for t in tokens)
    assert text == full[: full.index(stop)]
    assert stop not in text


def test_length_limit(engine):
    tokens = list(engine.stream("Once upon a time", SamplingParams(temperature=1.0, max_new_tokens=5, seed=0)))
    assert len(tokens) <= 5


def test_raw_prompt_is_used_as_is(engine):
    assert engine.prompt_ids("plain text") == engine.loaded.tokenizer("plain text")["input_ids"]


def test_prompt_longer_than_context_is_refused(engine):
    long = "word " * (engine.loaded.context_window + 10)
    with pytest.raises(ContextError, match="context window"):
        engine.generate(long, SamplingParams(max_new_tokens=4))


def test_batched_decoding_equals_one_at_a_time(engine):
    """Sequences of different lengths join, decode together, and leave as they finish."""
    prompts = ["Hi", [{"role": "user", "content": "A much longer question about many things at once?"}], "Tell me"]
    lengths = [6, 12, 9]
    singles = [
        engine.generate(p, SamplingParams(temperature=0, max_new_tokens=n)) for p, n in zip(prompts, lengths)
    ]
    batch = Batch(engine)
    seqs = [engine.start(p, SamplingParams(temperature=0, max_new_tokens=n)) for p, n in zip(prompts, lengths)]
    texts = {}
    for seq in seqs[:2]:  # the third joins mid-flight
        texts[id(seq)] = batch.add(seq).text
    steps = 0
    while batch.seqs:
        for seq, token in zip(list(batch.seqs), batch.step()):
            texts[id(seq)] += token.text
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
        steps += 1
        if steps == 2:
            texts[id(seqs[2])] = batch.add(seqs[2]).text
    assert [texts[id(s)] for s in seqs] == singles


def test_sampling_params_from_strings():
    params = SamplingParams().updated(temperature="0.2", max_new_tokens="64", stop="END,###", seed="none")
    assert (params.temperature, params.max_new_tokens, params.stop, params.seed) == (0.2, 64, ["END", "###"], None)
    with pytest.raises(ConfigError, match="unknown parameter 'temp'"):
        SamplingParams().updated(temp="1")
    with pytest.raises(ConfigError, match="not a valid float"):
        SamplingParams().updated(temperature="hot")
    with pytest.raises(ConfigError, match="top_p=1.5 is out of range"):
        SamplingParams().updated(top_p=1.5)
    # logit_bias as /params and stored conversations give it: JSON, whose keys are strings.
    assert SamplingParams().updated(logit_bias='{"42": -100, "7": 2.5}').logit_bias == {42: -100, 7: 2.5}
    assert SamplingParams().updated(logit_bias={"42": 1}).logit_bias == {42: 1}
    assert SamplingParams(logit_bias={1: 1}).updated(logit_bias="none").logit_bias == {}
    with pytest.raises(ConfigError, match="logit_bias is not valid JSON"):
        SamplingParams().updated(logit_bias="42=-100")
    with pytest.raises(ConfigError, match="logit_bias keys must be token ids"):
        SamplingParams().updated(logit_bias='{"hello": -100}')
    with pytest.raises(ConfigError, match="must map token ids to numbers"):
        SamplingParams().updated(logit_bias="[1, 2]")


@pytest.mark.parametrize("temperature, penalty", [(1e-45, 1.0), (1e-300, 1.3), (0.7, 1e-45), (1.0, 5e-324)])
def test_tiny_temperatures_and_penalties_sample_without_nan(engine, temperature, penalty):
    """Dividing by so little overflows fp32 to inf, and softmax of inf is NaN: below SAMPLING_EPS a
    temperature is greedy and a penalty acts as SAMPLING_EPS, so valid parameters always sample."""
    params = SamplingParams(temperature=temperature, repetition_penalty=penalty, max_new_tokens=8, seed=1)
    text = engine.generate(CHAT, params)
    if temperature < 1e-5:
        assert text == engine.generate(CHAT, SamplingParams(temperature=0, repetition_penalty=penalty, max_new_tokens=8))


def test_a_failing_sequence_ends_alone(engine):
    """One sequence that raises while its token is chosen ends alone; the others say what they say alone."""
    prompts = ["Hi", "Tell me", "Once upon a time"]
    params = [SamplingParams(temperature=0.8, seed=s, max_new_tokens=10) for s in (1, 2, 3)]
    alone = [engine.generate(p, q) for p, q in zip(prompts, params)]
    seqs = [engine.start(p, q) for p, q in zip(prompts, params)]
    batch = engine.new_batch()
    texts = [token.text for token in batch.add_many(seqs)]
    failing = seqs[1]
    # What a validation gap would let through: more alternatives than the vocabulary has (torch.topk raises).
    failing.params = dataclasses.replace(failing.params, top_logprobs=10**7)
    for seq, token in zip(list(batch.seqs), batch.step()):
        assert (token is None) == (seq is failing)
        texts[seqs.index(seq)] += token.text if token else ""
    assert failing.done and isinstance(failing.error, RuntimeError) and failing.finish_reason is None
    batch.remove(failing)
    while batch.seqs:
        for seq, token in zip(list(batch.seqs), batch.step()):
            texts[seqs.index(seq)] += token.text
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
    assert [texts[0], texts[2]] == [alone[0], alone[2]]
    with pytest.raises(RuntimeError):  # a batch of one (`stream`) raises its sequence's error
        list(engine.stream("Hi", Unchecked(top_logprobs=10**7, max_new_tokens=4)))


class Unchecked(SamplingParams):
    """Parameters past validation, standing in for a gap in `check()`."""

    def check(self):
        return self


def test_the_earliest_stop_string_wins(engine):
    """Two stop strings completed by the same token: the reply ends at the one earlier in the text,
    whatever their order in the list."""
    params = SamplingParams(temperature=1.0, seed=0, max_new_tokens=60)  # varied text; stops leave sampling alone
    tokens = list(engine.stream(CHAT, params))
    full = "".join(t.text for t in tokens)
    at = 0
    for token in tokens:  # a token of 3+ characters after the first: `before` ends in its first character
        p, at = at, at + len(token.text)
        before, after = full[p - 1 : p + 1], full[p + 1 : at]
        if p and len(token.text) >= 3 and full.find(before) == p - 1 and full.find(after) == p + 1:
            break
    else:
        raise AssertionError("the reply has no token to build the case from: change CHAT or max_new_tokens")
    text = engine.generate(CHAT, dataclasses.replace(params, stop=[after, before]))
    assert text == full[: p - 1]
