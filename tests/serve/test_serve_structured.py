"""`response_format` through the official openai SDK against a real server over a tiny random model:
its replies are noise, so JSON that parses and validates comes from constrained decoding alone."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from parley import backend
from parley.engine import SamplingParams

ASK = [{"role": "user", "content": "Extract the event: Alice and Bob meet on Friday."}]


class Event(BaseModel):
    # Bounded, because an untrained model never closes a string of its own accord (tests/test_constraints.py);
    # no extra properties (whose names would be unbounded strings), as the SDK's strict schemas say anyway.
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=16)
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday"]
    attendees: list[Annotated[str, Field(max_length=8)]] = Field(max_length=3)
    hours: int = Field(ge=0, le=24)


@pytest.mark.parametrize("seed", [0, 1])
def test_sdk_parse_returns_the_pydantic_object(client, seed):
    """The SDK sends a strict json_schema and validates the reply into the model (it raised before)."""
    reply = client.chat.completions.parse(model="tiny", messages=ASK, response_format=Event, max_tokens=200,
                                          temperature=1.0, seed=seed)
    (choice,) = reply.choices
    assert isinstance(choice.message.parsed, Event)
    assert choice.finish_reason == "stop"


def test_json_schema_streamed_is_the_same_json(client):
    schema = Event.model_json_schema()
    args = dict(model="tiny", messages=ASK, max_tokens=200, temperature=0.8, seed=4,
                response_format={"type": "json_schema", "json_schema": {"name": "event", "schema": schema}})
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    Event.model_validate_json(whole)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_gives_parseable_json(client, stream):
    args = dict(model="tiny", messages=ASK, max_tokens=100, temperature=0,
                response_format={"type": "json_object"})
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True)
                       if c.choices)
    else:
        text = client.chat.completions.create(**args).choices[0].message.content
    assert isinstance(json.loads(text), dict)


def test_completions_take_response_format_too(client):
    """As vLLM does: a raw-prompt continuation constrained to the schema."""
    reply = client.completions.create(model="tiny", prompt="The event:", max_tokens=200, temperature=1.0, seed=2,
                                      extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                          "name": "event", "schema": Event.model_json_schema()}}})
    Event.model_validate_json(reply.choices[0].text)


def test_text_format_is_plain_decoding(client):
    args = dict(model="tiny", messages=ASK, max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**args).choices[0].message.content
    assert client.chat.completions.create(**args, response_format={"type": "text"}).choices[0].message.content == plain


@pytest.mark.parametrize("response_format, param, words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}}},
     "response_format.json_schema.schema", 'Unimplemented keys: ["not"]'),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integr"}}},
     "response_format.json_schema.schema", "integr"),
    ({"type": "json_schema"}, "response_format.json_schema", "required"),
    ({"type": "xml"}, "response_format.type", "json_object"),
])
def test_a_bad_response_format_is_a_400_naming_the_part(client, response_format, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, response_format=response_format)
    error = caught.value.body
    assert error["param"] == param
    assert words in error["message"]


def test_a_stored_conversation_can_reply_under_a_schema(server):
    """The conversations API takes SamplingParams fields, json_schema among them, and stores them."""
    schema = Event.model_json_schema()
    with httpx.Client(base_url=server[0], timeout=60) as http:
        cid = http.post("/v1/conversations", json={"params": {"json_schema": schema, "seed": 1}}).json()["id"]
        reply = http.post(f"/v1/conversations/{cid}/messages", json={"content": "The event?", "stream": False})
        Event.model_validate_json(reply.json()["message"]["content"])
        assert http.get(f"/v1/conversations/{cid}").json()["params"]["json_schema"] == schema


def test_the_remote_backend_asks_its_service_for_the_schema(server):
    """`--model openai:NAME` sends json_schema on as response_format, so a remote reply is constrained too."""
    remote = backend.open("openai:tiny", base_url=server[0] + "/v1")
    schema = Event.model_json_schema()
    text = remote.generate(ASK, SamplingParams(temperature=1.0, seed=3, max_new_tokens=200, json_schema=schema))
    Event.model_validate_json(text)
