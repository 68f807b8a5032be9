"""Tool calling through the official openai SDK against a real server over a tiny random model: its calls are
valid only because `required` and a named tool_choice decode under the tools' schemas (parley/tools.py)."""

from __future__ import annotations

import json

import openai
import pytest

from parley.tools import plain_messages

ASK = [{"role": "user", "content": "What is 2 + 3? And the weather in Paris?"}]
# Bounded parameters: an untrained model never closes a free string or number on its own (test_serve_structured).
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["a", "b"],
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                   "b": {"type": "integer", "minimum": 0, "maximum": 99}}}}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city"],
    "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}}}}}
TOOLS = [ADD, WEATHER]


def valid(call) -> bool:
    arguments = json.loads(call.function.arguments)
    if call.function.name == "add":
        return set(arguments) == {"a", "b"} and all(0 <= v <= 99 for v in arguments.values())
    return call.function.name == "weather" and arguments["city"] in ("Paris", "Oslo", "Lima")


@pytest.mark.parametrize("seed", [0, 1])
def test_required_gives_a_valid_call(client, seed):
    reply = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=100, temperature=1.0, seed=seed)
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and valid(call)


def test_a_named_function_is_the_one_called(client):
    reply = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=100, seed=3,
                                           tool_choice={"type": "function", "function": {"name": "weather"}})
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "weather" and valid(call)


def test_parallel_calls_are_a_list_of_valid_calls(client):
    reply = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=200, temperature=1.0, seed=5)
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert calls and all(valid(c) for c in calls)
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_streamed_calls_are_assembled_by_the_sdk(client, tool_choice):
    """The SDK's stream helper assembles the deltas (index, id, name, then argument fragments) into the same
    calls the non-streamed reply has."""
    args = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=200,
                temperature=1.0, seed=7)
    whole = client.chat.completions.create(**args).choices[0].message.tool_calls
    with client.chat.completions.stream(**args) as stream:
        final = stream.get_final_completion()
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    streamed = choice.message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in streamed] == \
        [(c.function.name, c.function.arguments) for c in whole]
    assert all(c.id.startswith("call_") and valid(c) for c in streamed)
    deltas = [c.choices[0].delta for c in client.chat.completions.create(**args, stream=True) if c.choices]
    fragments = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert fragments[0].id and fragments[0].function.name and all(f.id is None for f in fragments[1:2])


def test_a_tool_call_history_is_rendered_in_the_documented_format(client, server):
    """An assistant's tool_calls and the tool's result are accepted and reach the model as parley/tools.py
    writes them (the prompt is exactly that many tokens)."""
    call = {"id": "call_abc", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_abc", "content": "5"}]
    reply = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, max_tokens=5, seed=1)
    expected = plain_messages(history, TOOLS)
    assert "<tool_response>\n5\n</tool_response>" in expected[-1]["content"]
    assert reply.usage.prompt_tokens == server[1].state.engine.count(expected)
    reply = client.chat.completions.create(model="tiny", messages=history, tool_choice="none", tools=TOOLS,
                                           max_tokens=5, seed=1)
    assert reply.usage.prompt_tokens == server[1].state.engine.count(plain_messages(history))  # tools not shown


@pytest.mark.parametrize("extra, param, words", [
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "divide"}}), "tool_choice", "divide"),
    (dict(tool_choice="required"), "tool_choice", "needs tools"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}]),
     "tools[0].function.parameters", 'Unimplemented keys: ["not"]'),
    (dict(messages=[*ASK, {"role": "tool", "tool_call_id": "call_nobody", "content": "5"}]),
     "messages[1].tool_call_id", "call_nobody"),
    (dict(tools=TOOLS, logprobs=True), "logprobs", "tools"),
])
def test_bad_tool_requests_are_400s_naming_the_field(client, extra, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": "tiny", "messages": ASK, "max_tokens": 8, **extra})
    error = caught.value.body
    assert error["param"] == param
    assert words in error["message"]


@pytest.mark.slow
def test_the_embedded_model_makes_a_valid_required_call(embedded_model, tmp_path):
    """The real SmolLM2 under tool_choice required: a call to a real tool with arguments that parse."""
    from parley.engine import LocalEngine
    from parley.serve.app import ServeOptions, create_app
    from serve.live_server import start_server

    app = create_app(ServeOptions(model="smollm2", max_tokens=100, db=tmp_path / "db"), engine=LocalEngine(embedded_model))
    url, stop = start_server(app)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, tool_choice="required",
                                               parallel_tool_calls=False, max_tokens=100, temperature=0)
        (call,) = reply.choices[0].message.tool_calls
        assert valid(call)
    finally:
        stop()


def test_auto_without_a_call_streams_the_whole_text(client):
    """Under `auto` streamed text is held back only where a <tool_call> could start; a reply with no call
    arrives whole, the same as unstreamed, and finishes as plain text."""
    args = dict(model="tiny", messages=ASK, tools=TOOLS, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**args).choices[0]
    chunks = [c for c in client.chat.completions.create(**args, stream=True) if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content
    assert whole.message.tool_calls is None
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [whole.finish_reason]


def test_the_agent_example_runs_its_loop(server):
    """examples/agent.py against the server: a forced call to its calculator, the result sent back, an answer."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "examples" / "agent.py"
    done = subprocess.run([sys.executable, str(script), "--base-url", server[0] + "/v1", "--model", "tiny",
                           "What is 2 + 3?"], capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr
    call, answer = done.stdout.split("\n", 1)  # the random model's answer may span lines
    assert call.startswith('tool call: calculate({"expression": ') and " -> " in call
    assert answer.startswith("assistant: ")


def test_the_agent_examples_calculator_evaluates_only_arithmetic():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("agent", Path(__file__).parents[2] / "examples" / "agent.py")
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    assert agent.calculate("(2 + 3) * 4") == "20"
    assert agent.calculate("__import__('os').getcwd()").startswith("error: not arithmetic")
    assert agent.calculate("1 / 0").startswith("error")
