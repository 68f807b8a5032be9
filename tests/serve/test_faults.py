"""The fault matrix: what a careless client, an overload or a signal does to a running server.

- 100 clients leave mid-stream, 8 at a time: no batch slot leaks, /metrics back to zero.
- Overload beyond --max-queue: 429 with Retry-After; every accepted request still finishes.
- SIGKILL of `parley serve` mid-reply: no stored turn lost; the database passes its integrity check.
- SIGTERM: in-flight replies finish in full; new requests are refused.

Real servers only: the app under uvicorn in a thread for the first two, `parley serve` subprocesses for
the signals; the tiny model; waits are bounded loops, never timed assertions.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import openai
import pytest

from parley.engine import LocalEngine
from parley.store import Store
from serve.live_server import start_cli, start_server

HELLO = [{"role": "user", "content": "Say hello."}]
LONG = {"model": "tiny", "messages": HELLO, "max_tokens": 900, "temperature": 0, "stream": True}  # fits the window


def wait_until(condition, what: str, bound_s: float = 120) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"/metrics has no {name}")


def idle(url: str) -> bool:
    health = httpx.get(url + "/health").json()
    return health["active"] == 0 and health["waiting"] == 0


def events(lines) -> list[dict]:
    """The JSON events of an OpenAI stream, up to [DONE] (which must come)."""
    found = []
    for line in lines:
        if line == "data: [DONE]":
            return found
        if line.startswith("data: "):
            found.append(json.loads(line[6:]))
    raise AssertionError("the stream ended without [DONE]")


@pytest.fixture
def own_server(tiny_loaded, tmp_path):
    """A server of the test's own settings: own_server(max_batch=..., ...) -> base_url."""
    from parley.serve.app import ServeOptions, create_app

    stops = []

    def start(**options):
        app = create_app(ServeOptions(model="tiny", db=tmp_path / "parley.db", **options),
                         engine=LocalEngine(tiny_loaded))
        url, stop = start_server(app)
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


def test_100_clients_leaving_mid_stream_leak_no_slot(own_server):
    url = own_server(max_batch=8, max_tokens=900)

    def leave_early(_) -> bool:
        """Read two tokens, then hang up; True if the reply had not finished by then."""
        with httpx.stream("POST", url + "/v1/chat/completions", json=LONG, timeout=120) as response:
            assert response.status_code == 200
            seen = 0
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    if choice["finish_reason"]:
                        return False
                    seen += bool(choice["delta"].get("content"))
                    if seen == 2:
                        return True
        return False

    with ThreadPoolExecutor(8) as pool:
        left = sum(pool.map(leave_early, range(100)))
    assert left == 100  # 900 tokens at temperature 0: none ends by itself after two
    wait_until(lambda: idle(url), "every slot freed")
    assert metric(url, "parley_batch_size") == 0 and metric(url, "parley_queue_depth") == 0
    assert metric(url, "parley_client_disconnects_total") == 100
    # The freed slots work: a full batch of 8 replies runs to the end.
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: client.chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=5, temperature=0), range(8)))
    assert [r.choices[0].finish_reason for r in replies] == ["length"] * 8
    assert idle(url)


def test_overload_beyond_the_queue_is_429_and_every_accepted_request_finishes(own_server):
    url = own_server(max_batch=2, max_queue=4, max_tokens=900)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
    short = dict(model="tiny", messages=HELLO, max_tokens=10, temperature=0)
    blockers = [client.chat.completions.create(**LONG) for _ in range(2)]
    for blocker in blockers:
        next(blocker)  # a first chunk: this one holds a batch slot
    with ThreadPoolExecutor(4) as pool:
        queued = [pool.submit(client.chat.completions.create, **short) for _ in range(4)]
        wait_until(lambda: httpx.get(url + "/health").json()["waiting"] == 4, "4 requests waiting")
        for _ in range(5):
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(**short)
            assert refused.value.response.headers["retry-after"] == "1"
        for blocker in blockers:
            chunks = list(blocker)
            assert chunks[-1].choices[0].finish_reason == "length"
        for reply in (future.result() for future in queued):
            assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 10
    wait_until(lambda: idle(url), "the queue emptied")


def test_sigkill_mid_reply_loses_no_stored_turn(model_dir, tmp_path):
    process, url = start_cli("--model", str(model_dir), "--max-tokens", "1000", env={"PARLEY_HOME": str(tmp_path)})
    try:
        cid = httpx.post(url + "/v1/conversations", json={}).json()["id"]
        said = []
        for turn in range(3):
            reply = httpx.post(f"{url}/v1/conversations/{cid}/messages", timeout=120, json={
                "content": f"turn {turn}", "stream": False, "params": {"max_new_tokens": 8, "temperature": 0}})
            assert reply.status_code == 200, reply.text
            said += [{"role": "user", "content": f"turn {turn}"},
                     {"role": "assistant", "content": reply.json()["message"]["content"]}]
        body = {"content": "a long one", "params": {"max_new_tokens": 1000}}
        with httpx.stream("POST", f"{url}/v1/conversations/{cid}/messages", json=body, timeout=120) as response:
            deltas = (line for line in response.iter_lines() if '"type": "delta"' in line)
            next(deltas), next(deltas)
            process.kill()  # SIGKILL mid-reply: no shutdown code runs
            process.wait(timeout=30)
    finally:
        process.kill()
        process.wait(timeout=30)
    db = tmp_path / "parley.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    store = Store(db)
    try:
        assert store.messages(cid)[:6] == said
    finally:
        store.close()


def test_sigterm_lets_running_replies_finish_and_refuses_new_ones(model_dir, tmp_path):
    # A grace far longer than the replies need, however slow the machine: they must end in full.
    process, url = start_cli("--model", str(model_dir), "--max-tokens", "100", "--max-batch", "2", "--grace", "600",
                             env={"PARLEY_HOME": str(tmp_path)})
    body = {"messages": HELLO, "max_tokens": 100, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    try:
        with ExitStack() as stack:
            streams = [stack.enter_context(httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120))
                       for _ in range(2)]
            lines = [stream.iter_lines() for stream in streams]
            for stream_lines in lines:
                next(line for line in stream_lines if line.startswith("data: "))  # running
            process.send_signal(signal.SIGTERM)
            # uvicorn logs this once it stops listening; the driver has taken no new work since the signal.
            next(line for line in process.stdout if "Shutting down" in line)
            try:
                late = httpx.post(url + "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
            except httpx.TransportError:
                pass  # refused at the socket, as it should be once uvicorn stopped listening
            else:  # or, in the instant before the socket closed, by the draining driver
                assert late.status_code == 503, late.text
            for stream_lines in lines:
                found = events(stream_lines)
                finish = [e["choices"][0]["finish_reason"] for e in found if e["choices"]][-1]
                usage = found[-1]["usage"]
                # Cut by the shutdown would be "length" short of 100 tokens (see test_serve_cli).
                assert finish == "stop" or usage["completion_tokens"] == 100, (finish, usage)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        process.kill()
        process.wait()
