"""Fixtures for training tests: the tiny tokenizer, tiny model directories, the prepared task (train_task.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from .train_task import HELD_OUT, build_tokenizer, save_model, tiny_llama, write_preferences, write_task


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def llama_dir(tokenizer, tmp_path_factory) -> str:
    return save_model(tiny_llama(tokenizer), tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def gpt2_dir(tokenizer, tmp_path_factory) -> str:
    """A random GPT-2 (dropout 0.1 everywhere, so the RNG matters to exact resume)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return save_model(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def t5_dir(tokenizer, tmp_path_factory) -> str:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
                      dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    return save_model(T5ForConditionalGeneration(config), tokenizer, tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def task_file(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task") / "greetings.jsonl")


@pytest.fixture(scope="session")
def prepared(task_file, tokenizer, tmp_path_factory) -> str:
    """The task prepared by `parley.data.prepare` for the tiny tokenizer (10% held out for validation)."""
    from parley.data.prepare import PrepareConfig, prepare
    from parley.templates import template_for

    out = tmp_path_factory.mktemp("prepared") / "greetings"
    prepare([f"chat:{task_file}"], out, tokenizer, template_for(tokenizer), PrepareConfig(max_len=64, val_ratio=0.1))
    return str(out)


@pytest.fixture(scope="session")
def preferences(tokenizer, tmp_path_factory) -> dict:
    """The preference task (train_task.write_preferences) prepared for the tiny tokenizer: `train` (its
    validation split drawn by hash) and `held_out` (pairs of names and cities training never sees)."""
    from parley.data.prepare import PrepareConfig, prepare
    from parley.templates import template_for

    root = tmp_path_factory.mktemp("preferences")
    files = {"train": write_preferences(root / "train.jsonl"), "held_out": write_preferences(root / "held.jsonl", HELD_OUT)}
    out = {}
    for name, path in files.items():
        out[name] = str(root / name)
        prepare([str(path)], root / name, tokenizer, template_for(tokenizer),
                PrepareConfig(max_len=64, val_ratio=0.1 if name == "train" else 0.0))
    return out | {"held_out_file": str(files["held_out"])}
