"""Malformed requests, by hand: every one gets a 4xx with an OpenAI-style error body, never a 5xx,
and the server keeps serving afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

OK = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def chat(**changes):
    body = dict(OK)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


RAW = [
    b"", b"{", b"}", b"null", b"[]", b"42", b'"text"', b"true", b"\xff\xfe\x00", b"{'single': 'quotes'}",
    b'{"messages": [}', b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]',
    b'{"temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}',
    b'{"temperature": Infinity, "messages": [{"role": "user", "content": "hi"}]}',
    b"\x00" * 64, "{\"messages\": \"\u2603\"}".encode(),
]
CHAT = [
    chat(messages=...), chat(messages=None), chat(messages="hi"), chat(messages={}), chat(messages=[]),
    chat(messages=[None]), chat(messages=[1]), chat(messages=["hi"]), chat(messages=[{}]),
    chat(messages=[{"role": "user"}, {"content": "x"}]), chat(messages=[{"role": 1, "content": "hi"}]),
    chat(messages=[{"role": "tool", "content": "hi"}]), chat(messages=[{"role": "user", "content": 5}]),
    chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    chat(messages=[{"role": "user", "content": [{"text": "no type"}]}]),
    chat(messages=[{"role": "user", "content": [{"type": {}, "text": ""}]}]),  # an unhashable type (once a 500)
    chat(logit_bias=[1]), chat(logit_bias={"x": 1}), chat(logit_bias={"1": "x"}), chat(logit_bias={"-1": 1}),
    chat(logit_bias={"1": 1e308}), chat(functions=[{"name": "f"}]), chat(modalities=["audio"]),
    chat(temperature="hot"), chat(temperature=-1), chat(temperature=2.5), chat(temperature=True),
    chat(temperature=[1]), chat(top_p=0), chat(top_p=1.5), chat(top_p="0.5"), chat(top_k=-1), chat(top_k=1.5),
    chat(max_tokens=0), chat(max_tokens=-5), chat(max_tokens=1.5), chat(max_tokens="10"), chat(max_tokens=True),
    chat(max_completion_tokens=0), chat(n=0), chat(n=100), chat(n="2"), chat(seed=-1), chat(seed=2**70),
    chat(seed="abc"), chat(seed=1.5), chat(stop=5), chat(stop=[1, 2]), chat(stop=["a", "b", "c", "d", "e"]),
    chat(stop=[""]), chat(stream="yes"), chat(stream=1), chat(stream_options="x"),
    chat(stream_options={"include_usage": "yes"}), chat(logprobs="yes"), chat(top_logprobs=21),
    chat(top_logprobs=-1), chat(logprobs=True, top_logprobs=1.5), chat(presence_penalty=5),
    chat(frequency_penalty="x"), chat(repetition_penalty=0), chat(repetition_penalty=100), chat(model=5),
    chat(model="x" * 600), chat(model="not-served"), chat(tools=[{"type": "function"}]),
]
COMPLETIONS = [
    b'{"prompt": ""}', b'{"prompt": []}', b'{"prompt": 5}', b'{"prompt": [1, 2, 3]}', b'{"prompt": [[1, 2]]}',
    b'{"prompt": ["ok", ""]}', b'{"prompt": "hi", "logprobs": 6}', b'{"prompt": "hi", "logprobs": true}',
    b'{"prompt": "hi", "echo": "yes"}', b'{"prompt": "hi", "suffix": "end"}', b'{"prompt": "hi", "best_of": 3}',
    b'{"prompt": "hi", "max_tokens": 0}', b'{"model": "tiny"}',
    json.dumps({"prompt": ["x"] * 17}).encode(),
]
CONVERSATIONS = [
    ("POST", "/v1/conversations", b'{"title": 5}'), ("POST", "/v1/conversations", b'{"params": "hot"}'),
    ("POST", "/v1/conversations", b'{"params": {"temperature": 9}}'), ("POST", "/v1/conversations", b"[1]"),
    ("POST", "/v1/conversations", b'{"unknown": true}'), ("PATCH", "/v1/conversations/zzz", b'{"title": "x"}'),
    ("GET", "/v1/conversations?limit=0", None), ("GET", "/v1/conversations?limit=abc", None),
    ("GET", "/v1/conversations?offset=-1", None), ("DELETE", "/v1/conversations/zzz", None),
    ("POST", "/v1/conversations/zzz/messages", b'{"content": "hi"}'), ("PUT", "/v1/chat/completions", b"{}"),
    ("GET", "/v1/chat/completions", None), ("POST", "/v1/models", b"{}"), ("POST", "/plain", b"message="),
]
CASES = (
    [("POST", "/v1/chat/completions", body) for body in RAW + CHAT]
    + [("POST", "/v1/completions", body) for body in RAW[:6] + COMPLETIONS]
    + CONVERSATIONS
)


def test_there_are_enough_cases():
    assert len(CASES) >= 50


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[0], timeout=30) as client:
        yield client


@pytest.mark.parametrize("method, path, body", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_malformed_request_is_a_clean_4xx(http, method, path, body):
    response = http.request(method, path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if path != "/plain":
        error = response.json()["error"]
        assert error["message"] and error["type"]
    if response.status_code == 400 and path.startswith("/v1/chat") and body not in RAW:
        assert error["param"] or "body" in error["message"], error  # says which field is wrong


def test_still_serving_afterwards(http):
    assert http.get("/health").json()["status"] == "ok"
    reply = http.post("/v1/chat/completions", json=OK)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"
