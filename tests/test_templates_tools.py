"""Tool histories rendered through the one path (templates.render → encode_chat → count/fit → the engine):
the model's own template when it is tool-aware (Qwen2.5's, shipped with trl), else Parley's default format."""

from __future__ import annotations

import copy
from importlib.resources import files

import pytest

from parley.engine import LocalEngine, SamplingParams
from parley.models import assemble
from parley.templates import Chat, DEFAULT_TEMPLATE, encode_chat, render, supports_tools, template_for
from parley.tools import TOOLS_PROMPT, plain_messages
from tiny_models import tiny_llama

QWEN = (files("trl") / "chat_templates" / "qwen2_5.jinja").read_text()
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"},
           {"role": "assistant", "content": None, "tool_calls": [CALL]},
           {"role": "tool", "tool_call_id": "call_1", "content": "5"}]


@pytest.fixture(scope="module")
def qwen_loaded(embedded_tokenizer):
    """A tiny random model whose tokenizer carries Qwen2.5's tool-aware chat template."""
    tokenizer = copy.deepcopy(embedded_tokenizer)
    tokenizer.chat_template = QWEN
    return assemble(tiny_llama(tokenizer, max_position_embeddings=512), tokenizer, spec="tiny-qwen")


def test_tool_aware_templates_are_recognised(embedded_tokenizer):
    assert supports_tools(QWEN)
    assert not supports_tools(template_for(embedded_tokenizer))  # SmolLM2's has no tools
    assert not supports_tools(DEFAULT_TEMPLATE)


def test_a_tool_aware_template_renders_tools_and_calls_itself(qwen_loaded):
    text = render(qwen_loaded.tokenizer, QWEN, HISTORY, True, [ADD])
    assert "# Tools" in text and '"name": "add"' in text  # Qwen's own tool section, not Parley's
    assert TOOLS_PROMPT.split(":")[0] not in text
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in text  # an object, not text
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_a_template_without_tools_gets_the_default_format(embedded_tokenizer):
    template = template_for(embedded_tokenizer)
    expected = render(embedded_tokenizer, template, plain_messages(HISTORY, [ADD]), True)
    assert render(embedded_tokenizer, template, HISTORY, True, [ADD]) == expected
    assert "<tool_response>\n5\n</tool_response>" in expected


def test_the_engine_renders_a_chat_and_fits_it_with_its_tools(qwen_loaded):
    engine = LocalEngine(qwen_loaded)
    ids = encode_chat(qwen_loaded.tokenizer, QWEN, HISTORY, True, [ADD])
    assert engine.prompt_ids(Chat(HISTORY, [ADD])) == ids
    assert engine.count(HISTORY, tools=[ADD]) == len(ids) > engine.count(HISTORY)
    long = [HISTORY[0]] + [{"role": "user", "content": "filler " * 60}, {"role": "assistant", "content": "ok"}] * 8
    fitted = engine.fit(long + HISTORY[1:], max_new_tokens=64, tools=[ADD])
    assert fitted.dropped and fitted.messages[-3:] == HISTORY[1:][-3:]  # the call and its result stay together
    assert fitted.tokens == engine.count(fitted.messages, tools=[ADD]) <= qwen_loaded.context_window - 64
    tokens = list(engine.stream(Chat(HISTORY, [ADD]), SamplingParams(temperature=0, max_new_tokens=3)))
    assert len(tokens) == 3
