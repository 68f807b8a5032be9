"""Fixtures for the serving tests: a tiny random Llama over the embedded tokenizer (1024-token
context window) and one shared real server over it (see live_server.py)."""

from __future__ import annotations

import copy

import pytest

from serve.live_server import CONTEXT, start_server
from tiny_models import tiny_llama


@pytest.fixture(scope="session")
def tiny_loaded(embedded_tokenizer):
    from parley.models import assemble

    model = tiny_llama(embedded_tokenizer)
    model.config.max_position_embeddings = CONTEXT  # RoPE has no table to outgrow; this is the window
    return assemble(model, copy.deepcopy(embedded_tokenizer), spec="tiny")


@pytest.fixture(scope="session")
def tmp_db(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-db") / "parley.db"


@pytest.fixture(scope="session")
def server(tiny_loaded, tmp_db):
    """One shared server with default settings: (base_url, app)."""
    from parley.engine import LocalEngine
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(model="tiny", max_tokens=256, db=tmp_db), engine=LocalEngine(tiny_loaded))
    url, stop = start_server(app)
    yield url, app
    stop()


@pytest.fixture(scope="session")
def model_dir(tiny_loaded, tmp_path_factory):
    """The tiny model saved as a model directory, for `parley serve --model DIR` subprocesses."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_loaded.model.save_pretrained(path)
    tiny_loaded.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def client(server):
    """The official OpenAI client, pointed at the shared server, without retries."""
    from openai import OpenAI

    return OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)
