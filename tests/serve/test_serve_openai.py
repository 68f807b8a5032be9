"""The official `openai` client against a real server (uvicorn on 127.0.0.1) over a tiny random model."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from serve.live_server import CONTEXT, start_server
from parley.engine import LocalEngine, SamplingParams
from parley.templates import encode_chat

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def test_models_health_docs(server, client):
    url, _ = server
    (model,) = client.models.list().data
    assert model.id == "tiny"
    assert model.max_model_len == CONTEXT
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert "/v1/chat/completions" in httpx.get(url + "/openapi.json").json()["paths"]
    assert httpx.get(url + "/docs").status_code == 200


def test_chat_matches_the_engine(client, tiny_loaded):
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    (choice,) = reply.choices
    expected = LocalEngine(tiny_loaded).generate(HELLO, SamplingParams(temperature=0, max_new_tokens=12))
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    prompt_tokens = len(encode_chat(tiny_loaded.tokenizer, tiny_loaded.template, HELLO, True))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    assert reply.id.startswith("chatcmpl-") and reply.model == "tiny"


def test_streaming_gives_the_same_text(client):
    args = dict(model="tiny", messages=HELLO, max_tokens=20, temperature=0.9, seed=7)
    whole = client.chat.completions.create(**args).choices[0]
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1


def test_logprobs(client):
    reply = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(values[0])
        assert entry.bytes == list(entry.token.encode())


def test_stop_strings_end_the_reply(client):
    args = dict(model="tiny", messages=HELLO, max_tokens=40, temperature=0)
    text = client.chat.completions.create(**args).choices[0].message.content
    assert len(text) > 20
    stop = text[12:16]
    reply = client.chat.completions.create(**args, stop=[stop]).choices[0]
    assert reply.message.content == text[: text.find(stop)]
    assert reply.finish_reason == "stop"
    streamed = client.chat.completions.create(**args, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == reply.message.content


def test_n_choices_use_consecutive_seeds(client):
    args = dict(model="tiny", messages=HELLO, max_tokens=10, temperature=1.0)
    many = client.chat.completions.create(**args, n=3, seed=100)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for i, choice in enumerate(many.choices):
        alone = client.chat.completions.create(**args, seed=100 + i).choices[0].message.content
        assert choice.message.content == alone
    assert len({c.message.content for c in many.choices}) > 1


def test_completions_raw_prompt(client, tiny_loaded):
    args = dict(model="tiny", prompt="def fib(n):", max_tokens=10, temperature=0)
    reply = client.completions.create(**args, logprobs=2)
    (choice,) = reply.choices
    assert choice.text == LocalEngine(tiny_loaded).generate("def fib(n):", SamplingParams(temperature=0, max_new_tokens=10))
    assert len(choice.logprobs.tokens) == reply.usage.completion_tokens
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.text_offset[0] == 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(**args, stream=True))
    assert streamed == choice.text
    two = client.completions.create(**{**args, "prompt": ["def fib(n):", "Hello"]})
    assert [c.text for c in two.choices][0] == choice.text and len(two.choices) == 2


@pytest.mark.parametrize("args, status, words", [
    (dict(temperature=3), 400, "temperature"),
    (dict(top_p=0), 400, "top_p"),
    (dict(n=0), 400, "n"),
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(model="gpt-4o"), 404, "gpt-4o"),
    (dict(messages=[]), 400, "messages"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role"),
    (dict(presence_penalty=2.5), 400, "presence_penalty"),
    (dict(logprobs=False, top_logprobs=2), 400, "top_logprobs"),
])
def test_bad_requests_are_openai_errors(client, args, status, words):
    request = dict(model="tiny", messages=HELLO, max_tokens=4) | args
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == status
    assert words in caught.value.message
    assert caught.value.body["type"] in ("invalid_request_error",)


def test_too_long_prompts_name_both_lengths(client):
    long = [{"role": "user", "content": "hello " * 1200}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=long, max_tokens=4)
    assert str(CONTEXT) in caught.value.message and "prompt is" in caught.value.message
    assert caught.value.code == "context_length_exceeded"
    nearly = [{"role": "user", "content": "hello " * 950}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=nearly, max_tokens=200)
    assert "max_tokens" in caught.value.message and str(CONTEXT) in caught.value.message


def test_raw_http_errors(server):
    url, _ = server
    bad_json = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    huge = httpx.post(url + "/v1/chat/completions", content=b"x" * (3 * 1024 * 1024))
    assert huge.status_code == 413
    assert httpx.get(url + "/v1/nowhere").json()["error"]["message"]


def test_max_tokens_is_capped_by_the_server(client):
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=100_000, temperature=0,
                                           stop=None)
    assert reply.usage.completion_tokens <= 256  # the shared server's --max-tokens


def test_metrics_count_requests_and_tokens(server, client):
    client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3)
    text = httpx.get(server[0] + "/metrics").text
    assert 'parley_requests_total{route="/v1/chat/completions",status="200"}' in text
    tokens = [line for line in text.splitlines() if line.startswith("parley_generated_tokens_total")]
    assert float(tokens[0].split()[-1]) >= 3
    assert "parley_queue_depth" in text and "parley_time_to_first_token_seconds_bucket" in text


def test_api_keys(tiny_loaded, tmp_path):
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(api_keys=["k-one", "k-two"], db=tmp_path / "db"), engine=LocalEngine(tiny_loaded))
    url, stop = start_server(app)
    try:
        for key in ("wrong", "k-one-and-more", ""):
            bad = openai.OpenAI(base_url=url + "/v1", api_key=key or "x", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # open: load balancers probe it
        good = openai.OpenAI(base_url=url + "/v1", api_key="k-two", max_retries=0)
        assert good.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).choices
    finally:
        stop()


def test_full_queue_is_429_and_a_disconnect_frees_its_slot(tiny_loaded, tmp_path):
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(max_batch=1, max_queue=1, max_tokens=1000, db=tmp_path / "db"),
                     engine=LocalEngine(tiny_loaded))
    url, stop = start_server(app)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    long = dict(model="tiny", messages=HELLO, max_tokens=1000, temperature=1.0, stop=None)
    try:
        a = client.chat.completions.create(**long, stream=True)
        started = time.monotonic()
        received = sum(1 for _, _ in zip(range(5), a))  # A holds the only batch slot
        rate = received / (time.monotonic() - started)
        b_first: list[float] = []

        def run_b():
            for _ in client.chat.completions.create(**long, stream=True):
                b_first.append(time.monotonic())
                return

        b = threading.Thread(target=run_b)
        b.start()
        while httpx.get(url + "/health").json()["waiting"] < 1:  # B waits in the one queue place
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(**long)
        assert caught.value.response.headers["retry-after"] == "1"
        a.close()  # the client goes away: its slot must go to B at once, not after A's 1000 tokens
        closed = time.monotonic()
        b.join(timeout=30)
        assert b_first, "B never started"
        assert b_first[0] - closed < 2.0
        assert b_first[0] - closed < (1000 - received) / rate / 2  # well before A could have finished
        assert "parley_client_disconnects_total 1.0" in httpx.get(url + "/metrics").text
    finally:
        stop()


def test_a_request_that_breaks_sampling_harms_no_one_else(client, tiny_loaded):
    """Temperatures and penalties this small once made NaN probabilities, and the failure ended every
    sequence in the batch with 500. Now they sample (greedy below 1e-5) and the others are as alone."""
    engine = LocalEngine(tiny_loaded)
    others = [dict(temperature=0.9, seed=s) for s in range(4)]
    tiny = [dict(temperature=1e-45, seed=9), dict(temperature=1.0, seed=9, extra_body={"repetition_penalty": 1e-45})]
    requests = others + tiny
    results: list = [None] * len(requests)

    def ask(i: int) -> None:
        try:
            results[i] = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=24,
                                                        **requests[i]).choices[0].message.content
        except openai.APIError as e:
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alone = [engine.generate(HELLO, SamplingParams(max_new_tokens=24, **r)) for r in others]
    assert results[: len(others)] == alone
    assert results[len(others)] == engine.generate(HELLO, SamplingParams(temperature=0, max_new_tokens=24))
    assert isinstance(results[-1], str)


def test_a_request_larger_than_the_queue_is_400_naming_n(client, server):
    limit = server[1].state.options.max_queue
    prompts = ["Hello"] * 16
    with pytest.raises(openai.BadRequestError) as caught:  # 16 x 8 = 128 sequences: it could never be queued
        client.completions.create(model="tiny", prompt=prompts, n=8, max_tokens=2)
    assert 16 * 8 > limit and caught.value.body["param"] == "n"
    assert "128 sequences" in caught.value.message and str(limit) in caught.value.message


def test_limits_the_sampler_keeps_are_400s_naming_the_field(client):
    # Limits that live in SamplingParams.check() (one place for every front end), not in the route's schema.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="Hello", max_tokens=2, stop=["x" * 257])
    assert caught.value.body["param"] == "stop" and "256" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # choice 2's seed, seed + 1, is past int64
        client.completions.create(model="tiny", prompt="Hello", max_tokens=2, n=2, seed=2**63 - 1)
    assert caught.value.body["param"] == "seed"


def test_logprob_bytes_are_each_tokens_own(client):
    """A character split over tokens: each token's `bytes` are its own slice of it, as OpenAI reports."""
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=40, temperature=1.0, seed=4,
                                           logprobs=True, top_logprobs=2)
    choice = reply.choices[0]
    pieces = [bytes(entry.bytes) for entry in choice.logprobs.content]
    assert b"".join(pieces).decode(errors="replace") == choice.message.content  # a random model may emit stray bytes
    assert any(_partial(piece) for piece in pieces)  # this seed's reply splits a character (the case under test)
    for entry in choice.logprobs.content:
        for alternative in [entry, *entry.top_logprobs]:
            assert bytes(alternative.bytes).decode(errors="replace") == alternative.token


