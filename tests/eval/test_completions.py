"""Generating code completions and replies for evaluation, on tiny random models."""

from __future__ import annotations

import json

import pytest

from parley.engine import LocalEngine, SamplingParams
from parley.errors import ConfigError
from parley.eval.code import CodeEvalConfig, evaluate_model
from parley.eval.completions import CODE_STOPS, GenerationConfig, _completion, complete_problems, generate_all
from parley.eval.problems import Problem, load_problems

PROBLEM = Problem(
    task_id="t/0", prompt='def double(x):\n    """Twice x."""\n', test="def check(f):\n    assert f(2) == 4\n",
    entry_point="double", prefix='def double(x):\n    """Twice x."""\n',
)


def test_batched_generation_matches_one_at_a_time(llama_loaded):
    engine = LocalEngine(llama_loaded)
    prompts = ["def f(x):", [{"role": "user", "content": "Hi there"}], "import os\n", "x = 1"]
    params = [SamplingParams(temperature=0, max_new_tokens=n) for n in (6, 9, 3, 12)]
    alone = [engine.generate(p, q) for p, q in zip(prompts, params)]
    done = []
    assert generate_all(engine, prompts, params, batch=3, on_done=done.append) == alone
    assert len(done) == len(prompts)


def test_n_samples_per_problem_with_their_own_seeds(llama_loaded):
    engine = LocalEngine(llama_loaded)
    config = GenerationConfig(n=3, temperature=1.0, max_new_tokens=6, style="completion", batch=4)
    first = complete_problems(engine, {"t/0": PROBLEM}, config)
    again = complete_problems(engine, {"t/0": PROBLEM}, config)
    assert [s["task_id"] for s in first] == ["t/0"] * 3
    assert first == again  # seeds are fixed per sample
    assert len({s["raw"] for s in first}) > 1  # ... and differ between samples


def test_chat_replies_become_programs():
    reply = "Sure!\n```python\ndef double(x):\n    return 2 * x\n```\nIt doubles."
    assert _completion(PROBLEM, reply, "chat") == "\ndef double(x):\n    return 2 * x\n"
    assert _completion(PROBLEM, "```\n    return x * 2\n```", "chat") == "    return x * 2\n"
    assert _completion(PROBLEM, "    return x + x", "chat") == "    return x + x"
    assert _completion(PROBLEM, "    return x\n\ndef other(): pass", "completion") == "    return x\n\ndef other(): pass"
    assert "\ndef " in CODE_STOPS


def test_generation_settings_are_checked():
    with pytest.raises(ConfigError, match="--n above 1 needs --temperature"):
        GenerationConfig(n=5, temperature=0)
    with pytest.raises(ConfigError, match="--style"):
        GenerationConfig(style="fim")


def test_evaluate_model_writes_samples_and_scored_results(llama_loaded, tmp_path):
    engine = LocalEngine(llama_loaded)
    generation = GenerationConfig(max_new_tokens=5, limit=2, style="completion")
    results, json_path, md_path = evaluate_model(
        engine, "tiny-llama", "humaneval", generation, CodeEvalConfig(workers=2, ks=(1,)), tmp_path / "r.json",
    )
    samples = [json.loads(line) for line in (tmp_path / "r.samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    assert results["model"] == "tiny-llama" and results["details"]["problems_total"] == 2
    assert [s["completion"] for s in results["samples"]] == [s["completion"] for s in samples]
    assert results["metrics"]["pass@1"] == 0.0  # a random model's five tokens do not solve HumanEval
    assert json.loads(json_path.read_text())["generation"]["limit"] == 2 and md_path.exists()


@pytest.mark.slow
def test_embedded_model_writes_a_function_when_asked_in_chat(embedded_model, tmp_path):
    engine = LocalEngine(embedded_model)
    problems = dict(list(load_problems().items())[:2])
    samples = complete_problems(engine, problems, GenerationConfig(max_new_tokens=160, style="chat"))
    assert all(f"def {problems[s['task_id']].entry_point}" in s["completion"] for s in samples)


def test_chat_answers_stop_once_the_code_block_is_closed(llama_loaded):
    from parley.eval.completions import _closed_block

    assert _closed_block("Here:\n```python\ndef f():\n    pass\n```")
    assert not _closed_block("Here:\n```python\ndef f():\n    pass\n")
    engine = LocalEngine(llama_loaded)
    params = [SamplingParams(temperature=0, max_new_tokens=12)] * 2
    full = generate_all(engine, ["a", "b"], params, batch=2)
    cut = generate_all(engine, ["a", "b"], params, batch=2, enough=lambda text: len(text) >= 3)
    assert all(c == f[: len(c)] and 3 <= len(c) <= len(f) for c, f in zip(cut, full))
