"""`parley eval perplexity|dialogue|code --model` end to end, with a tiny model saved to a directory."""

from __future__ import annotations

import json

import pytest
from tiny_models import tiny_llama
from typer.testing import CliRunner

from parley.cli import app
from parley.errors import ConfigError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, embedded_tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(embedded_tokenizer).save_pretrained(path)
    embedded_tokenizer.save_pretrained(path)
    return path


def run(*args: str) -> dict:
    result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    assert "results:" in result.output
    return result


def test_perplexity_command(model_dir, tmp_path):
    (tmp_path / "held_out.py").write_text("def f(x):\n    return x * 2\n" * 20)
    out = tmp_path / "ppl.json"
    run("perplexity", "--model", str(model_dir), "--source", str(tmp_path / "held_out.py"),
        "--window", "32", "--stride", "16", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["kind"] == "perplexity" and results["details"]["windows"] > 1
    # A random model over a 49k vocabulary is close to uniform: perplexity near the vocabulary size.
    assert 10_000 < results["metrics"]["perplexity"] < 200_000
    assert "| bits_per_byte |" in out.with_suffix(".md").read_text()


def test_dialogue_command(model_dir, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in [("Hi", "Hello!"), ("Bye", "Goodbye.")]
    ))
    out = tmp_path / "dia.json"
    run("dialogue", "--model", str(model_dir), "--source", f"chat:{chats}", "--split", "all",
        "--max-new-tokens", "4", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["details"]["conversations"] == 2 and "sacrebleu_signature" in results["details"]


def test_code_command_generates_then_scores(model_dir, tmp_path):
    out = tmp_path / "code.json"
    result = run("code", "--model", str(model_dir), "--limit", "2", "--max-new-tokens", "4", "--k", "1",
                 "--style", "completion", "--out", str(out))
    # Not a terminal: progress comes as plain lines (rich would print nothing until the end).
    assert "generate 2/2 elapsed" in result.stderr and "sandbox 2/2 elapsed" in result.stderr
    results = json.loads(out.read_text())
    assert results["details"]["samples"] == 2 and (tmp_path / "code.samples.jsonl").exists()


def test_code_command_takes_samples_or_a_model_not_both(tmp_path):
    result = CliRunner().invoke(app, ["eval", "code", "--samples", str(tmp_path / "s.jsonl"), "--model", "smollm2"])
    assert isinstance(result.exception, ConfigError) and "not both" in str(result.exception)


def test_perplexity_refuses_a_remote_model_before_loading_it(tmp_path):
    result = CliRunner().invoke(app, ["eval", "perplexity", "--model", "openai:gpt-x", "--source", str(tmp_path)])
    assert isinstance(result.exception, ConfigError) and "needs a local model" in str(result.exception)


@pytest.mark.slow
def test_code_command_without_samples_uses_the_built_in_model(embedded_dir, tmp_path):
    out = tmp_path / "code.json"
    run("code", "--limit", "1", "--max-new-tokens", "8", "--k", "1", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["model"] == "smollm2" and results["details"]["samples"] == 1