def _partial(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("stream", [False, True])
def test_text_offsets_point_at_each_token(client, stream):
    """A stop string's first letter is held back until the next token shows it is not the stop: the
    offsets must still point where each token's text starts."""
    args = dict(model="tiny", prompt="Say hello.", max_tokens=40, temperature=1.0, seed=2, logprobs=0,
                stop=["e~~~"])
    chunks = client.completions.create(**args, stream=True) if stream else [client.completions.create(**args)]
    text, tokens, offsets = "", [], []
    for chunk in chunks:
        choice = chunk.choices[0]
        text += choice.text
        if choice.logprobs:
            tokens += choice.logprobs.tokens
            offsets += choice.logprobs.text_offset
    assert offsets == sorted(offsets) and len(tokens) == 40
    whole = [(t, o) for t, o in zip(tokens, offsets) if "\ufffd" not in t]
    assert any(t.endswith("e") for t, _ in whole[:-1])  # some text was held back (the case under test)
    for token, offset in whole:
        assert text[offset : offset + len(token)] == token


def test_a_client_that_leaves_before_its_turn_frees_its_place(tiny_loaded, tmp_path):
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(max_batch=1, max_queue=1, max_tokens=1000, db=tmp_path / "db"),
                     engine=LocalEngine(tiny_loaded))
    url, stop = start_server(app)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    long = dict(model="tiny", messages=HELLO, max_tokens=1000, temperature=1.0)

    def health() -> dict:
        return httpx.get(url + "/health").json()

    try:
        a = client.chat.completions.create(**long, seed=0, stream=True)  # seeded: the same run every time
        next(iter(a))  # A holds the only batch slot
        body = json.dumps(long).encode()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as b:  # B takes the one place in the line...
            b.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                      f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            while health()["waiting"] < 1:
                time.sleep(0.01)
        deadline = time.monotonic() + 30  # ...and leaves: its place is free once the server notices
        while (now := health())["waiting"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert now == now | {"waiting": 0, "active": 1}  # freed by B leaving, while A still decodes
        answers: list = []
        c = threading.Thread(target=lambda: answers.append(
            client.chat.completions.create(**(long | {"max_tokens": 2})).choices[0].finish_reason))
        c.start()  # C queues behind A (before the fix: 429, the line still held B)
        while health()["waiting"] < 1 and c.is_alive():
            time.sleep(0.01)
        a.close()
        c.join(timeout=120)
        assert answers and answers[0] in ("stop", "length")
    finally:
        stop()
