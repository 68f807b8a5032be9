"""The label mask, fitting to length, raw text, packing."""

import pytest

from parley.data.records import chat_record, text_record
from parley.data.tokenize import IGNORE, Encoder, Example, Packer
from parley.errors import DataError

DIALOGUE = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Write a loop."},
    {"role": "assistant", "content": "```python\nfor i in range(3):\n\tprint(i)  \n```"},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome. Ünïcödé ✓"},
]


def learned_runs(example, tokenizer):
    """Decoded text of each run of learned tokens."""
    runs, run = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run, skip_special_tokens=False))
            run = []
    if run:
        runs.append(tokenizer.decode(run, skip_special_tokens=False))
    return runs


def assistant_turns(messages, end):
    return [m["content"] + end for m in messages if m["role"] == "assistant" and m.get("weight", 1) != 0]


def test_only_assistant_turns_are_learned(chat_tokenizer, chatml):
    record = chat_record(DIALOGUE, "d.jsonl", 1)
    [example] = Encoder(chat_tokenizer, chatml, 512).encode(record)
    assert learned_runs(example, chat_tokenizer) == assistant_turns(DIALOGUE, "<|im_end|>")
    full = chat_tokenizer.decode(example.input_ids, skip_special_tokens=False)
    assert full == chat_tokenizer.apply_chat_template(DIALOGUE, chat_template=chatml, tokenize=False)


def test_mask_with_the_embedded_model_tokenizer_and_its_template(embedded_tokenizer):
    from parley.templates import template_for

    record = chat_record(DIALOGUE[1:], "d.jsonl", 1)  # no system: the template inserts its default one
    [example] = Encoder(embedded_tokenizer, template_for(embedded_tokenizer), 2048).encode(record)
    assert learned_runs(example, embedded_tokenizer) == assistant_turns(DIALOGUE, "<|im_end|>")
    context = embedded_tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l == IGNORE])
    assert "You are a helpful AI assistant named SmolLM" in context


def test_default_template_for_models_without_one(chat_tokenizer):
    from parley.templates import DEFAULT_TEMPLATE

    [example] = Encoder(chat_tokenizer, DEFAULT_TEMPLATE, 512).encode(chat_record(DIALOGUE, "d", 1))
    assert learned_runs(example, chat_tokenizer) == assistant_turns(DIALOGUE, chat_tokenizer.eos_token)


def test_weight_zero_turn_is_context(chat_tokenizer, chatml):
    messages = [dict(m) for m in DIALOGUE]
    messages[2]["weight"] = 0
    [example] = Encoder(chat_tokenizer, chatml, 512).encode(chat_record(messages, "d", 1))
    assert learned_runs(example, chat_tokenizer) == [DIALOGUE[4]["content"] + "<|im_end|>"]


def test_overlong_dialogue_drops_oldest_turns_like_the_chat_buffer(chat_tokenizer, chatml):
    turns = [{"role": "system", "content": "Persona."}]
    for i in range(12):
        turns += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i} " * 5}]
    encoder = Encoder(chat_tokenizer, chatml, 120)
    [example] = encoder.encode(chat_record(turns, "long.jsonl", 4))
    assert len(example.input_ids) <= 120
    text = chat_tokenizer.decode(example.input_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nPersona.")  # the system prompt stays
    assert "answer 11" in text and "question 0 " not in text  # the newest stay, the oldest go
    kept = learned_runs(example, chat_tokenizer)
    answers = [m["content"] + "<|im_end|>" for m in turns if m["role"] == "assistant"]
    assert 0 < len(kept) < 12 and kept == answers[12 - len(kept) :]  # the newest whole turns, in order
    assert encoder.counts["fitted"] == 1 and encoder.counts["dropped_turns"] > 0


def test_record_that_cannot_fit_is_dropped_and_counted(chat_tokenizer, chatml):
    encoder = Encoder(chat_tokenizer, chatml, 30)
    record = chat_record([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 200}], "x", 1)
    assert encoder.encode(record) == []
    assert encoder.counts["too_long"] == 1


def test_raw_text_is_learned_whole_with_eos_and_chunked(chat_tokenizer, chatml):
    code = "def f():\r\n\treturn 1   \n" * 20
    examples = Encoder(chat_tokenizer, chatml, 50).encode(text_record(code, "f.py"))
    ids = [t for e in examples for t in e.input_ids]
    assert all(e.labels == e.input_ids for e in examples)
    assert all(len(e.input_ids) <= 50 for e in examples) and len(examples) > 1
    assert chat_tokenizer.decode(ids, skip_special_tokens=False) == code + "<|im_end|>"


def test_template_that_rewrites_history_is_refused_with_the_record_location(chat_tokenizer):
    rewriting = (
        "{% for m in messages %}{% if loop.last %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
        "{% else %}{{ m['role'] + ': ' + m['content'][:3] + '\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    record = chat_record(DIALOGUE, "d.jsonl", 7)
    with pytest.raises(DataError, match=r"^d.jsonl:7: the chat template does not render this conversation as a prefix"):
        Encoder(chat_tokenizer, rewriting, 512).encode(record)
    refusing = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(DataError, match=r"^d.jsonl:7: the chat template refuses this conversation: System role not supported"):
        Encoder(chat_tokenizer, refusing, 512).encode(record)


def test_batch_encoding_equals_one_by_one(chat_tokenizer, chatml):
    records = [chat_record([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}\n" * i}], "f", i)
               for i in range(1, 8)] + [text_record("x = 1\n", "g.py")]
    encoder = Encoder(chat_tokenizer, chatml, 512)
    assert encoder.encode_batch(records) == [encoder.encode(r) for r in records]


def test_packing_keeps_whole_examples_and_restarts_positions():
    packer = Packer(10)
    out = []
    for n, source in ((4, "a"), (5, "b"), (3, "c"), (10, "d")):
        out += packer.add(Example(list(range(100, 100 + n)), [IGNORE] * n, source))
    out += packer.flush()
    assert [len(e.input_ids) for e in out] == [9, 3, 10]
    assert out[0].position_ids == [0, 1, 2, 3, 0, 1, 2, 3, 4] and out[0].source == "a (+1 more)"
    assert out[2].position_ids == list(range(10)) and out[2].source == "d"


def test_a_tool_use_record_trains_on_the_assistants_call(chat_tokenizer, chatml):
    """OpenAI's fine-tuning shape for tool use (tools, tool_calls, tool results) becomes Parley's one tool
    format (parley/tools.py), and the assistant's call is learned as that text."""
    from parley.data.chat_formats import from_messages

    obj = {"tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
           "messages": [
               {"role": "user", "content": "What is 2 + 3?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "5"},
               {"role": "assistant", "content": "It is 5."}]}
    record = from_messages(obj, "tools.jsonl", 1)
    [example] = Encoder(chat_tokenizer, chatml, 512).encode(record)
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert learned_runs(example, chat_tokenizer) == [call + "<|im_end|>", "It is 5.<|im_end|>"]
    text = chat_tokenizer.decode(example.input_ids)
    assert "<tools>" in text and "<tool_response>\n5\n</tool_response>" in text
