"""Every field the official openai SDK's chat and completions `create` take is honoured, harmless, or
refused with a 400 naming it (parley/serve/openai_fields.py), walked from the SDK's own signatures so a
field a new SDK adds fails here until the table says what Parley does with it."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import openai
import pytest
from openai.resources.chat.completions import Completions as ChatCompletions
from openai.resources.completions import Completions

from parley.engine import LocalEngine, SamplingParams
from parley.serve.openai_fields import ACCEPTED, FIELDS, HONOURED, REFUSED, markdown

README = Path(__file__).resolve().parents[2] / "README.md"
TRANSPORT = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}  # the SDK's, not the API's
HELLO = [{"role": "user", "content": "Say hello."}]
PROMPT = "def fib(n):"
# Sampled, not greedy: a random model's greedy reply is one token repeated, which too little changes.
BASE = {"chat": dict(model="tiny", messages=HELLO, max_tokens=12, temperature=1.0, seed=5),
        "completions": dict(model="tiny", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=5)}


def sdk_fields(route: str) -> set[str]:
    create = ChatCompletions.create if route == "chat" else Completions.create
    return set(inspect.signature(create).parameters) - TRANSPORT


def table(route: str) -> dict:
    return {name: rule for name, rule in FIELDS.items() if route in rule.routes}


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_the_table_covers_every_field_the_sdk_sends(route):
    missing = sdk_fields(route) - set(table(route))
    assert not missing, f"add these to parley/serve/openai_fields.FIELDS: {sorted(missing)}"


def test_the_readme_table_is_the_code_table():
    assert markdown() in README.read_text(), "paste openai_fields.markdown() into the README"


class Ask:
    """Calls one route through the SDK; a reply's text (or texts, for n > 1), or the error."""

    def __init__(self, client, route: str):
        self.client, self.route = client, route

    def __call__(self, **args):
        request = {**BASE[self.route], **args}
        if self.route == "chat":
            return self.client.chat.completions.create(**request)
        return self.client.completions.create(**request)

    def text(self, **args) -> str:
        reply = self(**args)
        choice = reply.choices[0]
        return choice.message.content if self.route == "chat" else choice.text

    def error(self, **args) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            self(**args)
        return caught.value


def _engine_text(tiny_loaded, route: str, **params) -> str:
    prompt = HELLO if route == "chat" else PROMPT
    settings = {"temperature": 1.0, "seed": 5, "max_new_tokens": 12, **params}
    return LocalEngine(tiny_loaded).generate(prompt, SamplingParams(**settings))


