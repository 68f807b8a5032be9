"""The remote backend (`--model openai:NAME --base-url URL`) talking to a real Parley server."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from parley import backend
from parley.engine import Engine, LocalEngine, SamplingParams
from parley.errors import ContextError, ModelLoadError
from parley.remote import RemoteEngine
from parley.store import Store
from serve.live_server import CONTEXT

PARLEY = str(Path(sys.executable).with_name("parley"))  # the installed console script
HELLO = [{"role": "user", "content": "Say hello."}]
GREEDY = SamplingParams(temperature=0, max_new_tokens=10)


@pytest.fixture
def remote(server):
    return backend.open("openai:tiny", base_url=server[0] + "/v1")


def test_open_picks_the_backend(remote, tiny_loaded):
    assert isinstance(LocalEngine(tiny_loaded), Engine)
    assert isinstance(remote, RemoteEngine) and isinstance(remote, Engine)
    assert remote.name == "tiny" and remote.spec == "openai:tiny"
    assert remote.context_window == CONTEXT  # read from the server's /v1/models
    assert not hasattr(remote, "loaded")  # no weights or tokenizer here


def test_remote_text_is_the_local_engines(remote, tiny_loaded):
    local = LocalEngine(tiny_loaded)
    engine = remote
    assert engine.generate(HELLO, GREEDY) == local.generate(HELLO, GREEDY)
    assert engine.generate("def fib(n):", GREEDY) == local.generate("def fib(n):", GREEDY)
    tokens = list(engine.stream(HELLO, SamplingParams(temperature=0, max_new_tokens=6, top_logprobs=2)))
    assert tokens and all(t.logprob <= 0 and len(t.top) == 2 for t in tokens)
    assert all(math.isnan(t.logprob) for t in engine.stream(HELLO, GREEDY))  # not asked for


def test_penalties_and_logit_bias_reach_the_remote(remote, tiny_loaded):
    hello = tiny_loaded.tokenizer.convert_tokens_to_ids("hello")
    for params in (SamplingParams(temperature=0, max_new_tokens=10, presence_penalty=1.5, frequency_penalty=0.5),
                   SamplingParams(temperature=0, max_new_tokens=10, logit_bias={hello: 100})):
        assert remote.generate(HELLO, params) == LocalEngine(tiny_loaded).generate(HELLO, params)
    assert remote.generate(HELLO, params) == "hello" * 10


def test_remote_errors_are_one_line(server, remote):
    with pytest.raises(ModelLoadError, match="serves: tiny"):
        backend.open("openai:gpt-4o", base_url=server[0] + "/v1")
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelLoadError, match="cannot reach"):
        backend.open("openai:tiny", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ContextError, match=str(CONTEXT)):
        remote.generate([{"role": "user", "content": "hi " * 1500}], GREEDY)


def test_parley_chat_talks_to_a_parley_server(server, tiny_loaded):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(
        [PARLEY, "chat", "--model", "openai:tiny", "--base-url", server[0] + "/v1",
         "-p", "Say hello.", "--temperature", "0", "--max-new-tokens", "10"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    expected = LocalEngine(tiny_loaded).generate(HELLO, GREEDY)
    assert done.stdout == expected + "\n"
    stored = Store().list(limit=5)  # the chat's own store, under the tests' PARLEY_HOME
    assert any(c.model == "openai:tiny" and c.message_count == 2 for c in stored)


def test_parley_chat_says_when_the_server_is_missing():
    done = subprocess.run(
        [PARLEY, "chat", "--model", "openai:tiny", "--base-url",
         "http://127.0.0.1:9/v1", "-p", "hi"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("parley: error: cannot reach http://127.0.0.1:9/v1")
    assert "Traceback" not in done.stderr


def test_tools_and_tool_histories_reach_the_remote(remote, tiny_loaded):
    """A Chat's tools and its calls and results go to the service, which renders them as a local engine would;
    a forced call (json_schema beside the tools) comes back as the call's JSON."""
    from parley.templates import Chat
    from parley.tools import forced_schema

    add = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["a"],
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    history = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "2"}]
    local = LocalEngine(tiny_loaded)
    assert remote.generate(Chat(history, [add]), GREEDY) == local.generate(Chat(history, [add]), GREEDY)
    forced = SamplingParams(temperature=0, max_new_tokens=20, json_schema=forced_schema([add], "add", False))
    assert remote.generate(Chat(HELLO, [add]), forced) == local.generate(Chat(HELLO, [add]), forced)
    assert remote.count(HELLO, tools=[add]) > remote.count(HELLO)


def test_streamed_remote_tool_calls_become_parleys_call_blocks():
    """A service's tool_call deltas (as OpenAI streams them) are gathered into the <tool_call> text that
    parley/tools.py reads back as calls."""
    from openai.types.chat import ChatCompletionChunk

    from parley.remote import _add_calls
    from parley.tools import call_json

    def chunk(part):
        return ChatCompletionChunk.model_validate({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                                   "model": "m", "choices": [{"index": 0, "delta": part}]})
    calls: dict[int, dict] = {}
    for part in ({"tool_calls": [{"index": 0, "id": "x", "type": "function",
                                  "function": {"name": "add", "arguments": ""}}]},
                 {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]},
                 {"tool_calls": [{"index": 0, "function": {"arguments": "2}"}}]}, {"content": None}):
        _add_calls(chunk(part), calls)
    assert call_json(calls[0]) == '{"name": "add", "arguments": {"a": 2}}'
