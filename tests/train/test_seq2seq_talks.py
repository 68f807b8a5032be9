"""A T5 fine-tuned by `parley train` talks: `parley chat -p` and the server's /v1/chat/completions give
the reply that transformers' own greedy `generate` gives for the prompt training rendered."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import torch
from serve.live_server import start_server

from parley import models
from parley.templates import encode_chat
from parley.train.config import load_config
from parley.train.loop import start

from .train_task import prompt, run_cli

ASK = prompt("Ada", "Oslo")


@pytest.fixture(scope="module")
def trained(t5_dir, prepared, tmp_path_factory):
    """The tiny T5 after 40 optimizer steps (a few seconds): RUN_DIR/final."""
    out = tmp_path_factory.mktemp("t5-run")
    overrides = [f"out_dir={out}", f"model={t5_dir}", f"data.sources={prepared}", "max_steps=40", "optim.lr=3e-3",
                 "batch_size=16", "optim.warmup_steps=5", "eval.every=100", "log.progress=false"]
    return str(start(load_config(None, overrides)))


@pytest.fixture(scope="module")
def expected(trained) -> str:
    """transformers' greedy reply to the chat prompt, rendered as training rendered the encoder side."""
    loaded = models.load(trained, device="cpu")
    ids = encode_chat(loaded.tokenizer, loaded.template, ASK, add_generation_prompt=True)
    out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                eos_token_id=loaded.stop_ids, pad_token_id=loaded.tokenizer.pad_token_id)
    text = loaded.tokenizer.decode(out[0], skip_special_tokens=True)
    assert re.fullmatch(r"Hi \w+! How is \w+\?", text), text  # it learned the reply's frame and to stop
    return text


def test_parley_chat_answers_like_generate(trained, expected, tmp_path):
    done = run_cli("chat", "--model", trained, "-p", ASK[0]["content"], "--temperature", "0",
                   "--max-new-tokens", "16", env={"PARLEY_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected.strip()


def test_the_server_answers_like_generate(trained, expected, tmp_path):
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(model=trained, device="cpu", db=tmp_path / "parley.db"))  # loads the dir itself
    url, stop = start_server(app)
    try:
        body = {"model": trained, "messages": ASK, "temperature": 0, "max_tokens": 16}
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()
        assert reply["choices"][0]["message"]["content"] == expected
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        chunks = [json.loads(e) for e in events[:-1]]  # the last event is [DONE]
        pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
        assert "".join(pieces) == expected
    finally:
        stop()
