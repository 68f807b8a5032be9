"""`parley eval perplexity|dialogue|code --model` end to end, with a tiny model saved to a directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from parley.cli import app
from parley.errors import ConfigError



def run(*args: str) -> dict:
    result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    assert "results:" in result.output
    return result


def test_perplexity_command(tiny_dir, tmp_path):
    (tmp_path / "held_out.py").write_text("def f(x):\n    return x * 2\n" * 20)
    out = tmp_path / "ppl.json"
    run("perplexity", "--model", str(tiny_dir), "--source", str(tmp_path / "held_out.py"),
        "--window", "32", "--stride", "16", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["kind"] == "perplexity" and results["details"]["windows"] > 1
    # A random model over a 49k vocabulary is close to uniform: perplexity near the vocabulary size.
    assert 10_000 < results["metrics"]["perplexity"] < 200_000
    assert "| bits_per_byte |" in out.with_suffix(".md").read_text()


def test_dialogue_command(tiny_dir, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in [("Hi", "Hello!"), ("Bye", "Goodbye.")]
    ))
    out = tmp_path / "dia.json"
    run("dialogue", "--model", str(tiny_dir), "--source", f"chat:{chats}", "--split", "all",
        "--max-new-tokens", "4", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["details"]["conversations"] == 2 and "sacrebleu_signature" in results["details"]


def test_code_command_generates_then_scores(tiny_dir, tmp_path):
    out = tmp_path / "code.json"
    result = run("code", "--model", str(tiny_dir), "--limit", "2", "--max-new-tokens", "4", "--k", "1",
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


def test_preference_command_and_compare(tiny_dir, tmp_path):
    """A model that is not a DPO run is scored by log-likelihood; the numbers are the model's own."""
    import torch

    from parley.models import load

    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}!"} for i in range(6)]
    rows.append({"prompt": "Hi", "completion": "Hello", "label": True})  # unpaired: left out, counted
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pref.json"
    run("preference", "--model", str(tiny_dir), "--source", str(tmp_path / "prefs.jsonl"), "--out", str(out))
    results = json.loads(out.read_text())
    assert results["kind"] == "preference" and results["settings"]["measure"] == "log_likelihood"
    assert results["details"]["pairs"] == 6 and results["details"]["unpaired"] == 1

    loaded = load(str(tiny_dir), device="cpu")
    margins = []
    for r in rows[:6]:  # the same measure, by hand: sum of log p over each reply's tokens after the context
        context = loaded.tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                                       add_generation_prompt=True)
        scores = []
        for reply in (r["chosen"], r["rejected"]):
            whole = loaded.tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                                          {"role": "assistant", "content": reply}], tokenize=False)
            said = whole[len(context):].rstrip()
            ids = loaded.tokenizer(context + said, add_special_tokens=False, return_tensors="pt")["input_ids"]
            n = len(loaded.tokenizer(context, add_special_tokens=False)["input_ids"])
            with torch.inference_mode():
                logps = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1].float(), -1)
            scores.append(float(logps[n - 1:].gather(1, ids[0, n:, None]).sum()))
        margins.append(scores[0] - scores[1])
    metrics = results["metrics"]
    assert metrics["loglik_margin"] == pytest.approx(sum(margins) / 6, rel=1e-4)
    assert metrics["loglik_accuracy"] == sum(m > 0 for m in margins) / 6 == metrics["reward_accuracy"]
    assert "| loglik_accuracy |" in out.with_suffix(".md").read_text()
    compared = CliRunner().invoke(app, ["eval", "compare", str(out), str(out), "--chart", str(tmp_path / "c.png")])
    assert compared.exit_code == 0 and "reward_accuracy" in compared.output
