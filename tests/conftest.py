"""Shared fixtures: a private PARLEY_HOME, the embedded tokenizer, tiny random models, the real model.

Tests never write to ~/.cache: PARLEY_HOME points at one temporary directory for the whole run, so
the embedded model is converted from GGUF at most once per run (~20 s) and subprocesses started by
tests (the CLI through a pseudo-terminal) share that cache through the environment.
"""

from __future__ import annotations

import copy
import os

import pytest

from tiny_models import tiny_gpt2, tiny_llama

os.environ["HF_HUB_OFFLINE"] = "1"  # never the network, whatever the caller's environment says
# Compiled decoding is the default: every short-lived engine (and CLI subprocess, which inherits this)
# would start a background compile on the 2 cores; tests/test_compiled.py compiles on purpose.
os.environ["PARLEY_COMPILE"] = "0"
# pytest-xdist's workers set COLUMNS=80 and LINES=24, which Rich prefers to the size of the pseudo-
# terminal a test opens: the chat would wrap at 80 columns under `make test` and not otherwise.
for name in ("COLUMNS", "LINES"):
    os.environ.pop(name, None)


@pytest.fixture(scope="session", autouse=True)
def parley_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("parley-home")
    old = os.environ.get("PARLEY_HOME")
    os.environ["PARLEY_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("PARLEY_HOME", None)
    else:
        os.environ["PARLEY_HOME"] = old


@pytest.fixture(scope="session")
def embedded_dir(parley_home):
    """The embedded SmolLM2 as a cached model directory (built from the GGUF file on first use)."""
    from parley import embedded

    return embedded.ensure_cached(progress=lambda message: None)


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="session")
def embedded_model(embedded_dir):
    """The real embedded model, loaded once through the one loader."""
    from parley import models

    return models.load("smollm2")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, embedded_tokenizer) -> str:
    """A tiny random Llama with the embedded tokenizer, saved as a model directory: what `--model DIR`
    takes in CLI tests (chat through a pty, eval, explain)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(embedded_tokenizer).save_pretrained(path)
    embedded_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def llama_loaded(embedded_tokenizer):
    """A tiny Llama with the embedded tokenizer and its ChatML template, wrapped like a loaded model."""
    from parley.models import assemble

    return assemble(tiny_llama(embedded_tokenizer), copy.deepcopy(embedded_tokenizer), spec="tiny-llama")


@pytest.fixture
def gpt2_loaded(embedded_tokenizer):
    """A tiny GPT-2 whose tokenizer has no chat template, so the documented default applies."""
    from parley.models import assemble

    tokenizer = copy.deepcopy(embedded_tokenizer)
    tokenizer.chat_template = None
    return assemble(tiny_gpt2(tokenizer), tokenizer, spec="tiny-gpt2")
