"""`parley serve` as a user starts it: a subprocess on 127.0.0.1, a model directory or a remote model."""

from __future__ import annotations

import json
import signal
import subprocess

import httpx
import openai
import pytest

from parley.store import Store
from serve.live_server import PARLEY
from serve.live_server import start_cli as start

HELLO = [{"role": "user", "content": "Say hello."}]


def test_sigterm_ends_running_streams_cleanly(model_dir):
    process, url = start("--model", str(model_dir), "--grace", "0", "--max-tokens", "900")
    try:
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == str(model_dir)
        body = {"messages": HELLO, "max_tokens": 900, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            seen = [next(lines) for _ in range(6)]
            process.send_signal(signal.SIGTERM)
            seen += list(lines)  # the server must end the stream itself, properly
        events = [line[6:] for line in seen if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
        assert finishes == ["length"]
        assert len(chunks) < 900  # cut by the shutdown, not by max_tokens
        # uvicorn re-raises the signal once it has shut down cleanly, as process managers expect.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = process.stdout.read()
        assert "Application shutdown complete" in log
        assert f"ready: chat page {url}/ · OpenAI-compatible API {url}/v1 · API docs {url}/docs" in log
    finally:
        process.kill()
        process.wait()


def test_a_busy_port_is_one_line_before_the_model_loads():
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:  # the model does not exist: only the port being checked first gives the port's error
        result = subprocess.run([PARLEY, "serve", "--port", str(port), "--model", "/no/such/model"],
                                capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert result.returncode == 2
    assert result.stderr.strip() == (f"parley: error: cannot listen on 127.0.0.1:{port}: another program is "
                                     "listening there: stop it, or choose another --port")


def test_a_parley_server_in_front_of_another(server):
    process, url = start("--model", "openai:tiny", "--base-url", server[0] + "/v1", "--api-key", "front")
    try:
        front = openai.OpenAI(base_url=url + "/v1", api_key="front", max_retries=0)
        back = openai.OpenAI(base_url=server[0] + "/v1", api_key="x", max_retries=0)
        args = dict(messages=HELLO, max_tokens=8, temperature=0)
        expected = back.chat.completions.create(model="tiny", **args).choices[0].message.content
        assert front.chat.completions.create(model="openai:tiny", **args).choices[0].message.content == expected
        streamed = front.chat.completions.create(model="openai:tiny", stream=True, **args)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        # A stored conversation, replied to by the remote model, survives the server being killed.
        key = {"Authorization": "Bearer front"}
        cid = httpx.post(url + "/v1/conversations", json={}, headers=key).json()["id"]
        reply = httpx.post(f"{url}/v1/conversations/{cid}/messages", headers=key, timeout=60,
                           json={"content": "Say hello.", "params": {"temperature": 0, "max_new_tokens": 8},
                                 "stream": False}).json()
        assert reply["message"]["content"] == expected
    finally:
        process.kill()  # SIGKILL: no shutdown code runs
        process.wait(timeout=30)
    assert "front" not in process.stdout.read()  # keys are never logged
    assert Store().messages(cid) == [{"role": "user", "content": "Say hello."},
                                     {"role": "assistant", "content": expected}]


def test_bad_model_is_one_line():
    done = subprocess.run([PARLEY, "serve", "--model", "/no/such/model"], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip() == "parley: error: model directory /no/such/model does not exist"
