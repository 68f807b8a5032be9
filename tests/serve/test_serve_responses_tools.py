"""Function tools on POST /v1/responses through the official openai SDK (create, create(stream=True), stream)
against the shared tiny server: forced calls are valid because they decode under the tools' schemas."""

from __future__ import annotations

import json

import openai
import pytest

ADD = {"type": "function", "name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["a", "b"],
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                   "b": {"type": "integer", "minimum": 0, "maximum": 99}}}}
WEATHER = {"type": "function", "name": "weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city"],
    "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}}}}
ARGS = dict(model="tiny", input="What is 2 + 3?", tools=[ADD, WEATHER], max_output_tokens=60, temperature=1.0)


def valid(item) -> bool:
    arguments = json.loads(item.arguments)
    if item.name == "add":
        return set(arguments) == {"a", "b"} and all(0 <= v <= 99 for v in arguments.values())
    return item.name == "weather" and arguments["city"] in ("Paris", "Oslo", "Lima")


def test_required_gives_function_call_items(client):
    response = client.responses.create(**ARGS, tool_choice="required", parallel_tool_calls=False)
    assert [item.type for item in response.output] == ["function_call"]
    call = response.output[0]
    assert valid(call) and call.call_id.startswith("call_") and call.status == "completed"
    assert response.tool_choice == "required" and [t.name for t in response.tools] == ["add", "weather"]


def test_a_named_function_streams_as_the_sdk_assembles_it(client):
    with client.responses.stream(**ARGS, tool_choice={"type": "function", "name": "weather"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.output_text.delta" not in kinds and "response.content_part.added" not in kinds
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (call,) = final.output
    assert call.name == "weather" and valid(call) and call.arguments == deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_create_with_stream_true_gives_the_same_events(client):
    events = list(client.responses.create(**ARGS, tool_choice="required", stream=True))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done and all(item.type == "function_call" and valid(item) for item in done)
    assert [item.id for item in events[-1].response.output] == [item.id for item in done]


def test_auto_without_a_call_is_a_message(client):
    response = client.responses.create(**{**ARGS, "max_output_tokens": 8, "temperature": 0})
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": ARGS["input"]}],
                                           tools=[{"type": "function", "function": {k: v for k, v in t.items()
                                                                                     if k != "type"}}
                                                  for t in ARGS["tools"]], max_tokens=8, temperature=0)
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == plain.choices[0].message.content  # the same prompt: the same greedy text
    assert response.usage.input_tokens == plain.usage.prompt_tokens


def test_function_call_items_and_outputs_are_the_chat_history(client):
    """function_call / function_call_output input items reach the model as chat's tool_calls / tool turns."""
    items = [{"role": "user", "content": "What is 2 + 3?"},
             {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": '{"a": 2, "b": 3}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "5"}]
    response = client.responses.create(model="tiny", input=items, tools=[ADD], max_output_tokens=5, temperature=0)
    chat = client.chat.completions.create(model="tiny", max_tokens=5, temperature=0, messages=[
        items[0], {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"}],
        tools=[{"type": "function", "function": {k: v for k, v in ADD.items() if k != "type"}}])
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.output_text == chat.choices[0].message.content


@pytest.mark.parametrize("args, param", [
    ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "5"}]}, "input[0].call_id"),
    ({"tool_choice": {"type": "function", "name": "divide"}}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "not": {}}}]},
     "tools[0].parameters"),
    ({"tool_choice": "required", "text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
])
def test_bad_tool_requests_name_the_field(client, args, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**{**ARGS, "max_output_tokens": 4, **args})
    assert caught.value.body["param"] == param


def test_a_streamed_reply_with_text_then_a_call_is_a_message_item_then_a_call_item():
    """tool_choice auto, a model that writes a sentence and then a <tool_call> block (as Qwen2.5 does): the
    sentence streams as a message item, the block never shows as text and becomes a function_call item. Driven
    with the engine's own Event/Token values, since a random tiny model never writes such a block."""
    import asyncio
    from types import SimpleNamespace

    from parley.batching import Event
    from parley.engine import Token
    from parley.serve.responses_api import ResponsesRequest, _Reply
    from parley.serve.responses_tools import ResponsesTools

    body = ResponsesRequest.model_validate({"input": "2 + 3?", "tools": [ADD], "stream": True})
    tools = ResponsesTools(body.tools, body.tool_choice, body.parallel_tool_calls)
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(served_name="tiny")))
    reply = _Reply(request, body, tools)
    pieces = ["Let me add. ", "<tool", "_call>\n", '{"name": "add", ', '"arguments": {"a": 2, "b": 3}}', "\n</tool_call>"]
    events = [Event(0, Token(i, text, -0.1)) for i, text in enumerate(pieces)] + [Event(0, finish_reason="stop")]

    async def run():
        async def rest():
            for event in events[1:]:
                yield event
        return [chunk async for chunk in reply.stream(events[0], rest())]
    sent = "".join(asyncio.run(run()))
    data = [json.loads(line[6:]) for line in sent.splitlines() if line.startswith("data: ")]
    deltas = "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta")
    assert deltas.strip() == "Let me add." and "<tool" not in deltas
    added = [d["item"]["type"] for d in data if d["type"] == "response.output_item.added"]
    assert added == ["message", "function_call"]
    call = next(d for d in data if d["type"] == "response.function_call_arguments.done")
    assert json.loads(call["arguments"]) == {"a": 2, "b": 3} and call["output_index"] == 1
    final = data[-1]["response"]["output"]
    assert [item["type"] for item in final] == ["message", "function_call"]
    assert final[0]["content"][0]["text"] == "Let me add." and final[1]["name"] == "add"
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