def check_honoured(name: str, ask: Ask, tiny_loaded) -> None:
    """What each honoured field does, seen in the reply."""
    route, base = ask.route, ask.text()
    chat = route == "chat"
    if name in ("messages", "prompt"):  # what the model read: the prompt's exact length in tokens
        other = [{"role": "user", "content": "Something else entirely, and longer."}]
        engine = LocalEngine(tiny_loaded)
        expected = engine.count(other) if chat else len(engine.prompt_ids(other[0]["content"]))
        given = other if chat else other[0]["content"]
        assert ask(**{name: given}).usage.prompt_tokens == expected != ask().usage.prompt_tokens
    elif name == "model":
        assert ask.error(model="gpt-4o").status_code == 404
    elif name in ("max_tokens", "max_completion_tokens"):
        assert ask(**{name: 2}).usage.completion_tokens == 2 and ask().usage.completion_tokens > 2
    elif name == "temperature":
        assert ask.text(temperature=0) == _engine_text(tiny_loaded, route, temperature=0) != base
    elif name == "seed":
        assert ask.text(seed=1) == ask.text(seed=1) != ask.text(seed=2)
    elif name in ("top_p", "top_k"):  # a nucleus of one token, or the single likeliest: greedy again
        narrow = {"top_p": 1e-9} if name == "top_p" else {"extra_body": {"top_k": 1}}
        assert ask.text(**narrow) == ask.text(temperature=0) != base
    elif name == "repetition_penalty":
        assert ask.text(extra_body={"repetition_penalty": 1.5}) == _engine_text(tiny_loaded, route,
                                                                                   repetition_penalty=1.5)
    elif name in ("n", "best_of"):
        extra = {"best_of": 2} if name == "best_of" else {}
        assert len(ask(n=2, **extra).choices) == 2
        if name == "best_of":
            assert ask.error(best_of=3).body["param"] == "best_of"
    elif name == "stop":
        stop = base[4:7]
        assert stop and ask.text(stop=[stop]) == base[: base.index(stop)]
    elif name in ("stream", "stream_options"):
        chunks = list(ask(stream=True, stream_options={"include_usage": True}))
        text = "".join((c.choices[0].delta.content if chat else c.choices[0].text) or "" for c in chunks if c.choices)
        assert text == base and chunks[-1].usage.completion_tokens >= 1
    elif name in ("logprobs", "top_logprobs"):
        if chat:
            entries = ask(logprobs=True, top_logprobs=2).choices[0].logprobs.content
            assert entries and all(len(e.top_logprobs) == 2 for e in entries)
        else:
            assert all(len(top) == 2 for top in ask(logprobs=2).choices[0].logprobs.top_logprobs)
    elif name in ("presence_penalty", "frequency_penalty"):
        # Greedy, where a random model repeats itself: the penalty must change that.
        text = ask.text(temperature=0, **{name: 2.0})
        assert text == _engine_text(tiny_loaded, route, temperature=0, **{name: 2.0}) != ask.text(temperature=0)
        assert ask.error(**{name: 2.5}).body["param"] == name
    elif name == "logit_bias":
        token = tiny_loaded.tokenizer.convert_tokens_to_ids("hello")
        text = ask.text(logit_bias={str(token): 100})
        assert text == _engine_text(tiny_loaded, route, logit_bias={token: 100}) == "hello" * 12
        assert ask.error(logit_bias={"99999999": 5}).body["param"] == "logit_bias"
        assert ask.error(logit_bias={"12": 101}).body["param"] == "logit_bias"
    elif name == "response_format":
        schema = {"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"],
                  "additionalProperties": False}
        fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
        args = {"response_format": fmt} if chat else {"extra_body": {"response_format": fmt}}
        assert json.loads(ask.text(**args))["a"] in (1, 2)
    elif name in ("tools", "tool_choice", "parallel_tool_calls"):
        # A schema a random model can only fill well: under `required` every call is one of these.
        tools = [{"type": "function", "function": {"name": f, "parameters": {
            "type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"], "additionalProperties": False}}}
            for f in ("f", "g")]
        reply = ask(tools=tools, tool_choice="required", parallel_tool_calls=False, max_tokens=100).choices[0]
        assert reply.finish_reason == "tool_calls" and len(reply.message.tool_calls) == 1
        call = reply.message.tool_calls[0].function
        assert call.name in ("f", "g") and json.loads(call.arguments)["a"] in (1, 2)
        named = ask(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}}, max_tokens=100).choices[0]
        assert [c.function.name for c in named.message.tool_calls] == ["g"]
        assert ask(tools=tools, tool_choice="none").choices[0].message.tool_calls is None
        assert ask.error(tools=tools, tool_choice={"type": "function", "function": {"name": "h"}}).body["param"] \
            == "tool_choice"
    elif name == "echo":
        assert ask.text(echo=True) == PROMPT + base
        scored = ask(echo=True, logprobs=1, max_tokens=0).choices[0]
        assert scored.text == PROMPT and scored.logprobs.token_logprobs[0] is None
        assert len(scored.logprobs.tokens) == len(LocalEngine(tiny_loaded).prompt_ids(PROMPT))
    else:
        raise AssertionError(f"no check for the honoured field {name!r}: add one here")


# A value each accepted or refused field might be sent with, as the SDK types it.
VALUES = {
    "user": "user-1", "safety_identifier": "s-1", "metadata": {"k": "v"}, "store": True, "service_tier": "flex",
    "prompt_cache_key": "k", "prompt_cache_options": {"mode": "auto"}, "prompt_cache_retention": "24h",
    "prediction": {"type": "content", "content": "Hello there"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "parallel_tool_calls": True,
    "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": "auto",
    "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
    "web_search_options": {}, "moderation": {"model": "omni-moderation-latest"}, "reasoning_effort": "low",
    "verbosity": "low", "echo": True, "suffix": "return 1",
}


@pytest.mark.parametrize("route, name", [(route, name) for route in ("chat", "completions")
                                         for name in sorted(table(route))])
def test_every_field_is_honoured_harmless_or_refused(client, tiny_loaded, route, name):
    ask, rule = Ask(client, route), FIELDS[name]
    if rule.status == HONOURED:
        return check_honoured(name, ask, tiny_loaded)
    value = VALUES[name]
    # Fields the SDK does not take on this route travel as extra body, as a client would send them.
    args = {name: value} if name in sdk_fields(route) else {"extra_body": {name: value}}
    if rule.status == ACCEPTED:
        assert ask.text(**args) == ask.text()
        return
    assert rule.status == REFUSED
    error = ask.error(**args)
    assert error.status_code == 400 and error.body["param"] == name, error.message
    for harmless in rule.harmless:  # e.g. modalities ["text"], tool_choice "none": they ask for nothing new
        if harmless is not None:
            key = {name: harmless} if name in sdk_fields(route) else {"extra_body": {name: harmless}}
            assert ask.text(**key) == ask.text()


def test_unknown_extras_and_transport_options_are_accepted(client):
    ask = Ask(client, "chat")
    assert ask.text(extra_body={"x_trace": 1, "cache_salt": "s"}, extra_headers={"X-Trace": "1"},
                    extra_query={"trace": "1"}, timeout=60) == ask.text()


@pytest.mark.parametrize("part, words", [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "images are not supported"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "audio inputs are not supported"),
    ({"type": "file", "file": {"file_id": "f"}}, "files are not supported"),
])
def test_media_parts_are_refused_saying_so(client, part, words):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert words in caught.value.message and caught.value.body["param"] == "messages[0].content"
